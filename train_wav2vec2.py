"""Fine-tune a Wav2Vec2 / XLS-R model with a CTC head on a prepared VIVOS waveform dataset.

Shortest command (the dataset comes from `prepare_vivos.py --features waveform`):

    python train_wav2vec2.py --data data/vivos_wave --output-dir runs/wav2vec2-xlsr

It builds a character vocabulary from the train transcripts (`|` between words, `[PAD]` as the CTC
blank, `[UNK]`), or keeps the checkpoint's own CTC head when its vocabulary already covers the data,
trains by epoch with validation loss/WER/CER and a train-subset WER after every epoch, stops early when
validation WER stops improving, loads the best checkpoint and transcribes the test split with it.
Re-running the same command resumes from the last complete checkpoint.

What it writes in --output-dir:
  checkpoint-N/           Trainer checkpoints (resume)
  best_model/             model + processor for pipeline("automatic-speech-recognition"), README.md card
  trainer_state.json      the Trainer's log history
  history.csv             one row per evaluation (losses, WER/CER on validation and on the train subset)
  run_info.json           model, settings, vocabulary, timing and dataset facts
  test_predictions.csv    per-utterance reference, prediction, WER, CER
  test_metrics.json       corpus WER, CER, error counts, decode time and real-time factor
  runs/                   TensorBoard events (when tensorboard is installed)
With --estimate it only times a few real steps with the same flags and writes estimate.json (minutes,
memory, disk, whether it fits).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import importlib.util
import json
import math
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import unicodedata
import zipfile
from collections import Counter
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

# transformers imports peft, which imports bitsandbytes, whose CPU part then fails to fetch a kernel from the
# Hub and logs it on every start: bitsandbytes stays out until --optim adamw_bnb_8bit needs it.
sys.modules.setdefault("bitsandbytes", None)

import jiwer
import numpy as np
import torch
from datasets import DatasetDict
from torch.utils.data import SequentialSampler
from transformers import (AutoConfig, AutoFeatureExtractor, AutoModelForCTC, AutoProcessor, EarlyStoppingCallback,
                          Trainer, TrainerCallback, TrainingArguments, Wav2Vec2CTCTokenizer,
                          Wav2Vec2FeatureExtractor, Wav2Vec2Processor, set_seed)
from transformers.trainer_callback import ExportableState

# torchrun / accelerate launch set RANK: only the first process prints and writes the run folder.
# Copied from train_whisper.IS_MAIN_PROCESS
IS_MAIN_PROCESS = int(os.environ.get("RANK", "0")) == 0
SAMPLE_RATE = 16000  # every Wav2Vec2-family checkpoint is pre-trained on 16 kHz audio
PAD, UNK, WORD_DELIMITER = "[PAD]", "[UNK]", "|"
# A reference character the vocabulary lacks is scored as this letter, which no model can write: one error.
UNKNOWN_LETTER = "\u0294"
BEST_METRIC = "eval_validation_wer"  # the best checkpoint and early stopping follow it
SCRIPT = "train_wav2vec2.py"  # as printed commands name it (a notebook cell has no __file__)
FEATURES = "waveform"  # the prepared dataset this trainer reads (prepare_vivos.py --features)
# The shared flags' defaults for Wav2Vec2: an effective batch of 16 and the usual CTC fine-tuning settings.
DEFAULTS = {"model": "facebook/wav2vec2-xls-r-300m", "epochs": 20, "batch_size": 8, "eval_batch_size": 8,
            "grad_accum": 2, "lr": 1e-4, "warmup_ratio": 0.1, "weight_decay": 0.005, "logging_steps": 25}
# Copied from train_whisper.HISTORY_COLUMNS
HISTORY_COLUMNS = ["epoch", "step", "train_loss", "val_loss", "val_wer", "val_cer", "train_wer", "train_cer",
                   "learning_rate"]
# Copied from train_whisper.PREDICTION_COLUMNS
PREDICTION_COLUMNS = ["id", "speaker", "duration", "reference", "prediction", "raw_prediction", "wer", "cer"]

# Settings for a card; any flag given on the command line wins over its preset. Sized from the memory
# arithmetic in the README (not yet measured on these cards).
PRESETS = {
    # base-sized models (95M parameters) on a 4 GB laptop GPU (RTX 3050 Ti): clips up to 10 s, batches of 4
    # with the same effective batch of 32, activations recomputed in backward, 8-bit optimizer states
    # (adafactor without bitsandbytes).
    "low-vram": {"batch_size": 4, "eval_batch_size": 4, "grad_accum": 8, "gradient_checkpointing": True,
                 "optim": "adamw_bnb_8bit", "max_duration": 10.0, "num_workers": 0},
    # Colab T4 (16 GB): XLS-R 300M in fp16 with checkpointing, effective batch 32.
    "t4": {"batch_size": 8, "eval_batch_size": 16, "grad_accum": 4, "gradient_checkpointing": True,
           "optim": "adamw_torch", "max_duration": 15.0, "num_workers": 2},
    # A100 (40/80 GB): big batches, no recomputation, fused optimizer, data loading in parallel.
    "a100": {"batch_size": 32, "eval_batch_size": 32, "grad_accum": 1, "gradient_checkpointing": False,
             "optim": "adamw_torch_fused", "max_duration": 20.0, "num_workers": 4},
}


# Copied from train_whisper.normalize_text
def normalize_text(text: str) -> str:
    """NFC, lower case, punctuation and symbols to spaces, whitespace collapsed; tone marks kept."""
    text = unicodedata.normalize("NFC", text).lower()
    text = "".join(ch if unicodedata.category(ch)[0] in "LMN" else " " for ch in text)
    return " ".join(text.split())


# Copied from train_whisper.compute_wer_cer
def compute_wer_cer(references: list[str], predictions: list[str]) -> dict:
    """Corpus WER, CER, sentence error rate and word error counts (jiwer), on normalised text."""
    words = jiwer.process_words(references, predictions)
    return {
        "wer": words.wer,
        "cer": jiwer.process_characters(references, predictions).cer,
        "ser": sum(ref != hyp for ref, hyp in zip(references, predictions)) / max(len(references), 1),
        "substitutions": words.substitutions,
        "deletions": words.deletions,
        "insertions": words.insertions,
        "hits": words.hits,
        "ref_words": words.hits + words.substitutions + words.deletions,
    }


# Copied from train_whisper.InputError
class InputError(SystemExit):
    """Bad input: the message says what was expected, what was found and what to type next."""


# Copied from train_whisper.say
def say(message: str) -> None:
    """Print once, not once per process, under torchrun."""
    if IS_MAIN_PROCESS:
        print(message, flush=True)


# Copied from train_whisper.quoted
def quoted(path) -> str:
    """A path as the shell of this machine reads it back from a pasted command: POSIX quoting, or double
    quotes on Windows (cmd.exe knows no single quotes; Windows paths hold no double quote)."""
    text = str(path)
    if os.name != "nt":
        return shlex.quote(text)
    return text if re.fullmatch(r"[\w@%+=:,./\\-]+", text, re.ASCII) else f'"{text}"'


# ----------------------------------------------------------------------------- 1. settings

# Copied from train_whisper.add_shared_arguments
def add_shared_arguments(parser: argparse.ArgumentParser, model_help: str, lr_help: str) -> dict:
    """The flags every trainer takes, in the same words; their defaults are the trainer's DEFAULTS. Returns
    the argument groups, for the trainer's own flags."""
    groups = {name: parser.add_argument_group(name) for name in
              ("data, model, output", "training", "regularisation", "memory", "evaluation and checkpoints", "sharing")}
    io, train, memory, evaluation, hub = (groups[name] for name in ("data, model, output", "training", "memory",
                                                                     "evaluation and checkpoints", "sharing"))
    io.add_argument("--data", type=Path, required=True,
                    help=f"prepared dataset folder (prepare_vivos.py --features {FEATURES})")
    io.add_argument("--model", help=f"{model_help} (default %(default)s)")
    io.add_argument("--output-dir", type=Path, required=True,
                    help="run folder: checkpoints, best_model/, history.csv, test predictions (resumed if it exists)")
    io.add_argument("--preset", choices=sorted(PRESETS),
                    help=f"a tested bundle of settings ({', '.join(PRESETS)}); flags given explicitly win over it")
    train.add_argument("--epochs", type=float, help="training epochs (default %(default)s; early stopping may end "
                                                    "sooner)")
    train.add_argument("--max-steps", type=int, default=-1, help="stop after this many optimizer steps instead")
    train.add_argument("--batch-size", type=int, help="utterances per step and device (default %(default)s)")
    train.add_argument("--eval-batch-size", type=int,
                       help="utterances per device when evaluating (default %(default)s)")
    train.add_argument("--grad-accum", type=int,
                       help="steps whose gradients are summed before an update (default %(default)s)")
    train.add_argument("--lr", type=float, help=f"peak learning rate ({lr_help})")
    train.add_argument("--warmup-ratio", type=float, help="share of steps for linear warm-up (default %(default)s)")
    train.add_argument("--scheduler", default="linear",
                       choices=["linear", "cosine", "constant_with_warmup", "inverse_sqrt", "polynomial"],
                       help="learning-rate schedule after the warm-up (default %(default)s)")
    train.add_argument("--optim", default="adamw_torch",
                       choices=["adamw_torch", "adamw_torch_fused", "adamw_bnb_8bit", "adafactor"],
                       help="optimizer; adamw_bnb_8bit needs bitsandbytes and a CUDA GPU (default %(default)s)")
    train.add_argument("--weight-decay", type=float, help="AdamW weight decay (default %(default)s)")
    train.add_argument("--seed", type=int, default=42)
    train.add_argument("--num-workers", type=int, default=0 if os.name == "nt" else 2,
                       help="data loading processes (default %(default)s; 0 on Windows, where each worker re-imports)")
    memory.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"], default="auto",
                        help="auto: bf16 on GPUs that have it, else fp16; fp32 on CPU")
    memory.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=False,
                        help="recompute activations in backward: much less memory, slower steps")
    evaluation.add_argument("--eval-every", type=int, default=0,
                            help="evaluate and save every N steps (default 0: every epoch)")
    evaluation.add_argument("--patience", type=int, default=3,
                            help="stop after N evaluations without a better validation score (0: never)")
    evaluation.add_argument("--train-eval-size", type=int, default=200,
                            help="fixed train utterances scored at each evaluation, to show the overfitting gap")
    evaluation.add_argument("--logging-steps", type=int,
                            help="log the training loss every N steps (default %(default)s)")
    evaluation.add_argument("--save-total-limit", type=int, default=2,
                            help="checkpoints kept (the best one is always kept)")
    evaluation.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                            help="continue from the last complete checkpoint (default); --no-resume needs an "
                                 "empty --output-dir")
    evaluation.add_argument("--eval-only", action="store_true",
                            help="no training: score --model as it is, into a run folder of its own")
    evaluation.add_argument("--estimate", action="store_true",
                            help="no run: time a few real training steps and one evaluation batch with exactly "
                                 "these settings, then write OUTPUT_DIR/estimate.json (time, memory, disk, whether "
                                 "it fits) and nothing else")
    evaluation.add_argument("--estimate-steps", type=int, default=5,
                            help="optimizer steps timed by --estimate, after one untimed warm-up step")
    hub.add_argument("--push-to-hub", action="store_true", help="upload best_model/ and its card to the Hub")
    hub.add_argument("--hub-model-id", help="Hub repository (default: the --output-dir name)")
    parser.set_defaults(**DEFAULTS)
    return groups


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    groups = add_shared_arguments(parser, "any Wav2Vec2-family checkpoint: Hub id or local folder (on 4 GB a "
                                  "base-sized one such as nguyenvulebinh/wav2vec2-base-vi)",
                                  "default 1e-4, the usual CTC fine-tuning rate; 3e-4 for XLS-R on tens of hours")
    io = groups["data, model, output"]
    io.add_argument("--reuse-vocab", choices=["auto", "never"], default="auto",
                    help="auto: keep the checkpoint's CTC head when its vocabulary covers the train text; "
                         "never: always a new character vocabulary and head")
    io.add_argument("--max-duration", type=float, default=20.0,
                    help="train clips longer than this many seconds are left out (memory; default 20)")

    regular = groups["regularisation"]
    regular.add_argument("--dropout", type=float, default=0.1,
                         help="transformer dropout: hidden, attention, activation, projection, CTC head (default 0.1)")
    regular.add_argument("--layerdrop", type=float, default=0.05,
                         help="probability of skipping a whole transformer layer in a step (default 0.05)")
    regular.add_argument("--spec-augment", action=argparse.BooleanOptionalAction, default=True,
                         help="SpecAugment: mask random time steps / feature channels while training (default on)")
    regular.add_argument("--mask-time-prob", type=float, default=0.05, help="SpecAugment time masking")
    regular.add_argument("--mask-feature-prob", type=float, default=0.0, help="SpecAugment feature-channel masking")
    regular.add_argument("--freeze-feature-encoder", action=argparse.BooleanOptionalAction, default=True,
                         help="keep the convolutional feature encoder fixed (default on, as in the wav2vec 2.0 paper)")
    add_lm_arguments(groups["evaluation and checkpoints"])
    return parser


