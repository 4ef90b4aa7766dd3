"""A stand-in DeepSpeech2 model folder that obeys the run-folder contract (docs/FORMATS.md): config.json with
model_type deepspeech2 and a modeling_deepspeech2.py with load_model(folder) and transcribe(model, waveforms).
It "transcribes" each waveform as its length, `Đoạn <samples>!`, so the transcribe.py and demo.py tests see
exactly which audio reached the model (how many samples, cut where), whatever the tiny trained models learnt.
"""
from __future__ import annotations

import json
from pathlib import Path

MODEL_CODE = '''"""Length "model": the contract of best_model/modeling_deepspeech2.py, nothing learnt."""
import torch


def load_model(folder):
    return torch.nn.Identity().eval()


def transcribe(model, waveforms):
    return [f"Đoạn {len(waveform)}!" for waveform in waveforms]
'''


def make_length_model(run_dir: Path) -> Path:
    """A run folder holding best_model/ with the length model; returns the run folder."""
    folder = Path(run_dir) / "best_model"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "deepspeech2"}), encoding="utf-8")
    (folder / "modeling_deepspeech2.py").write_text(MODEL_CODE, encoding="utf-8")
    return Path(run_dir)


def samples_in(text: str) -> int:
    """The sample count in a normalised transcript of the length model (`đoạn 48000`)."""
    word, count = text.split()
    assert word == "đoạn", text
    return int(count)
