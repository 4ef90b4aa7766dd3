"""A complete DeepSpeech2 run folder in seconds, for the tests of every tool that reads run folders.

`train_tiny_run(data_dir, out_dir)` runs `train_deepspeech.main` with `--preset tiny` (40 Mel bins,
8 conv channels, one BiLSTM-64 layer, 2 epochs) and 8 language-model beams (an untrained model's flat scores
make a wide beam search slow): the folder has every file of the contract (docs/FORMATS.md), though the model
barely learns.
"""
from __future__ import annotations

from pathlib import Path

from conftest import one_thread

TINY_ARGS = ["--preset", "tiny", "--seed", "0", "--lm-beam-width", "8"]


def tiny_args(data_dir: Path, out_dir: Path, *extra: str) -> list[str]:
    """The contract tests' call: --preset tiny, trained from scratch."""
    return ["--data", str(data_dir), "--output-dir", str(out_dir), *TINY_ARGS, *extra]


def train_tiny_run(data_dir: Path, out_dir: Path, extra_args: tuple[str, ...] = ()) -> Path:
    """Train the tiny DeepSpeech2 on a prepared waveform dataset into `out_dir`; returns `out_dir`."""
    import train_deepspeech

    with one_thread():
        train_deepspeech.main(tiny_args(data_dir, out_dir, *extra_args))
    return Path(out_dir)