# Copied from train_whisper.parse_args
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags over the chosen preset over the defaults."""
    parser = build_parser()
    preset = parser.parse_known_args(argv)[0].preset
    if preset:
        parser.set_defaults(**PRESETS[preset])
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else [str(arg) for arg in argv]
    return args


# Copied from train_whisper.settings
def settings(argv: list[str] | None) -> tuple[argparse.Namespace, str, str]:
    """Step 1: the flags (over the preset, over DEFAULTS) checked, the seed set, and the precision and
    optimizer this machine can run."""
    args = parse_args(argv)
    check_settings(args)
    set_seed(args.seed)
    return args, resolve_precision(args.precision), resolve_optimizer(args.optim)


# Copied from train_whisper.check_settings
def check_settings(args: argparse.Namespace) -> None:
    """Refuse numbers no run can use, before anything is loaded or written."""
    problems = []
    if not args.eval_only and args.max_steps <= 0 and not args.epochs > 0:
        problems.append(f"--epochs must be above 0 (got {args.epochs:g}), or give --max-steps")
    for flag in ("batch_size", "eval_batch_size", "grad_accum"):
        if getattr(args, flag) < 1:
            problems.append(f"--{flag.replace('_', '-')} must be 1 or more (got {getattr(args, flag)})")
    if args.lr is not None and not args.lr > 0:
        problems.append(f"--lr must be above 0 (got {args.lr:g})")
    if args.estimate and args.eval_only:
        problems.append("--estimate times training and --eval-only does none: drop one of them")
    if args.estimate_steps < 1:
        problems.append(f"--estimate-steps must be 1 or more (got {args.estimate_steps})")
    if not 0 <= args.warmup_ratio < 1:
        problems.append(f"--warmup-ratio must be in [0, 1) (got {args.warmup_ratio:g})")
    if problems:
        raise InputError("; ".join(problems) + ". Run it again with those corrected.")


# Copied from train_whisper.resolve_precision
def resolve_precision(choice: str) -> str:
    """fp32 on CPU; on a GPU `auto` means bf16 where it has it (no loss scaling needed), else fp16."""
    cuda = torch.cuda.is_available()
    if choice == "auto":
        # Compute capability >= 8 (A100, RTX 30xx) has bf16; is_bf16_supported() also says yes on a T4 (emulated).
        return ("bf16" if torch.cuda.get_device_capability()[0] >= 8 else "fp16") if cuda else "fp32"
    if choice in ("fp16", "bf16") and not cuda:
        raise InputError(f"--precision {choice} needs a CUDA GPU and none is visible; use --precision auto "
                         "(fp32 on CPU) or run on a GPU machine")
    return choice


# Copied from train_whisper.resolve_optimizer
def resolve_optimizer(name: str) -> str:
    """The optimizer to use: 8-bit AdamW only where bitsandbytes loads and has a CUDA GPU, else adafactor."""
    if name != "adamw_bnb_8bit":
        return name
    if not torch.cuda.is_available():
        missing = "no CUDA GPU here"
    else:
        try:
            import_bitsandbytes()  # installed is not enough: its CUDA library must load
            return name
        except Exception as error:  # ImportError, or a missing/mismatched CUDA library
            missing = f"bitsandbytes does not load ({error}): pip install -U bitsandbytes"
    say(f"--optim adamw_bnb_8bit needs bitsandbytes and a CUDA GPU ({missing}); using adafactor instead, "
        "which also keeps almost no optimizer state.")
    return "adafactor"


# Copied from train_whisper.import_bitsandbytes
def import_bitsandbytes():
    """bitsandbytes, imported now that the 8-bit optimizer needs it (it is kept out at start)."""
    if "bitsandbytes" in sys.modules and sys.modules["bitsandbytes"] is None:
        del sys.modules["bitsandbytes"]
    return importlib.import_module("bitsandbytes")


# Copied from train_whisper.describe_device
def describe_device() -> str:
    """The compute this process will use, for a start-up banner: the GPU and its memory, or the CPU cores; and a
    warning with the install command when nvidia-smi lists a GPU that this torch (a CPU-only build) cannot use."""
    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_properties(0)
        count = torch.cuda.device_count()
        return f"GPU {gpu.name}, {gpu.total_memory / 2**30:.1f} GB{f' (x{count})' if count > 1 else ''}"
    cpu = f"CPU, {os.cpu_count()} cores"
    smi = shutil.which("nvidia-smi")
    try:  # a hung or broken driver must not stop the script: no answer counts as no GPU
        listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10).stdout if smi else ""
        gpus = re.findall(r"^GPU \d+: (.+?)(?: \(UUID.*)?$", listed, re.M)
        header = subprocess.run([smi], capture_output=True, text=True, timeout=10).stdout if gpus else ""
    except (OSError, subprocess.SubprocessError):
        gpus, header = [], ""
    if not gpus:
        return cpu
    # The CUDA builds that download.pytorch.org/whl/<tag> has served for PyTorch 2.x releases; a driver runs a
    # build up to the CUDA version it reports, so the newest one not above it is the one to install.
    builds = [((11, 8), "cu118"), ((12, 1), "cu121"), ((12, 4), "cu124"), ((12, 6), "cu126"), ((12, 8), "cu128")]
    found = re.search(r"CUDA Version:\s*(\d+)\.(\d+)", header)
    driver = (int(found[1]), int(found[2])) if found else None
    fitting = [tag for cuda, tag in builds if driver is None or cuda <= driver]
    if not fitting:
        return (f"{cpu}. WARNING: nvidia-smi lists {gpus[0]}, but its driver (CUDA {driver[0]}.{driver[1]}) is older "
                "than any CUDA build of torch: update the NVIDIA driver, then install the CUDA build of torch. "
                "Until then everything runs on the CPU.")
    # --force-reinstall: pip takes the installed CPU build of the same version as already satisfying `torch`.
    return (f"{cpu}. WARNING: nvidia-smi lists {gpus[0]}, but this torch is a CPU-only build, so everything runs "
            f"on the CPU. Install the CUDA build with: pip install --force-reinstall torch --index-url "
            f"https://download.pytorch.org/whl/{fitting[-1]}")


# Copied from train_whisper.run_banner
def run_banner(args: argparse.Namespace, precision: str, optim: str, splits: dict[str, int]) -> str:
    """The one block a trainer prints before it starts: where it runs, with what, on how much data."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
    processes = f" x {world} processes" if world > 1 else ""
    lines = [f"device:     {describe_device()}", f"torch:      {torch.__version__} ({build})",
             f"precision:  {precision}",
             f"optimizer:  {optim}" + (f" (instead of {args.optim})" if optim != args.optim else ""),
             f"batch:      {args.batch_size} x {args.grad_accum} accumulation{processes} = "
             f"{args.batch_size * args.grad_accum * world} utterances per optimizer step",
             "data:       " + ", ".join(f"{name} {count} utterances" for name, count in splits.items())]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- 2. checkpoint to resume

# Copied from train_whisper.checkpoint_folders
def checkpoint_folders(output_dir: Path) -> list[Path]:
    """The checkpoint-N folders of a run folder, newest first."""
    numbered = [p for p in output_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(numbered, key=lambda folder: int(folder.name.split("-")[-1]), reverse=True)


# Copied from train_whisper.cut_off
def cut_off(path: Path) -> bool:
    """Whether a torch or safetensors file ends before its format says it should (a full disk or a power cut
    while it was written), checked cheaply: a torch file is a zip archive whose directory sits at its end, a
    safetensors header gives the file's length."""
    if path.suffix in (".pt", ".pth", ".bin"):
        return not zipfile.is_zipfile(path)
    if path.suffix != ".safetensors":
        return False
    with path.open("rb") as handle:
        header_size = int.from_bytes(handle.read(8), "little")
        try:
            header = json.loads(handle.read(header_size))
            end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, AttributeError, IndexError):
            return True
    return path.stat().st_size < 8 + header_size + end


# Copied from train_whisper.checkpoint_problem
def checkpoint_problem(folder: Path) -> str | None:
    """Why training cannot continue from this checkpoint (None: it can): Trainer writes trainer_state.json
    last, and no file of it may be cut off."""
    try:
        json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "no trainer_state.json"
    except ValueError:
        return "trainer_state.json is cut off"
    return next((f"{path.name} is cut off" for path in sorted(folder.iterdir()) if cut_off(path)), None)


# Copied from train_whisper.last_complete_checkpoint
def last_complete_checkpoint(output_dir: Path) -> Path | None:
    """The newest checkpoint-N that training can continue from."""
    return next((folder for folder in checkpoint_folders(output_dir) if checkpoint_problem(folder) is None), None)


# Copied from train_whisper.training_run_evidence
def training_run_evidence(folder: Path) -> str | None:
    """What shows that `folder` holds a training run (None: nothing does): a checkpoint, a history.csv
    with training rows, or a run_info.json of a run that trained."""
    checkpoints = checkpoint_folders(folder) if folder.is_dir() else []
    if checkpoints:
        return f"{checkpoints[0].name}/"
    run_info = folder / "run_info.json"
    if run_info.is_file():
        try:
            trained = json.loads(run_info.read_text(encoding="utf-8")).get("eval_only") is not True
        except (ValueError, AttributeError):
            trained = True  # unreadable: it may be a training run's
        if trained:
            return "run_info.json of a training run"
    history = folder / "history.csv"
    if history.is_file():
        with history.open(encoding="utf-8", newline="") as handle:
            if any(row.get("step") not in (None, "", "0") for row in csv.DictReader(handle)):
                return "history.csv with training rows"
    return None


# Copied from train_whisper.checkpoint_to_resume
def checkpoint_to_resume(args: argparse.Namespace) -> Path | None:
    """The checkpoint training continues from, or None for a fresh start; refuses --eval-only into the
    folder of a training run and --no-resume into a used folder."""
    folder = args.output_dir
    if args.estimate:  # it measures the settings given and leaves any run in the folder as it is
        return None
    if args.eval_only:
        evidence = training_run_evidence(folder)
        if evidence:
            instead = folder.parent / f"{folder.name}-eval"
            raise InputError(f"--eval-only would overwrite the training run in {folder} (it holds {evidence}); "
                             f"nothing was changed. Score the model into a folder of its own: "
                             f"--output-dir {quoted(instead)}")
        return None
    used = folder.is_dir() and any(folder.iterdir())
    if not args.resume:
        if used:
            raise InputError(f"--no-resume starts over only into an empty folder, and {folder} is not empty. "
                             "Choose a new --output-dir, or delete that folder, or drop --no-resume to continue "
                             "from its last checkpoint.")
        return None
    checkpoints = checkpoint_folders(folder) if used else []
    checkpoint = last_complete_checkpoint(folder) if used else None
    if checkpoints and checkpoints[0] != checkpoint:
        say(f"{checkpoints[0].name} is incomplete ({checkpoint_problem(checkpoints[0])}), cut off while it was "
            f"written: {'continuing from ' + checkpoint.name if checkpoint else 'no complete checkpoint is left'}.")
    if used and not checkpoint:
        say(f"No complete checkpoint in {folder}: training starts from the beginning.")
    return checkpoint


# Copied from train_whisper.recorded_settings
def recorded_settings(checkpoint: Path) -> dict:
    """The optimizer and batch a checkpoint was trained with (RunSettingsCallback's record in its
    trainer_state.json; a checkpoint written before that record holds only the batch size)."""
    state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    record = state.get("stateful_callbacks", {}).get("RunSettingsCallback", {})
    record = record[0] if isinstance(record, list) else record
    return record.get("attributes", {}).get("settings") or {"batch_size": state.get("train_batch_size")}


