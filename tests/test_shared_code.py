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
SCRIPTS = sorted(p.name for p in REPO.glob("*.py") if not p.name.startswith("modeling_"))
# Run-folder plumbing the standalone trainers must repeat: one copy drifting would break the shared
# contract (which checkpoint is resumed, what test files hold), so the copies stay identical.
TRAINER_PLUMBING = {
    "last_complete_checkpoint": ["train_whisper.py", "train_wav2vec2.py", "train_deepspeech.py"],
    **{name: ["train_whisper.py", "train_wav2vec2.py"]
       for name in ("best_epoch", "stop_reason", "test_metrics", "test_predictions", "write_json")},
}


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


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_are_standalone(script):
    """No top-level script imports another: each must work copied alone into Colab."""
    others = {p[:-3] for p in SCRIPTS} - {script[:-3]}
    tree = ast.parse((REPO / script).read_text(encoding="utf-8"))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & others
    source = (REPO / script).read_text(encoding="utf-8")
    assert 'if __name__ == "__main__":' in source and "def main(argv" in source
    assert ast.get_docstring(tree), f"{script} starts with a docstring"


@pytest.mark.parametrize("name", sorted(TRAINER_PLUMBING))
def test_trainer_plumbing_is_identical(name):
    copies = {script: function_sources((REPO / script).read_text(encoding="utf-8")).get(name)
              for script in TRAINER_PLUMBING[name]}
    assert None not in copies.values(), f"{name} missing in {[s for s, c in copies.items() if c is None]}"
    assert len(set(copies.values())) == 1, f"{name} differs between {', '.join(copies)}"
