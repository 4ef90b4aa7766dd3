"""A tiny Wav2Vec2ForCTC built from a config (no download) and a short train_wav2vec2.py run with it.

`make_tiny_wav2vec2(folder)` saves an encoder with a feature extractor and no tokenizer, like
facebook/wav2vec2-xls-r-300m, so the trainer builds its own vocabulary and CTC head; with
`vocab_chars` it also saves a CTC tokenizer, like a checkpoint already fine-tuned for CTC.
`train_tiny_run(data, out)` trains it for a few epochs and returns the complete run folder.
"""
from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path

import torch
from transformers import (Wav2Vec2Config, Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC,
                          Wav2Vec2Processor)

# 4 conv layers with total stride 320 (20 ms frames, as in the real models), 2 transformer layers of width 64
TINY_CONFIG = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
    conv_dim=(32, 32, 32, 32), conv_kernel=(10, 8, 4, 4), conv_stride=(5, 4, 4, 4),
    num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
    feat_extract_norm="layer", do_stable_layer_norm=True,
)


def make_tiny_wav2vec2(folder: Path, vocab_chars: str | None = None) -> Path:
    """Save a randomly initialised tiny Wav2Vec2ForCTC (+ CTC tokenizer when `vocab_chars` is given)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    feature_extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                                 do_normalize=True, return_attention_mask=True)
    vocab = None
    if vocab_chars is not None:
        vocab = {"[PAD]": 0, "[UNK]": 1, "|": 2}
        vocab.update({ch: i for i, ch in enumerate(sorted(set(vocab_chars) - {" "}), start=3)})
    config = Wav2Vec2Config(vocab_size=len(vocab) if vocab else 32, pad_token_id=0, **TINY_CONFIG)
    Wav2Vec2ForCTC(config).save_pretrained(folder)
    feature_extractor.save_pretrained(folder)
    if vocab:
        with tempfile.TemporaryDirectory() as tmp:
            vocab_file = Path(tmp) / "vocab.json"
            vocab_file.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
            tokenizer = Wav2Vec2CTCTokenizer(str(vocab_file), unk_token="[UNK]", pad_token="[PAD]",
                                             word_delimiter_token="|", bos_token=None, eos_token=None)
            Wav2Vec2Processor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


@contextlib.contextmanager
def one_thread():
    """Run torch on one intra-op thread, then restore the setting. With tensors this small, a second thread
    only spin-waits: measured here, 200 steps took 26 s on one thread and 126 s on two (busy 2-core box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def tiny_run_args(data_dir: Path, out_dir: Path, model_dir: Path, *extra: str) -> list[str]:
    """train_wav2vec2.py flags for a run of a few seconds on two CPU cores."""
    return ["--data", str(data_dir), "--model", str(model_dir), "--output-dir", str(out_dir),
            "--epochs", "3", "--batch-size", "8", "--grad-accum", "1", "--eval-batch-size", "16",
            "--lr", "3e-3", "--warmup-ratio", "0.1", "--dropout", "0", "--layerdrop", "0", "--no-spec-augment",
            "--train-eval-size", "8", "--logging-steps", "3",
            "--save-total-limit", "3", "--patience", "0", "--num-workers", "0", "--seed", "0", *extra]


def train_tiny_run(data_dir: Path, out_dir: Path) -> Path:
    """Train the tiny model on `data_dir` (a waveform dataset) into `out_dir`; returns the run folder."""
    import train_wav2vec2

    out_dir = Path(out_dir)
    model_dir = make_tiny_wav2vec2(out_dir.parent / f"{out_dir.name} base model")
    with one_thread():
        train_wav2vec2.main(tiny_run_args(data_dir, out_dir, model_dir))
    return out_dir
