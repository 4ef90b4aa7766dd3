"""What the three trainers promise alike, checked on each with the same test: the run folder's files and
columns, --eval-only never touching a training run, a resumed run that survives a cut-off checkpoint and
adds up its training time, one-line refusals of bad input that leave no folder behind, commands that are
safe to paste, and the private Trainer hooks they override still being there. Tiny offline models."""
from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import math
import shlex
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from datasets import DatasetDict, load_from_disk

from conftest import one_thread, read_csv, read_json

# family -> (trainer module, tiny-model helper module, prepared dataset fixture, session run fixture, --out suffix)
FAMILIES = {
    "whisper": ("train_whisper", "tiny_whisper", "whisper_data", "whisper_run", "whisper"),
    "wav2vec2": ("train_wav2vec2", "tiny_wav2vec2", "waveform_data", "wav2vec2_run", "wave"),
    "deepspeech2": ("train_deepspeech", "tiny_deepspeech", "waveform_data", "deepspeech_run", "wave"),
}
RUN_FILES = ["trainer_state.json", "history.csv", "run_info.json", "test_predictions.csv", "test_metrics.json",
             "best_model/README.md", "best_model/config.json"]
HISTORY_COLUMNS = ["epoch", "step", "train_loss", "val_loss", "val_wer", "val_cer", "train_wer", "train_cer",
                   "learning_rate"]
PREDICTION_COLUMNS = ["id", "speaker", "duration", "reference", "prediction", "raw_prediction", "wer", "cer"]
METRIC_KEYS = {"wer", "cer", "ser", "substitutions", "deletions", "insertions", "hits", "ref_words",
               "num_utterances", "audio_seconds", "decode_seconds", "rtf"}
# CTC runs keep the greedy decoding's text and scores beside those of their default decoder (the language model).
CTC_PREDICTION_COLUMNS = ["greedy_prediction", "greedy_wer", "greedy_cer"]
CTC_METRIC_KEYS = {"decoder", "greedy_wer", "greedy_cer", "greedy_decode_seconds"}
RUN_INFO_KEYS = {"family", "base_model", "run_name", "params_total", "params_trainable", "architecture", "loss",
                 "optimizer", "learning_rate", "scheduler", "warmup_steps", "weight_decay", "batch_size",
                 "grad_accum", "effective_batch_size", "precision", "lora", "epochs_planned", "epochs_run",
                 "best_epoch", "best_step", "best_val_wer", "best_val_cer", "stop_reason", "train_seconds",
                 "peak_gpu_memory_mb", "device", "dataset", "eval_only", "resumed_from", "command", "versions"}


class Family:
    def __init__(self, name: str, request):
        module, helper, data, run, suffix = FAMILIES[name]
        self.name, self.suffix, self.request = name, suffix, request
        self.module = importlib.import_module(module)
        self.helper = importlib.import_module(helper)
        self.data_fixture, self.run_fixture = data, run

    @property
    def data(self) -> Path:
        return self.request.getfixturevalue(self.data_fixture)

    @property
    def run(self) -> Path:
        return self.request.getfixturevalue(self.run_fixture)

    def main(self, *argv: str) -> dict:
        with one_thread():
            return self.module.main([str(a) for a in argv])

    def tiny(self, data: Path, out: Path, *extra: str) -> list[str]:
        return self.helper.tiny_args(data, out, *extra)


@pytest.fixture(params=sorted(FAMILIES))
def family(request) -> Family:
    return Family(request.param, request)


