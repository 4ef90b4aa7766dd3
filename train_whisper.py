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
runs/ (TensorBoard, when installed).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import importlib.util
import json
import os
import platform
import shlex
import sys
import time
import unicodedata
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

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


def say(message: str) -> None:
    """Print once, not once per process, under torchrun."""
    if IS_MAIN_PROCESS:
        print(message, flush=True)


def quoted(path) -> str:
    """A path as it must be typed in a shell (Windows too: double quotes when it has spaces)."""
    return f'"{path}"' if " " in str(path) else str(path)


# ----------------------------------------------------------------------------- 1. settings

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    io = parser.add_argument_group("data, model, output")
    io.add_argument("--data", type=Path, required=True,
                    help="prepared dataset folder (prepare_vivos.py --features whisper)")
    io.add_argument("--model", default="openai/whisper-small",
                    help="any Whisper checkpoint: Hub id (openai/whisper-tiny ... large-v3) or local folder")
    io.add_argument("--output-dir", type=Path, required=True,
                    help="run folder: checkpoints, best_model/, history.csv, test predictions")
    io.add_argument("--language", default="vi", help="transcript language, Whisper code or name (default vi)")
    io.add_argument("--task", choices=["transcribe", "translate"], default="transcribe")
    io.add_argument("--preset", choices=sorted(PRESETS),
                    help="tested settings: low-vram (whisper-small on 4 GB), t4 (Colab), a100; flags win over it")

    train = parser.add_argument_group("training")
    train.add_argument("--epochs", type=float, default=5, help="training epochs (default 5)")
    train.add_argument("--max-steps", type=int, default=-1, help="stop after this many optimizer steps instead")
    train.add_argument("--batch-size", type=int, default=8, help="utterances per step and device (default 8)")
    train.add_argument("--eval-batch-size", type=int, default=8, help="utterances per generate() batch")
    train.add_argument("--grad-accum", type=int, default=2,
                       help="steps whose gradients are summed before an update (default 2: effective batch 16)")
    train.add_argument("--lr", type=float, default=None,
                       help="peak learning rate (default 1e-5 full fine-tune, 1e-3 with --lora)")
    train.add_argument("--warmup-ratio", type=float, default=0.1, help="share of steps for linear warm-up")
    train.add_argument("--scheduler", default="linear",
                       choices=["linear", "cosine", "constant_with_warmup", "inverse_sqrt", "polynomial"])
    train.add_argument("--optim", default="adamw_torch",
                       choices=["adamw_torch", "adamw_torch_fused", "adamw_bnb_8bit", "adafactor"],
                       help="optimizer; adamw_bnb_8bit needs bitsandbytes and a CUDA GPU")
    train.add_argument("--seed", type=int, default=42)
    train.add_argument("--num-workers", type=int, default=0 if os.name == "nt" else 2,
                       help="data loading processes (default 2; 0 on Windows, where each worker re-imports)")

    regular = parser.add_argument_group("regularisation")
    regular.add_argument("--dropout", type=float, default=None, help="dropout (default: the model's own, 0.0)")
    regular.add_argument("--weight-decay", type=float, default=0.0)
    regular.add_argument("--spec-augment", action=argparse.BooleanOptionalAction, default=True,
                         help="SpecAugment: mask random time steps / mel bins while training (default on)")
    regular.add_argument("--mask-time-prob", type=float, default=0.05, help="SpecAugment time masking")
    regular.add_argument("--mask-feature-prob", type=float, default=0.0, help="SpecAugment mel-bin masking")

    memory = parser.add_argument_group("memory")
    memory.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"], default="auto",
                        help="auto: bf16 on GPUs that have it, else fp16; fp32 on CPU")
    memory.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=False,
                        help="recompute activations in backward: much less memory, about 30%% slower")
    memory.add_argument("--freeze-encoder", action="store_true", help="train the decoder only")
    memory.add_argument("--lora", action="store_true", help="train LoRA adapters (peft); best_model is merged")
    memory.add_argument("--lora-r", type=int, default=32, help="LoRA rank")
    memory.add_argument("--lora-alpha", type=int, default=64, help="LoRA scaling (alpha / r)")
    memory.add_argument("--lora-dropout", type=float, default=0.05)
    memory.add_argument("--lora-targets", default="q_proj,v_proj", help="comma-separated module names")

    evaluation = parser.add_argument_group("evaluation and checkpoints")
    evaluation.add_argument("--eval-every", type=int, default=0,
                            help="evaluate and save every N steps (default 0: every epoch)")
    evaluation.add_argument("--patience", type=int, default=3,
                            help="stop after N evaluations without a better validation WER (0: never)")
    evaluation.add_argument("--train-eval-size", type=int, default=200,
                            help="fixed train utterances scored at each evaluation, to show the overfitting gap")
    evaluation.add_argument("--generation-max-length", type=int, default=225,
                            help="most tokens of a generated transcript, prefix included")
    evaluation.add_argument("--num-beams", type=int, default=1, help="beam search width (1: greedy)")
    evaluation.add_argument("--logging-steps", type=int, default=25)
    evaluation.add_argument("--save-total-limit", type=int, default=2,
                            help="checkpoints kept (the best one is always kept)")
    evaluation.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                            help="continue from the last complete checkpoint (default); --no-resume needs an "
                                 "empty --output-dir")
    evaluation.add_argument("--eval-only", action="store_true",
                            help="no training: score --model as it is (zero-shot baseline) and write the run folder")

    hub = parser.add_argument_group("sharing")
    hub.add_argument("--push-to-hub", action="store_true", help="upload best_model/ and its card to the Hub")
    hub.add_argument("--hub-model-id", help="Hub repository (default: the --output-dir name)")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags over the chosen preset over the defaults."""
    parser = build_parser()
    preset = parser.parse_known_args(argv)[0].preset
    if preset:
        parser.set_defaults(**PRESETS[preset])
    args = parser.parse_args(argv)
    if not 0 <= args.warmup_ratio < 1:
        parser.error(f"--warmup-ratio must be in [0, 1), got {args.warmup_ratio}")
    if args.lr is None:
        args.lr = 1e-3 if args.lora else 1e-5
    args.argv = sys.argv[1:] if argv is None else list(argv)
    return args


def resolve_precision(choice: str) -> str:
    """fp32 on CPU; on a GPU bf16 when it has it (no loss scaling needed), else fp16."""
    if choice != "auto":
        return choice
    if not torch.cuda.is_available():
        return "fp32"
    # Compute capability >= 8 (A100, RTX 30xx) has bf16; is_bf16_supported() also says yes on a T4 (emulated).
    return "bf16" if torch.cuda.get_device_capability()[0] >= 8 else "fp16"


def resolve_optimizer(name: str) -> str:
    """The optimizer to use: 8-bit AdamW only where bitsandbytes loads and has a CUDA GPU, else adafactor."""
    if name != "adamw_bnb_8bit":
        return name
    if not torch.cuda.is_available():
        missing = "no CUDA GPU here"
    else:
        try:
            importlib.import_module("bitsandbytes")  # installed is not enough: its CUDA library must load
            return name
        except Exception as error:  # ImportError, or a missing/mismatched CUDA library
            missing = f"bitsandbytes does not load ({error}): pip install -U bitsandbytes"
    say(f"--optim adamw_bnb_8bit needs bitsandbytes and a CUDA GPU ({missing}); using adafactor instead, "
        "which also keeps almost no optimizer state.")
    return "adafactor"


# ----------------------------------------------------------------------------- 2. checkpoint to resume

def last_complete_checkpoint(output_dir: Path) -> Path | None:
    """The newest checkpoint-N whose trainer_state.json (written last by Trainer) is there and readable."""
    complete = []
    for folder in output_dir.glob("checkpoint-*"):
        state = folder / "trainer_state.json"
        if not (folder.name.split("-")[-1].isdigit() and state.is_file()):
            continue
        with contextlib.suppress(ValueError):
            json.loads(state.read_text(encoding="utf-8"))
            complete.append(folder)
    return max(complete, key=lambda folder: int(folder.name.split("-")[-1]), default=None)


def checkpoint_to_resume(args: argparse.Namespace) -> Path | None:
    """The checkpoint training continues from, or None for a fresh start (refused into a used folder)."""
    used = args.output_dir.is_dir() and any(args.output_dir.iterdir())
    if args.eval_only:
        if used and last_complete_checkpoint(args.output_dir):
            raise SystemExit(f"--eval-only would overwrite the results of the training run in {args.output_dir}: "
                             "give it its own --output-dir (for example runs/whisper-small-zero-shot).")
        return None
    if not args.resume:
        if used:
            raise SystemExit(f"--no-resume starts over only into an empty folder, and {args.output_dir} is not "
                             f"empty. Choose a new --output-dir, or delete that folder, or drop --no-resume to "
                             f"continue from its last checkpoint.")
        return None
    checkpoint = last_complete_checkpoint(args.output_dir) if used else None
    if checkpoint:
        say(f"Resuming from {checkpoint} (same optimizer, scheduler, random state and epoch counter).")
    elif used:
        say(f"No complete checkpoint in {args.output_dir}: training starts from the beginning.")
    return checkpoint


# ----------------------------------------------------------------------------- 3. prepared dataset

def prepare_command(summary: dict, data: Path, n_mels: int) -> str:
    """The prepare_vivos.py call that makes a Whisper dataset with `n_mels` mel bins from the same source."""
    kind, _, source = summary.get("source", "VIVOS vivos").partition(" ")
    source_flag = "--manifest" if kind == "manifest" else "--vivos-dir"
    out = data.parent / f"{data.name}_whisper{'' if n_mels == 80 else f'_{n_mels}mels'}"
    return (f"python prepare_vivos.py {source_flag} {quoted(source)} --out {quoted(out)} --features whisper"
            f" --n-mels {n_mels}")


def read_prepare_summary(data: Path) -> dict:
    """prepare_summary.json of a prepared Whisper dataset; refuses anything else with the command to run."""
    summary_path = data / "prepare_summary.json"
    if not summary_path.is_file() or not (data / "dataset_dict.json").is_file():
        raise SystemExit(f"--data {data}: expected a folder made by prepare_vivos.py (dataset_dict.json and "
                         f"prepare_summary.json inside); found {'no such folder' if not data.is_dir() else 'neither'}. "
                         f"Make one with: python prepare_vivos.py --vivos-dir vivos --out {quoted(data)}")
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    if summary.get("features") != "whisper":
        raise SystemExit(f"--data {data} holds {summary.get('features')!r} features (for Wav2Vec2 / DeepSpeech2); "
                         f"Whisper needs log-Mel features. Make them with: "
                         f"{prepare_command(summary, data, 80)}")
    return summary


def load_prepared_dataset(data: Path, need: tuple[str, ...]):
    """The DatasetDict, checked to have the splits this run needs and Whisper input features."""
    from datasets import load_from_disk

    dataset = load_from_disk(str(data))
    missing = [split for split in need if split not in dataset]
    if missing:
        raise SystemExit(f"--data {data} has splits {sorted(dataset)}, this run needs {list(need)}: "
                         "re-make it with prepare_vivos.py")
    if "input_features" not in dataset[need[0]].column_names:
        raise SystemExit(f"--data {data} has no input_features column: re-make it with prepare_vivos.py "
                         "--features whisper")
    return dataset


def dataset_mel_count(dataset, summary: dict) -> int:
    """Mel bins of the stored features (frames x mels), cross-checked with prepare_summary.json."""
    split = next(iter(dataset.values()))
    n_mels = split.features["input_features"].shape[1]
    if summary.get("n_mels", n_mels) != n_mels:
        raise SystemExit(f"prepare_summary.json says {summary['n_mels']} mels but the features have {n_mels}: "
                         "the dataset folder is inconsistent, re-make it with prepare_vivos.py")
    return n_mels


# ----------------------------------------------------------------------------- 4. model and processor

def whisper_config(args: argparse.Namespace, summary: dict, data_mels: int):
    """The model's config with our training changes, after refusing a non-Whisper or mel-mismatched model."""
    try:
        config = AutoConfig.from_pretrained(args.model)
    except OSError as error:
        raise SystemExit(f"--model {args.model}: could not load it ({error}). Expected a Hub id such as "
                         "openai/whisper-small (downloaded once, needs the network) or a folder with config.json.")
    if config.model_type != "whisper":
        raise SystemExit(f"--model {args.model} is a {config.model_type!r} model; train_whisper.py needs a Whisper "
                         "checkpoint (openai/whisper-small, ...). Use train_wav2vec2.py for Wav2Vec2.")
    if config.num_mel_bins != data_mels:
        raise SystemExit(f"--model {args.model} expects {config.num_mel_bins} mel bins but --data {args.data} has "
                         f"{data_mels}. Make matching features with: "
                         f"{prepare_command(summary, args.data, config.num_mel_bins)}")
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
        raise SystemExit(f"--model {args.model} cannot transcribe --language {args.language}: it is English-only "
                         "or its generation_config has no language tokens. Use a multilingual checkpoint such as "
                         "openai/whisper-small (not *.en).")
    processor.tokenizer.set_prefix_tokens(language=code, task=args.task)
    # generate() reads language/task here; forced_decoder_ids is deprecated (PITFALLS 13).
    generation.language, generation.task, generation.forced_decoder_ids = code, args.task, None
    generation.max_length = min(args.generation_max_length, config.max_target_positions)
    generation.num_beams = args.num_beams
    # Whisper's forward takes **kwargs but averages its loss itself: without this, Trainer skips the division
    # by --grad-accum (and multiplies by the process count), inflating loss and gradients (transformers #47688).
    model.accepts_loss_kwargs = False
    return processor, model


