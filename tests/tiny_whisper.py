"""One complete tiny Whisper training run, for the tests.

`make_tiny_whisper(folder)` (sample_data/offline_models.py) saves a random d_model-128, 2+2-layer
Whisper with a local tokenizer; `train_tiny_run(data, out)` is the complete run folder that the
report.py / transcribe.py / demo.py tests read (conftest's `whisper_run`).
"""
from __future__ import annotations

from pathlib import Path

from conftest import one_thread
from offline_models import make_tiny_whisper

__all__ = ["make_tiny_whisper", "one_thread", "tiny_args", "tiny_train_args", "train_tiny_run"]


def tiny_train_args(data_dir: Path, model_dir: Path, out_dir: Path, *extra: str) -> list[str]:
    """`train_whisper.main` arguments for fast CPU runs of the tiny model; later `extra` flags win."""
    return ["--data", str(data_dir), "--model", str(model_dir), "--output-dir", str(out_dir), "--epochs", "3",
            "--batch-size", "8", "--grad-accum", "1", "--eval-batch-size", "24", "--lr", "3e-3",
            "--warmup-ratio", "0.1", "--no-spec-augment", "--train-eval-size", "12", "--patience", "0",
            "--generation-max-length", "40", "--logging-steps", "1", "--num-workers", "0", "--seed", "0", *extra]


def tiny_args(data_dir: Path, out_dir: Path, *extra: str) -> list[str]:
    """The contract tests' call: the tiny model (made once, beside `out_dir`) with short evaluations."""
    model_dir = Path(out_dir).parent / "tiny whisper base"
    if not (model_dir / "config.json").is_file():
        make_tiny_whisper(model_dir)
    return tiny_train_args(data_dir, model_dir, out_dir, "--generation-max-length", "16", *extra)


def train_tiny_run(data_dir: Path, out_dir: Path) -> Path:
    """A complete run folder from `train_whisper.py` on the tiny model: 3 epochs, every artifact written."""
    import train_whisper

    out_dir = Path(out_dir)
    model_dir = make_tiny_whisper(out_dir.parent / f"{out_dir.name} base model")
    with one_thread():
        train_whisper.main(tiny_train_args(data_dir, model_dir, out_dir))
    return out_dir