def fingerprint(folder: Path) -> dict[str, str]:
    """Every file below `folder` with the hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def refusal(family: Family, *argv: str) -> str:
    """The one-line message a refused command ends with (no traceback)."""
    with pytest.raises(SystemExit) as stopped:
        family.main(*argv)
    message = str(stopped.value)
    assert message and "\n" not in message and "Traceback" not in message, message
    return message


def pasted_command(message: str) -> list[str]:
    """The prepare_vivos.py command inside a message, as a shell would split it."""
    return shlex.split(message[message.index("python prepare_vivos.py"):])


# ----------------------------------------------------------------------------- the run folder

def test_run_folder_has_the_files_and_columns_the_other_tools_read(family):
    run = family.run
    for name in RUN_FILES:
        assert (run / name).is_file(), name
    history = read_csv(run / "history.csv")
    assert list(history[0]) == HISTORY_COLUMNS and all(row["train_loss"] and row["val_wer"] for row in history)
    ctc = family.name != "whisper"
    assert list(read_csv(run / "test_predictions.csv")[0]) == PREDICTION_COLUMNS + CTC_PREDICTION_COLUMNS * ctc
    assert set(read_json(run / "test_metrics.json")) == METRIC_KEYS | (CTC_METRIC_KEYS if ctc else set())
    info = read_json(run / "run_info.json")
    assert RUN_INFO_KEYS <= set(info) and info["eval_only"] is False and info["train_seconds"] > 0
    assert info["command"].startswith(f"python {family.module.__name__}.py --data ")
    assert list((run / "runs").rglob("events.out.tfevents.*")), "TensorBoard events belong in the run folder"


# ----------------------------------------------------------------------------- --eval-only

@pytest.mark.parametrize("with_model", [False, True])
def test_eval_only_refuses_the_folder_of_a_training_run_and_leaves_it_untouched(family, with_model):
    run = family.run
    before = fingerprint(run)
    model = ["--model", run / "best_model"] if with_model else []
    message = refusal(family, "--data", family.data, "--output-dir", run, "--eval-only", *model)
    if with_model or family.name != "deepspeech2":
        assert "training run" in message and shlex.quote(f"{run}-eval") in message
    else:  # scoring an untrained DeepSpeech2 says nothing: it asks for a trained one instead
        assert "--eval-only scores a trained model" in message
    assert fingerprint(run) == before


@pytest.mark.parametrize("evidence", ["run_info", "history"])
def test_eval_only_refuses_a_folder_whose_files_show_training(family, evidence, tmp_path):
    out = tmp_path / "đã huấn luyện"
    out.mkdir()
    if evidence == "run_info":
        (out / "run_info.json").write_text(json.dumps({"eval_only": False}), encoding="utf-8")
    else:
        (out / "history.csv").write_text(",".join(HISTORY_COLUMNS) + "\n1.0,9,2.5,2.4,1.0,0.9,1.0,0.9,0.001\n",
                                         encoding="utf-8")
    before = fingerprint(out)
    message = refusal(family, "--data", family.data, "--output-dir", out, "--eval-only",
                      "--model", family.run / "best_model")
    assert "training run" in message and fingerprint(out) == before


def test_eval_only_writes_its_own_folder_and_logs_nothing_outside_it(family, tmp_path, monkeypatch):
    """An evaluation of a run's best_model into a new folder transcribes the test split as the run did, and
    writes the run folder of an eval-only run, TensorBoard logs inside it and no ./runs in the current
    folder; a second evaluation may replace it."""
    run = family.run
    here = tmp_path / "thư mục hiện tại"
    here.mkdir()
    monkeypatch.chdir(here)
    out = tmp_path / "đánh giá"
    argv = ["--data", family.data, "--output-dir", out, "--eval-only", "--model", run / "best_model",
            "--train-eval-size", "0"]
    if family.name != "whisper":  # the language model's beams as in the run, so it decodes the same way
        argv += ["--lm-beam-width", "8"]
    info = family.main(*argv)
    assert info["eval_only"] is True and info["stop_reason"] == "eval_only" and info["train_seconds"] == 0
    assert not list(out.glob("checkpoint-*")) and list((out / "runs").rglob("events.out.tfevents.*"))
    assert not (here / "runs").exists()
    predictions = [row["raw_prediction"] for row in read_csv(out / "test_predictions.csv")]
    assert predictions == [row["raw_prediction"] for row in read_csv(run / "test_predictions.csv")]
    assert family.module.training_run_evidence(out) is None  # so the same command may run again


# ----------------------------------------------------------------------------- resume

def test_resume_skips_a_cut_off_checkpoint_and_ends_like_an_uninterrupted_run(family, tmp_path, monkeypatch,
                                                                             capsys):
    """Stopped by Ctrl-C right after checkpoint-4 was saved, whose optimizer.pt a full disk then cut short:
    the same command says so in one line, continues from checkpoint-2 (optimizer, scheduler, random state
    and data order restored) and ends at step 6 with the losses of a run never interrupted, and with the
    training seconds of both sessions in run_info.json."""
    def run_args(out: Path) -> list[str]:
        return family.tiny(family.data, out, "--max-steps", "6", "--eval-every", "2", "--train-eval-size", "0",
                           "--patience", "0", "--save-total-limit", "3")

    family.main(*run_args(tmp_path / "không ngắt"))
    out = tmp_path / "bị ngắt"
    argv = run_args(out)
    save = transformers.Trainer._save_checkpoint

    def save_then_stop_at_step_4(self, *args, **kwargs):
        save(self, *args, **kwargs)
        if self.state.global_step == 4:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(transformers.Trainer, "_save_checkpoint", save_then_stop_at_step_4)
        with pytest.raises(SystemExit, match="Re-run the same command to continue from .*checkpoint-4"):
            family.main(*argv)
    optimizer = out / "checkpoint-4" / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[: optimizer.stat().st_size // 2])
    clock = read_json(out / "checkpoint-2" / "trainer_state.json")["stateful_callbacks"]["TrainClockCallback"]
    seconds_before = clock["attributes"]["seconds_before"]
    capsys.readouterr()

    info = family.main(*argv)
    printed = capsys.readouterr().out
    assert "checkpoint-4 is incomplete (optimizer.pt is cut off)" in printed
    assert "continuing from checkpoint-2" in printed
    assert info["resumed_from"] == str(out / "checkpoint-2")
    assert read_json(out / "trainer_state.json")["global_step"] == 6
    resumed, straight = read_csv(out / "history.csv"), read_csv(tmp_path / "không ngắt" / "history.csv")
    assert [row["step"] for row in resumed] == [row["step"] for row in straight] == ["2", "4", "6"]
    for again, never in zip(resumed, straight):
        for column in ("train_loss", "val_loss", "learning_rate"):
            assert float(again[column]) == pytest.approx(float(never[column]), rel=1e-4), column
    assert info["train_seconds"] > seconds_before > 0


# ----------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("flags, named", [
    (["--epochs", "0"], "--epochs"), (["--batch-size", "0"], "--batch-size"), (["--lr", "-1"], "--lr"),
    (["--warmup-ratio", "1"], "--warmup-ratio"), (["--warmup-ratio", "-0.1"], "--warmup-ratio"),
    (["--eval-batch-size", "0"], "--eval-batch-size"), (["--grad-accum", "0"], "--grad-accum")])
def test_numbers_no_run_can_use_are_refused_before_any_work(family, flags, named, tmp_path):
    out = tmp_path / "kết quả"
    message = refusal(family, *family.tiny(family.data, out, *flags))
    assert message.startswith(named) and not out.exists()


def test_starting_over_is_refused_into_a_used_folder(family, tmp_path):
    used = tmp_path / "đã dùng"
    used.mkdir()
    (used / "notes.txt").write_text("của tôi", encoding="utf-8")
    message = refusal(family, *family.tiny(family.data, used, "--no-resume"))
    assert "--no-resume starts over only into an empty folder" in message
    assert fingerprint(used) == {"notes.txt": hashlib.sha256("của tôi".encode()).hexdigest()}


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a GPU")
def test_half_precision_without_a_gpu_is_refused(family, tmp_path):
    message = refusal(family, *family.tiny(family.data, tmp_path / "kết quả", "--precision", "fp16"))
    assert message.startswith("--precision fp16 needs a CUDA GPU") and not (tmp_path / "kết quả").exists()


def test_8_bit_adamw_falls_back_to_adafactor_without_a_gpu(family, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert family.module.resolve_optimizer("adamw_bnb_8bit") == "adafactor"
    assert "(no CUDA GPU here); using adafactor" in capsys.readouterr().out


def test_8_bit_adamw_falls_back_to_adafactor_where_bitsandbytes_does_not_load(family, monkeypatch, capsys):
    def broken(name):
        raise ImportError(f"{name}: libbitsandbytes_cuda.so not found")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(family.module.importlib, "import_module", broken)
    assert family.module.resolve_optimizer("adamw_bnb_8bit") == "adafactor"
    assert "bitsandbytes does not load" in capsys.readouterr().out


def test_8_bit_adamw_is_kept_where_bitsandbytes_loads_on_a_gpu(family, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(family.module.importlib, "import_module", lambda name: object())
    assert family.module.resolve_optimizer("adamw_bnb_8bit") == "adamw_bnb_8bit"


@pytest.mark.parametrize("saved", ["one empty shard", "no shard"])
def test_an_empty_validation_split_is_refused_before_training(family, saved, tmp_path):
    """Saved with no shard at all, an empty split is one the datasets library itself cannot read back."""
    data = load_from_disk(str(family.data))
    empty = tmp_path / "không có kiểm định"
    validation = data["validation"]
    nothing = validation.filter(lambda _: False) if saved == "one empty shard" else validation.select([])
    DatasetDict(train=data["train"], validation=nothing, test=data["test"]).save_to_disk(str(empty))
    shutil.copy(family.data / "prepare_summary.json", empty / "prepare_summary.json")
    out = tmp_path / "kết quả"
    message = refusal(family, *family.tiny(empty, out))
    assert "empty" in message and "prepare_vivos.py" in message and not out.exists()
    if saved == "one empty shard":
        assert "the validation split(s) are empty" in message


@pytest.mark.parametrize("damage", ["config cut off", "weights missing", "weights cut off"])
def test_a_damaged_model_folder_is_refused_in_one_line(family, damage, tmp_path):
    model = tmp_path / "mô hình hỏng"
    shutil.copytree(family.run / "best_model", model)
    weights = model / "model.safetensors"
    if damage == "config cut off":
        (model / "config.json").write_text('{"model_type": ', encoding="utf-8")
    elif damage == "weights missing":
        weights.unlink()
    else:
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    out = tmp_path / "kết quả"
    message = refusal(family, "--data", family.data, "--output-dir", out, "--model", model, "--eval-only")
    assert str(model) in message and ("config.json" in message or "model.safetensors" in message)
    assert not out.exists()


def test_a_raw_corpus_as_data_gets_a_command_that_prepares_it_beside_itself(family, vivos_dir, tmp_path):
    """The corpus path has a space and Vietnamese letters: the command splits back into the same paths,
    and its --out is a new folder next to the corpus, never the corpus or a folder inside it."""
    message = refusal(family, "--data", vivos_dir, "--output-dir", tmp_path / "kết quả")
    command = pasted_command(message)
    assert command[:4] == ["python", "prepare_vivos.py", "--vivos-dir", str(vivos_dir)]
    out = Path(command[command.index("--out") + 1])
    assert out == vivos_dir.parent / f"{vivos_dir.name}_{family.suffix}"


def test_paths_in_printed_commands_are_quoted_for_the_shell_of_the_machine(family, monkeypatch):
    """cmd.exe knows no single quotes: on Windows a path with a space or Vietnamese letters is double-quoted."""
    path = r"C:\Users\An\dữ liệu\vivos"
    assert shlex.split(f"ls {family.module.quoted(path)}") == ["ls", path]
    monkeypatch.setattr(family.module.os, "name", "nt")
    assert family.module.quoted(path) == f'"{path}"'
    assert family.module.quoted(r"C:\data\vivos_wave") == r"C:\data\vivos_wave"


def test_a_folder_that_is_not_a_dataset_is_never_the_proposed_output(family, tmp_path):
    notes = tmp_path / "ghi chú"
    notes.mkdir()
    (notes / "readme.txt").write_text("của tôi", encoding="utf-8")
    command = pasted_command(refusal(family, "--data", notes, "--output-dir", tmp_path / "kết quả"))
    out = Path(command[command.index("--out") + 1])
    assert out != notes and notes not in out.parents and out not in notes.parents


def test_the_other_kind_of_features_gets_the_command_for_this_kind(family, request, vivos_dir, tmp_path):
    other = request.getfixturevalue("waveform_data" if family.name == "whisper" else "whisper_data")
    command = pasted_command(refusal(family, "--data", other, "--output-dir", tmp_path / "kết quả"))
    assert command[3] == str(vivos_dir)
    assert Path(command[command.index("--out") + 1]) == vivos_dir.parent / f"{vivos_dir.name}_{family.suffix}"


def test_the_newest_complete_checkpoint_is_found_by_checking_its_files(family, tmp_path):
    """A checkpoint whose optimizer.pt or weights were cut off is passed over; a whole one is taken."""
    newest = family.module.checkpoint_folders(family.run)[0]
    for step, cut in ((10, None), (20, "optimizer.pt"), (30, "model.safetensors")):
        shutil.copytree(newest, tmp_path / f"checkpoint-{step}")
        if cut:
            path = tmp_path / f"checkpoint-{step}" / cut
            path.write_bytes(path.read_bytes()[:-100])
    assert family.module.last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-10"
    assert family.module.checkpoint_problem(tmp_path / "checkpoint-30") == "model.safetensors is cut off"


# ----------------------------------------------------------------------------- library hooks

def overridden_hooks():
    """(trainer, class, method, library base) for every method a trainer's Trainer or callback subclass
    overrides in a transformers class."""
    found = []
    for module_name, *_ in FAMILIES.values():
        module = importlib.import_module(module_name)
        for cls in vars(module).values():
            if not (inspect.isclass(cls) and cls.__module__ == module_name
                    and issubclass(cls, (transformers.Trainer, transformers.TrainerCallback))):
                continue
            bases = [base for base in cls.__mro__[1:] if base.__module__.startswith("transformers")]
            for name, member in vars(cls).items():
                if not inspect.isfunction(member) or name.startswith("__"):
                    continue
                library = next((base for base in bases if name in vars(base)), bases[0])
                # A Trainer subclass adds no methods of its own; a callback's own helpers (the clock's
                # seconds()) are not hooks, its on_* events and ExportableState.state are.
                if issubclass(cls, transformers.Trainer) or name.startswith("on_") or hasattr(library, name):
                    found.append((module_name, cls, name, library))
    return found


def signature_problem(override, base) -> str | None:
    """Why the library's calls of `base` would break on `override` (None: they would not)."""
    ours, theirs = inspect.signature(override).parameters, inspect.signature(base).parameters
    kinds = {p.kind for p in ours.values()}
    for position, (name, param) in enumerate(theirs.items()):
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if name not in ours and param.VAR_KEYWORD not in kinds:
            return f"the library passes `{name}`, which the override does not take"
        positional = [n for n, p in ours.items() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if param.kind is param.POSITIONAL_OR_KEYWORD and position < len(positional) and positional[position] != name:
            return f"argument {position} is `{name}` in the library, `{positional[position]}` in the override"
    for name, param in ours.items():
        if param.default is param.empty and param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD) \
                and name not in theirs:
            return f"the override requires `{name}`, which the library never passes"
    return None


