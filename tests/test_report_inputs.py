"""report.py on inputs that are not what they seem: a history.csv cut short, two runs whose folders share a
name, a --runs folder with no run in it, and a history rebuilt from trainer_state.json that must say what
the trainers' own history.csv says. Run folders are written by hand (docs/FORMATS.md §4): seconds, not minutes;
only the real_runs test reads the tiny trainers' run folders."""
from __future__ import annotations

import ast
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import report
from conftest import REPO
from test_report import DPI, history_rows, read_csv, transcripts, write_run

# Validation loss still falling by more than 2% per epoch after epoch 2, flat at the end: the first two rows
# alone read as "not converged", all five as "converged".
FIVE_EPOCHS = history_rows([2.0, 1.2, 0.9, 0.8, 0.798], [2.4, 1.4, 1.0, 0.85, 0.8], [0.9, 0.6, 0.45, 0.4, 0.41])


def make_report(runs: list[Path], out: Path) -> tuple[pd.DataFrame, str]:
    """(the run status table, report.md) of an English report on `runs`."""
    assert report.main(["--runs", *map(str, runs), "--out", str(out), "--lang", "en", "--dpi", str(DPI)]) == 0
    return read_csv(out / "tables" / "run_status.csv"), (out / "report.md").read_text(encoding="utf-8")


def trainer_log(evaluations: int) -> list[dict]:
    """Trainer's log_history for 5 steps per epoch, --logging-steps 3 and one evaluation per epoch: the
    trainers force a loss log at every evaluation, so the logged losses cover 3, 2, 1, 3, 1, 3, ... steps."""
    log, logged = [], 0
    for epoch in range(1, evaluations + 1):
        end = 5 * epoch
        steps = sorted({s for s in range(logged + 1, end + 1) if s % 3 == 0} | {end})
        for step in steps:
            log.append({"loss": round(3.0 / step + 0.1 * (step % 2), 4), "learning_rate": 1e-3 * (1 - step / 40),
                        "grad_norm": 1.0, "epoch": round(step / 5, 4), "step": step})
        logged = end
        log.append({"eval_validation_loss": 2.0 / epoch, "eval_validation_wer": 0.9 / epoch,
                    "eval_validation_cer": 0.3 / epoch, "epoch": float(epoch), "step": end})
        log.append({"eval_train_subset_loss": 1.5 / epoch, "eval_train_subset_wer": 0.6 / epoch,
                    "eval_train_subset_cer": 0.2 / epoch, "epoch": float(epoch), "step": end})
    return log


def trainer_history_rows(script: str):
    """The history_rows function of one trainer, read from its source (importing a trainer loads torch)."""
    source = (REPO / script).read_text(encoding="utf-8")
    node = next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == "history_rows")
    namespace = {"np": np}
    exec(ast.get_source_segment(source, node), namespace)
    return namespace["history_rows"]


def as_number(value) -> float:
    return math.nan if value in ("", None) else float(value)


# ----------------------------------------------------------------------------- damaged history


def test_history_shorter_than_the_finished_run_is_damaged_and_gets_no_convergence_verdict(tmp_path):
    folder = write_run(tmp_path / "runs" / "whisper-small", "whisper-small", "whisper", FIVE_EPOCHS, transcripts(1))
    (folder / "history.csv").write_text(pd.DataFrame(FIVE_EPOCHS[:2]).to_csv(index=False), encoding="utf-8")
    status, text = make_report([folder], tmp_path / "report")
    assert status.loc[0, "status"] == "damaged (history.csv)"
    assert ("history.csv ends at epoch 2 of 5: truncated? (run_info.json says the run trained to epoch 5, stop "
            "reason completed)") in status.loc[0, "problems"]
    assert "The training history is incomplete (history.csv ends at epoch 2 of 5), so no conclusion" in text
    assert "converged" not in text and "overfits" not in text
    assert "The best checkpoint (epoch 4, validation WER 40.0%)" in text  # run_info.json's, not history's epoch 2
    assert report.main(["--runs", str(folder), "--out", str(tmp_path / "strict"), "--dpi", str(DPI),
                        "--strict"]) == 1