# Copied from train_whisper.command_with
def command_with(args: argparse.Namespace, changes: dict[str, str]) -> str:
    """This run's command, safe to paste, with some flags given new values (added where absent) and
    --resume / --no-resume left out."""
    argv, kept, given = list(args.argv), [], set()
    while argv:
        arg = argv.pop(0)
        flag, _, inline = arg.partition("=")
        if flag in ("--resume", "--no-resume"):
            continue
        if flag in changes:
            given.add(flag)
            if not inline and argv:
                argv.pop(0)
            kept += [flag, changes[flag]]
        else:
            kept.append(arg)
    kept += [part for flag, value in changes.items() if flag not in given for part in (flag, value)]
    return " ".join(["python", SCRIPT, *map(quoted, kept)])


# Copied from train_whisper.check_resumed_settings
def check_resumed_settings(args: argparse.Namespace, checkpoint: Path | None, optim: str) -> None:
    """Resuming with another optimizer is refused (its saved state cannot be loaded into a different one) with
    the command that starts a new run from the checkpoint's weights; a resume says so, and another batch size
    what that changes, in one line each."""
    if checkpoint is None:
        return
    before = recorded_settings(checkpoint)
    same_kind = {"adamw_torch_fused": "adamw_torch"}  # one optimizer class, fused or not: the state loads
    if before.get("optim") and same_kind.get(before["optim"], before["optim"]) != same_kind.get(optim, optim):
        continued = args.output_dir.parent / f"{args.output_dir.name}-continued"
        command = command_with(args, {"--model": str(checkpoint), "--output-dir": str(continued)})
        raise InputError(f"{checkpoint} was trained with --optim {before['optim']} and this command uses {optim}: "
                         f"an optimizer's saved state cannot be loaded into another one. Nothing was changed. Resume "
                         f"with --optim {before['optim']}, or start a new run from its weights: {command}")
    say(f"resuming from {checkpoint} (same optimizer, scheduler, random state and epoch counter)")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    old_batch = (before.get("batch_size"), before.get("grad_accum", args.grad_accum), before.get("world_size", world))
    if old_batch != (args.batch_size, args.grad_accum, world):
        say(f"{checkpoint.name} was trained with batch {old_batch[0]} x {old_batch[1]} accumulation x {old_batch[2]} "
            f"processes and continues with {args.batch_size} x {args.grad_accum} x {world}: the epoch counter "
            "continues; steps per epoch change, and the schedule counts the new steps.")


# ----------------------------------------------------------------------------- 3. prepared dataset

# Copied from train_whisper.prepare_command
def prepare_command(data: Path, summary: dict, n_mels: int = 80) -> str:
    """A prepare_vivos.py call, safe to paste, that makes this trainer's dataset from the corpus behind --data:
    the raw VIVOS folder it is, or the source its prepare_summary.json names. The output is a new folder
    beside that corpus (prepare_vivos.py refuses the corpus itself, a folder inside it or above it)."""
    suffix = "wave" if FEATURES == "waveform" else "whisper" if n_mels == 80 else f"whisper_{n_mels}mels"
    kind, _, where = str(summary.get("source", "")).partition(" ")
    if (data / "train" / "prompts.txt").is_file():
        kind, source = "VIVOS", data
    else:
        source = Path(where or "PATH/TO/vivos")
    out = source.parent / f"{source.stem if kind == 'manifest' else source.name}_{suffix}"
    if not where and not data.exists():
        out = data  # a folder still to be made is where the user wants the dataset
    flag = "--manifest" if kind == "manifest" else "--vivos-dir"
    mels = f" --n-mels {n_mels}" if FEATURES == "whisper" else ""
    return (f"python prepare_vivos.py {flag} {quoted(source)} --out {quoted(out)} "
            f"--features {FEATURES}{mels}")


# Copied from train_whisper.read_prepare_summary
def read_prepare_summary(data: Path) -> dict:
    """prepare_summary.json of the prepared dataset in --data; a raw corpus, any other folder, the other
    kind of features or another sampling rate are refused with the prepare_vivos.py call that makes the
    right dataset."""
    if (data / "train" / "prompts.txt").is_file():
        raise InputError(f"--data {data} is the raw VIVOS corpus; prepare it first: "
                         f"{prepare_command(data, {})}")
    summary_path = data / "prepare_summary.json"
    if not summary_path.is_file() or not (data / "dataset_dict.json").is_file():
        found = ("no such folder" if not data.exists() else
                 ", ".join(sorted(p.name for p in data.iterdir())[:8]) or "an empty folder")
        raise InputError(f"--data {data}: expected a dataset made by prepare_vivos.py (dataset_dict.json and "
                         f"prepare_summary.json inside), found: {found}. Make one with: "
                         f"{prepare_command(data, {})}")
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    if summary.get("features") != FEATURES:
        raise InputError(f"--data {data} holds {summary.get('features')!r} features and this trainer reads "
                         f"{FEATURES!r} ones. Make them with: {prepare_command(data, summary)}")
    if summary.get("sampling_rate", 16000) != 16000:
        raise InputError(f"--data {data} is sampled at {summary['sampling_rate']} Hz, expected 16000; make it "
                         f"again with: {prepare_command(data, summary)}")
    return summary


# Copied from train_whisper.load_prepared_dataset
def load_prepared_dataset(data: Path, columns: set[str], eval_only: bool) -> tuple:
    """Step 3: the prepared DatasetDict and its prepare_summary.json, refused before any training when a
    split is missing, lacks a column the trainer reads, or is empty where the run needs it (validation
    picks the best model)."""
    from datasets import load_from_disk

    summary = read_prepare_summary(data)
    again = prepare_command(data, summary)
    try:
        dataset = load_from_disk(str(data))
    except (IndexError, ValueError, OSError) as error:  # IndexError: a split saved empty, without a shard
        raise InputError(f"--data {data}: the datasets library cannot read it ({type(error).__name__}: {error}); "
                         f"a split may be empty or a file missing. Make it again with: {again}")
    missing = [split for split in ("train", "validation", "test") if split not in dataset]
    if missing:
        raise InputError(f"--data {data} lacks the split(s) {', '.join(missing)} (found {', '.join(dataset)}); "
                         f"make it again with: {again}")
    for name, split in dataset.items():
        absent = sorted(columns - set(split.column_names))
        if absent:
            raise InputError(f"--data {data}: split {name} lacks the column(s) {', '.join(absent)}; make it "
                             f"again with: {again}")
    empty = [name for name in ("validation", "test") + (() if eval_only else ("train",)) if not len(dataset[name])]
    if empty:
        raise InputError(f"--data {data}: the {' and '.join(empty)} split(s) are empty, and a run needs "
                         f"utterances in each; make it again (with a --val-ratio above 0): {again}")
    return dataset, summary


# ----------------------------------------------------------------------------- 4. model

# Copied from train_whisper.check_model_folder
def check_model_folder(model: str) -> None:
    """Refuse a local --model folder whose config.json does not parse or that holds no weights, in one line
    instead of a library traceback (a Hub id is checked as it loads)."""
    folder = Path(model)
    if not folder.exists():
        return
    problem = None
    try:
        json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        problem = "no config.json"
    except (ValueError, OSError) as error:
        problem = f"a config.json that does not parse ({error})"
    weights = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
    if problem is None and not any((folder / name).is_file() for name in weights):
        problem = "no weights (model.safetensors)"
    if problem is None and (folder / "model.safetensors").is_file() and cut_off(folder / "model.safetensors"):
        problem = "a model.safetensors that is cut off"
    if problem:
        raise InputError(f"--model {model}: expected a model folder (config.json and model.safetensors, such as a "
                         f"run's best_model/), found {problem}. Point --model at a complete folder or copy it again.")


def build_vocab(sentences: list[str]) -> dict[str, int]:
    """Characters of the normalised train text: `[PAD]` (the CTC blank) is 0, `[UNK]` 1, `|` (the space) 2,
    then the characters in sorted order."""
    characters = sorted(set("".join(sentences)) - {" "})
    return {"[PAD]": 0, "[UNK]": 1, "|": 2, **{character: i for i, character in enumerate(characters, start=3)}}


def tokenizer_from_vocabulary(vocab: dict[str, int]) -> Wav2Vec2CTCTokenizer:
    with tempfile.TemporaryDirectory() as folder:
        vocab_file = Path(folder) / "vocab.json"
        vocab_file.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        return Wav2Vec2CTCTokenizer(str(vocab_file), unk_token=UNK, pad_token=PAD, word_delimiter_token=WORD_DELIMITER,
                                    bos_token=None, eos_token=None)


def tokenizer_characters(tokenizer) -> set[str]:
    """Characters the tokenizer can write; the word delimiter stands for the space."""
    return {token for token in tokenizer.get_vocab() if len(token) == 1} | {" "}


def missing_characters(sentences: list[str], known: set[str]) -> dict[str, int]:
    """Characters the vocabulary lacks, with how often they occur (they become [UNK] in the labels)."""
    counts = Counter(ch for sentence in sentences for ch in sentence if ch not in known)
    return dict(counts.most_common())


def pretrained_ctc_processor(model_id: str) -> Wav2Vec2Processor | None:
    """The checkpoint's own processor when it ships a CTC tokenizer and a CTC head, else None."""
    try:
        config = AutoConfig.from_pretrained(model_id)
        processor = AutoProcessor.from_pretrained(model_id)
    except (AttributeError, ImportError):
        # a best_model/ saved with a language model: transformers 5 cannot load that processor class (and
        # without kenlm refuses to try), but its feature extractor and tokenizer are ordinary
        processor = Wav2Vec2Processor.from_pretrained(model_id)
    except (OSError, ValueError, TypeError):
        return None
    has_head = any(name.endswith("ForCTC") for name in (config.architectures or []))
    tokenizer = getattr(processor, "tokenizer", None)
    if not has_head or tokenizer is None:
        return None
    if len(tokenizer) != config.vocab_size:
        say(f"{model_id}: its tokenizer has {len(tokenizer)} tokens but its CTC head {config.vocab_size} outputs; "
            "the head is not reused")
        return None
    return processor


def feature_extractor_for(model_id: str) -> Wav2Vec2FeatureExtractor:
    """The checkpoint's own normalisation; layer-norm models (XLS-R, large) also need the attention mask."""
    try:
        return AutoFeatureExtractor.from_pretrained(model_id)
    except OSError:
        try:
            config = AutoConfig.from_pretrained(model_id)
        except (OSError, ValueError) as error:
            raise InputError(f"--model {model_id}: could not load its config ({error}). Expected a Hub id such as "
                             "facebook/wav2vec2-xls-r-300m (downloaded once, needs the network) or a folder with "
                             "config.json.")
        say(f"{model_id} has no preprocessor_config.json: using zero-mean unit-variance normalisation")
        return Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0,
                                        do_normalize=True,
                                        return_attention_mask=getattr(config, "feat_extract_norm", "") == "layer")


def choose_processor(args, data: DatasetDict, checkpoint: Path | None) -> tuple[Wav2Vec2Processor, str]:
    """The processor to train with and why: kept from the checkpoint, or a new character vocabulary."""
    if checkpoint is not None:
        return Wav2Vec2Processor.from_pretrained(checkpoint), f"the vocabulary saved in {checkpoint.name}"
    pretrained = pretrained_ctc_processor(args.model)
    if args.eval_only:
        if pretrained is None:
            raise InputError(f"--eval-only needs a model with a CTC head and its tokenizer (a fine-tuned "
                             f"checkpoint such as nguyenvulebinh/wav2vec2-base-vietnamese-250h or a run's "
                             f"best_model/); {args.model} has none. Fine-tune it first without --eval-only.")
        return pretrained, "the checkpoint's own CTC head (--eval-only)"
    train_sentences = list(data["train"]["sentence"])
    if pretrained is not None and args.reuse_vocab == "auto":
        missing = missing_characters(train_sentences, tokenizer_characters(pretrained.tokenizer))
        if not missing:
            return pretrained, "the checkpoint's own CTC head (its vocabulary covers the train text)"
        say(f"{args.model} has a CTC head, but its vocabulary lacks {''.join(missing)}: training a new head")
    vocab = build_vocab(train_sentences)
    processor = Wav2Vec2Processor(feature_extractor=feature_extractor_for(args.model),
                                  tokenizer=tokenizer_from_vocabulary(vocab))
    return processor, f"a new CTC head over {len(vocab)} tokens built from the train text"