@pytest.mark.parametrize("module_name, cls, name, library", overridden_hooks(),
                         ids=lambda value: getattr(value, "__name__", value) if not isinstance(value, str) else value)
def test_every_overridden_trainer_hook_still_exists_with_a_compatible_signature(module_name, cls, name, library):
    base = getattr(library, name, None)
    assert base is not None, (f"{module_name}.{cls.__name__}.{name} overrides transformers' {library.__name__}.{name}, "
                              f"which transformers {transformers.__version__} no longer has: the override is dead")
    problem = signature_problem(getattr(cls, name), base)
    assert problem is None, (f"{module_name}.{cls.__name__}.{name} no longer fits transformers "
                             f"{transformers.__version__}'s {library.__name__}.{name}: {problem}")


def test_the_hook_check_sees_the_private_hooks_the_trainers_override():
    hooks = {(cls.__name__, name) for _, cls, name, _ in overridden_hooks()}
    assert {("CTCTrainer", "prediction_step"), ("CTCTrainer", "_get_eval_sampler"),
            ("SortaGradTrainer", "_get_train_sampler")} <= hooks


# ----------------------------------------------------------------------------- --estimate

ESTIMATE_KEYS = {"device", "peak_memory_mb", "seconds_per_step", "steps_per_epoch", "epoch_minutes",
                 "total_minutes", "checkpoint_mb", "disk_needed_mb", "fits"}