def prepare_for_training(model, args: argparse.Namespace):
    """Freeze the encoder and/or wrap in LoRA adapters, as asked; returns the model to train."""
    if args.freeze_encoder:
        model.freeze_encoder()
    if not args.lora:
        return model
    if importlib.util.find_spec("peft") is None:
        raise SystemExit("--lora needs peft: pip install peft")
    from peft import LoraConfig, get_peft_model

    # Checkpointed blocks need an input that requires grad when every base weight is frozen (PITFALLS 2).
    model.enable_input_require_grads()
    # No task_type: the seq2seq wrapper would pass input_ids, which Whisper does not take (PITFALLS 20).
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
    """One row per evaluation step: validation and train-subset scores, mean train loss since the last one."""
    rows: dict[int, dict] = {}
    for entry in log_history:
        if any(key.startswith("eval_") for key in entry):
            row = rows.setdefault(entry["step"], {"epoch": round(entry.get("epoch", 0.0), 4), "step": entry["step"]})
            for ours, theirs in (("val_loss", "eval_validation_loss"), ("val_wer", "eval_validation_wer"),
                                 ("val_cer", "eval_validation_cer"), ("train_wer", "eval_train_subset_wer"),
                                 ("train_cer", "eval_train_subset_cer")):
                if theirs in entry:
                    row[ours] = entry[theirs]
    # HistoryCsvCallback forces a training-loss log at every evaluation step, so the logs split exactly.
    losses = [(e["step"], e["loss"], e.get("learning_rate")) for e in log_history if "loss" in e]
    previous_log, previous_eval = 0, 0
    for step in sorted(rows):
        total = 0.0
        for logged_at, loss, learning_rate in losses:
            if previous_eval < logged_at <= step:
                total += loss * (logged_at - previous_log)  # a logged loss is the mean since the previous log
                previous_log = logged_at
                rows[step]["learning_rate"] = learning_rate
        if previous_log > previous_eval:
            rows[step]["train_loss"] = total / (previous_log - previous_eval)
        previous_eval = step
    return [rows[step] for step in sorted(rows)]


