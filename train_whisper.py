"""Fine-tune any Whisper on a prepared VIVOS dataset: from a 4 GB laptop GPU to many GPUs, resumable.

Shortest command (after `python prepare_vivos.py --vivos-dir vivos --out data/vivos_whisper`):

    python train_whisper.py --data data/vivos_whisper --model openai/whisper-small --output-dir runs/whisper-small

Re-running the same command continues from the last complete checkpoint (Colab disconnect, Ctrl-C,
power cut). `--preset low-vram` fits whisper-small in 4 GB, `--preset t4` suits a Colab T4,
`torchrun --nproc_per_node N train_whisper.py ...` trains on N GPUs, and `--eval-only` scores a model
as it is (the zero-shot baseline for the report).

Writes the run folder (docs/FORMATS.md) in --output-dir: checkpoint-N/ (to resume), best_model/
(+ README.md model card; loadable by transformers.pipeline, LoRA merged in), trainer_state.json,
history.csv (one row per evaluation), run_info.json, test_predictions.csv, test_metrics.json and
runs/ (TensorBoard, when installed). `--estimate` instead times a few real steps with the same flags and
writes only estimate.json (minutes, memory, disk, whether it fits).
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
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

# transformers imports peft, which imports bitsandbytes, whose CPU part then fails to fetch a kernel from the
# Hub and logs it on every start: bitsandbytes stays out until --optim adamw_bnb_8bit needs it.
sys.modules.setdefault("bitsandbytes", None)

import jiwer
import numpy as np
import torch
from transformers import (AutoConfig, EarlyStoppingCallback, Seq2SeqTrainer, Seq2SeqTrainingArguments,
                          TrainerCallback, WhisperForConditionalGeneration, WhisperProcessor, set_seed)
from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE
from transformers.trainer_callback import ExportableState

# torchrun / accelerate launch set RANK: only the first process prints and writes the run folder.
IS_MAIN_PROCESS = int(os.environ.get("RANK", "0")) == 0

# Tested bundles of settings; any flag given on the command line wins over its preset.
PRESETS = {
    # whisper-small on a 4 GB laptop GPU (RTX 3050 Ti): small batches with the same effective batch of
    # 16, activations recomputed in backward, 8-bit optimizer states (adafactor without bitsandbytes).
    "low-vram": {"batch_size": 4, "grad_accum": 4, "eval_batch_size": 4, "gradient_checkpointing": True,
                 "optim": "adamw_bnb_8bit"},
    # Colab T4 (16 GB): the Hugging Face Whisper fine-tuning blog's settings for whisper-small.
    "t4": {"batch_size": 16, "grad_accum": 1, "eval_batch_size": 8, "gradient_checkpointing": True,
           "optim": "adamw_torch"},
    # A100 (40/80 GB): big batches, no recomputation, fused optimizer, data loading in parallel.
    "a100": {"batch_size": 32, "grad_accum": 1, "eval_batch_size": 32, "gradient_checkpointing": False,
             "optim": "adamw_torch_fused", "num_workers": 4},
}
BEST_METRIC = "eval_validation_wer"  # the best checkpoint and early stopping follow it
SCRIPT = "train_whisper.py"  # as printed commands name it (a notebook cell has no __file__)
FEATURES = "whisper"  # the prepared dataset this trainer reads (prepare_vivos.py --features)
# The shared flags' defaults for Whisper: an effective batch of 16, the fine-tuning settings of the Hugging
# Face Whisper blog (the learning rate depends on --lora: see learning_rate).
DEFAULTS = {"model": "openai/whisper-small", "epochs": 5, "batch_size": 8, "eval_batch_size": 8, "grad_accum": 2,
            "lr": None, "warmup_ratio": 0.1, "weight_decay": 0.0, "logging_steps": 25}
HISTORY_COLUMNS = ["epoch", "step", "train_loss", "val_loss", "val_wer", "val_cer", "train_wer", "train_cer",
                   "learning_rate"]
PREDICTION_COLUMNS = ["id", "speaker", "duration", "reference", "prediction", "raw_prediction", "wer", "cer"]


def normalize_text(text: str) -> str:
    """NFC, lower case, punctuation and symbols to spaces, whitespace collapsed; tone marks kept."""
    text = unicodedata.normalize("NFC", text).lower()
    text = "".join(ch if unicodedata.category(ch)[0] in "LMN" else " " for ch in text)
    return " ".join(text.split())


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


class InputError(SystemExit):
    """Bad input: the message says what was expected, what was found and what to type next."""


def say(message: str) -> None:
    """Print once, not once per process, under torchrun."""
    if IS_MAIN_PROCESS:
        print(message, flush=True)


def quoted(path) -> str:
    """A path as the shell of this machine reads it back from a pasted command: POSIX quoting, or double
    quotes on Windows (cmd.exe knows no single quotes; Windows paths hold no double quote)."""
    text = str(path)
    if os.name != "nt":
        return shlex.quote(text)
    return text if re.fullmatch(r"[\w@%+=:,./\\-]+", text, re.ASCII) else f'"{text}"'


# ----------------------------------------------------------------------------- 1. settings

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
    groups = add_shared_arguments(parser, "any Whisper checkpoint: Hub id (openai/whisper-tiny ... large-v3) or "
                                  "local folder", "default 1e-5 for a full fine-tune, 1e-3 with --lora")
    io = groups["data, model, output"]
    io.add_argument("--language", default="vi", help="transcript language, Whisper code or name (default vi)")
    io.add_argument("--task", choices=["transcribe", "translate"], default="transcribe")

    regular = groups["regularisation"]
    regular.add_argument("--dropout", type=float, default=None, help="dropout (default: the model's own, 0.0)")
    regular.add_argument("--spec-augment", action=argparse.BooleanOptionalAction, default=True,
                         help="SpecAugment: mask random time steps / mel bins while training (default on)")
    regular.add_argument("--mask-time-prob", type=float, default=0.05, help="SpecAugment time masking")
    regular.add_argument("--mask-feature-prob", type=float, default=0.0, help="SpecAugment mel-bin masking")

    memory = groups["memory"]
    memory.add_argument("--freeze-encoder", action="store_true", help="train the decoder only")
    memory.add_argument("--lora", action="store_true", help="train LoRA adapters (peft); best_model is merged")
    memory.add_argument("--lora-r", type=int, default=32, help="LoRA rank")
    memory.add_argument("--lora-alpha", type=int, default=64, help="LoRA scaling (alpha / r)")
    memory.add_argument("--lora-dropout", type=float, default=0.05)
    memory.add_argument("--lora-targets", default="q_proj,v_proj", help="comma-separated module names")

    evaluation = groups["evaluation and checkpoints"]
    evaluation.add_argument("--generation-max-length", type=int, default=225,
                            help="most tokens of a generated transcript, prefix included")
    evaluation.add_argument("--num-beams", type=int, default=1, help="beam search width (1: greedy)")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags over the chosen preset over the defaults."""
    parser = build_parser()
    preset = parser.parse_known_args(argv)[0].preset
    if preset:
        parser.set_defaults(**PRESETS[preset])
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else [str(arg) for arg in argv]
    return args