def load_ctc_model(args, processor: Wav2Vec2Processor):
    """The checkpoint with our CTC settings; a vocabulary of another size gets a freshly initialised head.
    --eval-only keeps the checkpoint's own regularisation settings (they do nothing at inference)."""
    tokenizer = processor.tokenizer
    overrides = dict(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
        ctc_loss_reduction="mean",  # a sum grows with clip length and batch size and destabilises warm-up
        ctc_zero_infinity=True,  # a clip too short for its transcript gives an infinite loss: zero it, not NaN
    )
    if not args.eval_only:
        overrides.update(
            layerdrop=args.layerdrop,
            mask_time_prob=args.mask_time_prob if args.spec_augment else 0.0,
            mask_feature_prob=args.mask_feature_prob if args.spec_augment else 0.0,
            **{name: args.dropout for name in ("hidden_dropout", "attention_dropout", "activation_dropout",
                                               "feat_proj_dropout", "final_dropout")})
    try:
        # fp32 master weights whatever the checkpoint's dtype; fp16/bf16 come from autocast in the Trainer
        model = AutoModelForCTC.from_pretrained(args.model, dtype=torch.float32, ignore_mismatched_sizes=True,
                                                **overrides)
    except (OSError, ValueError) as error:
        raise InputError(f"--model {args.model}: could not load it ({error}). Expected a Hub id such as "
                         "facebook/wav2vec2-xls-r-300m (downloaded once, needs the network) or a folder with "
                         "config.json and model.safetensors.")
    if args.freeze_feature_encoder and not args.eval_only:
        model.freeze_feature_encoder()
    # Wav2Vec2's forward takes **kwargs but averages its CTC loss itself: without this, Trainer skips the
    # division by --grad-accum (and multiplies by the process count), inflating loss and gradients.
    model.accepts_loss_kwargs = False
    return model


def architecture_facts(model) -> dict:
    config = model.config
    conv_dim = list(getattr(config, "conv_dim", []) or [])
    return {
        "model_type": config.model_type,
        "encoder_layers": config.num_hidden_layers,
        "decoder_layers": 0,
        "d_model": config.hidden_size,
        "heads": config.num_attention_heads,
        "ffn_dim": config.intermediate_size,
        "activation": config.hidden_act,
        "vocab_size": config.vocab_size,
        "conv_layers": len(conv_dim),
        "conv_channels": conv_dim[-1] if conv_dim else None,
        "feat_extract_norm": getattr(config, "feat_extract_norm", None),
        "frame_stride_ms": 1000 * math.prod(getattr(config, "conv_stride", [320])) / SAMPLE_RATE,
    }


# ----------------------------------------------------------------------------- 5. preprocessing

def ctc_frames(model, durations: list[float]) -> list[int]:
    """Output frames of the convolutional encoder for clips of these durations."""
    samples = torch.tensor([round(d * SAMPLE_RATE) for d in durations])
    return model._get_feat_extract_output_lengths(samples).tolist()


def trainable_rows(train, tokenizer, model, max_duration: float) -> tuple[list[int], dict]:
    """Train rows CTC can learn from, and how many were left out for which reason."""
    durations = [float(d) for d in train["duration"]]
    frames = ctc_frames(model, durations)
    label_lengths = [len(ids) for ids in tokenizer(list(train["sentence"]))["input_ids"]]
    keep, dropped = [], Counter()
    for index, (seconds, n_frames, n_labels) in enumerate(zip(durations, frames, label_lengths)):
        if seconds > max_duration:
            dropped[f"longer than --max-duration {max_duration:g} s"] += 1
        elif n_labels == 0:
            dropped["empty transcript"] += 1
        elif n_labels > n_frames:
            dropped["transcript longer than the clip's CTC frames"] += 1
        else:
            keep.append(index)
    return keep, dict(dropped)


def model_inputs(split):
    """Only what the collator reads, as numpy (no Python float lists); `duration` drives group_by_length."""
    return split.select_columns(["input_values", "sentence", "duration"]).with_format("numpy")


@dataclass
class DataCollatorCTCWithPadding:
    """Normalises and pads each batch's waveforms to its longest clip; labels padded with -100."""

    processor: Wav2Vec2Processor

    def __call__(self, rows: list[dict]) -> dict:
        audio = [np.asarray(row["input_values"], dtype=np.float32) for row in rows]
        batch = self.processor.feature_extractor(audio, sampling_rate=SAMPLE_RATE, padding=True, return_tensors="pt")
        labels = self.processor.tokenizer([str(row["sentence"]) for row in rows], padding=True, return_tensors="pt")
        batch["labels"] = labels["input_ids"].masked_fill(labels["attention_mask"].ne(1), -100)
        return batch


# ----------------------------------------------------------------------------- 6. metrics

def decode_predictions(tokenizer, ids: np.ndarray) -> list[str]:
    """Greedy CTC text: repeats merged, blanks dropped (after merging, so double letters survive), [UNK] removed."""
    ids = np.where(ids < 0, tokenizer.pad_token_id, ids)
    return [text.replace(tokenizer.unk_token, "").strip() for text in tokenizer.batch_decode(ids)]


def metrics_function(tokenizer):
    """compute_metrics for Trainer: WER and CER of the greedy transcripts, on normalised text."""
    def compute_metrics(prediction) -> dict:
        label_ids = np.where(prediction.label_ids < 0, tokenizer.pad_token_id, prediction.label_ids)
        references = [normalize_text(t.replace(tokenizer.unk_token, UNKNOWN_LETTER))
                      for t in tokenizer.batch_decode(label_ids, group_tokens=False)]
        predictions = [normalize_text(t) for t in decode_predictions(tokenizer, prediction.predictions)]
        scores = compute_wer_cer(references, predictions)
        return {"wer": scores["wer"], "cer": scores["cer"]}

    return compute_metrics


def clip_samples(inputs: dict) -> torch.Tensor:
    """Samples of each clip before batch padding: from the attention mask, or (models fed without one) up to
    the last non-zero sample, as a normalised clip practically never ends in exact zeros."""
    if "attention_mask" in inputs:
        return inputs["attention_mask"].sum(dim=-1)
    nonzero = inputs["input_values"] != 0
    return nonzero.shape[1] - nonzero.flip(dims=[1]).int().argmax(dim=1)


class CTCTrainer(Trainer):
    """Trainer whose evaluation keeps greedy token ids instead of (frames x vocabulary) logits, with the
    frames that exist only as batch padding set to -100 (decoded, they could add letters), and goes through
    a split in its own order, so that prediction i is row i (group_by_length would shuffle it)."""

    def _get_eval_sampler(self, eval_dataset):
        return SequentialSampler(eval_dataset)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        loss, logits, labels = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        if logits is None:
            return loss, logits, labels
        ids = logits.argmax(dim=-1)
        frames = self.model._get_feat_extract_output_lengths(clip_samples(inputs)).to(ids.device)
        padding = torch.arange(ids.shape[1], device=ids.device)[None, :] >= frames[:, None]
        return loss, ids.masked_fill(padding, -100), labels


# ----------------------------------------------------------------------------- 7. training

# Copied from train_whisper.history_rows
def history_rows(log_history: list[dict]) -> list[dict]:
    """One row per evaluation step: validation and train-subset scores, and the step-weighted mean of the
    training losses logged since the previous evaluation ("" where a value does not exist)."""
    evaluations: dict[int, dict] = {}
    for entry in log_history:
        if any(key.startswith("eval_") for key in entry):
            evaluations.setdefault(entry["step"], {}).update(entry)
    losses = [entry for entry in log_history if "loss" in entry]
    rows, previous = [], 0
    for step in sorted(evaluations):
        entry = evaluations[step]
        window = [e for e in losses if previous < e["step"] <= step]
        spans = np.diff([previous] + [e["step"] for e in window])
        rows.append({"epoch": round(entry.get("epoch", 0.0), 4), "step": step,
                     "train_loss": float(np.average([e["loss"] for e in window], weights=spans)) if window else "",
                     "val_loss": entry.get("eval_validation_loss", ""), "val_wer": entry.get("eval_validation_wer", ""),
                     "val_cer": entry.get("eval_validation_cer", ""),
                     "train_wer": entry.get("eval_train_subset_wer", ""),
                     "train_cer": entry.get("eval_train_subset_cer", ""),
                     "learning_rate": window[-1].get("learning_rate", "") if window else ""})
        previous = step
    return rows


# Copied from train_whisper.write_csv
def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows({key: "" if value is None else value for key, value in row.items()} for row in rows)