def write_history_csv(path: Path, log_history: list[dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=HISTORY_COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(history_rows(log_history))


class HistoryCsvCallback(TrainerCallback):
    """Rewrites history.csv after every evaluation, so the curves exist even if the run is cut off."""

    def __init__(self, path: Path):
        self.path = path

    def on_step_end(self, args, state, control, **kwargs):
        # Log the training loss right before each evaluation, so train_loss covers exactly that window.
        control.should_log = control.should_log or control.should_evaluate
        return control

    on_epoch_end = on_step_end

    def on_evaluate(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            write_history_csv(self.path, state.log_history)


class TrainClockCallback(TrainerCallback, ExportableState):
    """Training seconds summed over every session of a resumed run (stored in each checkpoint)."""

    def __init__(self):
        self.seconds_before = 0.0
        self.started = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def seconds(self) -> float:
        return self.seconds_before + (time.perf_counter() - self.started if self.started else 0.0)

    def state(self) -> dict:
        return {"args": {}, "attributes": {"seconds_before": self.seconds()}}


def training_arguments(args: argparse.Namespace, precision: str, optim: str) -> Seq2SeqTrainingArguments:
    """Trainer settings: evaluation and checkpoint together (epoch or --eval-every steps), best by WER."""
    every = {"eval_strategy": "steps", "eval_steps": args.eval_every, "save_strategy": "steps",
             "save_steps": args.eval_every} if args.eval_every else {"eval_strategy": "epoch", "save_strategy": "epoch"}
    return Seq2SeqTrainingArguments(
        output_dir=str(args.output_dir), num_train_epochs=args.epochs, max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=args.eval_batch_size,
        gradient_accumulation_steps=args.grad_accum, learning_rate=args.lr, warmup_steps=args.warmup_ratio,
        lr_scheduler_type=args.scheduler, weight_decay=args.weight_decay, optim=optim,
        fp16=precision == "fp16", bf16=precision == "bf16",
        # Non-reentrant checkpointing: no "backward through the graph a second time" (PITFALLS 1).
        activation_checkpointing=args.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if args.gradient_checkpointing else None,
        **every, load_best_model_at_end=True, metric_for_best_model="validation_wer", greater_is_better=False,
        save_total_limit=args.save_total_limit, logging_steps=args.logging_steps,
        predict_with_generate=True, seed=args.seed, dataloader_num_workers=args.num_workers,
        # The collator reads `sentence`; peft wrappers hide the label name (PITFALLS 14).
        remove_unused_columns=False, label_names=["labels"],
        # Early-stopping patience and the training clock continue across a resume.
        restore_callback_states_from_checkpoint=True,
        ddp_find_unused_parameters=False,
        # Several processes without a GPU (torchrun on CPU): accelerate sets up gloo DDP only when told "cpu".
        use_cpu=not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1,
        report_to=["tensorboard"] if importlib.util.find_spec("tensorboard") else "none",
    )


def next_setting_after_oom(args: argparse.Namespace) -> str:
    """What to change after a CUDA out-of-memory error, cheapest loss of speed first."""
    if args.batch_size > 1:
        return (f"--batch-size {args.batch_size // 2} --grad-accum {args.grad_accum * 2} (same effective batch; "
                f"if it ran out while evaluating: --eval-batch-size {max(args.eval_batch_size // 2, 1)})")
    if not args.gradient_checkpointing:
        return "--gradient-checkpointing"
    if args.optim not in ("adamw_bnb_8bit", "adafactor") and not args.lora:
        return "--optim adamw_bnb_8bit (pip install bitsandbytes) or --optim adafactor"
    if not args.lora:
        return "--lora (or --freeze-encoder)"
    return "a smaller --model (openai/whisper-base) or a GPU with more memory"


def run_training(trainer, args: argparse.Namespace, checkpoint: Path | None) -> None:
    """trainer.train(), turning an out-of-memory error or Ctrl-C into what to type next."""
    try:
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except torch.cuda.OutOfMemoryError:
        kept = last_complete_checkpoint(args.output_dir)
        raise SystemExit(f"CUDA out of memory. {'Kept ' + str(kept) if kept else 'No checkpoint was complete yet'}; "
                         f"re-run the same command with {next_setting_after_oom(args)}"
                         f"{'' if args.preset == 'low-vram' else ', or with --preset low-vram'}.")
    except KeyboardInterrupt:
        kept = last_complete_checkpoint(args.output_dir)
        raise SystemExit(f"Stopped. Re-run the same command to continue from "
                         f"{kept if kept else 'the start (no checkpoint was complete yet)'}.")


# ----------------------------------------------------------------------------- 8. test transcription

def transcribe_split(model, processor, split, batch_size: int, n_frames: int, precision: str) -> tuple[list, float]:
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

def architecture_facts(config) -> dict:
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


def best_epoch(state) -> float | None:
    """The epoch of the evaluation that scored the best validation WER."""
    return next((e["epoch"] for e in state.log_history
                 if e.get("step") == state.best_global_step and "eval_validation_wer" in e), None)


def versions() -> dict:
    """Versions of what produced the run (for the report's reproducibility table)."""
    found = {"python": platform.python_version()}
    for package in ("torch", "transformers", "datasets", "accelerate", "peft", "jiwer", "bitsandbytes"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[package] = metadata.version(package)
    return found


def device_description(trainer) -> str:
    world = trainer.args.world_size
    if torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)}) x{world}"
    return f"cpu x{world} process{'es' if world > 1 else ''}"


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
    lines += ["model-index:", f"- name: {name}", "  results:", "  - task:", "      type: automatic-speech-recognition",
              "      name: Automatic Speech Recognition", "    dataset:", "      name: VIVOS",
              "      type: AILAB-VNUHCM/vivos", "      split: test", "    metrics:",
              f"    - {{type: wer, value: {100 * metrics['wer']:.2f}, name: Test WER}}",
              f"    - {{type: cer, value: {100 * metrics['cer']:.2f}, name: Test CER}}", "---", ""]
    trained = ("evaluated as it is (no fine-tuning)" if args.eval_only else
               f"fine-tuned for {run_info['epochs_run']:.2f} epochs (best epoch {run_info['best_epoch']}, "
               f"stopped: {run_info['stop_reason']})")
    lines += [f"# {name}", "", f"Whisper ({args.model}) {trained} on Vietnamese speech from the prepared dataset "
              f"`{args.data.name}` ({run_info['dataset']['splits']['train']} train utterances), text normalised "
              "(lower case, punctuation removed, tone marks kept).", "",
              f"Test WER **{100 * metrics['wer']:.2f} %**, CER **{100 * metrics['cer']:.2f} %** on "
              f"{metrics['num_utterances']} test utterances (real-time factor {metrics['rtf']}).", "",
              "## Use", "", "```python", "from transformers import pipeline", "",
              f'asr = pipeline("automatic-speech-recognition", model="{name}")',
              'print(asr("audio.wav")["text"])', "```", "", "## Training settings", "",
              "| setting | value |", "| --- | --- |"]
    for key in ("learning_rate", "scheduler", "warmup_steps", "weight_decay", "batch_size", "grad_accum",
                "effective_batch_size", "optimizer", "precision", "lora", "params_trainable", "train_seconds",
                "device"):
        lines.append(f"| {key} | {run_info[key]} |")
    lines += ["", f"Command: `{run_info['command']}`", ""]
    return "\n".join(lines)


def push_best_model(args: argparse.Namespace, best_dir: Path) -> None:
    """Upload best_model/ (weights, processor, card) to the Hub, as one commit."""
    from huggingface_hub import HfApi

    api = HfApi()
    repo_id = api.create_repo(args.hub_model_id or args.output_dir.name, exist_ok=True).repo_id
    api.upload_folder(folder_path=str(best_dir), repo_id=repo_id, commit_message="Whisper fine-tuned on VIVOS")
    say(f"Pushed {best_dir} to https://huggingface.co/{repo_id}")


def write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False), encoding="utf-8")