def learning_rate(args: argparse.Namespace) -> float:
    """--lr, or the default for what is trained: adapters take a far larger step than full weights."""
    if args.lr is not None:
        return args.lr
    return 1e-3 if args.lora else 1e-5


def settings(argv: list[str] | None) -> tuple[argparse.Namespace, str, str]:
    """Step 1: the flags (over the preset, over DEFAULTS) checked, the seed set, and the precision and
    optimizer this machine can run."""
    args = parse_args(argv)
    check_settings(args)
    set_seed(args.seed)
    return args, resolve_precision(args.precision), resolve_optimizer(args.optim)


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


def import_bitsandbytes():
    """bitsandbytes, imported now that the 8-bit optimizer needs it (it is kept out at start)."""
    if "bitsandbytes" in sys.modules and sys.modules["bitsandbytes"] is None:
        del sys.modules["bitsandbytes"]
    return importlib.import_module("bitsandbytes")


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

def checkpoint_folders(output_dir: Path) -> list[Path]:
    """The checkpoint-N folders of a run folder, newest first."""
    numbered = [p for p in output_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(numbered, key=lambda folder: int(folder.name.split("-")[-1]), reverse=True)


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


def last_complete_checkpoint(output_dir: Path) -> Path | None:
    """The newest checkpoint-N that training can continue from."""
    return next((folder for folder in checkpoint_folders(output_dir) if checkpoint_problem(folder) is None), None)


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


def recorded_settings(checkpoint: Path) -> dict:
    """The optimizer and batch a checkpoint was trained with (RunSettingsCallback's record in its
    trainer_state.json; a checkpoint written before that record holds only the batch size)."""
    state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    record = state.get("stateful_callbacks", {}).get("RunSettingsCallback", {})
    record = record[0] if isinstance(record, list) else record
    return record.get("attributes", {}).get("settings") or {"batch_size": state.get("train_batch_size")}


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


def dataset_mel_count(dataset, summary: dict) -> int:
    """Mel bins of the stored features (frames x mels), cross-checked with prepare_summary.json."""
    split = next(iter(dataset.values()))
    n_mels = split.features["input_features"].shape[1]
    if summary.get("n_mels", n_mels) != n_mels:
        raise InputError(f"prepare_summary.json says {summary['n_mels']} mels but the features have {n_mels}: "
                         "the dataset folder is inconsistent, re-make it with prepare_vivos.py")
    return n_mels


# ----------------------------------------------------------------------------- 4. model

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


def whisper_config(args: argparse.Namespace, summary: dict, data_mels: int):
    """The model's config with our training changes, after refusing a non-Whisper or mel-mismatched model."""
    check_model_folder(args.model)
    try:
        config = AutoConfig.from_pretrained(args.model)
    except (OSError, ValueError) as error:
        raise InputError(f"--model {args.model}: could not load it ({error}). Expected a Hub id such as "
                         "openai/whisper-small (downloaded once, needs the network) or a folder with config.json.")
    if config.model_type != "whisper":
        raise InputError(f"--model {args.model} is a {config.model_type!r} model; train_whisper.py needs a Whisper "
                         "checkpoint (openai/whisper-small, ...). Use train_wav2vec2.py for Wav2Vec2.")
    if config.num_mel_bins != data_mels:
        raise InputError(f"--model {args.model} expects {config.num_mel_bins} mel bins but --data {args.data} has "
                         f"{data_mels}. Make matching features with: "
                         f"{prepare_command(args.data, summary, config.num_mel_bins)}")
    if args.dropout is not None:
        config.dropout = args.dropout
    config.apply_spec_augment = args.spec_augment
    config.mask_time_prob, config.mask_feature_prob = args.mask_time_prob, args.mask_feature_prob
    # The KV cache only helps generation; with recomputed activations it is wasted memory.
    config.use_cache = not args.gradient_checkpointing
    return config


def language_code(language: str) -> str:
    """Whisper language code from a code or an English name (vi, vietnamese)."""
    language = language.lower()
    return TO_LANGUAGE_CODE.get(language, language)


def load_whisper(args: argparse.Namespace, config) -> tuple[WhisperProcessor, WhisperForConditionalGeneration]:
    """Processor and model, with the language and task set on the tokenizer and on generation_config."""
    processor = WhisperProcessor.from_pretrained(args.model)
    model = WhisperForConditionalGeneration.from_pretrained(args.model, config=config)
    generation = model.generation_config
    code = language_code(args.language)
    if not getattr(generation, "is_multilingual", False) or f"<|{code}|>" not in getattr(generation, "lang_to_id", {}):
        raise InputError(f"--model {args.model} cannot transcribe --language {args.language}: it is English-only "
                         "or its generation_config has no language tokens. Use a multilingual checkpoint such as "
                         "openai/whisper-small (not *.en).")
    processor.tokenizer.set_prefix_tokens(language=code, task=args.task)
    # generate() reads language/task here; forced_decoder_ids is deprecated and would override them.
    generation.language, generation.task, generation.forced_decoder_ids = code, args.task, None
    generation.max_length = min(args.generation_max_length, config.max_target_positions)
    generation.num_beams = args.num_beams
    # Whisper's forward takes **kwargs but averages its loss itself: without this, Trainer skips the division
    # by --grad-accum (and multiplies by the process count), inflating loss and gradients.
    model.accepts_loss_kwargs = False
    return processor, model


def prepare_for_training(model, args: argparse.Namespace):
    """Freeze the encoder and/or wrap in LoRA adapters, as asked; returns the model to train."""
    if args.freeze_encoder:
        model.freeze_encoder()
    if not args.lora:
        return model
    if importlib.util.find_spec("peft") is None:
        raise InputError("--lora needs peft: pip install peft")
    from peft import LoraConfig, get_peft_model

    # Checkpointed blocks need an input that requires grad when every base weight is frozen.
    model.enable_input_require_grads()
    # No task_type: the seq2seq wrapper would pass input_ids, which Whisper does not take.
    lora = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                      target_modules=[name.strip() for name in args.lora_targets.split(",")])
    return get_peft_model(model, lora)