# Copied from train_whisper.HistoryCsvCallback
class HistoryCsvCallback(TrainerCallback):
    """Rewrites history.csv after every evaluation from the Trainer's log history (which a resume restores),
    so the curves exist even if the run is cut off."""

    def __init__(self, path: Path):
        self.path = path

    def on_step_end(self, args, state, control, **kwargs):
        # Log the training loss right before each evaluation, so train_loss covers exactly that window.
        control.should_log = control.should_log or control.should_evaluate
        return control

    on_epoch_end = on_step_end

    def on_evaluate(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            write_csv(self.path, history_rows(state.log_history), HISTORY_COLUMNS)


# Copied from train_whisper.TrainClockCallback
class TrainClockCallback(TrainerCallback, ExportableState):
    """Training seconds summed over every session of a resumed run (stored in each checkpoint)."""

    def __init__(self, seconds_before: float = 0.0):
        self.seconds_before = seconds_before
        self.started = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def seconds(self) -> float:
        return self.seconds_before + (time.perf_counter() - self.started if self.started else 0.0)

    def state(self) -> dict:
        return {"args": {}, "attributes": {"seconds_before": self.seconds()}}


# Copied from train_whisper.ValidationEarlyStopping
class ValidationEarlyStopping(EarlyStoppingCallback):
    """Early stopping that reads only the validation evaluation: the train-subset evaluation that follows
    it carries no validation score and is no reason to warn or to count."""

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if metrics and args.metric_for_best_model in metrics:
            super().on_evaluate(args, state, control, metrics=metrics, **kwargs)


# Copied from train_whisper.run_callbacks
def run_callbacks(args: argparse.Namespace) -> list:
    """history.csv, the training clock, early stopping, and TensorBoard logs in the run folder's runs/ in
    every mode (by itself an evaluation without training writes them into ./runs of the current folder); none
    for --estimate, which leaves no run behind."""
    if args.estimate:
        return []
    callbacks = [HistoryCsvCallback(args.output_dir / "history.csv"), TrainClockCallback(), RunSettingsCallback()]
    if importlib.util.find_spec("tensorboard"):
        from transformers.integrations import TensorBoardCallback

        tensorboard = TensorBoardCallback()
        tensorboard.logging_dir = str(args.output_dir / "runs")
        callbacks.append(tensorboard)
    if args.patience > 0 and not args.eval_only:
        callbacks.append(ValidationEarlyStopping(early_stopping_patience=args.patience))
    return callbacks


# Copied from train_whisper.RunSettingsCallback
class RunSettingsCallback(TrainerCallback, ExportableState):
    """Records in each checkpoint the optimizer and batch it was trained with, for the check on resume (the
    checkpoint's training_args.bin holds them too, but only unpickling code would read it)."""

    def __init__(self):
        self.settings = {}

    def on_step_end(self, args, state, control, **kwargs):
        self.settings = {"optim": str(getattr(args.optim, "value", args.optim)),
                         "batch_size": args.per_device_train_batch_size,
                         "grad_accum": args.gradient_accumulation_steps, "world_size": args.world_size}

    def state(self) -> dict:
        return {"args": {}, "attributes": {"settings": self.settings}}


# Copied from train_whisper.train_clock
def train_clock(trainer) -> TrainClockCallback:
    """The clock the Trainer holds: a resume replaces it with the one restored from the checkpoint."""
    return next(callback for callback in trainer.callback_handler.callbacks
                if isinstance(callback, TrainClockCallback))


# Copied from train_whisper.trainer_settings
def trainer_settings(args: argparse.Namespace, precision: str, optim: str) -> dict:
    """The TrainingArguments every trainer shares: evaluation and checkpoint together (each epoch or every
    --eval-every steps), the best model by BEST_METRIC loaded at the end, resumable callback states."""
    every = {"eval_strategy": "steps", "eval_steps": args.eval_every, "save_strategy": "steps",
             "save_steps": args.eval_every} if args.eval_every else {"eval_strategy": "epoch", "save_strategy": "epoch"}
    return dict(
        output_dir=str(args.output_dir), num_train_epochs=args.epochs, max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=args.eval_batch_size,
        gradient_accumulation_steps=args.grad_accum, learning_rate=args.lr,
        warmup_steps=args.warmup_ratio,  # a float below 1 is a share of the steps in transformers 5
        lr_scheduler_type=args.scheduler, weight_decay=args.weight_decay, optim=optim,
        fp16=precision == "fp16", bf16=precision == "bf16",
        **every, load_best_model_at_end=True, metric_for_best_model=BEST_METRIC, greater_is_better=False,
        save_total_limit=args.save_total_limit, logging_steps=args.logging_steps,
        seed=args.seed, dataloader_num_workers=args.num_workers, dataloader_pin_memory=torch.cuda.is_available(),
        # The collator reads `sentence`; peft wrappers hide the label name.
        remove_unused_columns=False, label_names=["labels"],
        # Early-stopping patience and the training clock continue across a resume.
        restore_callback_states_from_checkpoint=True,
        # Without CUDA, torchrun's processes only form a DDP group (gloo) when told they run on the CPU.
        use_cpu=not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1,
        report_to="none",  # TensorBoard comes from run_callbacks, with its logs in the run folder
        disable_tqdm=not IS_MAIN_PROCESS,
    )


def training_arguments(args: argparse.Namespace, precision: str, optim: str) -> TrainingArguments:
    """The shared settings, with batches of clips of similar length (little padding; lengths from `duration`,
    no pass over the audio) and non-reentrant activation checkpointing (the reentrant kind fails with
    "backward through the graph a second time")."""
    return TrainingArguments(
        **trainer_settings(args, precision, optim),
        train_sampling_strategy="group_by_length", length_column_name="duration",
        ddp_find_unused_parameters=args.layerdrop > 0,  # a skipped layer gets no gradient in that step
        activation_checkpointing=args.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if args.gradient_checkpointing else None)


def memory_setting(args: argparse.Namespace) -> str:
    """Wav2Vec2's next memory saving once the batch is 1 and activations are recomputed."""
    if args.optim not in ("adamw_bnb_8bit", "adafactor"):
        return "--optim adamw_bnb_8bit (pip install bitsandbytes) or --optim adafactor"
    if args.max_duration > 6:
        return f"--max-duration {args.max_duration / 2:g}"
    return "a smaller --model (a base-sized checkpoint) or a GPU with more memory"


# Copied from train_whisper.next_setting_after_oom
def next_setting_after_oom(args: argparse.Namespace) -> str:
    """What to change after a CUDA out-of-memory error, cheapest loss of speed first."""
    if args.batch_size > 1:
        return (f"--batch-size {args.batch_size // 2} --grad-accum {args.grad_accum * 2} (same effective batch; "
                f"if it ran out while evaluating: --eval-batch-size {max(args.eval_batch_size // 2, 1)})")
    if not args.gradient_checkpointing:
        return "--gradient-checkpointing"
    return memory_setting(args)


# Copied from train_whisper.oom_advice
def oom_advice(args: argparse.Namespace) -> str:
    """The flags to add after a CUDA out-of-memory error, with the low-memory preset where it is not in use."""
    low_vram = "" if "low-vram" not in PRESETS or args.preset == "low-vram" else ", or with --preset low-vram"
    return f"{next_setting_after_oom(args)}{low_vram}"


# Copied from train_whisper.StepClock
class StepClock(TrainerCallback):
    """The moment each optimizer step ends (after the GPU has finished it), for --estimate."""

    def __init__(self):
        self.ends = []

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.ends.append(time.perf_counter())


# Copied from train_whisper.folder_mb
def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


# Copied from train_whisper.peak_memory_mb
def peak_memory_mb() -> dict:
    """The peak memory of this process so far: allocated and reserved on the GPU, or resident on the CPU."""
    if torch.cuda.is_available():
        return {"allocated": round(torch.cuda.max_memory_allocated() / 2**20, 1),
                "reserved": round(torch.cuda.max_memory_reserved() / 2**20, 1)}
    if os.name == "nt":  # no resource module on Windows; requirements.txt installs psutil there
        if importlib.util.find_spec("psutil") is None:
            return {"rss": None}
        import psutil

        return {"rss": round(psutil.Process().memory_info().peak_wset / 2**20, 1)}
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux, bytes on macOS
    return {"rss": round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)}


# Copied from train_whisper.time_training
def time_training(trainer, args: argparse.Namespace) -> float:
    """Seconds per optimizer step (gradient accumulation included) over --estimate-steps real steps, after one
    untimed warm-up step; the Trainer saves and evaluates nothing meanwhile."""
    clock = StepClock()
    trainer.add_callback(clock)
    trainer.args.max_steps = args.estimate_steps + 1
    trainer.args.save_strategy = trainer.args.eval_strategy = "no"
    trainer.args.load_best_model_at_end = False
    trainer.train()
    return (clock.ends[-1] - clock.ends[0]) / args.estimate_steps


# Copied from train_whisper.time_eval_batch
def time_eval_batch(trainer) -> float:
    """Seconds for one validation batch as evaluation runs it (generation for Whisper)."""
    batch = trainer._prepare_inputs(next(iter(trainer.get_eval_dataloader(trainer.eval_dataset["validation"]))))
    trainer.model.eval()
    start = time.perf_counter()
    trainer.prediction_step(trainer.model, batch, prediction_loss_only=False)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


# Copied from train_whisper.estimate_run
def estimate_run(trainer, args: argparse.Namespace, test_size: int) -> dict:
    """--estimate: time, memory and disk of the run these settings would make, from a few real steps and one
    evaluation batch, written to OUTPUT_DIR/estimate.json; everything the Trainer writes meanwhile goes to a
    temporary folder that is deleted."""
    world = trainer.args.world_size
    steps_per_epoch = math.ceil(len(trainer.get_train_dataloader()) / args.grad_accum)
    total_steps = args.max_steps if args.max_steps > 0 else math.ceil(args.epochs * steps_per_epoch)
    evaluations = total_steps // args.eval_every if args.eval_every else math.ceil(total_steps / steps_per_epoch)
    eval_batches = sum(math.ceil(len(split) / (args.eval_batch_size * world))
                       for split in trainer.eval_dataset.values())
    test_batches = math.ceil(test_size / args.eval_batch_size)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    estimate = {"device": device_description(trainer)}
    # ignore_cleanup_errors: Windows may still hold a just-written file open; the temp folder is the OS's to clear.
    with tempfile.TemporaryDirectory(prefix="estimate-", ignore_cleanup_errors=True) as scratch:
        trainer.args.output_dir = scratch
        try:
            step_seconds = time_training(trainer, args)
            eval_seconds = time_eval_batch(trainer)
        except torch.cuda.OutOfMemoryError:
            step_seconds = eval_seconds = None
        else:
            trainer._save_checkpoint(trainer.model, trial=None)
            checkpoint_mb = folder_mb(Path(scratch))
    estimate["peak_memory_mb"] = peak_memory_mb()
    if step_seconds is None:
        estimate.update({key: None for key in ("seconds_per_step", "epoch_minutes", "total_minutes", "checkpoint_mb",
                                               "disk_needed_mb")})
        estimate.update(steps_per_epoch=steps_per_epoch, fits=False,
                        advice=f"CUDA out of memory: try --estimate again with {oom_advice(args)}")
    else:
        # Trainer keeps --save-total-limit checkpoints, and one more when the best would fall out (limit 1).
        kept = min(evaluations, max(args.save_total_limit, 2)) if args.save_total_limit else evaluations
        best_mb = sum(p.numel() * p.element_size() for p in trainer.model.parameters()) / 2**20
        disk_needed = kept * checkpoint_mb + best_mb
        minutes = (total_steps * step_seconds + (evaluations * eval_batches + test_batches) * eval_seconds) / 60
        estimate.update(seconds_per_step=round(step_seconds, 4), steps_per_epoch=steps_per_epoch,
                        epoch_minutes=round(steps_per_epoch * step_seconds / 60, 3), total_minutes=round(minutes, 3),
                        checkpoint_mb=round(checkpoint_mb, 2), disk_needed_mb=round(disk_needed, 2))
        existing = next(folder for folder in [args.output_dir, *args.output_dir.parents] if folder.exists())
        free_mb = shutil.disk_usage(existing).free / 2**20
        estimate["fits"] = free_mb >= disk_needed
        if not estimate["fits"]:
            estimate["advice"] = (f"the run needs {disk_needed:.0f} MB and {existing} has {free_mb:.0f} MB free: "
                                  "free some space or lower --save-total-limit")
    order = ["device", "peak_memory_mb", "seconds_per_step", "steps_per_epoch", "epoch_minutes", "total_minutes",
             "checkpoint_mb", "disk_needed_mb", "fits", "advice"]
    estimate = {key: estimate[key] for key in order if key in estimate}
    if IS_MAIN_PROCESS:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        write_json(args.output_dir / "estimate.json", estimate)
    say(json.dumps(estimate, indent=2))
    return estimate


# Copied from train_whisper.run_training
def run_training(trainer, args: argparse.Namespace, checkpoint: Path | None) -> None:
    """Step 7: trainer.train() (trainer.evaluate() with --eval-only), turning an out-of-memory error or Ctrl-C
    into what to type next."""
    if args.eval_only:
        trainer.evaluate()
        return
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    say(f"Training {trainable:,} parameters on {device_description(trainer)}, {trainer.args.num_train_epochs:g} "
        f"epochs{f' or {args.max_steps} steps' if args.max_steps > 0 else ''}.")
    try:
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except torch.cuda.OutOfMemoryError:
        kept = last_complete_checkpoint(args.output_dir)
        raise InputError(f"CUDA out of memory. {'Kept ' + str(kept) if kept else 'No checkpoint was complete yet'}; "
                         f"re-run the same command with {oom_advice(args)}.")
    except KeyboardInterrupt:
        kept = last_complete_checkpoint(args.output_dir)
        raise InputError(f"Stopped. Re-run the same command to continue from "
                         f"{kept if kept else 'the start (no checkpoint was complete yet)'}.")


# ----------------------------------------------------------------------------- 8. test

# The decoder's files, in pyctcdecode's layout (what Wav2Vec2ProcessorWithLM saves and pipeline() loads):
# best_model/alphabet.json and best_model/language_model/{attrs.json, unigrams.txt, lm.arpa}.
LM_FOLDER = "language_model"
LM_BUILD_FOLDER = ".language-model-build"  # in --output-dir while the run decodes its test split; removed after
LM_TUNE_UTTERANCES = 300  # validation utterances the alpha/beta search decodes (each setting decodes them all)
LM_ALPHAS = (0.3, 0.5, 0.8, 1.2)  # LM weights tried first (with word bonus 1.0), then the bonuses
LM_BETAS = (0.0, 1.0, 2.0, 3.0)
# Vietnamese spelling: initial consonants (longest first) and the tone marks, as combining characters.
ONSETS = ("ngh", "ng", "nh", "ch", "gh", "gi", "kh", "ph", "qu", "th", "tr",
          "b", "c", "d", "đ", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "x")
TONE_MARKS = ("\u0300", "\u0301", "\u0303", "\u0309", "\u0323")  # huyền, sắc, ngã, hỏi, nặng
STOP_TONES = ("\u0301", "\u0323")  # a syllable ending in p, t, c or ch takes sắc or nặng only
VOWELS = set("aăâeêioôơuưy")
RHYME = re.compile("[aăâeêioôơuưy]{1,3}(?:ch|nh|ng|[cmnpt])?")  # vowels, then at most one final consonant
# c, g and ng are written k, gh and ngh before e, ê, i (and y): either spelling elsewhere is not a word.
FRONT_ONLY = {"k", "gh", "ngh"}
NOT_FRONT = {"c", "g", "ng"}


