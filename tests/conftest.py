"""Shared fixtures: a VIVOS-shaped espeak-ng corpus in a path with a space and Vietnamese letters,
and the two prepared datasets every trainer reads. Everything is offline (HF_HUB_OFFLINE=1)."""
from __future__ import annotations

import contextlib
import csv
import json
import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "sample_data"))

from make_vivos_like import make_corpus  # noqa: E402


def read_csv(path: Path) -> list[dict]:
    """Rows of a CSV our scripts wrote (UTF-8, with or without the BOM Excel needs)."""
    with path.open(encoding="utf-8-sig", newline="") as handle:
        return list(csv.DictReader(handle))


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@contextlib.contextmanager
def one_thread():
    """Run torch on one intra-op thread, then restore the setting. With tensors this small a second
    thread only spin-waits: measured here, 200 tiny steps took 26 s on one thread and 126 s on two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def work_dir(tmp_path_factory) -> Path:
    """A session folder whose name has a space and Vietnamese letters, as on a student's laptop."""
    path = tmp_path_factory.mktemp("run") / "dữ liệu thử"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def vivos_dir(work_dir) -> Path:
    """Raw VIVOS layout: 8 train speakers x 12, 3 test speakers x 8 (unseen voices and sentences)."""
    return make_corpus(work_dir / "vivos", train_speakers=8, test_speakers=3, train_per_speaker=12,
                       test_per_speaker=8, seed=0)


def _prepare(vivos_dir: Path, out: Path, features: str) -> Path:
    import prepare_vivos

    prepare_vivos.main(["--vivos-dir", str(vivos_dir), "--out", str(out), "--features", features,
                        "--val-ratio", "0.25", "--seed", "0"])
    return out


@pytest.fixture(scope="session")
def whisper_data(vivos_dir, work_dir) -> Path:
    """`prepare_vivos.py --features whisper` output (80 mels): train 6 speakers, validation 2, test 3."""
    return _prepare(vivos_dir, work_dir / "data whisper", "whisper")


@pytest.fixture(scope="session")
def waveform_data(vivos_dir, work_dir) -> Path:
    """`prepare_vivos.py --features waveform` output: train 6 speakers, validation 2, test 3."""
    return _prepare(vivos_dir, work_dir / "data waveform", "waveform")


# Complete run folders from the three trainers (tiny settings), for report/transcribe/demo tests.
# Each trainer's test helper module (tests/tiny_<family>.py) defines train_tiny_run(data, out) -> Path.
@pytest.fixture(scope="session")
def whisper_run(whisper_data, work_dir) -> Path:
    from tiny_whisper import train_tiny_run

    return train_tiny_run(whisper_data, work_dir / "runs" / "whisper tiny")


@pytest.fixture(scope="session")
def wav2vec2_run(waveform_data, work_dir) -> Path:
    from tiny_wav2vec2 import train_tiny_run

    return train_tiny_run(waveform_data, work_dir / "runs" / "wav2vec2 tiny")


@pytest.fixture(scope="session")
def deepspeech_run(waveform_data, work_dir) -> Path:
    from tiny_deepspeech import train_tiny_run

    return train_tiny_run(waveform_data, work_dir / "runs" / "deepspeech2 tiny")
