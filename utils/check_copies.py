"""Keep the code that our standalone scripts must repeat identical to its source.

Each top-level script works copied alone into a Colab cell, so a helper that several scripts need is
repeated in each of them. As in the transformers library, a repeated function, class or constant
carries a marker on the line directly above it (above its decorators, if any) naming its source:

    # Copied from train_whisper.history_rows
    def history_rows(log_history: list[dict]) -> list[dict]:

This checker compares every marked copy with its source, character for character, and fails listing
those that differ. `--fix` rewrites each differing copy from its source (edit the source, then fix).

    python utils/check_copies.py          # check (exit 1 on a difference)
    python utils/check_copies.py --fix    # rewrite the copies from their sources
"""
from __future__ import annotations

import argparse
import ast
import difflib
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^# Copied from (?P<module>[A-Za-z_]\w*)\.(?P<name>[A-Za-z_]\w*)\s*$")


def top_level_spans(source: str) -> dict[str, tuple[int, int]]:
    """Name -> (first line, last line), 1-based, of each top-level def, class and assigned constant;
    a decorated definition starts at its first decorator."""
    spans = {}
    for node in ast.parse(source).body:
        start = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            spans[node.name] = (start, node.end_lineno)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    spans[target.id] = (start, node.end_lineno)
    return spans


def marked_copies(path: Path) -> list[tuple[int, str, str, tuple[int, int]]]:
    """(marker line, source module, source name, span of the copy) for every marker in `path`."""
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    starts = {span[0]: span for span in top_level_spans(source).values()}
    copies = []
    for number, line in enumerate(lines, start=1):
        found = MARKER.match(line)
        if not found:
            continue
        span = starts.get(number + 1)
        if span is None:
            raise SystemExit(f"{path.name}:{number}: '{line.strip()}' must stand on the line directly above a "
                             "top-level def, class (or its first decorator) or constant.")
        copies.append((number, found["module"], found["name"], span))
    return copies


def source_text(folder: Path, module: str, name: str, cache: dict) -> str:
    """The lines of `module.name` in `folder/module.py`, as one string."""
    path = folder / f"{module}.py"
    if path not in cache:
        if not path.is_file():
            raise SystemExit(f"'# Copied from {module}.{name}': there is no {path.name} in {folder}.")
        text = path.read_text(encoding="utf-8")
        cache[path] = (text.splitlines(keepends=True), top_level_spans(text))
    lines, spans = cache[path]
    if name not in spans:
        raise SystemExit(f"'# Copied from {module}.{name}': {path.name} has no top-level {name}.")
    first, last = spans[name]
    return "".join(lines[first - 1: last])


def check_file(path: Path, fix: bool, cache: dict) -> list[str]:
    """Differences between the marked copies in `path` and their sources; with `fix`, rewrites them."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    problems = []
    # From the bottom up, so that a rewritten copy of another length leaves the spans above it valid.
    for marker_line, module, name, (first, last) in reversed(marked_copies(path)):
        if module == path.stem:
            problems.append(f"{path.name}:{marker_line}: {name} is marked as copied from its own file.")
            continue
        expected = source_text(path.parent, module, name, cache)
        copy = "".join(lines[first - 1: last])
        if copy == expected:
            continue
        if fix:
            lines[first - 1: last] = expected.splitlines(keepends=True)
            problems.append(f"{path.name}:{first}: rewrote {name} from {module}.{name}")
            continue
        diff = "".join(difflib.unified_diff(expected.splitlines(keepends=True), copy.splitlines(keepends=True),
                                            f"{module}.py ({name})", f"{path.name} ({name})", n=1))
        problems.append(f"{path.name}:{first}: {name} differs from {module}.{name}:\n{diff}")
    if fix and problems:
        path.write_text("".join(lines), encoding="utf-8")
        cache.pop(path, None)
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fix", action="store_true", help="rewrite every differing copy from its source")
    parser.add_argument("--folder", type=Path, default=REPO,
                        help="folder whose top-level *.py files are checked (default: the repository)")
    args = parser.parse_args(argv)
    cache: dict = {}
    problems = []
    for path in sorted(args.folder.glob("*.py")):
        problems += check_file(path, args.fix, cache)
    for problem in problems:
        print(problem)
    if args.fix:
        print(f"{len(problems)} cop{'y' if len(problems) == 1 else 'ies'} rewritten from their sources.")
        return 0
    if problems:
        print(f"{len(problems)} marked cop{'y differs' if len(problems) == 1 else 'ies differ'} from the source: "
              "edit the source, then run `python utils/check_copies.py --fix`.")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
