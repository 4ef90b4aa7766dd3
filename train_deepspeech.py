"""Train a DeepSpeech2-style recogniser (CNN + bidirectional LSTM + CTC) from scratch on prepared VIVOS.

DeepSpeech2 (Amodei et al., 2016) in plain PyTorch: log-Mel features computed inside the model with
torch.stft (normalised with train-split statistics saved with the weights), 2-3 convolutions with batch
norm and a clipped ReLU, pitch features for the tones, bidirectional LSTM (or GRU) layers and a linear
CTC head over the characters of the train transcripts. Trained with the Hugging Face Trainer, like
train_whisper.py and train_wav2vec2.py: same flags, same sections, same run folder (docs/FORMATS.md).
It learns on a CPU.

Shortest command (the dataset comes from `prepare_vivos.py --features waveform`):

    python train_deepspeech.py --data data/vivos_wave --output-dir runs/deepspeech2

The model itself (features, layers, decoding, load_model, transcribe) is modeling_deepspeech2.py, which
must sit next to this script (in Colab: clone the repository, or write that file in a cell first).

Writes in --output-dir: checkpoint-N/ (resume), best_model/ (model.safetensors, config.json, vocab.json,
lexicon.json, a copy of modeling_deepspeech2.py, README.md model card), trainer_state.json, history.csv (one
row per evaluation), run_info.json, test_predictions.csv, test_metrics.json and runs/ (TensorBoard).
Re-running the same command resumes from the last complete checkpoint.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import shlex
import shutil
import sys
import time
import unicodedata
from pathlib import Path

import datasets
import jiwer
import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments, set_seed

try:
    import modeling_deepspeech2
except ModuleNotFoundError as error:
    if error.name != "modeling_deepspeech2":
        raise
    raise SystemExit("train_deepspeech.py needs modeling_deepspeech2.py (the model's code) and Python cannot find it: "
                     "copy modeling_deepspeech2.py from the repository next to train_deepspeech.py. In Colab: git "
                     "clone the repository and %cd into it, or first run a cell holding %%writefile "
                     "modeling_deepspeech2.py followed by that file's text.")
from modeling_deepspeech2 import (BEAM_DEFAULTS, DeepSpeech2, Lexicon, LogMelSpectrogram, ctc_greedy_text,
                                  load_model, pad_waveforms, transcribe)

SAMPLING_RATE = 16000  # every prepared dataset is 16 kHz mono
IGNORE_INDEX = -100  # label padding the Trainer also uses when it concatenates batches
TEST_CHUNK = 256  # test utterances read from disk at a time, so memory stays flat on the full test set
# Best model and early stopping follow validation CER: a character model trained from scratch keeps its
# validation WER at 1.0 for its first epochs while CER already falls, and patience on WER would stop it there.
BEST_METRIC = "eval_validation_cer"


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


def is_main_process() -> bool:
    """Rank 0 under torchrun (or the only process): the one that prints and writes the run folder."""
    return int(os.environ.get("RANK", "0")) == 0


def say(message: str) -> None:
    if is_main_process():
        print(f"[train_deepspeech] {message}", flush=True)


# ----------------------------------------------------------------------------- 1. settings

# Settings bundles; flags given on the command line override them.
PRESETS = {
    # CPU smoke test and unit tests: a 40-Mel, 1-layer model that trains in seconds (it learns little).
    "tiny": {"n_mels": 40, "conv_channels": 8, "rnn_layers": 1, "rnn_hidden": 64, "batch_size": 8,
             "eval_batch_size": 16, "epochs": 2, "train_eval_size": 16, "logging_steps": 5},
    # A CUDA GPU and the full VIVOS (15 h): 5 BiLSTM-512 layers (30 M parameters), larger batches.
    "gpu": {"rnn_layers": 5, "rnn_hidden": 512, "batch_size": 32, "eval_batch_size": 64, "epochs": 40,
            "patience": 5, "lr": 5e-4},
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    io = parser.add_argument_group("data and run folder")
    io.add_argument("--data", type=Path, required=True, help="prepared dataset (prepare_vivos.py --features waveform)")
    io.add_argument("--model", default="scratch",
                    help="'scratch' (default: a new model sized by the flags below) or a best_model/ folder "
                         "written by this script, to train further or evaluate (--eval-only)")
    io.add_argument("--output-dir", type=Path, required=True, help="run folder (created; resumed when it exists)")
    io.add_argument("--preset", choices=sorted(PRESETS),
                    help="settings bundle: tiny (CPU smoke test, seconds), gpu (CUDA GPU, full VIVOS); "
                         "flags given explicitly override it")

    arch = parser.add_argument_group("model (ignored when --model is a saved model)")
    arch.add_argument("--n-mels", type=int, default=80, help="log-Mel bins (default 80)")
    arch.add_argument("--pitch", action=argparse.BooleanOptionalAction, default=True,
                      help="pitch features for the tones: F0 relative to the utterance, slope, voicing (default on)")
    arch.add_argument("--conv-layers", type=int, default=2, choices=[1, 2, 3], help="2-D convolutions (default 2)")
    arch.add_argument("--conv-channels", type=int, default=32, help="channels per convolution (default 32)")
    # LSTM, not DS2's GRU: with the pitch features it learns far faster per epoch than the GRU does (with or
    # without them), and its epochs are shorter on a CPU (oneDNN's fused kernels): bench test CER 0.046 vs 0.064.
    arch.add_argument("--rnn-type", choices=["gru", "lstm"], default="lstm", help="recurrent cell (default lstm)")
    arch.add_argument("--rnn-layers", type=int, default=3, help="bidirectional recurrent layers (default 3)")
    arch.add_argument("--rnn-hidden", type=int, default=256, help="units per direction (default 256)")

    train = parser.add_argument_group("training")
    train.add_argument("--epochs", type=float, default=10, help="training epochs (default 10; early stopping "
                       "may end sooner)")
    train.add_argument("--max-steps", type=int, default=-1, help="stop after this many optimizer steps "
                       "(overrides --epochs)")
    # 4, not 8: on the 720-utterance benchmark it leaves CTC's blank plateau an epoch sooner (test CER 0.077 vs
    # 0.085 after 10 epochs); presets and GPUs use larger batches.
    train.add_argument("--batch-size", type=int, default=4, help="utterances per device per step (default 4)")
    train.add_argument("--eval-batch-size", type=int, default=32, help="utterances per device when evaluating")
    train.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps (default 1)")
    train.add_argument("--lr", type=float, default=1.5e-3, help="peak learning rate (default 1.5e-3, AdamW)")
    # 0.15, not 0.05: on the benchmark (4 seeds) mean test CER/WER 0.047/0.131 against 0.049/0.137, mostly
    # through a seed that left CTC's blank plateau sooner. Augmentation waits for its end (AugmentAfterWarmup).
    train.add_argument("--warmup-ratio", type=float, default=0.15, help="share of steps for warm-up (default 0.15)")
    train.add_argument("--weight-decay", type=float, default=1e-2)
    train.add_argument("--scheduler", default="linear",
                       help="learning-rate schedule after warm-up: linear, cosine, constant_with_warmup, ...")
    train.add_argument("--max-grad-norm", type=float, default=5.0, help="gradient clipping (default 5)")
    train.add_argument("--optim", default="adamw_torch", choices=["adamw_torch", "adamw_bnb_8bit", "adafactor"],
                       help="optimizer; adamw_bnb_8bit needs bitsandbytes and a CUDA GPU")
    train.add_argument("--seed", type=int, default=42)

    reg = parser.add_argument_group("regularisation")
    reg.add_argument("--dropout", type=float, default=0.1, help="dropout after each recurrent layer")
    # On: 12 train voices are few, and a clip played up to 10 % faster or slower sounds like another voice
    # (pitch, formants and tempo move together). Bench, 4 seeds: mean test CER / WER 0.053 / 0.146 -> 0.049 / 0.137.
    reg.add_argument("--speed-perturb", type=float, default=0.1,
                     help="train on each clip played at a random speed within 1 +- this (default 0.1; 0: off), "
                     "from the end of the warm-up")
    reg.add_argument("--spec-augment", action=argparse.BooleanOptionalAction, default=True,
                     help="SpecAugment time and Mel masks while training, from the end of the warm-up (default on)")
    reg.add_argument("--mask-time-prob", type=float, default=0.05, help="share of frames masked (default 0.05)")
    reg.add_argument("--mask-time-length", type=int, default=10, help="frames per time mask (10 ms each)")
    reg.add_argument("--mask-feature-prob", type=float, default=0.15, help="share of Mel bins masked")
    reg.add_argument("--mask-feature-length", type=int, default=10, help="Mel bins per mask")

    ev = parser.add_argument_group("evaluation, early stopping, checkpoints")
    ev.add_argument("--eval-every", type=int, default=0,
                    help="evaluate and checkpoint every N steps (default 0: every epoch)")
    ev.add_argument("--patience", type=int, default=3,
                    help="stop after this many evaluations without a better validation CER (0: never)")
    ev.add_argument("--train-eval-size", type=int, default=200,
                    help="fixed train utterances also scored each evaluation, to show the gap (0: none)")
    ev.add_argument("--logging-steps", type=int, default=10)
    ev.add_argument("--save-total-limit", type=int, default=2, help="checkpoints kept besides the best one")
    ev.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                    help="continue from the last complete checkpoint in --output-dir (default); --no-resume "
                         "starts over, only into an empty folder")
    ev.add_argument("--decoder", choices=["beam", "greedy"], default="beam",
                    help="how the test split (and later transcribe.py / demo.py) decode: beam = CTC beam search "
                         "favouring words of the train transcripts (default), greedy = best path; validation "
                         "during training is always greedy")
    ev.add_argument("--eval-only", action="store_true",
                    help="no training: evaluate --model as it is and write the test artifacts")

    hw = parser.add_argument_group("hardware")
    hw.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"], default="auto",
                    help="auto: bf16 on GPUs that support it, else fp16 on CUDA, fp32 on CPU")
    hw.add_argument("--gradient-checkpointing", action="store_true",
                    help="recompute the recurrent layers in backward: less memory for long clips")
    hw.add_argument("--num-workers", type=int, default=0, help="data loader processes (default 0)")

    hub = parser.add_argument_group("Hugging Face Hub")
    hub.add_argument("--push-to-hub", action="store_true", help="upload best_model/ and its card at the end")
    hub.add_argument("--hub-model-id", help="repository id (default: the --output-dir name)")

    args = parser.parse_args(argv)
    if args.preset:
        parser.set_defaults(**PRESETS[args.preset])
        args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    return args


def resolve_precision(choice: str) -> str:
    """fp32 on CPU; on CUDA `auto` means bf16 where supported (no grad scaler needed), else fp16."""
    cuda = torch.cuda.is_available()
    if choice == "auto":
        # Compute capability >= 8 (A100, RTX 30xx) has bf16; is_bf16_supported() says yes on a T4 (emulated).
        return ("bf16" if torch.cuda.get_device_capability()[0] >= 8 else "fp16") if cuda else "fp32"
    if choice in ("fp16", "bf16") and not cuda:
        raise InputError(f"--precision {choice} needs a CUDA GPU and none was found; use --precision fp32 "
                         "(or auto) on this machine")
    return choice


def resolve_optimizer(name: str) -> str:
    """The optimizer to use: 8-bit AdamW only where bitsandbytes can run it, else adafactor."""
    if name != "adamw_bnb_8bit":
        return name
    if not torch.cuda.is_available():
        missing = "no CUDA GPU here"
    elif importlib.util.find_spec("bitsandbytes") is None:
        missing = "bitsandbytes is not installed: pip install bitsandbytes"
    else:
        return name
    say(f"--optim adamw_bnb_8bit needs bitsandbytes and a CUDA GPU ({missing}); using adafactor instead, "
        "which also keeps almost no optimizer state")
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


# ----------------------------------------------------------------------------- 3. prepared dataset

def prepare_call(summary: dict, data: Path) -> str:
    """The prepare_vivos.py command that makes the waveform dataset this trainer needs."""
    source = str(summary.get("source", ""))
    vivos = source[len("VIVOS "):] if source.startswith("VIVOS ") else "PATH/TO/vivos"
    return (f"python prepare_vivos.py --vivos-dir {shlex.quote(vivos)} --out {shlex.quote(str(data) + '_wave')} "
            "--features waveform")


def load_prepared_dataset(data: Path):
    """The waveform DatasetDict and its prepare_summary.json; refuses anything else with the fix."""
    summary_path = data / "prepare_summary.json"
    if not summary_path.is_file():
        raise InputError(f"--data {data}: expected a dataset made by prepare_vivos.py (with prepare_summary.json), "
                         f"found {'no such folder' if not data.exists() else 'no prepare_summary.json'}. Make one: "
                         f"python prepare_vivos.py --vivos-dir PATH/TO/vivos --out {data} --features waveform")
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    if summary.get("features") != "waveform":
        raise InputError(f"--data {data} holds {summary.get('features')!r} features; DeepSpeech2 computes its own "
                         f"log-Mel from raw 16 kHz waveforms. Make the waveform dataset: {prepare_call(summary, data)}")
    if summary.get("sampling_rate", SAMPLING_RATE) != SAMPLING_RATE:
        raise InputError(f"--data {data} is sampled at {summary['sampling_rate']} Hz, expected {SAMPLING_RATE}; "
                         f"prepare it again: {prepare_call(summary, data)}")
    dataset = datasets.load_from_disk(str(data))
    missing = [s for s in ("train", "validation", "test") if s not in dataset]
    if missing:
        raise InputError(f"--data {data} lacks the split(s) {', '.join(missing)} (found {', '.join(dataset)}); "
                         f"prepare it again: {prepare_call(summary, data)}")
    for name, split in dataset.items():
        absent = {"input_values", "sentence", "duration"} - set(split.column_names)
        if absent:
            raise InputError(f"--data {data}: split {name} lacks column(s) {', '.join(sorted(absent))}; "
                             f"prepare it again: {prepare_call(summary, data)}")
    return dataset, summary


# ----------------------------------------------------------------------------- 4. model and vocabulary

def build_vocab(sentences: list[str]) -> dict[str, int]:
    """Characters of the normalised train text, built as train_wav2vec2.py does: `[PAD]` (the CTC blank)
    is 0, `[UNK]` 1, `|` (the space) 2, then the characters in sorted order."""
    characters = sorted(set("".join(sentences)) - {" "})
    return {"[PAD]": 0, "[UNK]": 1, "|": 2, **{c: i for i, c in enumerate(characters, start=3)}}


def unknown_characters(sentences: list[str], vocab: dict[str, int]) -> dict[str, int]:
    """Characters missing from the vocabulary and how often they occur (they will count as errors)."""
    counts: dict[str, int] = {}
    for c in "".join(sentences):
        if c != " " and c not in vocab:
            counts[c] = counts.get(c, 0) + 1
    return counts


def model_config(args, vocab: dict[str, int], mean: list[float], std: list[float]) -> dict:
    """config.json of a new model: sizes, feature settings and train feature statistics."""
    return {
        "model_type": "deepspeech2", "architectures": ["DeepSpeech2"],
        "sampling_rate": SAMPLING_RATE, "n_fft": 512, "win_length": 400, "hop_length": 160,
        "n_mels": args.n_mels, "pitch": args.pitch,
        "feature_mean": mean, "feature_std": std,
        "conv_layers": args.conv_layers, "conv_channels": args.conv_channels,
        "rnn_type": args.rnn_type, "rnn_layers": args.rnn_layers, "rnn_hidden": args.rnn_hidden,
        "vocab_size": len(vocab), "blank_id": vocab["[PAD]"], "unk_id": vocab["[UNK]"], "word_delimiter": "|",
        **training_config(args),
    }


def training_config(args) -> dict:
    """The config entries that flags set even for a loaded model: training-only settings and the decoder."""
    return {"decoder": args.decoder, "dropout": args.dropout, "speed_perturb": args.speed_perturb,
            "spec_augment": args.spec_augment,
            "mask_time_prob": args.mask_time_prob, "mask_time_length": args.mask_time_length,
            "mask_feature_prob": args.mask_feature_prob, "mask_feature_length": args.mask_feature_length}


def check_saved_model(folder: Path) -> None:
    needed = ["config.json", "vocab.json", "model.safetensors"]
    missing = [name for name in needed if not (folder / name).is_file()]
    config = json.loads((folder / "config.json").read_text(encoding="utf-8")) if not missing else {}
    if missing or config.get("model_type") != "deepspeech2":
        found = ", ".join(sorted(p.name for p in folder.iterdir())) if folder.is_dir() else "no such folder"
        raise InputError(f"--model {folder}: expected 'scratch' or a best_model/ folder written by "
                         f"train_deepspeech.py ({', '.join(needed)}, model_type deepspeech2); found: {found}")


def feature_statistics(split, config: dict, limit: int, seed: int) -> tuple[list[float], list[float]]:
    """Per-Mel-bin mean and std of the un-normalised log-Mel over (a seeded sample of) the train split."""
    features = LogMelSpectrogram({**config, "feature_mean": [0.0] * config["n_mels"],
                                  "feature_std": [1.0] * config["n_mels"]})
    rows = np.random.default_rng(seed).permutation(len(split))[:limit].tolist()
    waves = split.with_format("numpy", columns=["input_values"])
    total = torch.zeros(config["n_mels"], dtype=torch.float64)
    squares = torch.zeros_like(total)
    count = 0
    with torch.no_grad():
        for start in range(0, len(rows), 32):
            for wave in waves[rows[start: start + 32]]["input_values"]:
                frames = features.log_mel(torch.tensor(wave, dtype=torch.float32)[None])[0]
                total += frames.sum(dim=1).double()
                squares += (frames.double() ** 2).sum(dim=1)
                count += frames.shape[1]
    mean = total / count
    std = (squares / count - mean ** 2).clamp(min=1e-6).sqrt()
    return mean.tolist(), std.tolist()


# ----------------------------------------------------------------------------- 5. data for the Trainer

def word_counts(sentences: list[str]) -> dict[str, int]:
    """How often each word occurs in the (normalised) sentences, most frequent first: lexicon.json."""
    counts: dict[str, int] = {}
    for sentence in sentences:
        for word in sentence.split():
            counts[word] = counts.get(word, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def encode_text(sentence: str, vocab: dict[str, int]) -> list[int]:
    unknown = vocab["[UNK]"]
    return [vocab.get("|" if c == " " else c, unknown) for c in sentence]


class CTCCollator:
    """Pads waveforms with zeros and character labels with -100: {input_values, input_lengths, labels}."""

    def __init__(self, vocab: dict[str, int]):
        self.vocab = vocab

    def __call__(self, examples: list[dict]) -> dict:
        values, lengths = pad_waveforms([e["input_values"] for e in examples])
        encoded = [encode_text(str(e["sentence"]), self.vocab) for e in examples]
        labels = torch.full((len(encoded), max(len(e) for e in encoded)), IGNORE_INDEX, dtype=torch.long)
        for row, ids in enumerate(encoded):
            labels[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return {"input_values": values, "input_lengths": lengths, "labels": labels}


class SortaGradSampler(torch.utils.data.Sampler):
    """Epoch 0: shortest utterances first (SortaGrad, DS2 paper section 3.1), which keeps early CTC
    gradients tame; later epochs: batches of similar length in random order (less padding).

    The order depends only on (seed, epoch), so a resumed run skips exactly the batches it had seen and
    every torchrun process sees the same order before accelerate deals out the batches.
    """

    def __init__(self, lengths: list[float], batch_size: int, seed: int, group_batches: int = 50):
        self.lengths = np.asarray(lengths, dtype=np.float64)
        self.batch_size, self.seed, self.group = batch_size, seed, batch_size * group_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        if self.epoch == 0:
            return iter(np.argsort(self.lengths, kind="stable").tolist())
        rng = np.random.default_rng(self.seed + self.epoch)
        order = rng.permutation(len(self.lengths))
        batches = []
        for start in range(0, len(order), self.group):
            group = sorted(order[start: start + self.group].tolist(), key=lambda i: -self.lengths[i])
            batches += [group[i: i + self.batch_size] for i in range(0, len(group), self.batch_size)]
        rng.shuffle(batches)
        return iter([i for batch in batches for i in batch])


def alignable_indices(durations: list[float], sentences: list[str], model: DeepSpeech2) -> list[int]:
    """Utterances whose output frames can hold their transcript under CTC (which needs a blank between
    repeated characters); the rest would only add zero losses."""
    samples = torch.tensor([round(d * SAMPLING_RATE) for d in durations], dtype=torch.long)
    frames = model.output_lengths(samples).tolist()
    needed = [len(s) + sum(a == b for a, b in zip(s, s[1:])) for s in sentences]
    return [i for i, (have, need) in enumerate(zip(frames, needed)) if have >= need]


# ----------------------------------------------------------------------------- 6. metrics

def label_text(ids: np.ndarray, tokens: dict[int, str]) -> str:
    """The reference text behind a row of label ids (-100 is padding; an unknown character stays one
    character, so it costs one error)."""
    chars = [tokens[int(i)] for i in ids if i >= 0]
    text = "".join("\ufffd" if c == "[UNK]" else " " if c == "|" else c for c in chars)
    return unicodedata.normalize("NFC", text)  # like the transcripts


def make_compute_metrics(model: DeepSpeech2):
    """compute_metrics for the Trainer: greedy transcripts of the argmax ids against the label text."""
    def compute_metrics(prediction) -> dict:
        blank = model.settings["blank_id"]
        hyps = [ctc_greedy_text(row, model.tokens, blank) for row in prediction.predictions]
        refs = [label_text(row, model.tokens) for row in prediction.label_ids]
        scores = compute_wer_cer(refs, hyps)
        return {"wer": scores["wer"], "cer": scores["cer"]}
    return compute_metrics


def argmax_ids(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Keep only the best ids per frame during evaluation (the full logits would fill memory)."""
    return logits.argmax(dim=-1)