# ----------------------------------------------------------------------------- 5. preprocessing

def restore_full_input(frames_by_mels, n_frames: int) -> np.ndarray:
    """The fixed-length Whisper input (mels x n_frames) from trimmed frames (docs/FORMATS.md)."""
    feats = np.asarray(frames_by_mels, dtype=np.float32).T
    full = np.full((feats.shape[0], n_frames), feats.max() - 2.0, dtype=np.float32)
    kept = min(feats.shape[1], n_frames)
    full[:, :kept] = feats[:, :kept]
    return full


def without_long_transcripts(split, tokenizer, max_tokens: int):
    """(split without the utterances whose label tokens exceed the decoder, how many were dropped)."""
    lengths = [len(ids) - 1 for ids in tokenizer(list(split["sentence"])).input_ids]  # the start token is not a label
    keep = [i for i, length in enumerate(lengths) if length <= max_tokens]
    return split.select(keep), len(split) - len(keep)


@dataclass
class WhisperCollator:
    """Pads trimmed log-Mel frames back to the model's fixed input and turns sentences into labels."""

    tokenizer: object
    n_frames: int
    decoder_start_token_id: int

    def __call__(self, examples: list[dict]) -> dict:
        features = np.stack([restore_full_input(ex["input_features"], self.n_frames) for ex in examples])
        tokens = self.tokenizer([str(ex["sentence"]) for ex in examples], padding=True, return_tensors="pt")
        labels = tokens.input_ids.masked_fill(tokens.attention_mask.ne(1), -100)
        # The model prepends <|startoftranscript|> itself (labels shifted right): never a target.
        if (labels[:, 0] == self.decoder_start_token_id).all():
            labels = labels[:, 1:]
        return {"input_features": torch.from_numpy(features), "labels": labels}


