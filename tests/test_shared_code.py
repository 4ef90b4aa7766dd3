"""The helpers that standalone scripts must repeat are identical everywhere (docs/FORMATS.md is the
reference), so every script scores and normalises text exactly the same way."""
from __future__ import annotations

import ast
import re

import pytest

from conftest import REPO

SHARED = {
    "normalize_text": ["prepare_vivos.py", "train_whisper.py", "train_wav2vec2.py", "train_deepspeech.py",
                       "report.py", "transcribe.py", "demo.py"],
    "compute_wer_cer": ["train_whisper.py", "train_wav2vec2.py", "train_deepspeech.py", "report.py"],
}
# A model's own code, the one kind of top-level file that scripts may import (and that imports no script).
MODEL_FILES = ["modeling_deepspeech2.py"]
SCRIPTS = sorted(p.name for p in REPO.glob("*.py") if p.name not in MODEL_FILES)
TRAINERS = ["train_whisper.py", "train_wav2vec2.py", "train_deepspeech.py"]
# What each trainer defines for its own model family under one name and one signature (the rest of what
# they share is a marked copy that utils/check_copies.py keeps identical: tests/test_copies.py).
TRAINER_HOOKS = {"build_parser", "training_arguments", "memory_setting", "architecture_facts", "model_card", "main"}

def reference_functions() -> dict[str, str]:
    text = (REPO / "docs" / "FORMATS.md").read_text(encoding="utf-8")
    block = re.search(r"```python\n(def normalize_text.*?)```", text, re.S).group(1)
    return function_sources(block)


def function_sources(source: str) -> dict[str, str]:
    tree = ast.parse(source)
    return {node.name: ast.get_source_segment(source, node) for node in tree.body
            if isinstance(node, ast.FunctionDef)}


@pytest.mark.parametrize("script", SCRIPTS)
def test_shared_helpers_are_identical_to_the_reference(script):
    functions = function_sources((REPO / script).read_text(encoding="utf-8"))
    reference = reference_functions()
    for name, users in SHARED.items():
        if script in users:
            assert name in functions, f"{script} must define {name} (copy it from docs/FORMATS.md)"
        if name in functions:
            assert functions[name] == reference[name], f"{script}: {name} differs from docs/FORMATS.md"


def imported_modules(tree: ast.Module) -> set[str]:
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    return imported | {node.module.split(".")[0] for node in ast.walk(tree)
                       if isinstance(node, ast.ImportFrom) and node.module}


@pytest.mark.parametrize("model_file", MODEL_FILES)
def test_a_model_file_imports_no_script(model_file):
    tree = ast.parse((REPO / model_file).read_text(encoding="utf-8"))
    assert not imported_modules(tree) & {p[:-3] for p in SCRIPTS}
    assert ast.get_docstring(tree), f"{model_file} starts with a docstring"


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_are_standalone(script):
    """No top-level script imports another (a model file is the one exception): each works copied alone
    into Colab, with the model file beside it where it trains or loads that model."""
    others = {p[:-3] for p in SCRIPTS} - {script[:-3]}
    tree = ast.parse((REPO / script).read_text(encoding="utf-8"))
    assert not imported_modules(tree) & others
    source = (REPO / script).read_text(encoding="utf-8")
    assert 'if __name__ == "__main__":' in source and "def main(argv" in source
    assert ast.get_docstring(tree), f"{script} starts with a docstring"


def trainer_definitions() -> dict[str, dict[str, tuple[bool, str]]]:
    """name -> {trainer: (marked as a copy, signature)} for every top-level def and class of the trainers."""
    found: dict[str, dict[str, tuple[bool, str]]] = {}
    for script in TRAINERS:
        source = (REPO / script).read_text(encoding="utf-8")
        lines = source.splitlines()
        for node in ast.parse(source).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                marked = lines[start - 2].startswith("# Copied from ")
                signature = ast.unparse(node.args) if isinstance(node, ast.FunctionDef) else ""
                found.setdefault(node.name, {})[script] = (marked, signature)
    return found


def test_a_helper_in_several_trainers_is_a_marked_copy_or_a_family_hook_of_one_signature():
    """No unmarked near-copies: a name defined in two trainers is a checked copy in all but its source, or
    one of the family hooks, which every trainer defines with the same parameters."""
    for name, where in trainer_definitions().items():
        if len(where) < 2:
            continue
        if name in TRAINER_HOOKS:
            assert set(where) == set(TRAINERS), f"every trainer defines {name}"
            assert len({signature for _, signature in where.values()}) == 1, f"{name} has different signatures"
        else:
            unmarked = [script for script, (marked, _) in where.items() if not marked]
            assert len(unmarked) == 1, f"{name} is defined unmarked in {', '.join(unmarked)}: mark the copies"