def test_estimate_times_real_steps_and_leaves_only_estimate_json(family, tmp_path, capsys):
    """--estimate into a new folder: the time, memory and disk of the run these settings would make, printed
    and saved, and no run behind (no checkpoint, history or TensorBoard events)."""
    out = tmp_path / "ước tính"
    argv = family.tiny(family.data, out, "--estimate", "--estimate-steps", "2", "--grad-accum", "2")
    family.main(*argv)
    assert [p.name for p in out.iterdir()] == ["estimate.json"]
    estimate = read_json(out / "estimate.json")
    assert set(estimate) == ESTIMATE_KEYS and estimate["fits"] is True
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.rindex("\n{\n") + 1:]) == estimate
    train = len(load_from_disk(str(family.data))["train"])
    settings = family.module.parse_args(argv)
    assert estimate["steps_per_epoch"] == math.ceil(train / (settings.batch_size * 2))
    assert estimate["seconds_per_step"] > 0 and estimate["checkpoint_mb"] > 0
    assert estimate["total_minutes"] >= estimate["epoch_minutes"] * settings.epochs > 0
    assert estimate["disk_needed_mb"] > estimate["checkpoint_mb"]
    assert estimate["peak_memory_mb"]["rss"] > 0 and estimate["device"].startswith("cpu")