# ----------------------------------------------------------------------------- 6. metrics

def wer_cer_metrics(tokenizer):
    """compute_metrics for Trainer: WER and CER of generated transcripts, on normalised text."""
    def compute_metrics(prediction) -> dict:
        predicted = np.where(prediction.predictions != -100, prediction.predictions, tokenizer.pad_token_id)
        labels = np.where(prediction.label_ids != -100, prediction.label_ids, tokenizer.pad_token_id)
        hypotheses = [normalize_text(t) for t in tokenizer.batch_decode(predicted, skip_special_tokens=True)]
        references = [normalize_text(t) for t in tokenizer.batch_decode(labels, skip_special_tokens=True)]
        scores = compute_wer_cer(references, hypotheses)
        return {"wer": scores["wer"], "cer": scores["cer"]}
    return compute_metrics


# ----------------------------------------------------------------------------- 7. training

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


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows({key: "" if value is None else value for key, value in row.items()} for row in rows)


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


class ValidationEarlyStopping(EarlyStoppingCallback):
    """Early stopping that reads only the validation evaluation: the train-subset evaluation that follows
    it carries no validation score and is no reason to warn or to count."""

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if metrics and args.metric_for_best_model in metrics:
            super().on_evaluate(args, state, control, metrics=metrics, **kwargs)


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


def train_clock(trainer) -> TrainClockCallback:
    """The clock the Trainer holds: a resume replaces it with the one restored from the checkpoint."""
    return next(callback for callback in trainer.callback_handler.callbacks
                if isinstance(callback, TrainClockCallback))


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


def training_arguments(args: argparse.Namespace, precision: str, optim: str) -> Seq2SeqTrainingArguments:
    """The shared settings, with generate() for the validation WER and non-reentrant activation
    checkpointing (the reentrant kind fails with "backward through the graph a second time")."""
    shared = {**trainer_settings(args, precision, optim), "learning_rate": learning_rate(args)}
    return Seq2SeqTrainingArguments(
        **shared, predict_with_generate=True, ddp_find_unused_parameters=False,
        activation_checkpointing=args.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if args.gradient_checkpointing else None)


