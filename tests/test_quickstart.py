"""quickstart.py, the whole plan in one command: the order of the steps, what is skipped and what is run
again, the estimates' stop, a failed step's message, and (slow) the real plan on the bundled sample."""
from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

import quickstart

# Stands in for every script of the plan: records its arguments and writes the files that make its step
# complete, or (with --estimate) an estimate.json whose "fits" the environment sets.
FAKE_SCRIPT = r'''
import json, os, sys
from pathlib import Path
argv = sys.argv[1:]
with open(os.environ["FAKE_CALLS"], "a", encoding="utf-8") as f:
    f.write(json.dumps([Path(sys.argv[0]).name, *argv]) + "\n")
name = Path(sys.argv[0]).name
if name == os.environ.get("FAKE_FAIL"):
    print("boom: out of memory"); sys.exit(3)
out = Path(argv[argv.index("--out" if "--out" in argv else "--output-dir") + 1])
out.mkdir(parents=True, exist_ok=True)
if "--estimate" in argv:
    fits = os.environ.get("FAKE_FITS", "1") == "1"
    estimate = {"device": "cuda", "peak_memory_mb": {"allocated": 900, "reserved": 1000}, "seconds_per_step": 0.5,
                "steps_per_epoch": 100, "epoch_minutes": 1.0, "total_minutes": 10.0, "checkpoint_mb": 50,
                "disk_needed_mb": 150, "fits": fits}
    if not fits:
        estimate["advice"] = "try --preset low-vram"
    (out / "estimate.json").write_text(json.dumps(estimate))
elif name == "prepare_vivos.py":
    (out / "prepare_summary.json").write_text("{}"); (out / "dataset_dict.json").write_text("{}")
elif name.startswith("train_"):
    (out / "run_info.json").write_text("{}")
    (out / "test_metrics.json").write_text(json.dumps({"wer": 0.5 if "deepspeech" in name else 0.9, "cer": 0.2}))
elif name == "report.py":
    (out / "report.md").write_text("report")
else:
    (out / (Path(argv[-3]).stem + ".txt")).write_text("text")
'''
SCRIPTS = ["prepare_vivos.py", "train_whisper.py", "train_wav2vec2.py", "train_deepspeech.py", "report.py",
           "transcribe.py"]