def test_estimate_leaves_an_existing_run_as_it_is(family, tmp_path):
    """--estimate into the folder of a run neither resumes nor changes it: only estimate.json is added."""
    run = tmp_path / "run"
    shutil.copytree(family.run, run)
    before = fingerprint(run)
    family.main(*family.tiny(family.data, run, "--estimate", "--estimate-steps", "1"))
    after = fingerprint(run)
    assert set(after) - set(before) == {"estimate.json"}
    assert {name: digest for name, digest in after.items() if name != "estimate.json"} == before


def test_estimate_after_cuda_out_of_memory_says_it_does_not_fit_and_what_to_try(family, tmp_path, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")

    monkeypatch.setattr(transformers.Trainer, "training_step", out_of_memory)
    out = tmp_path / "oom"
    family.main(*family.tiny(family.data, out, "--estimate", "--batch-size", "4"))
    estimate = read_json(out / "estimate.json")
    assert estimate["fits"] is False and estimate["seconds_per_step"] is None
    assert "--batch-size 2 --grad-accum 2" in estimate["advice"]
    assert ("--preset low-vram" in estimate["advice"]) == ("low-vram" in family.module.PRESETS)
    assert [p.name for p in out.iterdir()] == ["estimate.json"]


# ----------------------------------------------------------------------------- resuming with other settings

def test_resuming_with_another_optimizer_is_refused_with_a_new_run_from_the_checkpoint(family, tmp_path):
    """A run begun with adamw_torch and continued with adafactor (the state of one cannot be loaded into the
    other): refused, the run untouched, and the printed command starts a new run from the checkpoint's weights."""
    run = tmp_path / "chạy"
    shutil.copytree(family.run, run)
    before = fingerprint(run)
    message = refusal(family, *family.tiny(family.data, run, "--optim", "adafactor"))
    assert "was trained with --optim adamw_torch" in message and "Nothing was changed" in message
    assert fingerprint(run) == before
    command = shlex.split(message[message.index("python "):])
    checkpoint = Path(command[command.index("--model") + 1])
    assert checkpoint.parent == run and checkpoint.name.startswith("checkpoint-")
    assert command[command.index("--output-dir") + 1] == f"{run}-continued" and command.count("--model") == 1
    family.main(*command[2:], "--estimate", "--estimate-steps", "1")
    assert read_json(Path(f"{run}-continued") / "estimate.json")["fits"] is True
    assert fingerprint(run) == before


def test_resuming_with_another_batch_size_continues_and_says_what_changes(family, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(family.run, run)
    info = read_json(run / "run_info.json")
    family.main(*family.tiny(family.data, run, "--batch-size", str(info["batch_size"] * 2), "--max-steps",
                             str(read_json(run / "trainer_state.json")["global_step"] + 1)))
    assert "the epoch counter continues; steps per epoch change" in capsys.readouterr().out