def test_history_cut_mid_row_drops_the_half_row_and_says_so(tmp_path):
    folder = write_run(tmp_path / "runs" / "wav2vec2", "wav2vec2", "wav2vec2", FIVE_EPOCHS, transcripts(2))
    whole = (folder / "history.csv").read_text(encoding="utf-8")
    half_row = whole[:whole.rindex("0.798") + 3]  # the last val_loss 0.798 cut to 0.7: a plausible number
    (folder / "history.csv").write_text(half_row, encoding="utf-8")
    status, text = make_report([folder], tmp_path / "report")
    assert status.loc[0, "status"] == "damaged (history.csv)"
    problems = status.loc[0, "problems"]
    assert "history.csv does not end with a line break: its last row (5.0,500,0.8,0.7) looks cut off" in problems
    assert "history.csv ends at epoch 4 of 5: truncated?" in problems
    curves = read_csv(tmp_path / "report" / "figures" / "wav2vec2_learning_curves.csv")
    assert list(curves["epoch"]) == [1.0, 2.0, 3.0, 4.0]  # no row made of half a line
    assert "no conclusion about convergence" in text and "converged" not in text


def test_history_behind_trainer_state_is_read_from_the_state_and_flagged(tmp_path):
    log = trainer_log(5)
    rows = trainer_history_rows("train_whisper.py")(log)
    folder = write_run(tmp_path / "runs" / "whisper-small", "whisper-small", "whisper", rows, transcripts(3))
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 25, "log_history": log}), encoding="utf-8")
    pd.DataFrame(rows[:2], columns=report.HISTORY_COLUMNS).to_csv(folder / "history.csv", index=False)
    status, _ = make_report([folder], tmp_path / "report")
    assert status.loc[0, "status"] == "damaged (history.csv)"
    assert ("history.csv ends at epoch 2 of 5: truncated? (trainer_state.json has evaluations up to epoch 5, so the "
            "curves are read from it instead)") in status.loc[0, "problems"]
    curves = read_csv(tmp_path / "report" / "figures" / "whisper-small_learning_curves.csv")
    assert curves["train_loss"].tolist() == pytest.approx([row["train_loss"] for row in rows])


@pytest.mark.parametrize("epochs, steps, epochs_run, short", [
    ([1, 2, 3, 4], [100, 200, 300, 400], 5.0, True),  # one evaluation per epoch, the last row lost
    ([1, 2, 3, 4, 5], [100, 200, 300, 400, 500], 5.0, False),
    ([1, 2, 3], [100, 200, 300], 3.0, False),  # early stopping: training ends at the last evaluation
    ([1.25, 2.5], [50, 100], 3.0, False),  # --eval-every 50 with 40 steps per epoch: 20 steps after the last one
    ([1.25], [50], 3.0, True),
])
def test_a_history_is_short_only_when_a_whole_evaluation_interval_is_missing(epochs, steps, epochs_run, short):
    history = pd.DataFrame({"epoch": epochs, "step": steps, "val_loss": 1.0})
    missing = report.epochs_missing(history, {"epochs_run": epochs_run, "stop_reason": "completed"})
    assert (missing == epochs_run) if short else missing is None
    assert report.epochs_missing(history, {"epochs_run": 9.0, "eval_only": True}) is None


# ----------------------------------------------------------------------------- runs that share a name


def test_runs_whose_folders_share_a_name_are_told_apart_everywhere(tmp_path):
    first = write_run(tmp_path / "runs" / "a" / "whisper", "whisper", "whisper", FIVE_EPOCHS, transcripts(4))
    second = write_run(tmp_path / "runs" / "b" / "whisper", "whisper", "whisper", FIVE_EPOCHS,
                       transcripts(5, error_rate=0.5))
    other = write_run(tmp_path / "runs" / "a" / "deepspeech2", "deepspeech2", "deepspeech2", FIVE_EPOCHS,
                      transcripts(6))
    out = tmp_path / "report"
    status, text = make_report([first, second, other], out)
    assert list(status["run"]) == ["a/whisper", "b/whisper", "deepspeech2"]
    comparison = read_csv(out / "comparison.csv")
    assert list(comparison["model"]) == ["a/whisper", "b/whisper", "deepspeech2"]
    assert comparison["test WER (%)"].nunique() == 3
    for slug in ("a-whisper", "b-whisper", "deepspeech2"):
        assert (out / "figures" / f"{slug}_learning_curves.png").is_file()
        assert (out / "tables" / f"{slug}_test_metrics.csv").is_file()
    assert not list(out.glob("*/whisper_*")) and not list(out.glob("*/whisper-2_*"))
    assert "### a/whisper (whisper)" in text and "Learning curves of b/whisper." in text
    assert "Test metrics of a/whisper (" in text


