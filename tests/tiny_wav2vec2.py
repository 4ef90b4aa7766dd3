"""A short train_wav2vec2.py run with a tiny Wav2Vec2ForCTC built from a config (no download).

`make_tiny_wav2vec2(folder)` (sample_data/offline_models.py) saves an encoder with a feature
extractor and no tokenizer, like facebook/wav2vec2-xls-r-300m, so the trainer builds its own
vocabulary and CTC head; with `vocab_chars` it also saves a CTC tokenizer.
`train_tiny_run(data, out)` trains it for a few epochs and returns the complete run folder.
"""
from __future__ import annotations

from pathlib import Path

from conftest import one_thread
from offline_models import TINY_CONFIG, make_tiny_wav2vec2

__all__ = ["TINY_CONFIG", "make_tiny_wav2vec2", "one_thread", "tiny_args", "tiny_run_args", "train_tiny_run"]


def tiny_run_args(data_dir: Path, out_dir: Path, model_dir: Path, *extra: str) -> list[str]:
    """train_wav2vec2.py flags for a run of a few seconds on two CPU cores."""
    return ["--data", str(data_dir), "--model", str(model_dir), "--output-dir", str(out_dir),
            "--epochs", "3", "--batch-size", "8", "--grad-accum", "1", "--eval-batch-size", "16",
            "--lr", "3e-3", "--warmup-ratio", "0.1", "--dropout", "0", "--layerdrop", "0", "--no-spec-augment",
            "--train-eval-size", "8", "--logging-steps", "3",
            "--save-total-limit", "3", "--patience", "0", "--num-workers", "0", "--seed", "0",
            "--lm-beam-width", "8", *extra]


def tiny_args(data_dir: Path, out_dir: Path, *extra: str) -> list[str]:
    """The contract tests' call: the tiny encoder (made once, beside `out_dir`), as train_tiny_run trains it."""
    model_dir = Path(out_dir).parent / "tiny wav2vec2 base"
    if not (model_dir / "config.json").is_file():
        make_tiny_wav2vec2(model_dir)
    return tiny_run_args(data_dir, out_dir, model_dir, *extra)


def train_tiny_run(data_dir: Path, out_dir: Path) -> Path:
    """Train the tiny model on `data_dir` (a waveform dataset) into `out_dir`; returns the run folder."""
    import train_wav2vec2

    out_dir = Path(out_dir)
    model_dir = make_tiny_wav2vec2(out_dir.parent / f"{out_dir.name} base model")
    with one_thread():
        train_wav2vec2.main(tiny_run_args(data_dir, out_dir, model_dir))
    return out_dir