def lm_packages_missing() -> str | None:
    """None when pyctcdecode and kenlm import; else what to install, for the one line that says why
    decoding is greedy."""
    missing = [name for name in ("pyctcdecode", "kenlm") if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    return (f"{' and '.join(missing)} not installed, so decoding is greedy (no language model); "
            "to decode with it: pip install --no-deps -r requirements-lm.txt (kenlm needs a C++ compiler: "
            "see the README)")


def syllable_parts(word: str) -> tuple[str, str, int | None, str] | None:
    """(onset, toneless rhyme, index in the rhyme of the letter carrying the tone mark, tone mark) of a
    Vietnamese syllable, or None for a word that is not one (a loan word, a letter run)."""
    letters, tone, tone_at = [], "", None
    for ch in unicodedata.normalize("NFD", word):
        if ch in TONE_MARKS:
            if tone or not letters:
                return None
            tone, tone_at = ch, len(letters) - 1
        elif unicodedata.combining(ch):
            if not letters:
                return None
            letters[-1] += ch
        else:
            letters.append(ch)
    toneless = unicodedata.normalize("NFC", "".join(letters))
    onset = next((o for o in ONSETS if toneless.startswith(o) and RHYME.fullmatch(toneless[len(o):])), "")
    rhyme = toneless[len(onset):]
    if not RHYME.fullmatch(rhyme):
        return None
    if tone_at is not None and tone_at < len(onset):
        return None
    return onset, rhyme, None if tone_at is None else tone_at - len(onset), tone


def spelled(onset: str, rhyme: str) -> bool:
    """Whether onset + rhyme follows the spelling rules (k/gh/ngh before front vowels, qu without a second u)."""
    front = unicodedata.normalize("NFD", rhyme)[0] in "eiy"
    if onset in FRONT_ONLY and not front or onset in NOT_FRONT and front:
        return False
    return not (onset == "qu" and rhyme.startswith("u") or onset == "gi" and rhyme.startswith("i"))


def with_tone(onset: str, rhyme: str, position: int, tone: str) -> str:
    letters = list(onset + rhyme)
    at = len(onset) + position
    letters[at] = unicodedata.normalize("NFC", unicodedata.normalize("NFD", letters[at]) + tone)
    return unicodedata.normalize("NFC", "".join(letters))


def possible_syllables(words: set[str]) -> set[str]:
    """Vietnamese syllables the given words make possible: every onset seen in them with every rhyme seen in
    them, in every tone the rhyme allows, spelled by the rules and with the tone mark on the letter the
    words put it. A Vietnamese word is one syllable from a closed set of a few thousand, so this covers most
    words a test set uses that the train text lacks, without reaching beyond the text's own spelling."""
    onsets, rhymes = {""}, {}
    for word in words:
        parts = syllable_parts(word)
        if parts is None:
            continue
        onset, rhyme, position, _ = parts
        onsets.add(onset)
        if position is not None or rhyme not in rhymes:
            rhymes[rhyme] = position if position is not None else rhymes.get(rhyme)
    syllables = set()
    for rhyme, position in rhymes.items():
        stop = rhyme.endswith(("p", "t", "c", "ch"))
        tones = STOP_TONES if stop else ("",) + TONE_MARKS
        for onset in onsets:
            if not spelled(onset, rhyme):
                continue
            for tone in tones:
                if tone == "":
                    syllables.add(onset + rhyme)
                elif position is not None:
                    syllables.add(with_tone(onset, rhyme, position, tone))
    return syllables


def ngram_counts(sentences: list[str], order: int) -> list[Counter]:
    """Counts of every 1..order-gram in the sentences, each padded with <s> and </s>."""
    counts = [Counter() for _ in range(order)]
    for sentence in sentences:
        words = ["<s>", *sentence.split(), "</s>"]
        for n in range(1, order + 1):
            counts[n - 1].update(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    del counts[0][("<s>",)]
    return counts


def kneser_ney_counts(counts: list[Counter]) -> list[Counter]:
    """Kneser-Ney's counts: the highest order keeps its counts; a lower-order n-gram counts the distinct
    words seen before it (how many contexts it continues), except one starting with <s>, which has none."""
    adjusted = [Counter() for _ in counts]
    adjusted[-1] = Counter(counts[-1])
    for n in range(len(counts) - 1, 0, -1):
        for gram in counts[n]:
            adjusted[n - 1][gram[1:]] += 1
        for gram, count in counts[n - 1].items():
            if gram[0] == "<s>":
                adjusted[n - 1][gram] = count
    return adjusted


def write_arpa(sentences: list[str], order: int, extra_words: set[str], path: Path) -> dict:
    """An interpolated Kneser-Ney word n-gram model of the sentences, in ARPA format (what KenLM reads).
    The unigram level is interpolated with a uniform distribution over the seen words plus `extra_words`,
    so a word the text lacks but the language allows costs a small known probability, not the decoder's
    unknown-word penalty. Returns counts for run_info.json."""
    counts = kneser_ney_counts(ngram_counts(sentences, order))
    discounts = []
    for level in counts:
        n1 = sum(1 for c in level.values() if c == 1)
        n2 = sum(1 for c in level.values() if c == 2)
        discounts.append(min(max(n1 / (n1 + 2 * n2), 0.1), 0.9) if n1 and n2 else 0.5)
    seen = {gram[0] for gram in counts[0]}
    vocabulary = (seen | set(extra_words) | {"<unk>"}) - {"<s>"}
    histories = [dict() for _ in range(order)]  # per order n: history -> (total count, distinct next words)
    for n in range(1, order):
        totals: dict = {}
        for gram, count in counts[n].items():
            total, types = totals.get(gram[:-1], (0, 0))
            totals[gram[:-1]] = (total + count, types + 1)
        histories[n] = totals
    total = sum(counts[0].values())
    uniform_share = discounts[0] * len(counts[0]) / total / len(vocabulary)
    probs = [{} for _ in range(order)]
    for word in vocabulary:
        probs[0][(word,)] = max(counts[0].get((word,), 0) - discounts[0], 0) / total + uniform_share
    for n in range(1, order):
        for gram, count in counts[n].items():
            history_total, history_types = histories[n][gram[:-1]]
            backoff = discounts[n] * history_types / history_total
            probs[n][gram] = (count - discounts[n]) / history_total + backoff * probs[n - 1][gram[1:]]
    backoffs = [{} for _ in range(order)]
    for n in range(1, order):
        for history, (history_total, history_types) in histories[n].items():
            backoffs[n - 1][history] = discounts[n] * history_types / history_total
    with open(path, "w", encoding="utf-8", newline="\n") as arpa:
        arpa.write("\\data\\\n")
        sizes = [len(probs[0]) + 1] + [len(level) for level in probs[1:]]
        arpa.writelines(f"ngram {n + 1}={size}\n" for n, size in enumerate(sizes))
        for n in range(order):
            arpa.write(f"\n\\{n + 1}-grams:\n")
            if n == 0:
                arpa.write(f"-99\t<s>\t{math.log10(backoffs[0].get(('<s>',), 1.0)):.6f}\n")
            for gram, prob in sorted(probs[n].items()):
                line = f"{math.log10(prob):.6f}\t{' '.join(gram)}"
                if n < order - 1:  # pyctcdecode reads unigrams from lines with three fields
                    line += f"\t{math.log10(backoffs[n].get(gram, 1.0)):.6f}"
                arpa.write(line + "\n")
        arpa.write("\n\\end\\\n")
    return {"order": order, "ngrams": sizes, "words_in_text": len(seen - {"</s>"}),
            "words_added": len(vocabulary - seen - {"<unk>"}), "discounts": [round(d, 3) for d in discounts]}


def lm_labels(vocab: dict[str, int]) -> list[str]:
    """The CTC vocabulary in id order, as pyctcdecode reads it ([PAD] the blank, | the space, [UNK] ⁇)."""
    return [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]


def build_lm_decoder(vocab: dict[str, int], sentences: list[str], order: int, folder: Path) -> tuple:
    """A pyctcdecode beam-search decoder with a word n-gram model of `sentences` (written to folder/lm.arpa):
    (decoder, facts for run_info.json)."""
    from pyctcdecode import build_ctcdecoder

    words = {word for sentence in sentences for word in sentence.split()}
    writable = set(vocab) - {"[PAD]", "[UNK]", "|"}  # a word with a letter the model never writes is no use
    folder.mkdir(parents=True, exist_ok=True)
    arpa = folder / "lm.arpa"
    facts = write_arpa(sentences, order, {s for s in possible_syllables(words) if set(s) <= writable}, arpa)
    unigrams = [line.split("\t")[1] for line in arpa.read_text(encoding="utf-8").split("\\2-grams:")[0].splitlines()
                if line.count("\t") == 2]
    decoder = build_ctcdecoder(lm_labels(vocab), str(arpa), unigrams=unigrams)
    return decoder, {**facts, "sentences": len(sentences)}


def lm_decode(decoder, log_probs: list[np.ndarray], beam_width: int) -> list[str]:
    return [decoder.decode(frames, beam_width=beam_width) for frames in log_probs]


def tune_lm_decoder(decoder, log_probs: list[np.ndarray], references: list[str], greedy: list[str],
                    lm_sentences: set[str], beam_width: int) -> dict:
    """Choose the LM weight (alpha) and word bonus (beta) on validation: alpha first (beta 1), then beta.
    Only utterances whose sentence the LM's text lacks are used when there are enough of them: on a
    sentence the LM has seen, its weight looks better than it is on new text."""
    new = [i for i, reference in enumerate(references) if reference not in lm_sentences]
    if len(new) >= min(20, len(references)):
        chosen, basis = new, (f"{len(new)} of {len(references)} validation utterances, those whose sentence "
                              "is not in the language model's text")
    else:
        chosen, basis = list(range(len(references))), (
            f"all {len(references)} validation utterances: only {len(new)} have a sentence outside the language "
            "model's text, so the chosen weight may favour the model's text more than new sentences need")
    if len(chosen) > LM_TUNE_UTTERANCES:
        chosen = [chosen[int(k)] for k in np.linspace(0, len(chosen) - 1, LM_TUNE_UTTERANCES)]
        basis += f"; {LM_TUNE_UTTERANCES} of them, spread evenly, decoded for each setting"
    refs = [references[i] for i in chosen]
    grid = []

    def wer_at(alpha: float, beta: float) -> float:
        decoder.reset_params(alpha=float(alpha), beta=float(beta))
        hyps = [normalize_text(text) for text in lm_decode(decoder, [log_probs[i] for i in chosen], beam_width)]
        grid.append({"alpha": alpha, "beta": beta, "wer": round(compute_wer_cer(refs, hyps)["wer"], 5)})
        return grid[-1]["wer"]

    alpha = min(LM_ALPHAS, key=lambda a: wer_at(a, 1.0))
    beta = min(LM_BETAS, key=lambda b: wer_at(alpha, b) if b != 1.0 else
               next(g["wer"] for g in grid if g["alpha"] == alpha and g["beta"] == 1.0))
    best = next(g["wer"] for g in grid if g["alpha"] == alpha and g["beta"] == beta)
    greedy_wer = compute_wer_cer(refs, [greedy[i] for i in chosen])["wer"]
    decoder.reset_params(alpha=float(alpha), beta=float(beta))
    return {"alpha": alpha, "beta": beta, "beam_width": beam_width, "tuned_on": basis,
            "validation_wer_lm": best, "validation_wer_greedy": round(greedy_wer, 5), "grid": grid}


def add_lm_arguments(group) -> None:
    group.add_argument("--lm-order", type=int, default=3,
                       help="word n-gram language model for the test split, transcribe.py and demo.py, built from "
                            "the train transcripts (never validation or test) and weighted on validation "
                            "(default 3; 0: greedy decoding only)")
    group.add_argument("--lm-beam-width", type=int, default=64,
                       help="beams the language-model decoder keeps (default 64; fewer is faster, a little less "
                            "accurate); transcribe.py and demo.py have --beam-width")
    group.add_argument("--lm-text", type=Path, metavar="FILE",
                       help="more text for the language model: one sentence a line, UTF-8 (normalised like the "
                            "transcripts; sentences of the validation or test split are left out)")


def check_lm_arguments(args: argparse.Namespace, dataset) -> list[str]:
    """--lm-order and --lm-text checked before any training; returns --lm-text's sentences."""
    if not 0 <= args.lm_order <= 6:
        raise InputError(f"--lm-order {args.lm_order}: give 0 (no language model) or an order from 1 to 6 (3 is usual).")
    if args.lm_beam_width < 1:
        raise InputError(f"--lm-beam-width {args.lm_beam_width}: give 1 or more (64 is usual).")
    if args.lm_text is None or args.lm_order == 0:
        return []
    held_out = {normalize_text(s) for name in ("validation", "test") for s in dataset[name]["sentence"]}
    return read_lm_text(args.lm_text, held_out)


def best_path_text(log_probs: np.ndarray, labels: list[str]) -> str:
    """Greedy CTC text of one utterance's (frames x vocabulary) scores: repeats merged, blanks (id 0)
    dropped, `|` a space, [UNK] dropped."""
    ids = log_probs.argmax(axis=-1)
    keep = np.ones(len(ids), dtype=bool)
    keep[1:] = ids[1:] != ids[:-1]
    text = "".join(" " if labels[i] == "|" else "" if labels[i] in ("[PAD]", "[UNK]") else labels[i]
                   for i in ids[keep])
    return " ".join(text.split())


def language_model_for_test(args: argparse.Namespace, vocab: dict[str, int], dataset, lm_text: list[str],
                            log_probs_of) -> tuple:
    """Step 8's decoder: pyctcdecode with a word n-gram model of the train transcripts (and --lm-text), its
    weights chosen on validation; None, with the reason, when --lm-order is 0, pyctcdecode or kenlm is
    missing, or greedy decoding scores better on validation. `log_probs_of(split name)` gives each
    utterance's (frames x vocabulary) log-probabilities. Returns (decoder, run_info's "language_model")."""
    if args.lm_order == 0:
        return None, {"used": False, "reason": "--lm-order 0"}
    missing = lm_packages_missing()
    if missing:
        say(missing)
        return None, {"used": False, "reason": missing}
    sentences = [s for s in (normalize_text(s) for s in dataset["train"]["sentence"]) if s] + lm_text
    say(f"Language model: {args.lm_order}-gram of {len(sentences)} sentences (train transcripts"
        f"{' and --lm-text' if lm_text else ''}); choosing its weight on validation")
    decoder, facts = build_lm_decoder(vocab, sentences, args.lm_order, args.output_dir / LM_BUILD_FOLDER)
    log_probs = log_probs_of("validation")
    labels = lm_labels(vocab)
    greedy = [normalize_text(best_path_text(frames, labels)) for frames in log_probs]
    references = [normalize_text(s) for s in dataset["validation"]["sentence"]]
    tuning = tune_lm_decoder(decoder, log_probs, references, greedy, set(sentences), args.lm_beam_width)
    info = {"used": True, **facts, "extra_text": str(args.lm_text) if lm_text else None,
            "extra_sentences": len(lm_text), **tuning}
    if tuning["validation_wer_lm"] > tuning["validation_wer_greedy"]:
        say(f"Language model: validation WER {tuning['validation_wer_lm']:.4f} against {tuning['validation_wer_greedy']:.4f} "
            "greedy, so the test split and best_model/ decode greedily")
        return None, {**info, "used": False, "reason": "greedy decoding scored better on validation"}
    say(f"Language model: alpha {tuning['alpha']}, beta {tuning['beta']}; validation WER "
        f"{tuning['validation_wer_lm']:.4f} (greedy {tuning['validation_wer_greedy']:.4f})")
    return decoder, info


def add_greedy_scores(rows: list[dict], metrics: dict, greedy_raw: list[str], greedy_seconds: float,
                      decoder: str) -> None:
    """Beside the default decoder's text and scores, the greedy ones: test_predictions.csv's
    greedy_prediction, greedy_wer, greedy_cer and test_metrics.json's greedy_wer, greedy_cer."""
    for row, raw in zip(rows, greedy_raw):
        text = normalize_text(raw)
        scores = compute_wer_cer([row["reference"]], [text])
        row.update({"greedy_prediction": text, "greedy_wer": scores["wer"], "greedy_cer": scores["cer"]})
    corpus = compute_wer_cer([row["reference"] for row in rows], [row["greedy_prediction"] for row in rows])
    metrics.update({"decoder": decoder, "greedy_wer": corpus["wer"], "greedy_cer": corpus["cer"],
                    "greedy_decode_seconds": round(greedy_seconds, 3)})


def read_lm_text(path: Path, held_out: set[str]) -> list[str]:
    """--lm-text's sentences, normalised, without those of the validation and test splits (a language model
    that knows a test sentence makes the test score meaningless)."""
    if not path.is_file():
        found = "a folder" if path.is_dir() else "no such file"
        raise InputError(f"--lm-text {quoted(path)}: {found}. Give a text file with one sentence a line.")
    data = path.read_bytes()
    encoding = "utf-16" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig"
    try:
        lines = data.decode(encoding).splitlines()
    except UnicodeDecodeError as error:
        raise InputError(f"--lm-text {quoted(path)} is not UTF-8 (byte {error.start}): save it as UTF-8 "
                         "(in Notepad: Save as, Encoding UTF-8) and run again.") from None
    sentences = [normalize_text(line) for line in lines]
    kept = [s for s in sentences if s and s not in held_out]
    if len(kept) < sum(1 for s in sentences if s):
        say(f"--lm-text: left out {sum(1 for s in sentences if s) - len(kept)} sentences that the validation or "
            "test split contains")
    return kept

def transcribe_with_trainer(trainer, split, tokenizer) -> tuple[list[str], float]:
    """Batched greedy CTC decoding with the loaded (best) model: (raw transcripts, seconds it took).
    Clips go in order of length, so a batch pads little (models without an attention mask hear the padding)."""
    order = np.argsort([float(d) for d in split["duration"]], kind="stable")
    start = time.perf_counter()
    output = trainer.predict(model_inputs(split.select(order)), metric_key_prefix="test")
    seconds = time.perf_counter() - start
    texts = [""] * len(order)
    for index, text in zip(order, decode_predictions(tokenizer, output.predictions)):
        texts[index] = text
    return texts, seconds


@torch.no_grad()
def ctc_log_probs(model, processor, split, batch_size: int) -> list[np.ndarray]:
    """Each utterance's (frames x vocabulary) log-probabilities, in split order, for the language-model
    decoder; clips go in batches of similar length, as in transcribe_with_trainer."""
    model.eval()
    device = next(model.parameters()).device
    rows, collate = model_inputs(split), DataCollatorCTCWithPadding(processor)
    order = np.argsort([float(d) for d in split["duration"]], kind="stable")
    log_probs: list = [None] * len(order)
    for start in range(0, len(order), batch_size):
        chosen = [int(i) for i in order[start: start + batch_size]]
        batch = collate([rows[i] for i in chosen])
        inputs = {key: batch[key].to(device) for key in ("input_values", "attention_mask") if key in batch}
        scores = model(**inputs).logits.float().log_softmax(dim=-1).cpu().numpy()
        frames = model._get_feat_extract_output_lengths(clip_samples(batch)).tolist()
        for i, utterance, n in zip(chosen, scores, frames):
            log_probs[i] = utterance[:n]
    return log_probs


# Copied from train_whisper.test_predictions
def test_predictions(split, raw_predictions: list[str]) -> list[dict]:
    """Rows of test_predictions.csv: normalised reference and prediction, per-utterance WER and CER."""
    rows = []
    for example, raw in zip(split.select_columns(["id", "speaker", "duration", "sentence"]), raw_predictions):
        reference, prediction = normalize_text(example["sentence"]), normalize_text(raw)
        scores = compute_wer_cer([reference], [prediction])
        rows.append({"id": example["id"], "speaker": example["speaker"], "duration": round(example["duration"], 3),
                     "reference": reference, "prediction": prediction, "raw_prediction": raw,
                     "wer": scores["wer"], "cer": scores["cer"]})
    return rows


# Copied from train_whisper.test_metrics
def test_metrics(rows: list[dict], decode_seconds: float) -> dict:
    """test_metrics.json: corpus scores, amount of audio, decoding time and real-time factor."""
    metrics = compute_wer_cer([r["reference"] for r in rows], [r["prediction"] for r in rows])
    audio_seconds = float(sum(r["duration"] for r in rows))
    metrics.update({"num_utterances": len(rows), "audio_seconds": round(audio_seconds, 3),
                    "decode_seconds": round(decode_seconds, 3),
                    "rtf": round(decode_seconds / audio_seconds, 5) if audio_seconds else None})
    return metrics


# ----------------------------------------------------------------------------- 9. run folder

def remove_saved_language_model(folder: Path) -> None:
    """The language model an earlier session of this run saved in best_model/: it belongs to other weights
    (and pyctcdecode will not save over it)."""
    shutil.rmtree(folder / LM_FOLDER, ignore_errors=True)
    (folder / "alphabet.json").unlink(missing_ok=True)


def save_processor(processor: Wav2Vec2Processor, decoder, folder: Path) -> None:
    """The processor, and with a language model the Wav2Vec2ProcessorWithLM layout (alphabet.json,
    language_model/), which pipeline("automatic-speech-recognition") loads and decodes with by itself."""
    if decoder is None:
        processor.save_pretrained(folder)
        return
    from transformers import Wav2Vec2ProcessorWithLM
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its "removed in Transformers v6" notice: requirements.txt keeps v5
    try:
        Wav2Vec2ProcessorWithLM(feature_extractor=processor.feature_extractor, tokenizer=processor.tokenizer,
                                decoder=decoder).save_pretrained(folder)
    finally:
        hf_logging.set_verbosity(verbosity)
    # pipeline() looks for the processor class in the feature extractor's settings, which transformers 5 nests
    # in processor_config.json without it: put it there too, or pipeline() would decode greedily.
    config_path = folder / "processor_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["feature_extractor"]["processor_class"] = "Wav2Vec2ProcessorWithLM"
    write_json(config_path, config)


# Copied from train_whisper.stop_reason
def stop_reason(args: argparse.Namespace, state) -> str:
    if args.eval_only:
        return "eval_only"
    if args.max_steps > 0 and state.global_step >= args.max_steps:
        return "max_steps"
    return "early_stopping" if state.global_step < state.max_steps else "completed"


# Copied from train_whisper.best_evaluation
def best_evaluation(state) -> dict | None:
    """The validation log entry of the best checkpoint (the one the Trainer loaded at the end)."""
    return next((entry for entry in state.log_history
                 if entry.get("step") == state.best_global_step and BEST_METRIC in entry), None)


# Copied from train_whisper.versions
def versions() -> dict:
    """Versions of what produced the run (for the report's reproducibility table)."""
    found = {"python": platform.python_version()}
    for package in ("torch", "transformers", "datasets", "accelerate", "peft", "jiwer", "numpy", "bitsandbytes"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[package] = metadata.version(package)
    return found


# Copied from train_whisper.device_description
def device_description(trainer) -> str:
    world = trainer.args.world_size
    if torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)}) x{world}"
    return f"cpu x{world} process{'es' if world > 1 else ''}"