def write_predictions_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=PREDICTION_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


# ----------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> dict:
    # 1. Settings.
    args = parse_args(argv)
    set_seed(args.seed)
    precision = resolve_precision(args.precision)
    optim = resolve_optimizer(args.optim)

    # 2. Checkpoint to resume from.
    checkpoint = checkpoint_to_resume(args)

    # 3. Prepared dataset, checked.
    summary = read_prepare_summary(args.data)
    dataset = load_prepared_dataset(args.data, ("validation", "test") if args.eval_only else
                                    ("train", "validation", "test"))
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
    train_pool = splits.get("train", splits["validation"])
    subset_size = min(args.train_eval_size, len(train_pool))
    train_subset = train_pool.select(np.sort(np.random.default_rng(args.seed).choice(
        len(train_pool), subset_size, replace=False)))
    columns = ["input_features", "sentence"]
    eval_sets = {"validation": splits["validation"].with_format("numpy", columns=columns)}
    if subset_size:
        eval_sets["train_subset"] = train_subset.with_format("numpy", columns=columns)
    collator = WhisperCollator(processor.tokenizer, n_frames, config.decoder_start_token_id)

    # 6. Metrics.
    compute_metrics = wer_cer_metrics(processor.tokenizer)

    # 7. Training.
    clock = TrainClockCallback()
    callbacks = [HistoryCsvCallback(args.output_dir / "history.csv"), clock]
    if args.patience > 0 and not args.eval_only:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=args.patience))
    trainer = Seq2SeqTrainer(
        model=model, args=training_arguments(args, precision, optim), data_collator=collator,
        train_dataset=None if args.eval_only else splits["train"].with_format("numpy", columns=columns),
        eval_dataset=eval_sets, processing_class=processor, compute_metrics=compute_metrics, callbacks=callbacks)
    if args.eval_only:
        trainer.evaluate()
    else:
        run_training(trainer, args, checkpoint)
    clock = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, TrainClockCallback))
    if not trainer.is_world_process_zero():
        return {}
    params_total = sum(p.numel() for p in trainer.model.parameters())
    params_trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)

    # 8. The best model (loaded by Trainer; LoRA merged in) transcribes the test split.
    best = trainer.model.merge_and_unload() if args.lora and not args.eval_only else trainer.model
    raw, decode_seconds = transcribe_split(best, processor, splits["test"], args.eval_batch_size, n_frames, precision)
    rows = test_predictions(splits["test"], raw)
    metrics = test_metrics(rows, decode_seconds)

    # 9. Run folder.
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    trainer.save_state()
    write_history_csv(out / "history.csv", trainer.state.log_history)
    write_predictions_csv(out / "test_predictions.csv", rows)
    write_json(out / "test_metrics.json", metrics)
    state = trainer.state
    run_info = {
        "family": "whisper", "base_model": args.model, "run_name": out.name,
        "params_total": params_total, "params_trainable": params_trainable,
        "architecture": architecture_facts(config),
        "loss": "cross-entropy over transcript tokens (teacher forcing, padding ignored)",
        "optimizer": optim, "learning_rate": args.lr, "scheduler": args.scheduler,
        "warmup_steps": trainer.args.get_warmup_steps(state.max_steps) if not args.eval_only else 0,
        "weight_decay": args.weight_decay, "batch_size": args.batch_size, "grad_accum": args.grad_accum,
        "effective_batch_size": args.batch_size * args.grad_accum * trainer.args.world_size,
        "precision": precision,
        "gradient_checkpointing": args.gradient_checkpointing, "freeze_encoder": args.freeze_encoder,
        "lora": {"r": args.lora_r, "alpha": args.lora_alpha, "dropout": args.lora_dropout,
                 "targets": args.lora_targets.split(",")} if args.lora else None,
        "preset": args.preset, "language": language_code(args.language), "task": args.task,
        "epochs_planned": args.epochs, "epochs_run": round(state.epoch or 0.0, 4),
        "best_epoch": best_epoch(state), "best_step": state.best_global_step,
        "best_val_wer": state.best_metric, "stop_reason": stop_reason(args, state),
        "train_seconds": 0.0 if args.eval_only else round(clock.seconds(), 1),
        "peak_gpu_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)
        if torch.cuda.is_available() else None,
        "device": device_description(trainer),
        "dataset": {"path": str(args.data), "features": "whisper", "n_mels": data_mels,
                    "splits": {name: len(split) for name, split in splits.items()},
                    "dropped_long_transcripts": dropped},
        "eval_only": args.eval_only,
        "command": shlex.join(["python", "train_whisper.py", *args.argv]),
        "versions": versions(),
    }
    write_json(out / "run_info.json", run_info)
    best_dir = out / "best_model"
    best.config.use_cache = True  # generation wants the KV cache back
    best.save_pretrained(best_dir)
    processor.save_pretrained(best_dir)
    (best_dir / "README.md").write_text(model_card(args, run_info, metrics), encoding="utf-8")
    if args.push_to_hub:
        push_best_model(args, best_dir)

    best_text = ("evaluated as it is" if args.eval_only else
                 f"best epoch {run_info['best_epoch']} (step {run_info['best_step']}), validation WER "
                 f"{100 * (state.best_metric or 0):.2f} %, {run_info['stop_reason']}, "
                 f"{run_info['train_seconds'] / 60:.1f} min of training")
    say(f"{out.name}: {best_text}; test WER {100 * metrics['wer']:.2f} %, CER {100 * metrics['cer']:.2f} % "
        f"on {metrics['num_utterances']} utterances (RTF {metrics['rtf']}). Run folder: {out}")
    return run_info


if __name__ == "__main__":
    main()