def memory_setting(args: argparse.Namespace) -> str:
    """Whisper's next memory saving once the batch is 1 and activations are recomputed."""
    if args.optim not in ("adamw_bnb_8bit", "adafactor") and not args.lora:
        return "--optim adamw_bnb_8bit (pip install bitsandbytes) or --optim adafactor"
    if not args.lora:
        return "--lora (or --freeze-encoder)"
    return "a smaller --model (openai/whisper-base) or a GPU with more memory"


def next_setting_after_oom(args: argparse.Namespace) -> str:
    """What to change after a CUDA out-of-memory error, cheapest loss of speed first."""
    if args.batch_size > 1:
        return (f"--batch-size {args.batch_size // 2} --grad-accum {args.grad_accum * 2} (same effective batch; "
                f"if it ran out while evaluating: --eval-batch-size {max(args.eval_batch_size // 2, 1)})")
    if not args.gradient_checkpointing:
        return "--gradient-checkpointing"
    return memory_setting(args)


def oom_advice(args: argparse.Namespace) -> str:
    """The flags to add after a CUDA out-of-memory error, with the low-memory preset where it is not in use."""
    low_vram = "" if "low-vram" not in PRESETS or args.preset == "low-vram" else ", or with --preset low-vram"
    return f"{next_setting_after_oom(args)}{low_vram}"


class StepClock(TrainerCallback):
    """The moment each optimizer step ends (after the GPU has finished it), for --estimate."""

    def __init__(self):
        self.ends = []

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.ends.append(time.perf_counter())


def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


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


def time_eval_batch(trainer) -> float:
    """Seconds for one validation batch as evaluation runs it (generation for Whisper)."""
    batch = trainer._prepare_inputs(next(iter(trainer.get_eval_dataloader(trainer.eval_dataset["validation"]))))
    trainer.model.eval()
    start = time.perf_counter()
    trainer.prediction_step(trainer.model, batch, prediction_loss_only=False)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


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

def transcribe_with_generate(model, processor, split, batch_size: int, n_frames: int,
                             precision: str) -> tuple[list, float]:
    """Batched generate() over a split: (raw transcripts, seconds it took)."""
    model.eval()
    autocast = (torch.autocast("cuda", dtype=torch.float16 if precision == "fp16" else torch.bfloat16)
                if model.device.type == "cuda" and precision in ("fp16", "bf16") else contextlib.nullcontext())
    rows = split.with_format("numpy", columns=["input_features"])
    texts = []
    start = time.perf_counter()
    for first in range(0, len(rows), batch_size):
        batch = rows[first:first + batch_size]["input_features"]
        features = torch.from_numpy(np.stack([restore_full_input(f, n_frames) for f in batch])).to(model.device)
        with torch.inference_mode(), autocast:
            ids = model.generate(input_features=features)
        texts += processor.batch_decode(ids, skip_special_tokens=True)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    return [text.strip() for text in texts], time.perf_counter() - start


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


def test_metrics(rows: list[dict], decode_seconds: float) -> dict:
    """test_metrics.json: corpus scores, amount of audio, decoding time and real-time factor."""
    metrics = compute_wer_cer([r["reference"] for r in rows], [r["prediction"] for r in rows])
    audio_seconds = float(sum(r["duration"] for r in rows))
    metrics.update({"num_utterances": len(rows), "audio_seconds": round(audio_seconds, 3),
                    "decode_seconds": round(decode_seconds, 3),
                    "rtf": round(decode_seconds / audio_seconds, 5) if audio_seconds else None})
    return metrics


# ----------------------------------------------------------------------------- 9. run folder

def architecture_facts(model) -> dict:
    config = model.config
    return {"encoder_layers": config.encoder_layers, "decoder_layers": config.decoder_layers,
            "d_model": config.d_model, "heads": config.encoder_attention_heads, "ffn_dim": config.encoder_ffn_dim,
            "activation": config.activation_function, "vocab_size": config.vocab_size,
            "num_mel_bins": config.num_mel_bins, "max_source_positions": config.max_source_positions,
            "max_target_positions": config.max_target_positions, "dropout": config.dropout,
            "spec_augment": {"time_prob": config.mask_time_prob, "feature_prob": config.mask_feature_prob}
            if config.apply_spec_augment else None}