# Copied from train_whisper.run_facts
def run_facts(args: argparse.Namespace, trainer, checkpoint: Path | None, precision: str, optim: str) -> dict:
    """The run_info.json entries every trainer writes (docs/FORMATS.md): the settings, how the run ended and
    what it ran on; each trainer adds its model's and data's own."""
    state = trainer.state
    best = best_evaluation(state) or {}
    return {
        "base_model": args.model, "run_name": args.output_dir.name,
        "params_total": sum(p.numel() for p in trainer.model.parameters()),
        "params_trainable": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "optimizer": optim, "learning_rate": args.lr, "scheduler": args.scheduler,
        "warmup_steps": 0 if args.eval_only else trainer.args.get_warmup_steps(state.max_steps),
        "weight_decay": args.weight_decay, "batch_size": args.batch_size, "grad_accum": args.grad_accum,
        "effective_batch_size": args.batch_size * args.grad_accum * trainer.args.world_size,
        "precision": precision, "gradient_checkpointing": args.gradient_checkpointing, "preset": args.preset,
        "epochs_planned": args.epochs, "epochs_run": round(state.epoch or 0.0, 4),
        "best_epoch": round(best["epoch"], 4) if best else None, "best_step": best.get("step"),
        "best_val_wer": best.get("eval_validation_wer"), "best_val_cer": best.get("eval_validation_cer"),
        "stop_reason": stop_reason(args, state),
        "train_seconds": 0.0 if args.eval_only else round(train_clock(trainer).seconds(), 1),
        "peak_gpu_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)
        if torch.cuda.is_available() else None,
        "device": device_description(trainer),
        "resumed_from": str(checkpoint) if checkpoint else None, "eval_only": args.eval_only,
        "command": " ".join(["python", SCRIPT, *map(quoted, args.argv)]), "versions": versions(),
    }


