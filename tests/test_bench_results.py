"""bench/RESULTS.md and the README's results rows come only from the result files in bench/results/."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import write_results  # noqa: E402


def test_results_md_is_exactly_what_the_generator_writes():
    expected = write_results.render(REPO / "bench" / "results")
    assert (REPO / "bench" / "RESULTS.md").read_text(encoding="utf-8") == expected, \
        "bench/RESULTS.md was edited by hand or is stale: run `python bench/write_results.py`"
    assert write_results.main(["--check"]) == 0


def test_every_result_file_says_where_its_figures_come_from():
    files = sorted((REPO / "bench" / "results").glob("*.json"))
    assert files
    for path in files:
        record = json.loads(path.read_text(encoding="utf-8"))
        for key in ("bench", "date", "commit", "machine", "source", "settings"):
            assert record.get(key), f"{path.name} lacks {key!r}"
        assert record["bench"] in write_results.SECTIONS, path.name
        assert record["commit"] in record["source"], path.name


def test_a_saved_bench_run_appears_in_the_results(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(REPO / "bench" / "results", results)
    before = write_results.render(results)
    saved = write_results.save_result(
        "bench_prepare", {"speakers": 2, "per_speaker": 5, "utterances": 777, "features": "whisper, 80 mels"},
        {"variants": {"naive": {"seconds": 9.0, "peak_rss_mb": 1234.0, "disk_mb": 55.5},
                      "ours": {"seconds": 3.0, "peak_rss_mb": 321.0, "disk_mb": 2.5},
                      "ours, corpus x2": {"seconds": 6.0, "peak_rss_mb": 330.0, "disk_mb": 4.5}},
         "ratios": {"time": 0.333, "peak_rss": 0.26, "disk": 0.041, "peak_rss_x2": 1.028}},
        results_dir=results)
    record = json.loads(saved.read_text(encoding="utf-8"))
    assert record["commit"] in record["source"] and record["machine"] and record["date"]
    after = write_results.render(results)
    row = next(line for line in after.splitlines() if "| 777 |" in line)
    assert "321 / 1234" in row and "2.5 / 55.5" in row and "| 0.33 |" in row and "| 1.03 |" in row
    assert after.count("\n") == before.count("\n") + 2  # the new table row and its line under Sources


def test_readme_results_rows_are_the_generated_summary():
    summary = write_results.render(REPO / "bench" / "results").split("## Summary\n\n", 1)[1].split("\n\n", 1)[0]
    rows = summary.splitlines()[2:]
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for row in rows:
        assert row in readme, f"the README's results table lacks the row of bench/RESULTS.md: {row}"