# ----------------------------------------------------------------------------- 7. training

HISTORY_COLUMNS = ["epoch", "step", "train_loss", "val_loss", "val_wer", "val_cer", "train_wer", "train_cer",
                   "learning_rate"]


def history_rows(log_history: list[dict]) -> list[dict]:
    """One row per evaluation step; train_loss is the step-weighted mean of the losses logged since the
    previous evaluation."""
    evals: dict[int, dict] = {}
    for entry in log_history:
        if any(key.startswith("eval_") for key in entry):
            evals.setdefault(entry["step"], {}).update(entry)
    losses = [e for e in log_history if "loss" in e]
    rows, previous = [], 0
    for step in sorted(evals):
        entry = evals[step]
        window = [e for e in losses if previous < e["step"] <= step]
        spans = np.diff([previous] + [e["step"] for e in window])
        train_loss = float(np.average([e["loss"] for e in window], weights=spans)) if window else ""
        rows.append({"epoch": round(entry.get("epoch", 0.0), 4), "step": step, "train_loss": train_loss,
                     "val_loss": entry.get("eval_validation_loss", ""), "val_wer": entry.get("eval_validation_wer", ""),
                     "val_cer": entry.get("eval_validation_cer", ""),
                     "train_wer": entry.get("eval_train_subset_wer", ""),
                     "train_cer": entry.get("eval_train_subset_cer", ""),
                     "learning_rate": window[-1].get("learning_rate", "") if window else ""})
        previous = step
    return rows


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def training_arguments(args: argparse.Namespace, output_dir: Path, precision: str, optimizer: str) -> TrainingArguments:
    """The Trainer's settings: by-epoch (or --eval-every) evaluation and checkpoints, best model by validation
    CER loaded at the end, TensorBoard when installed."""
    by_steps = args.eval_every > 0
    return TrainingArguments(
        output_dir=str(output_dir),
        run_name=output_dir.name,
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.eval_batch_size,
        gradient_accumulation_steps=args.grad_accum,
        learning_rate=args.lr,
        warmup_steps=args.warmup_ratio,  # a float below 1 is a share of the steps in transformers 5
        weight_decay=args.weight_decay,
        lr_scheduler_type=args.scheduler,
        max_grad_norm=args.max_grad_norm,
        optim=optimizer,
        fp16=precision == "fp16",
        bf16=precision == "bf16",
        eval_strategy="steps" if by_steps else "epoch",
        save_strategy="steps" if by_steps else "epoch",
        eval_steps=args.eval_every if by_steps else None,
        save_steps=args.eval_every if by_steps else None,  # equal to eval_steps: best-model tracking needs it
        logging_steps=args.logging_steps,
        save_total_limit=args.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model=BEST_METRIC,
        greater_is_better=False,
        restore_callback_states_from_checkpoint=True,  # the early-stopping counter survives a resume
        label_names=["labels"],
        remove_unused_columns=False,  # the collator picks its columns itself
        dataloader_num_workers=args.num_workers,
        dataloader_pin_memory=torch.cuda.is_available(),  # pinning means nothing without a GPU (and warns)
        ddp_find_unused_parameters=False,
        # accelerate starts CPU DDP (gloo) only when told the run is on CPU; a lone process keeps MPS/CUDA.
        use_cpu=not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1,
        seed=args.seed,
        report_to=["tensorboard"] if tensorboard_installed() else [],
    )