def stop_reason(args: argparse.Namespace, state) -> str:
    if args.eval_only:
        return "eval_only"
    if args.max_steps > 0 and state.global_step >= args.max_steps:
        return "max_steps"
    return "early_stopping" if state.global_step < state.max_steps else "completed"


def best_evaluation(state) -> dict | None:
    """The validation log entry of the best checkpoint (the one the Trainer loaded at the end)."""
    return next((entry for entry in state.log_history
                 if entry.get("step") == state.best_global_step and BEST_METRIC in entry), None)


def versions() -> dict:
    """Versions of what produced the run (for the report's reproducibility table)."""
    found = {"python": platform.python_version()}
    for package in ("torch", "transformers", "datasets", "accelerate", "peft", "jiwer", "numpy", "bitsandbytes"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[package] = metadata.version(package)
    return found


def device_description(trainer) -> str:
    world = trainer.args.world_size
    if torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)}) x{world}"
    return f"cpu x{world} process{'es' if world > 1 else ''}"


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


def model_index(name: str, metrics: dict) -> list[str]:
    """The end of a card's Hub metadata: the test WER and CER the Hub shows on the model page."""
    return ["model-index:", f"- name: {name}", "  results:", "  - task:", "      type: automatic-speech-recognition",
            "      name: Automatic Speech Recognition", "    dataset:", "      name: VIVOS",
            "      type: AILAB-VNUHCM/vivos", "      split: test", "    metrics:",
            f"    - {{type: wer, value: {100 * metrics['wer']:.2f}, name: Test WER}}",
            f"    - {{type: cer, value: {100 * metrics['cer']:.2f}, name: Test CER}}", "---", ""]


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


def model_card(args: argparse.Namespace, run_info: dict, metrics: dict) -> str:
    """best_model/README.md: Hub metadata (language, base model, dataset, test scores) and the settings."""
    base_on_hub = not Path(args.model).exists()
    name = args.hub_model_id or args.output_dir.name
    lines = ["---", "language:", f"- {language_code(args.language)}",
             "tags:", "- automatic-speech-recognition", "- whisper", "- vivos", "datasets:", "- AILAB-VNUHCM/vivos",
             "metrics:", "- wer", "- cer", "pipeline_tag: automatic-speech-recognition"]
    if base_on_hub:
        lines.append(f"base_model: {args.model}")
    if args.model.startswith("openai/"):
        lines.append("license: apache-2.0")
    lines += model_index(name, metrics)
    trained = ("evaluated as it is (no fine-tuning)" if args.eval_only else
               f"fine-tuned for {run_info['epochs_run']:.2f} epochs (best epoch {run_info['best_epoch']}, "
               f"stopped: {run_info['stop_reason']})")
    lines += [f"# {name}", "", f"Whisper ({args.model}) {trained} on Vietnamese speech from the prepared dataset "
              f"`{args.data.name}` ({run_info['dataset']['splits']['train']} train utterances), text normalised "
              "(lower case, punctuation removed, tone marks kept).", "",
              f"Test WER **{100 * metrics['wer']:.2f} %**, CER **{100 * metrics['cer']:.2f} %** on "
              f"{metrics['num_utterances']} test utterances (real-time factor {metrics['rtf']}).", ""]
    return "\n".join(lines + card_usage_and_settings(name, run_info))


def push_best_model(args: argparse.Namespace, best_dir: Path) -> None:
    """Upload best_model/ (weights, processor or vocabulary, card) to the Hub, as one commit."""
    from huggingface_hub import HfApi

    api = HfApi()
    repo_id = api.create_repo(args.hub_model_id or args.output_dir.name, exist_ok=True).repo_id
    api.upload_folder(folder_path=str(best_dir), repo_id=repo_id,
                      commit_message=f"best_model/ of {args.output_dir.name} ({SCRIPT})")
    say(f"Pushed {best_dir} to https://huggingface.co/{repo_id}")


def write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False), encoding="utf-8")


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