@pytest.fixture
def fake_repo(tmp_path, monkeypatch):
    """quickstart.py running fake scripts, on a two-line VIVOS-shaped corpus; yields (corpus, out, calls)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for script in SCRIPTS:
        (repo / script).write_text(FAKE_SCRIPT, encoding="utf-8")
    monkeypatch.setattr(quickstart, "REPO", repo)
    corpus = tmp_path / "vivos"
    (corpus / "train").mkdir(parents=True)
    (corpus / "train" / "prompts.txt").write_text("S01_001 MỘT HAI\n", encoding="utf-8")
    (corpus / "test" / "waves" / "S02").mkdir(parents=True)
    (corpus / "test" / "prompts.txt").write_text("S02_001 BA BỐN\n", encoding="utf-8")
    (corpus / "test" / "waves" / "S02" / "S02_001.wav").write_bytes(b"")
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_CALLS", str(calls))
    return corpus, tmp_path / "kết quả", calls


def called(calls: Path) -> list[list[str]]:
    return [json.loads(line) for line in calls.read_text(encoding="utf-8").splitlines()] if calls.exists() else []


def test_the_plan_runs_every_step_in_order_then_skips_them_all(fake_repo, capsys):
    corpus, out, calls = fake_repo
    quickstart.main(["--vivos-dir", str(corpus), "--out", str(out), "--preset", "low-vram", "--epochs", "2"])
    runs = [call for call in called(calls) if "--estimate" not in call]
    assert [call[0] for call in runs] == ["prepare_vivos.py", "prepare_vivos.py", "train_whisper.py",
                                          "train_whisper.py", "train_wav2vec2.py", "train_deepspeech.py",
                                          "report.py", "transcribe.py"]
    assert "--features" in runs[1] and runs[1][runs[1].index("--features") + 1] == "waveform"
    assert runs[1][runs[1].index("--out") + 1] == str(out / "data" / "vivos_wave")
    assert "--eval-only" in runs[2] and runs[2][runs[2].index("--output-dir") + 1] == str(out / "runs" / "whisper-zero-shot")
    # A preset the trainer has goes through as it is; DeepSpeech2's card presets are one: gpu.
    assert runs[3][runs[3].index("--preset") + 1] == "low-vram" and runs[5][runs[5].index("--preset") + 1] == "gpu"
    assert all(call[call.index("--epochs") + 1] == "2" for call in runs[3:6])
    assert "--epochs" not in runs[2]
    # The run of lowest test WER transcribes the first test recording.
    assert runs[7][runs[7].index("--model") + 1] == str(out / "runs" / "deepspeech2")
    estimated = [call[0] for call in called(calls) if "--estimate" in call]
    assert estimated == ["train_whisper.py", "train_wav2vec2.py", "train_deepspeech.py"]
    printed = capsys.readouterr().out
    assert "$ python train_deepspeech.py --data" in printed and "no such preset and gets --preset gpu" in printed
    assert re.search(r"total +30\.0 +450 MB +\(free at ", printed)  # the estimate table

    calls.unlink()
    quickstart.main(["--vivos-dir", str(corpus), "--out", str(out), "--preset", "low-vram", "--epochs", "2"])
    assert called(calls) == []
    assert capsys.readouterr().out.count(": skipped,") == 8


def test_a_run_cut_off_is_run_again_and_only_it(fake_repo, capsys):
    corpus, out, calls = fake_repo
    argv = ["--vivos-dir", str(corpus), "--out", str(out), "--no-estimate"]
    quickstart.main(argv)
    for name in ("run_info.json", "test_metrics.json"):
        (out / "runs" / "wav2vec2" / name).unlink()
    (out / "runs" / "wav2vec2" / "checkpoint-5").mkdir()
    calls.unlink()
    capsys.readouterr()
    quickstart.main(argv)
    assert "wav2vec2            partial" in capsys.readouterr().out
    # The report is older than the run it reads: it is written again, and so nothing else.
    assert [call[0] for call in called(calls)] == ["train_wav2vec2.py", "report.py"]


def test_a_run_that_does_not_fit_stops_the_plan_before_training_unless_continue_anyway(fake_repo, monkeypatch):
    corpus, out, calls = fake_repo
    monkeypatch.setenv("FAKE_FITS", "0")
    with pytest.raises(SystemExit) as stopped:
        quickstart.main(["--vivos-dir", str(corpus), "--out", str(out)])
    assert "whisper does not fit: try --preset low-vram" in str(stopped.value)
    assert "--continue-anyway" in str(stopped.value)
    assert not any(call[0].startswith("train_") and "--estimate" not in call for call in called(calls))
    quickstart.main(["--vivos-dir", str(corpus), "--out", str(out), "--continue-anyway"])
    assert (out / "runs" / "deepspeech2" / "run_info.json").is_file()


def test_a_trainer_without_estimate_gets_no_estimate_and_the_plan_goes_on(fake_repo, capsys):
    corpus, out, calls = fake_repo
    script = quickstart.REPO / "train_wav2vec2.py"
    rejecting = ("import sys\nif '--estimate' in sys.argv:\n"
                 "    sys.exit('train_wav2vec2.py: error: unrecognized arguments: --estimate')\n")
    script.write_text(rejecting + script.read_text(encoding="utf-8"), encoding="utf-8")
    quickstart.main(["--vivos-dir", str(corpus), "--out", str(out)])
    printed = capsys.readouterr().out
    assert re.search(r"wav2vec2 +no estimate: this trainer has no --estimate yet", printed)
    assert re.search(r"whisper +10\.0 +1,000 MB GPU +150 MB +yes +cuda", printed)
    assert (out / "runs" / "wav2vec2" / "run_info.json").is_file()


def test_a_failed_step_names_itself_its_log_and_the_command_to_continue(fake_repo, monkeypatch):
    corpus, out, calls = fake_repo
    monkeypatch.setenv("FAKE_FAIL", "train_wav2vec2.py")
    with pytest.raises(SystemExit) as stopped:
        quickstart.main(["--vivos-dir", str(corpus), "--out", str(out), "--no-estimate"])
    message = str(stopped.value)
    log = out / "logs" / "wav2vec2.log"
    assert message.startswith("quickstart.py: Step 'wav2vec2' failed (exit code 3)")
    assert str(log) in message and "run the same command again" in message and "--no-estimate" in message
    assert "boom: out of memory" in log.read_text(encoding="utf-8")
    assert not (out / "runs" / "deepspeech2").exists()


def test_a_run_out_of_memory_and_too_little_disk_stop_the_plan_with_what_to_try(tmp_path, monkeypatch):
    out_of_memory = {"device": "cuda (GPU) x1", "peak_memory_mb": {"allocated": 3900.0, "reserved": 4000.0},
                     "seconds_per_step": None, "steps_per_epoch": 700, "epoch_minutes": None, "total_minutes": None,
                     "checkpoint_mb": None, "disk_needed_mb": None, "fits": False,
                     "advice": "CUDA out of memory: try --estimate again with --batch-size 2"}
    big = {"device": "cpu x1 process", "peak_memory_mb": {"rss": 2048.0}, "total_minutes": 600.0,
           "disk_needed_mb": 5000.0, "fits": True}
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12 - 2**30, 2**30))
    lines, problems = quickstart.estimate_table({"whisper": out_of_memory, "deepspeech2": big}, tmp_path / "new")
    assert re.search(r"whisper +\? +4,000 MB GPU +\? +NO +cuda", lines[1])
    assert re.search(r"deepspeech2 +600\.0 +2,048 MB RAM +5,000 MB +yes", lines[2])
    assert problems == ["whisper does not fit: CUDA out of memory: try --estimate again with --batch-size 2",
                        f"the runs need 5,000 MB of disk and {tmp_path} has 1,024 MB free: free some space or "
                        "choose an --out on a larger disk"]


def test_a_folder_that_is_not_vivos_gets_one_line(tmp_path):
    with pytest.raises(SystemExit) as stopped:
        quickstart.main(["--vivos-dir", str(tmp_path), "--out", str(tmp_path / "out")])
    assert "expected train/prompts.txt and test/prompts.txt" in str(stopped.value)
    assert not (tmp_path / "out").exists()


def test_on_the_sample_only_a_tiny_random_model_gets_the_high_learning_rate(tmp_path):
    args = quickstart.parse_args(["--whisper-model", "my-whisper", "--epochs", "0.5"])
    steps = {item["name"]: item["args"] for item in quickstart.plan_steps(
        args, {"whisper": "my-whisper", "wav2vec2": "tiny"}, quickstart.SAMPLE, tmp_path, {"wav2vec2"})}
    assert steps["whisper"][steps["whisper"].index("--lr") + 1] == "1e-5"
    assert steps["wav2vec2"][steps["wav2vec2"].index("--lr") + 1] == "3e-3"
    assert steps["deepspeech2"][steps["deepspeech2"].index("--epochs") + 1] == "0.5"
    assert "--rnn-type" in steps["deepspeech2"] and "--val-ratio" in steps["prepare-whisper"]


def trainer_presets(script: str) -> set[str]:
    tree = ast.parse((REPO / script).read_text(encoding="utf-8"))
    node = next(n for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "PRESETS")
    return {key.value for key in node.value.keys}


def test_every_preset_the_plan_passes_is_one_the_trainer_has():
    for mapping in quickstart.PRESETS.values():
        for family, preset in mapping.items():
            assert preset in trainer_presets(quickstart.TRAINERS[family]), (family, preset)


@pytest.mark.slow
def test_the_plan_on_the_bundled_sample_trains_reports_and_continues(tmp_path):
    """Offline, tiny local models, one epoch: three trained runs, the zero-shot run and a report; again:
    everything skipped; a run without run_info.json (cut off) resumes from its checkpoint."""
    sys.path.insert(0, str(REPO / "sample_data"))
    from offline_models import make_tiny_wav2vec2, make_tiny_whisper

    whisper, wav2vec2 = make_tiny_whisper(tmp_path / "tiny whisper"), make_tiny_wav2vec2(tmp_path / "tiny w2v")
    out = tmp_path / "kết quả"
    argv = [sys.executable, str(REPO / "quickstart.py"), "--out", str(out), "--epochs", "1",
            "--whisper-model", str(whisper), "--wav2vec2-model", str(wav2vec2)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    first = subprocess.run(argv, capture_output=True, text=True, env=env, encoding="utf-8")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    runs = ["whisper-zero-shot", "whisper", "wav2vec2", "deepspeech2"]
    for run in runs:
        assert (out / "runs" / run / "test_metrics.json").is_file() and (out / "runs" / run / "run_info.json").is_file()
    assert (out / "data" / "sample_whisper" / "dataset_dict.json").is_file()
    report = (out / "report" / "report.md").read_text(encoding="utf-8")
    assert all(run in report for run in runs)
    for run in runs[1:]:
        assert re.search(rf"\n  {run} +[\d.]+ +[\d,]+ MB RAM +[\d,]+ MB +yes +cpu", first.stdout), first.stdout

    written = {path: path.stat().st_mtime for path in out.rglob("*") if path.is_file() and "logs" not in path.parts}
    again = subprocess.run(argv, capture_output=True, text=True, env=env, encoding="utf-8")
    assert again.returncode == 0 and again.stdout.count(": skipped,") == 8
    assert {path: path.stat().st_mtime for path in written} == written

    for name in ("run_info.json", "test_metrics.json"):
        (out / "runs" / "deepspeech2" / name).unlink()
    assert any((out / "runs" / "deepspeech2").glob("checkpoint-*"))
    resumed = subprocess.run(argv, capture_output=True, text=True, env=env, encoding="utf-8")
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert "resuming from" in resumed.stdout and (out / "runs" / "deepspeech2" / "run_info.json").is_file()
    assert "=== Fine-tune Whisper: skipped" in resumed.stdout