class HistoryCallback(TrainerCallback):
    """Rewrites history.csv after every evaluation from the Trainer's log history, which a resume
    restores, so rows from before an interruption are kept."""

    def __init__(self, path: Path):
        self.path = path

    def on_step_end(self, args, state, control, **kwargs):
        # Log the loss of the last steps right before evaluating, so train_loss covers exactly them.
        if control.should_evaluate:
            control.should_log = True

    on_epoch_end = on_step_end

    def on_evaluate(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            write_csv(self.path, HISTORY_COLUMNS, history_rows(state.log_history))


class AugmentAfterWarmup(TrainerCallback):
    """Speed perturbation and SpecAugment only once the learning-rate warm-up is over: on clean clips the
    model mostly leaves CTC's blank-only start sooner, and the augmentation then has something to regularise
    (bench, 4 seeds: mean test CER/WER 0.047/0.131 -> 0.0435/0.121). Read from the step count, so a resumed
    run switches at the same step."""

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        model.augment = state.global_step >= args.get_warmup_steps(state.max_steps)


class ValidationEarlyStopping(EarlyStoppingCallback):
    """Early stopping that reads only the validation evaluation; the train-subset evaluation that
    follows it carries no validation WER and is not a reason to warn or to count."""

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if metrics and args.metric_for_best_model in metrics:
            super().on_evaluate(args, state, control, metrics=metrics, **kwargs)


class SortaGradTrainer(Trainer):
    """The Trainer with SortaGradSampler as its training order (the one change DS2 needs)."""

    def __init__(self, *args, lengths: list[float], **kwargs):
        super().__init__(*args, **kwargs)
        self.lengths = lengths

    def _get_train_sampler(self, train_dataset=None):
        return SortaGradSampler(self.lengths, self.args.per_device_train_batch_size, self.args.seed)


def next_setting_after_oom(args: argparse.Namespace) -> str:
    """What to change after a CUDA out-of-memory error, cheapest loss of speed first."""
    if args.batch_size > 1:
        return (f"--batch-size {args.batch_size // 2} --grad-accum {args.grad_accum * 2} (same effective batch; "
                f"if it ran out while evaluating: --eval-batch-size {max(args.eval_batch_size // 2, 1)})")
    if not args.gradient_checkpointing:
        return "--gradient-checkpointing"
    return "--precision fp16, fewer --rnn-layers / --rnn-hidden, or shorter clips (prepare_vivos.py --max-seconds)"


def run_training(trainer: Trainer, args: argparse.Namespace, output_dir: Path, checkpoint: Path | None) -> None:
    """trainer.train(), turning an out-of-memory error or Ctrl-C into what to type next."""
    try:
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except torch.cuda.OutOfMemoryError:
        kept = last_complete_checkpoint(output_dir)
        raise InputError(f"CUDA out of memory. {'Kept ' + str(kept) if kept else 'No checkpoint was complete yet'}; "
                         f"re-run the same command with {next_setting_after_oom(args)}.")
    except KeyboardInterrupt:
        kept = last_complete_checkpoint(output_dir)
        raise InputError(f"Stopped. Re-run the same command to continue from "
                         f"{kept if kept else 'the start (no checkpoint was complete yet)'}.")


def tensorboard_installed() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


# ----------------------------------------------------------------------------- 8. test transcription

PREDICTION_COLUMNS = ["id", "speaker", "duration", "reference", "prediction", "raw_prediction", "wer", "cer"]


def transcribe_test_split(model: DeepSpeech2, test, batch_size: int) -> tuple[list[dict], float]:
    """Per-utterance rows of test_predictions.csv and the seconds spent transcribing."""
    rows, seconds = [], 0.0
    waves = test.with_format("numpy", columns=["input_values"])
    for start in range(0, len(test), TEST_CHUNK):
        chunk = waves[start: start + TEST_CHUNK]["input_values"]
        began = time.perf_counter()
        raw = transcribe(model, list(chunk), batch_size=batch_size)
        seconds += time.perf_counter() - began
        meta = test.select_columns(["id", "speaker", "duration", "sentence"])[start: start + TEST_CHUNK]
        for k, text in enumerate(raw):
            reference, prediction = meta["sentence"][k], normalize_text(text)
            scores = compute_wer_cer([reference], [prediction])
            rows.append({"id": meta["id"][k], "speaker": meta["speaker"][k],
                         "duration": round(float(meta["duration"][k]), 3), "reference": reference,
                         "prediction": prediction, "raw_prediction": text,
                         "wer": round(scores["wer"], 4), "cer": round(scores["cer"], 4)})
    return rows, seconds


# ----------------------------------------------------------------------------- 9. run folder

def save_best_model(model: DeepSpeech2, folder: Path) -> None:
    """Weights, config (with the train feature statistics), vocabulary, lexicon and a copy of
    modeling_deepspeech2.py, so the folder alone is enough to load the model."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = {**model.settings, "feature_mean": model.features.mean.tolist(),
              "feature_std": model.features.std.tolist()}
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (folder / "vocab.json").write_text(json.dumps(model.vocab, ensure_ascii=False, indent=2), encoding="utf-8")
    if model.lexicon is not None:
        (folder / "lexicon.json").write_text(json.dumps(model.lexicon.counts, ensure_ascii=False, indent=0),
                                             encoding="utf-8")
    shutil.copyfile(modeling_deepspeech2.__file__, folder / "modeling_deepspeech2.py")


def model_card(run_info: dict, metrics: dict, config: dict) -> str:
    """best_model/README.md: Hub metadata (model-index with test WER/CER) and a human description."""
    splits = run_info["dataset"]["splits"]
    a = run_info["architecture"]
    pitch_note = (" and pitch features for the tones (log F0 relative to the utterance's median, its slope"
                  " and voicing, joined after the convolutions)" if config.get("pitch") else "")
    spread = config.get("speed_perturb", 0.0)
    speed = f"within 1 +- {spread:g}" if spread > 0 else "off"
    augmentations = int(bool(config["spec_augment"])) + int(spread > 0)
    after_warmup = ["", " (from the end of the warm-up)", " (both from the end of the warm-up)"][augmentations]
    return f"""---
language: vi
license: cc-by-nc-sa-4.0
library_name: pytorch
pipeline_tag: automatic-speech-recognition
tags: [automatic-speech-recognition, deepspeech2, ctc, vietnamese, vivos]
datasets: [vivos]
metrics: [wer, cer]
model-index:
- name: {run_info['run_name']}
  results:
  - task: {{type: automatic-speech-recognition, name: Speech Recognition}}
    dataset: {{type: vivos, name: VIVOS (prepared by prepare_vivos.py), split: test}}
    metrics:
    - {{type: wer, value: {100 * metrics['wer']:.2f}, name: Test WER (%)}}
    - {{type: cer, value: {100 * metrics['cer']:.2f}, name: Test CER (%)}}
---

# {run_info['run_name']}: DeepSpeech2 for Vietnamese, trained from scratch

A DeepSpeech2-style model (Amodei et al., 2016) trained from scratch by `train_deepspeech.py` with CTC on
Vietnamese characters: {config['n_mels']}-bin log-Mel features (computed inside the model with `torch.stft`,
normalised with train-split statistics){pitch_note}, {a['conv_layers']} 2-D convolutions with batch norm and a clipped
ReLU, {a['rnn_layers']} bidirectional {a['rnn_type'].upper()} layers of {a['rnn_hidden']} units per direction,
and a linear head over {a['vocab_size']} tokens (`|` is the space, `[PAD]` the CTC blank).
{run_info['params_total']:,} parameters. Decoding: {run_info['decoder_description']}.

## Results (test split: {metrics['num_utterances']} utterances, {metrics['audio_seconds'] / 60:.1f} min of audio)

| WER | CER | sentence error rate | real-time factor |
| --- | --- | --- | --- |
| {100 * metrics['wer']:.2f} % | {100 * metrics['cer']:.2f} % | {100 * metrics['ser']:.2f} % | {metrics['rtf']:.4f} |

Best validation WER {run_info['best_val_wer'] if run_info['best_val_wer'] is not None else 'n/a'} at epoch
{run_info['best_epoch'] if run_info['best_epoch'] is not None else 'n/a'}; stop reason: {run_info['stop_reason']}.

## Data
`{run_info['dataset']['path']}`: train {splits['train']} / validation {splits['validation']} / test
{splits['test']} utterances. Text normalised: NFC, lower case, punctuation removed, tone marks kept.

## Training
AdamW-family optimizer `{run_info['optimizer']}`, learning rate {run_info['learning_rate']} with
{run_info['warmup_steps']} warm-up steps and a {run_info['scheduler']} schedule, weight decay
{run_info['weight_decay']}, batch {run_info['batch_size']} x {run_info['grad_accum']} accumulation
(effective {run_info['effective_batch_size']}), precision {run_info['precision']}, SpecAugment
{'on' if config['spec_augment'] else 'off'} and speed perturbation {speed}{after_warmup},
dropout {config['dropout']}, SortaGrad first epoch then length-grouped batches. {run_info['epochs_run']} epochs in
{run_info['train_seconds']:.0f} s on {run_info['device']}.

## Use
```python
import importlib.util
spec = importlib.util.spec_from_file_location("modeling_deepspeech2", "best_model/modeling_deepspeech2.py")
ds2 = importlib.util.module_from_spec(spec); spec.loader.exec_module(ds2)
model = ds2.load_model("best_model")
print(ds2.transcribe(model, [waveform_16k_float32]))
```
or `python transcribe.py --model best_model audio.wav`.

Command: `{run_info['command']}`

VIVOS (AILAB, VNU-HCM) is licensed CC BY-NC-SA 4.0, and so is a model trained on it; check it before any
commercial use.
"""


def build_run_info(args: argparse.Namespace, trainer: Trainer, model: DeepSpeech2, *, base_model: str,
                   precision: str, optimizer: str, train_seconds: float, dataset, summary: dict, data_path: Path,
                   unknown: dict) -> dict:
    """run_info.json: what was trained, how, on what, and how it ended (docs/FORMATS.md)."""
    state = trainer.state
    best_entry = next((e for e in state.log_history if e.get("step") == state.best_global_step
                       and BEST_METRIC in e), None) if state.best_global_step else None
    early_stopper = next((c for c in trainer.callback_handler.callbacks
                          if isinstance(c, ValidationEarlyStopping)), None)
    stopped_early = early_stopper is not None and early_stopper.early_stopping_patience_counter >= args.patience
    stop_reason = ("eval_only" if args.eval_only else "early_stopping" if stopped_early
                   else "max_steps" if args.max_steps > 0 else "completed")
    world = trainer.args.world_size
    return {
        "family": "deepspeech2", "base_model": base_model, "run_name": Path(trainer.args.output_dir).name,
        "params_total": sum(p.numel() for p in model.parameters()),
        "params_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "architecture": {
            "encoder_layers": model.settings["conv_layers"] + model.settings["rnn_layers"], "decoder_layers": 0,
            "d_model": 2 * model.settings["rnn_hidden"], "heads": None, "ffn_dim": None,
            "activation": "hardtanh(0, 20)", "vocab_size": model.settings["vocab_size"],
            "conv_layers": model.settings["conv_layers"], "conv_channels": model.settings["conv_channels"],
            "rnn_type": model.settings["rnn_type"], "rnn_layers": model.settings["rnn_layers"],
            "rnn_hidden": model.settings["rnn_hidden"], "bidirectional": True, "n_mels": model.settings["n_mels"],
            "features": "log-Mel (torch.stft, 25 ms window, 10 ms hop), train mean/std"
                        + (" + pitch (relative log F0, slope, voicing)" if model.pitch is not None else ""),
            "frame_rate_hz": (SAMPLING_RATE / model.settings["hop_length"]
                              / math.prod(stride[1] for _, stride, _ in model.conv.specs)),
        },
        "decoder": model.settings["decoder"],
        "decoder_description": ("CTC prefix beam search over the words of the train transcripts (best_model/lexicon.json, "
                                f"{len(model.lexicon.counts)} words) with their unigram frequencies, "
                                f"{ {**BEAM_DEFAULTS, **model.settings.get('beam', {})} }"
                                if model.settings["decoder"] == "beam" else "greedy CTC (best path)"),
        "loss": "ctc", "optimizer": optimizer, "learning_rate": args.lr, "scheduler": args.scheduler,
        "warmup_steps": trainer.args.get_warmup_steps(state.max_steps) if state.max_steps else 0,
        "weight_decay": args.weight_decay, "batch_size": args.batch_size, "grad_accum": args.grad_accum,
        "effective_batch_size": args.batch_size * args.grad_accum * world, "precision": precision, "lora": None,
        "epochs_planned": args.epochs, "epochs_run": round(state.epoch or 0.0, 4),
        "best_epoch": round(best_entry["epoch"], 4) if best_entry else None,
        "best_step": state.best_global_step if best_entry else None,
        "best_val_wer": best_entry["eval_validation_wer"] if best_entry else None,
        "best_val_cer": best_entry["eval_validation_cer"] if best_entry else None,
        "stop_reason": stop_reason, "train_seconds": round(train_seconds, 1),
        "peak_gpu_memory_mb": (round(torch.cuda.max_memory_allocated() / 2**20, 1)
                               if torch.cuda.is_available() else None),
        "device": device_description(trainer),
        "dataset": {"path": str(data_path), "features": summary.get("features"),
                    "splits": {name: len(dataset[name]) for name in ("train", "validation", "test")}},
        "unknown_characters": unknown, "eval_only": args.eval_only,
        "command": "python train_deepspeech.py " + shlex.join(args.argv), "versions": package_versions(),
    }


def device_description(trainer: Trainer) -> str:
    world = trainer.args.world_size
    if torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)}) x{world}"
    return f"cpu x{world} process{'es' if world > 1 else ''}"


def package_versions() -> dict:
    """Versions that matter to reproduce the run."""
    versions = {"python": platform.python_version()}
    for package in ("torch", "transformers", "datasets", "accelerate", "jiwer", "numpy"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def push_to_hub(folder: Path, repo_id: str) -> None:
    """Upload best_model/ (weights, config, vocabulary, code, card) as one commit."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="DeepSpeech2 from train_deepspeech.py")
    say(f"uploaded {folder} to https://huggingface.co/{repo_id}")


# ----------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> dict:
    # 1. parse arguments (+ --preset)
    args = parse_args(argv)
    output_dir = args.output_dir.expanduser().resolve()
    data_path = args.data.expanduser().resolve()
    precision = resolve_precision(args.precision)
    optimizer = resolve_optimizer(args.optim)
    set_seed(args.seed)

    # 2. find the checkpoint to resume
    resume_from = None
    if not args.eval_only:
        if args.resume:
            resume_from = last_complete_checkpoint(output_dir) if output_dir.is_dir() else None
        elif output_dir.is_dir() and any(output_dir.iterdir()):
            raise InputError(f"--no-resume starts over only into an empty folder, and {output_dir} is not empty. "
                             "Delete it, pick another --output-dir, or drop --no-resume to continue that run.")
        if resume_from:
            say(f"resuming from {resume_from}")

    # 3. load the prepared dataset and check it
    dataset, summary = load_prepared_dataset(data_path)
    train_split, val_split, test_split = dataset["train"], dataset["validation"], dataset["test"]
    say(f"dataset {data_path}: train {len(train_split)}, validation {len(val_split)}, test {len(test_split)}")

    # 4. load or build the model (and its vocabulary)
    if args.model == "scratch":
        vocab = build_vocab(list(train_split["sentence"]))
        config = model_config(args, vocab, [0.0] * args.n_mels, [1.0] * args.n_mels)
        mean, std = feature_statistics(train_split, config, limit=1000, seed=args.seed)
        model = DeepSpeech2({**config, "feature_mean": mean, "feature_std": std}, vocab)
        base_model = "scratch"
        if args.eval_only:
            say("warning: --eval-only with --model scratch scores an untrained model (a baseline near CER 1)")
    else:
        folder = Path(args.model).expanduser().resolve()
        check_saved_model(folder)
        model = load_model(folder).train()
        model.settings.update(training_config(args))
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = args.dropout
        base_model, vocab = str(folder), model.vocab
        say(f"loaded {folder} (its architecture and vocabulary; the model-size flags do not apply)")
    if model.lexicon is None or not args.eval_only:  # a saved model evaluated keeps its own lexicon
        model.lexicon = Lexicon(word_counts(list(train_split["sentence"])))
    model.gradient_checkpointing = args.gradient_checkpointing
    say(f"DeepSpeech2: {sum(p.numel() for p in model.parameters()):,} parameters, vocabulary of {len(vocab)} tokens")
    unknown = {name: unknown_characters(list(split["sentence"]), vocab)
               for name, split in (("validation", val_split), ("test", test_split))}
    for name, counts in unknown.items():
        if counts:
            say(f"{name}: {sum(counts.values())} characters not in the vocabulary ({counts}); they count as errors")

    # 5. preprocess: drop unalignable train clips, fix the train subset, collator
    keep = alignable_indices(list(train_split["duration"]), list(train_split["sentence"]), model)
    if len(keep) < len(train_split):
        say(f"train: {len(train_split) - len(keep)} utterances left out, transcript longer than the audio allows")
        train_split = train_split.select(keep, keep_in_memory=True)
    lengths = list(train_split["duration"])
    subset_rows = np.random.default_rng(args.seed).permutation(len(train_split))[: args.train_eval_size].tolist()
    train_subset = train_split.select(sorted(subset_rows), keep_in_memory=True)
    columns = ["input_values", "sentence"]
    train_set = train_split.with_format("numpy", columns=columns)
    eval_sets = {"validation": val_split.with_format("numpy", columns=columns)}
    if len(train_subset):
        eval_sets["train_subset"] = train_subset.with_format("numpy", columns=columns)

    # 6. metrics
    compute_metrics = make_compute_metrics(model)

    # 7. train (Hugging Face Trainer; torchrun/accelerate launch gives DDP from the environment)
    training_args = training_arguments(args, output_dir, precision, optimizer)
    callbacks = [HistoryCallback(output_dir / "history.csv"), AugmentAfterWarmup()]
    if args.patience > 0:
        callbacks.append(ValidationEarlyStopping(early_stopping_patience=args.patience))
    trainer = SortaGradTrainer(
        model=model, args=training_args, data_collator=CTCCollator(vocab), train_dataset=train_set,
        eval_dataset=eval_sets, compute_metrics=compute_metrics, preprocess_logits_for_metrics=argmax_ids,
        callbacks=callbacks, lengths=lengths,
    )
    began = time.time()
    if args.eval_only:
        trainer.evaluate()
    else:
        run_training(trainer, args, output_dir, resume_from)
    train_seconds = time.time() - began

    # 8. evaluate and transcribe test with the best model (loaded by the Trainer at the end of training)
    if not trainer.is_world_process_zero():
        return {}
    model = trainer.model.float().eval()
    rows, decode_seconds = transcribe_test_split(model, test_split, args.eval_batch_size)
    metrics = compute_wer_cer([r["reference"] for r in rows], [r["prediction"] for r in rows])
    audio_seconds = float(sum(r["duration"] for r in rows))
    metrics.update({"num_utterances": len(rows), "audio_seconds": round(audio_seconds, 3),
                    "decode_seconds": round(decode_seconds, 3),
                    "rtf": round(decode_seconds / max(audio_seconds, 1e-9), 5)})

    # 9. save the run folder
    run_info = build_run_info(args, trainer, model, base_model=base_model, precision=precision,
                              optimizer=optimizer, train_seconds=train_seconds, dataset=dataset, summary=summary,
                              data_path=data_path, unknown=unknown)
    state = trainer.state
    best_dir = output_dir / "best_model"
    save_best_model(model, best_dir)
    (best_dir / "README.md").write_text(model_card(run_info, metrics, model.settings), encoding="utf-8")
    state.save_to_json(str(output_dir / "trainer_state.json"))
    write_csv(output_dir / "history.csv", HISTORY_COLUMNS, history_rows(state.log_history))
    (output_dir / "run_info.json").write_text(json.dumps(run_info, ensure_ascii=False, indent=2), encoding="utf-8")
    write_csv(output_dir / "test_predictions.csv", PREDICTION_COLUMNS, rows)
    (output_dir / "test_metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    if args.push_to_hub:
        push_to_hub(best_dir, args.hub_model_id or output_dir.name)
    say(f"best epoch {run_info['best_epoch']}, validation WER {run_info['best_val_wer']}; test WER "
        f"{metrics['wer']:.4f}, CER {metrics['cer']:.4f} on {len(rows)} utterances; {train_seconds:.0f} s; "
        f"stop: {run_info['stop_reason']}; run folder {output_dir}")
    return {"run_info": run_info, "test_metrics": metrics}


if __name__ == "__main__":
    main()