def finish_run_folder(args: argparse.Namespace, best_dir: Path, card: str, run_info: dict, metrics: dict) -> None:
    """best_model/README.md, the upload when --push-to-hub asks for it, and the run in one line."""
    (best_dir / "README.md").write_text(card, encoding="utf-8")
    if args.push_to_hub:
        push_best_model(args, best_dir)
    say(final_line(run_info, metrics, best_dir.parent))


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
    args.lr = learning_rate(args)

    # 2. Checkpoint to resume.
    checkpoint = checkpoint_to_resume(args)
    check_resumed_settings(args, checkpoint, optim)

    # 3. Prepared dataset, checked.
    dataset, summary = load_prepared_dataset(args.data, {"input_features", "sentence"}, args.eval_only)
    data_mels = dataset_mel_count(dataset, summary)

    # 4. Model and processor.
    config = whisper_config(args, summary, data_mels)
    processor, model = load_whisper(args, config)
    n_frames = processor.feature_extractor.nb_max_frames  # 3000 = 30 s for every OpenAI checkpoint
    if not args.eval_only:
        model = prepare_for_training(model, args)

    # 5. Preprocessing: drop transcripts longer than the decoder takes; the collator does the rest.
    splits, dropped = {}, {}
    for name in dataset:
        splits[name], dropped[name] = without_long_transcripts(dataset[name], processor.tokenizer,
                                                               config.max_target_positions)
        if dropped[name]:
            say(f"{name}: dropped {dropped[name]} utterances whose transcript is longer than "
                f"{config.max_target_positions} tokens")
    subset_size = min(args.train_eval_size, len(splits["train"]))
    train_subset = splits["train"].select(np.sort(np.random.default_rng(args.seed).choice(
        len(splits["train"]), subset_size, replace=False)))
    columns = ["input_features", "sentence"]
    eval_sets = {"validation": splits["validation"].with_format("numpy", columns=columns)}
    if subset_size:
        eval_sets["train_subset"] = train_subset.with_format("numpy", columns=columns)
    collator = WhisperCollator(processor.tokenizer, n_frames, config.decoder_start_token_id)

    # 6. Metrics.
    compute_metrics = wer_cer_metrics(processor.tokenizer)

    # 7. Training.
    trainer = Seq2SeqTrainer(
        model=model, args=training_arguments(args, precision, optim), data_collator=collator,
        train_dataset=None if args.eval_only else splits["train"].with_format("numpy", columns=columns),
        eval_dataset=eval_sets, processing_class=processor, compute_metrics=compute_metrics,
        callbacks=run_callbacks(args))
    say(run_banner(args, precision, optim, {name: len(split) for name, split in splits.items()}))
    if args.estimate:
        return estimate_run(trainer, args, len(splits["test"]))
    run_training(trainer, args, checkpoint)
    if not trainer.is_world_process_zero():
        return {}
    facts = run_facts(args, trainer, checkpoint, precision, optim)

    # 8. Test: the best model (loaded by Trainer; LoRA merged in) transcribes the test split.
    best = trainer.model.merge_and_unload() if args.lora and not args.eval_only else trainer.model
    raw, decode_seconds = transcribe_with_generate(best, processor, splits["test"], args.eval_batch_size, n_frames,
                                                   precision)
    rows = test_predictions(splits["test"], raw)
    metrics = test_metrics(rows, decode_seconds)

    # 9. Run folder.
    run_info = {
        "family": "whisper", **facts, "architecture": architecture_facts(best),
        "loss": "cross-entropy over transcript tokens (teacher forcing, padding ignored)",
        "freeze_encoder": args.freeze_encoder,
        "lora": {"r": args.lora_r, "alpha": args.lora_alpha, "dropout": args.lora_dropout,
                 "targets": args.lora_targets.split(",")} if args.lora else None,
        "language": language_code(args.language), "task": args.task,
        "dataset": {"path": str(args.data), "features": "whisper", "n_mels": data_mels,
                    "splits": {name: len(split) for name, split in splits.items()},
                    "dropped_long_transcripts": dropped},
    }
    out = write_run_files(trainer, rows, metrics, run_info)
    best_dir = out / "best_model"
    best.config.use_cache = True  # generation wants the KV cache back
    best.save_pretrained(best_dir)
    processor.save_pretrained(best_dir)
    finish_run_folder(args, best_dir, model_card(args, run_info, metrics), run_info, metrics)
    return run_info


if __name__ == "__main__":
    main()