# Copied from train_whisper.card_usage_and_settings
def card_usage_and_settings(name: str, run_info: dict) -> list[str]:
    """The end of a card: how to transcribe with the model, the settings it was trained with, the command."""
    lines = ["## Use", "", "```python", "from transformers import pipeline", "",
             f'asr = pipeline("automatic-speech-recognition", model="{name}")',
             'print(asr("audio.wav")["text"])  # 16 kHz mono', "```", "", "## Training settings", "",
             "| setting | value |", "| --- | --- |"]
    for key in ("learning_rate", "scheduler", "warmup_steps", "weight_decay", "batch_size", "grad_accum",
                "effective_batch_size", "optimizer", "precision", "lora", "params_trainable", "train_seconds",
                "device"):
        lines.append(f"| {key} | {run_info[key]} |")
    return lines + ["", f"Command: `{run_info['command']}`", ""]


# Copied from train_whisper.model_index
def model_index(name: str, metrics: dict) -> list[str]:
    """The end of a card's Hub metadata: the test WER and CER the Hub shows on the model page."""
    return ["model-index:", f"- name: {name}", "  results:", "  - task:", "      type: automatic-speech-recognition",
            "      name: Automatic Speech Recognition", "    dataset:", "      name: VIVOS",
            "      type: AILAB-VNUHCM/vivos", "      split: test", "    metrics:",
            f"    - {{type: wer, value: {100 * metrics['wer']:.2f}, name: Test WER}}",
            f"    - {{type: cer, value: {100 * metrics['cer']:.2f}, name: Test CER}}", "---", ""]


def decoding_sentence(run_info: dict, metrics: dict) -> str:
    """How the test split was decoded, for the model card."""
    lm = run_info["language_model"]
    if not lm["used"]:
        return f"greedy CTC decoding; no language model: {lm['reason']}"
    return (f"CTC beam search with a word {lm['order']}-gram language model of the train transcripts, alpha "
            f"{lm['alpha']}, beta {lm['beta']}, saved in language_model/; greedy decoding: WER "
            f"{100 * metrics['greedy_wer']:.2f} %, CER {100 * metrics['greedy_cer']:.2f} %")

def model_card(args: argparse.Namespace, run_info: dict, metrics: dict) -> str:
    """best_model/README.md: Hub metadata (language, base model, dataset, test scores) and the settings."""
    base_on_hub = not Path(args.model).exists()
    name = args.hub_model_id or args.output_dir.name
    lines = ["---", "language:", "- vi", "tags:", "- automatic-speech-recognition", "- wav2vec2", "- ctc", "- vivos",
             "datasets:", "- AILAB-VNUHCM/vivos", "metrics:", "- wer", "- cer",
             "pipeline_tag: automatic-speech-recognition"]
    if base_on_hub:
        lines.append(f"base_model: {args.model}")
    lines += model_index(name, metrics)
    trained = ("evaluated as it is (no fine-tuning)" if args.eval_only else
               f"fine-tuned with CTC for {run_info['epochs_run']:.2f} epochs (best epoch {run_info['best_epoch']}, "
               f"stopped: {run_info['stop_reason']})")
    vocabulary = run_info["vocabulary"]
    lines += [f"# {name}", "", f"Wav2Vec2 ({args.model}) {trained} on Vietnamese speech from the prepared dataset "
              f"`{args.data.name}` ({run_info['dataset']['splits']['train']} train utterances), text normalised "
              "(lower case, punctuation removed, tone marks kept).", "",
              f"Test WER **{100 * metrics['wer']:.2f} %**, CER **{100 * metrics['cer']:.2f} %** on "
              f"{metrics['num_utterances']} test utterances ({decoding_sentence(run_info, metrics)}, real-time "
              f"factor {metrics['rtf']}).",
              "", f"Output: {vocabulary['size']} character tokens (`{vocabulary['word_delimiter']}` between words, "
              f"`{PAD}` as the CTC blank); {vocabulary['origin']}.", ""]
    lines += card_usage_and_settings(name, run_info)
    lines += ["VIVOS (AILAB, VNU-HCM) is licensed CC BY-NC-SA 4.0; check it before any commercial use.", ""]
    return "\n".join(lines)


# Copied from train_whisper.push_best_model
def push_best_model(args: argparse.Namespace, best_dir: Path) -> None:
    """Upload best_model/ (weights, processor or vocabulary, card) to the Hub, as one commit."""
    from huggingface_hub import HfApi

    api = HfApi()
    repo_id = api.create_repo(args.hub_model_id or args.output_dir.name, exist_ok=True).repo_id
    api.upload_folder(folder_path=str(best_dir), repo_id=repo_id,
                      commit_message=f"best_model/ of {args.output_dir.name} ({SCRIPT})")
    say(f"Pushed {best_dir} to https://huggingface.co/{repo_id}")


# Copied from train_whisper.write_json
def write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False), encoding="utf-8")


# Copied from train_whisper.write_run_files
def write_run_files(trainer, rows: list[dict], metrics: dict, run_info: dict) -> Path:
    """The run folder's files besides best_model/: trainer_state.json, history.csv, test_predictions.csv,
    test_metrics.json and run_info.json (docs/FORMATS.md)."""
    out = Path(trainer.args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    trainer.save_state()
    write_csv(out / "history.csv", history_rows(trainer.state.log_history), HISTORY_COLUMNS)
    extra = [key for key in (rows[0] if rows else {}) if key not in PREDICTION_COLUMNS]  # CTC: greedy_*
    write_csv(out / "test_predictions.csv", rows, PREDICTION_COLUMNS + extra)
    write_json(out / "test_metrics.json", metrics)
    write_json(out / "run_info.json", run_info)
    return out


# Copied from train_whisper.finish_run_folder
def finish_run_folder(args: argparse.Namespace, best_dir: Path, card: str, run_info: dict, metrics: dict) -> None:
    """best_model/README.md, the upload when --push-to-hub asks for it, and the run in one line."""
    (best_dir / "README.md").write_text(card, encoding="utf-8")
    if args.push_to_hub:
        push_best_model(args, best_dir)
    say(final_line(run_info, metrics, best_dir.parent))


# Copied from train_whisper.final_line
def final_line(run_info: dict, metrics: dict, out: Path) -> str:
    """The run in one line: how training ended, the test scores and where the run folder is."""
    trained = ("evaluated as it is" if run_info["eval_only"] else
               f"best epoch {run_info['best_epoch']} (step {run_info['best_step']}), validation WER "
               f"{100 * (run_info['best_val_wer'] or 0):.2f} %, {run_info['stop_reason']}, "
               f"{run_info['train_seconds'] / 60:.1f} min of training")
    return (f"{out.name}: {trained}; test WER {100 * metrics['wer']:.2f} %, CER {100 * metrics['cer']:.2f} % "
            f"on {metrics['num_utterances']} utterances (RTF {metrics['rtf']}). Run folder: {out}")


# ----------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> dict:
    # 1. Settings.
    args, precision, optim = settings(argv)

    # 2. Checkpoint to resume.
    checkpoint = checkpoint_to_resume(args)
    check_resumed_settings(args, checkpoint, optim)

    # 3. Prepared dataset, checked.
    dataset, summary = load_prepared_dataset(args.data, {"input_values", "sentence", "duration"}, args.eval_only)
    lm_text = check_lm_arguments(args, dataset)

    # 4. Model and processor: the vocabulary decides the CTC head.
    check_model_folder(args.model)
    processor, vocabulary_origin = choose_processor(args, dataset, checkpoint)
    tokenizer = processor.tokenizer
    say(f"Vocabulary: {vocabulary_origin}.")
    known = tokenizer_characters(tokenizer)
    unknown = {name: missing_characters(list(dataset[name]["sentence"]), known) for name in ("validation", "test")}
    for name, counts in unknown.items():
        if counts:
            say(f"{name}: {sum(counts.values())} characters the vocabulary lacks, scored as errors: "
                + ", ".join(f"{ch!r} x{n}" for ch, n in counts.items()))
    model = load_ctc_model(args, processor)

    # 5. Preprocessing: leave out train clips CTC cannot learn from; the collator pads each batch.
    if args.eval_only:
        train, dropped = dataset["train"], {}
    else:
        keep, dropped = trainable_rows(dataset["train"], tokenizer, model, args.max_duration)
        for reason, count in dropped.items():
            say(f"train: left out {count} clips ({reason})")
        if not keep:
            raise InputError(f"No train clip is usable ({dropped}); raise --max-duration or check the dataset.")
        train = dataset["train"].select(keep)
    subset_size = min(args.train_eval_size, len(train))
    train_subset = train.select(np.sort(np.random.default_rng(args.seed).choice(len(train), subset_size,
                                                                                 replace=False)))
    eval_sets = {"validation": model_inputs(dataset["validation"])}
    if subset_size:
        eval_sets["train_subset"] = model_inputs(train_subset)

    # 6. Metrics.
    compute_metrics = metrics_function(tokenizer)

    # 7. Training.
    trainer = CTCTrainer(
        model=model, args=training_arguments(args, precision, optim),
        data_collator=DataCollatorCTCWithPadding(processor),
        train_dataset=None if args.eval_only else model_inputs(train), eval_dataset=eval_sets,
        processing_class=processor, compute_metrics=compute_metrics, callbacks=run_callbacks(args))
    say(run_banner(args, precision, optim, {"train": len(train), "validation": len(dataset["validation"]),
                                            "test": len(dataset["test"])}))
    if args.estimate:
        return estimate_run(trainer, args, len(dataset["test"]))
    run_training(trainer, args, checkpoint)

    # 8. Test: the best model (loaded by Trainer) transcribes the test split, greedily (every process takes
    # part) and, on the first, with the language model weighted on validation.
    greedy_raw, greedy_seconds = transcribe_with_trainer(trainer, dataset["test"], tokenizer)
    if not trainer.is_world_process_zero():
        return {}
    decoder, language_model = language_model_for_test(
        args, tokenizer.get_vocab(), dataset, lm_text,
        lambda name: ctc_log_probs(trainer.model, processor, dataset[name], args.eval_batch_size))
    raw, decode_seconds = greedy_raw, greedy_seconds
    if decoder is not None:
        began = time.perf_counter()
        raw = lm_decode(decoder, ctc_log_probs(trainer.model, processor, dataset["test"], args.eval_batch_size),
                        args.lm_beam_width)
        decode_seconds = time.perf_counter() - began
    rows = test_predictions(dataset["test"], raw)
    metrics = test_metrics(rows, decode_seconds)
    add_greedy_scores(rows, metrics, greedy_raw, greedy_seconds, "lm" if decoder else "greedy")

    # 9. Run folder.
    run_info = {
        "family": "wav2vec2", **run_facts(args, trainer, checkpoint, precision, optim),
        "architecture": architecture_facts(trainer.model),
        "loss": "CTC (blank = [PAD], mean over target lengths, zero_infinity)",
        "freeze_feature_encoder": args.freeze_feature_encoder,
        "regularisation": {"dropout": args.dropout, "layerdrop": args.layerdrop, "weight_decay": args.weight_decay,
                           "spec_augment": {"time_prob": args.mask_time_prob, "feature_prob": args.mask_feature_prob}
                           if args.spec_augment else None},
        "lora": None,
        "dataset": {"path": str(args.data), "features": summary.get("features", "waveform"),
                    "splits": {name: len(dataset[name]) for name in ("train", "validation", "test")},
                    "train_clips_left_out": dropped},
        "vocabulary": {"origin": vocabulary_origin, "size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
                       "word_delimiter": tokenizer.word_delimiter_token, "unknown_characters": unknown},
        "decoder": "lm" if decoder else "greedy", "language_model": language_model,
    }
    out = write_run_files(trainer, rows, metrics, run_info)
    best_dir = out / "best_model"
    trainer.model.save_pretrained(best_dir)
    remove_saved_language_model(best_dir)
    save_processor(processor, decoder, best_dir)
    shutil.rmtree(args.output_dir / LM_BUILD_FOLDER, ignore_errors=True)
    finish_run_folder(args, best_dir, model_card(args, run_info, metrics), run_info, metrics)
    return run_info


if __name__ == "__main__":
    main()
