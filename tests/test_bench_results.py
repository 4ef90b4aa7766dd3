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


def test_a_saved_estimates_run_shows_the_extrapolated_vivos_minutes(tmp_path):
    import bench_estimates

    resolved = {"batch_size": 4, "grad_accum": 4, "epochs": 5, "optim": "adafactor", "gradient_checkpointing": True}
    vivos = bench_estimates.vivos_figures(60.0, resolved)
    # one minute per optimizer step of 16 utterances: ceil(10,400 / 16) = 650 steps per epoch, 5 epochs
    assert vivos == {"vivos_steps_per_epoch": 650, "vivos_epoch_minutes": 650.0, "vivos_total_minutes": 3250.0}
    results = tmp_path / "results"
    write_results.save_result(
        "bench_estimates",
        {"sample_train_utterances": 160, "sample_mean_seconds": 2.0, "vivos_corpus_utterances": 11660,
         "vivos_train_utterances": 10400, "vivos_mean_seconds": 4.55, "val_ratio": 0.1},
        {"device": "cpu", "bench_minutes": 7.5,
         "rows": [{"model": "whisper-small", "settings": bench_estimates.describe(["--preset", "low-vram"], resolved),
                   "estimate": {"device": "cpu x1 process", "peak_memory_mb": {"rss": 4321.0}, "seconds_per_step": 60.0,
                                "steps_per_epoch": 10, "epoch_minutes": 10.0, "total_minutes": 55.0,
                                "checkpoint_mb": 1850.4, "disk_needed_mb": 4625.1, "fits": True}, **vivos}]},
        results_dir=results)
    text = write_results.render(results)
    assert "## Estimates before a run (CPU)" in text
    row = next(line for line in text.splitlines() if "| whisper-small |" in line)
    assert ("| --preset low-vram: batch 4 x 4, 5 epochs, adafactor, gradient checkpointing | 60.00 | 4321 | 1850 "
            "| 4625 | 10.0 | 650 | 3250 |") in row
    assert "GPU figures are not measured" in text