def test_only_as_many_parent_folders_as_tell_runs_apart(tmp_path):
    folders = [tmp_path / "x" / "a" / "whisper", tmp_path / "y" / "a" / "whisper", tmp_path / "z" / "b" / "whisper",
               tmp_path / "x" / "a" / "renamed"]
    runs = [{"folder": folder, "name": "whisper"} for folder in folders]
    report.name_runs(runs)
    assert [run["name"] for run in runs] == ["x/a/whisper", "y/a/whisper", "b/whisper", "renamed/whisper"]
    assert len({run["slug"] for run in runs}) == 4
    cased = [{"folder": tmp_path / "Whisper", "name": "Whisper"}, {"folder": tmp_path / "whisper", "name": "whisper"}]
    report.name_runs(cased)
    assert [run["slug"] for run in cased] == ["Whisper", "whisper-2"]  # one file each on Windows and macOS


# ----------------------------------------------------------------------------- no run folder at all


@pytest.mark.parametrize("state", ["missing", "empty", "nested"])
def test_a_runs_folder_without_runs_is_refused_in_one_line(tmp_path, state):
    runs = tmp_path / "chạy thử"
    if state != "missing":
        runs.mkdir()
    if state == "nested":
        write_run(runs / "exp1" / "whisper", "whisper", "whisper", FIVE_EPOCHS, None)
    out = tmp_path / "report"
    with pytest.raises(SystemExit) as refused:
        report.main(["--runs", str(runs), "--out", str(out)])
    message = str(refused.value.code)
    assert "\n" not in message and not out.exists()
    assert message.startswith(f'--runs: no run folder found ("{runs}" ')
    assert "a run folder is a trainer's --output-dir, holding run_info.json / history.csv" in message
    if state == "nested":
        assert message.endswith(f'python report.py --runs "{runs / "exp1"}"')
    else:
        assert "python train_whisper.py --data data/vivos_whisper --output-dir" in message


def test_the_refusal_exits_non_zero_without_a_traceback(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "report.py"), "--runs", str(tmp_path / "runs")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert done.stderr.strip().startswith("--runs: no run folder found") and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- train loss as the trainers weight it


@pytest.mark.parametrize("script", ["train_whisper.py", "train_wav2vec2.py", "train_deepspeech.py"])
def test_history_rebuilt_from_trainer_state_equals_the_trainers_history_csv(script):
    log = trainer_log(4)
    expected = trainer_history_rows(script)(log)
    rebuilt = report.history_from_trainer_state({"log_history": log})
    assert len(rebuilt) == len(expected) == 4
    for row, mine in zip(expected, rebuilt.to_dict("records")):
        for column in report.HISTORY_COLUMNS:
            assert mine[column] == pytest.approx(as_number(row.get(column)), nan_ok=True), (column, row["step"])
    # epoch 1 logs 3.0/3 + 0.1 = 1.1 over steps 1-3 and 3.0/5 + 0.1 = 0.7 over steps 4-5
    assert rebuilt["train_loss"][0] == pytest.approx((1.1 * 3 + 0.7 * 2) / 5)


@pytest.mark.slow
def test_real_runs_history_csv_equals_the_rebuild_from_their_trainer_state(whisper_run, wav2vec2_run, deepspeech_run):
    """The tiny trainers' own run folders (conftest; slow the first time): both ways to the curves agree."""
    for folder in (whisper_run, wav2vec2_run, deepspeech_run):
        written = pd.read_csv(folder / "history.csv")
        state = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
        rebuilt = report.history_from_trainer_state(state)
        assert len(written) == len(rebuilt) > 1, folder.name
        for column in report.HISTORY_COLUMNS:
            assert rebuilt[column].tolist() == pytest.approx(written[column].astype(float).tolist(), nan_ok=True), (
                folder.name, column)
