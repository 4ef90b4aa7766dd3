"""Every script pasted into a notebook cell (Colab, Jupyter) does what `python <script>.py` does.

A notebook runs a cell's text in a namespace module that has no `__file__` and is not a script's
`__main__` run, with the clone's folder importable (`git clone` + `%cd`); it keeps the cell's text in
linecache and the namespace in sys.modules, and sys.argv holds the kernel's own command line. The cells
here are made that way, then call `main([...])` with the flags of the tests' tiny runs; each writes what
another tool loads, and the trainers write the same run as the script does."""
from __future__ import annotations

import linecache
import shutil
import sys
import types
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest

from conftest import REPO, one_thread, read_csv, read_json
from offline_models import make_tiny_wav2vec2, make_tiny_whisper
from tiny_deepspeech import TINY_ARGS
from tiny_wav2vec2 import tiny_run_args
from tiny_whisper import tiny_train_args

# What sys.argv holds inside a Colab kernel.
KERNEL_ARGV = ["/usr/local/lib/python3.12/dist-packages/colab_kernel_launcher.py", "-f",
               "/root/.local/share/jupyter/runtime/kernel-0a1b2c3d.json"]


def paste_into_cell(script: str, tmp_path: Path, monkeypatch) -> types.ModuleType:
    """The namespace of a notebook cell into which `script`'s whole text was pasted and run. The current
    folder is elsewhere, so that nothing lands in the clone and only sys.path finds its files."""
    source = (REPO / script).read_text(encoding="utf-8")
    cell = types.ModuleType(f"notebook_cell_{Path(script).stem}")
    filename = str(tmp_path / "ipykernel" / f"{Path(script).stem}_cell.py")  # a name with no file, as IPython's
    monkeypatch.setitem(linecache.cache, filename, (len(source), None, source.splitlines(True), filename))
    monkeypatch.setitem(sys.modules, cell.__name__, cell)
    monkeypatch.syspath_prepend(str(REPO))
    monkeypatch.setattr(sys, "argv", KERNEL_ARGV)
    monkeypatch.chdir(tmp_path)
    exec(compile(source, filename, "exec"), cell.__dict__)
    return cell


def assert_same_run(cell_run: Path, script_run: Path, script: str, family: str) -> None:
    """The run folder a cell wrote is the one the script wrote with the same flags: same training curve,
    same test transcripts, a best_model/ with its config."""
    info = read_json(cell_run / "run_info.json")
    assert info["family"] == family and info["stop_reason"] == "completed"
    assert info["command"].startswith(f"python {script} --data ")
    assert read_csv(cell_run / "history.csv") == read_csv(script_run / "history.csv")
    predictions = read_csv(cell_run / "test_predictions.csv")
    assert predictions == read_csv(script_run / "test_predictions.csv") and predictions
    assert read_json(cell_run / "test_metrics.json")["wer"] == read_json(script_run / "test_metrics.json")["wer"]
    assert (cell_run / "best_model" / "config.json").is_file()


def test_prepare_vivos_cell_writes_the_dataset_the_script_writes(vivos_dir, waveform_data, tmp_path, monkeypatch):
    cell = paste_into_cell("prepare_vivos.py", tmp_path, monkeypatch)
    out = tmp_path / "dữ liệu sổ tay"
    cell.main(["--vivos-dir", str(vivos_dir), "--out", str(out), "--features", "waveform", "--val-ratio", "0.25",
               "--seed", "0"])

    ours, script = datasets.load_from_disk(str(out)), datasets.load_from_disk(str(waveform_data))
    assert set(ours) == {"train", "validation", "test"}
    for split in ours:
        assert list(ours[split]["id"]) == list(script[split]["id"])
        assert list(ours[split]["sentence"]) == list(script[split]["sentence"])
    assert np.array_equal(ours["test"][0]["input_values"], script["test"][0]["input_values"])
    assert read_json(out / "prepare_summary.json")["splits"] == read_json(waveform_data / "prepare_summary.json")["splits"]


@pytest.mark.slow
def test_train_whisper_cell_trains_the_run_the_script_trains(whisper_data, whisper_run, tmp_path, monkeypatch):
    cell = paste_into_cell("train_whisper.py", tmp_path, monkeypatch)
    model = make_tiny_whisper(tmp_path / "mô hình gốc")
    out = tmp_path / "runs" / "whisper sổ tay"
    with one_thread():
        cell.main(tiny_train_args(whisper_data, model, out))
    assert_same_run(out, whisper_run, "train_whisper.py", "whisper")


@pytest.mark.slow
def test_train_wav2vec2_cell_trains_the_run_the_script_trains(waveform_data, wav2vec2_run, tmp_path, monkeypatch):
    cell = paste_into_cell("train_wav2vec2.py", tmp_path, monkeypatch)
    model = make_tiny_wav2vec2(tmp_path / "mô hình gốc")
    out = tmp_path / "runs" / "wav2vec2 sổ tay"
    with one_thread():
        cell.main(tiny_run_args(waveform_data, out, model))
    assert_same_run(out, wav2vec2_run, "train_wav2vec2.py", "wav2vec2")


@pytest.mark.slow
def test_train_deepspeech_cell_trains_the_run_the_script_trains(waveform_data, deepspeech_run, tmp_path,
                                                                monkeypatch):
    cell = paste_into_cell("train_deepspeech.py", tmp_path, monkeypatch)
    out = tmp_path / "runs" / "deepspeech2 sổ tay"
    with one_thread():
        cell.main(["--data", str(waveform_data), "--output-dir", str(out), *TINY_ARGS])
    assert_same_run(out, deepspeech_run, "train_deepspeech.py", "deepspeech2")


@pytest.mark.slow
def test_report_cell_writes_the_report_of_a_run(deepspeech_run, waveform_data, tmp_path, monkeypatch):
    cell = paste_into_cell("report.py", tmp_path, monkeypatch)
    out = tmp_path / "báo cáo"
    assert cell.main(["--runs", str(deepspeech_run), "--data", str(waveform_data), "--out", str(out), "--lang", "en",
                      "--dpi", "60", "--strict"]) == 0

    comparison = pd.read_csv(out / "comparison.csv", encoding="utf-8-sig", keep_default_na=False)
    metrics = read_json(deepspeech_run / "test_metrics.json")
    assert list(comparison["family"]) == ["deepspeech2"]
    assert comparison["test WER (%)"][0] == round(metrics["wer"] * 100, 2)
    assert "(deepspeech2), drawn from the architecture facts" in (out / "report.md").read_text(encoding="utf-8")
    assert (out / "report.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


@pytest.mark.slow
@pytest.mark.parametrize("run", ["whisper_run", "deepspeech_run"])
def test_transcribe_cell_writes_the_transcripts_the_trainer_scored(run, request, vivos_dir, tmp_path, monkeypatch):
    run = request.getfixturevalue(run)
    rows = sorted(read_csv(run / "test_predictions.csv"), key=lambda row: row["id"])[:3]
    recordings = tmp_path / "ghi âm"
    recordings.mkdir()
    for row in rows:
        shutil.copy(vivos_dir / "test" / "waves" / row["speaker"] / f"{row['id']}.wav", recordings)

    cell = paste_into_cell("transcribe.py", tmp_path, monkeypatch)
    out = tmp_path / "bản ghi"
    cell.main(["--model", str(run), str(recordings), "--format", "txt", "--output-dir", str(out), "--device", "cpu"])
    written = {path.stem: path.read_text(encoding="utf-8") for path in out.glob("*.txt")}
    assert written == {row["id"]: row["prediction"] + "\n" for row in rows}
