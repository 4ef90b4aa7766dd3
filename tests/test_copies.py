"""The code our standalone scripts repeat stays identical to its source: utils/check_copies.py passes on
the repository, fails on a hand-edited copy, and --fix restores the copy from its source."""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys

from conftest import REPO

CHECKER = REPO / "utils" / "check_copies.py"
SOURCE = '''"""A script."""


def say(message: str) -> None:
    """Print one line."""
    print(message, flush=True)


LIMIT = 3  # why three
'''
COPY = '''"""Another script."""


# Copied from first.say
def say(message: str) -> None:
    """Print one line."""
    print(message, flush=True)


# Copied from first.LIMIT
LIMIT = 3  # why three


def main():
    say("x")
'''


def load_checker():
    spec = importlib.util.spec_from_file_location("check_copies", CHECKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_checker(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHECKER), *args], capture_output=True, text=True, timeout=120)


def test_every_marked_copy_in_the_repository_is_identical_to_its_source():
    result = run_checker()
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_repository_marks_its_copies():
    marked = sum(path.read_text(encoding="utf-8").count("# Copied from ") for path in REPO.glob("*.py"))
    assert marked > 0


def test_a_hand_edited_copy_fails_and_fix_restores_it(tmp_path):
    (tmp_path / "first.py").write_text(SOURCE, encoding="utf-8")
    (tmp_path / "second.py").write_text(COPY, encoding="utf-8")
    assert run_checker("--folder", str(tmp_path)).returncode == 0

    edited = COPY.replace("print(message, flush=True)", "print(message)").replace("LIMIT = 3", "LIMIT = 4")
    (tmp_path / "second.py").write_text(edited, encoding="utf-8")
    result = run_checker("--folder", str(tmp_path))
    assert result.returncode == 1
    assert "second.py:5: say differs from first.say" in result.stdout
    assert "LIMIT differs from first.LIMIT" in result.stdout

    assert run_checker("--folder", str(tmp_path), "--fix").returncode == 0
    assert (tmp_path / "second.py").read_text(encoding="utf-8") == COPY
    assert run_checker("--folder", str(tmp_path)).returncode == 0


def test_a_copy_of_a_missing_source_is_named(tmp_path):
    (tmp_path / "second.py").write_text(COPY.replace("first.say", "first.shout"), encoding="utf-8")
    (tmp_path / "first.py").write_text(SOURCE, encoding="utf-8")
    result = run_checker("--folder", str(tmp_path))
    assert result.returncode != 0
    assert "first.py has no top-level shout" in result.stdout + result.stderr


def test_the_real_scripts_fail_when_one_copy_drifts(tmp_path):
    for path in REPO.glob("*.py"):
        shutil.copy(path, tmp_path / path.name)
    checker = load_checker()
    target = next(p for p in sorted(tmp_path.glob("*.py")) if checker.marked_copies(p))
    text = target.read_text(encoding="utf-8")
    _, _, _, (_, last) = checker.marked_copies(target)[0]
    lines = text.splitlines(keepends=True)
    lines[last - 1] = lines[last - 1].rstrip("\n") + "  # drift\n"
    target.write_text("".join(lines), encoding="utf-8")
    assert run_checker("--folder", str(tmp_path)).returncode == 1
    run_checker("--folder", str(tmp_path), "--fix")
    assert target.read_text(encoding="utf-8") == text
