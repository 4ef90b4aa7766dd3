"""faster-whisper: `transcribe.py --export-ct2` writes a CTranslate2 export that faster-whisper loads, and
transcribe.py and demo.py decode with it the same normalised transcripts as the transformers pipeline, from a
Whisper that has learnt its clips; without faster-whisper they say so in one line and use transformers; a
folder of the export's name that the user made is never replaced."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

import transcribe
from conftest import one_thread
from offline_models import make_tiny_whisper, overfit_whisper

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "vivos_sample" / "test"
# A small Whisper with the real 30-s input (faster-whisper decodes 30-s windows only) and a vocabulary of
# Whisper's size: it learns three clips in about a hundred full-batch steps.
SHAPE = {"chunk_length": 30, "d_model": 64, "encoder_layers": 1, "decoder_layers": 2, "encoder_attention_heads": 2,
         "decoder_attention_heads": 2, "encoder_ffn_dim": 256, "decoder_ffn_dim": 256, "max_target_positions": 448,
         "vocab_size": 51865}


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> tuple[list[Path], list[str]]:
    """Three sample clips (copied, in a folder with a space and Vietnamese letters) and their normalised text."""
    folder = tmp_path_factory.mktemp("clips") / "bản ghi"
    folder.mkdir()
    prompts = dict(line.split(" ", 1) for line in (SAMPLE / "prompts.txt").read_text(encoding="utf-8").splitlines())
    paths = [Path(shutil.copy(path, folder)) for path in sorted((SAMPLE / "waves").rglob("*.flac"))[:3]]
    return paths, [transcribe.normalize_text(prompts[path.stem]) for path in paths]


@pytest.fixture(scope="module")
def learnt_run(tmp_path_factory, clips) -> Path:
    """A run folder whose best_model/ transcribes the clips exactly (with the transformers pipeline)."""
    run = tmp_path_factory.mktemp("runs") / "whisper đã học"
    folder = make_tiny_whisper(run / "best_model", shape=SHAPE, full_vocabulary=True)
    with one_thread():
        overfit_whisper(folder, [transcribe.load_audio(path) for path in clips[0]], clips[1], steps=120)
    return run


def run(model: Path, inputs: list[Path], out: Path, *extra: str) -> dict:
    with one_thread():
        return transcribe.main(["--model", str(model), *map(str, inputs), "--format", "json", "--output-dir",
                                str(out), "--device", "cpu", *extra])


@pytest.mark.slow
def test_export_loads_in_faster_whisper_and_transcribes_as_transformers(learnt_run, clips, tmp_path, capsys):
    paths, texts = clips
    pipeline = run(learnt_run, paths, tmp_path / "hf", "--engine", "transformers")
    assert [f["text"] for f in pipeline["files"]] == texts  # the model has learnt the clips

    result = transcribe.main(["--model", str(learnt_run), "--export-ct2"])
    export = learnt_run / "best_model" / "ct2-int8"
    assert result["export"] == str(export)
    assert {"model.bin", "preprocessor_config.json", "tokenizer.json"} <= {p.name for p in export.iterdir()}
    assert not [p for p in export.parent.iterdir() if p.name.startswith(".")]  # no partial folder left

    from faster_whisper import WhisperModel

    model = WhisperModel(str(export), device="cpu", compute_type="int8", cpu_threads=1)
    assert model.model.is_multilingual  # decodes with <|vi|><|transcribe|>, not as English

    fast = run(learnt_run, paths, tmp_path / "fw")  # auto: the export is found beside the model
    assert fast["engine"] == "faster-whisper" and pipeline["engine"] == "transformers"
    assert [f["text"] for f in fast["files"]] == texts
    assert [f["segments"] for f in fast["files"]] == [f["segments"] for f in pipeline["files"]]
    assert "with faster-whisper" in capsys.readouterr().out


@pytest.mark.slow
def test_long_recording_through_faster_whisper_gets_timestamped_segments(learnt_run, clips, tmp_path):
    import numpy as np
    import soundfile as sf

    transcribe.main(["--model", str(learnt_run), "--export-ct2"])
    silence = np.zeros(16000 * 2, np.float32)
    waveform = np.concatenate([piece for path in clips[0] * 5 for piece in (transcribe.load_audio(path), silence)])
    long = tmp_path / "dài.wav"
    sf.write(long, waveform, 16000)
    result = run(learnt_run, [long], tmp_path / "out", "--engine", "faster-whisper")["files"][0]
    duration = result["duration"]
    assert duration > 30 and result["segments"]
    assert all(0 <= s["start"] <= s["end"] <= duration for s in result["segments"])
    assert result["text"] == " ".join(s["text"] for s in result["segments"])


@pytest.mark.slow
def test_without_faster_whisper_one_line_then_transformers(learnt_run, clips, tmp_path, monkeypatch, capsys):
    transcribe.main(["--model", str(learnt_run), "--export-ct2"])
    capsys.readouterr()
    monkeypatch.setitem(sys.modules, "faster_whisper", None)  # import faster_whisper now raises ImportError
    result = run(learnt_run, clips[0], tmp_path / "out")
    lines = [line for line in capsys.readouterr().out.splitlines() if "faster-whisper" in line]
    assert lines == [line for line in lines if "pip install faster-whisper" in line] and len(lines) == 1
    assert result["engine"] == "transformers" and [f["text"] for f in result["files"]] == clips[1]


@pytest.mark.slow
def test_export_never_replaces_a_users_folder_and_stale_exports_are_not_used(learnt_run, clips, tmp_path, capsys):
    folder = learnt_run / "best_model"
    users = folder / "ct2-float32"
    users.mkdir()
    (users / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(SystemExit, match="did not write it"):
        transcribe.main(["--model", str(learnt_run), "--export-ct2", "--ct2-quantization", "float32"])
    assert [p.name for p in users.iterdir()] == ["notes.txt"]
    shutil.rmtree(users)

    transcribe.main(["--model", str(learnt_run), "--export-ct2"])
    export = folder / "ct2-int8"
    marker = json.loads((export / transcribe.CT2_MARKER).read_text(encoding="utf-8"))
    transcribe.main(["--model", str(learnt_run), "--export-ct2"])  # our own export is replaced
    assert json.loads((export / transcribe.CT2_MARKER).read_text(encoding="utf-8")) == marker

    # The model trained again after its export: the old export is never used, and the line says how to renew it.
    config = json.loads((folder / "generation_config.json").read_text(encoding="utf-8"))
    (folder / "generation_config.json").write_text(json.dumps({**config, "num_beams": 1}, indent=3), encoding="utf-8")
    capsys.readouterr()
    result = run(learnt_run, clips[0][:1], tmp_path / "out")
    assert result["engine"] == "transformers"
    assert "--export-ct2" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--export-ct2"):
        run(learnt_run, clips[0][:1], tmp_path / "out2", "--engine", "faster-whisper")


def test_engine_faster_whisper_without_export_names_the_command(clips, tmp_path):
    model = make_tiny_whisper(tmp_path / "mô hình")
    with pytest.raises(SystemExit, match=r"transcribe\.py --model .*mô hình.* --export-ct2"):
        transcribe.main(["--model", str(model), str(clips[0][0]), "--engine", "faster-whisper", "--device", "cpu"])
    # A model with a shorter input than Whisper's 30 s cannot be decoded by faster-whisper: refused, nothing written.
    with pytest.raises(SystemExit, match="30-s windows"):
        transcribe.main(["--model", str(model), "--export-ct2"])
    assert not [p for p in model.iterdir() if p.is_dir()]


@pytest.mark.slow
def test_demo_answers_with_faster_whisper_and_the_same_text(learnt_run, clips, monkeypatch, capsys):
    from types import SimpleNamespace

    import demo

    transcribe.main(["--model", str(learnt_run), "--export-ct2"])
    monkeypatch.setattr(demo, "build_demo", lambda models, max_seconds: SimpleNamespace(
        models=models, launch=lambda **server: None))
    with one_thread():
        fast = demo.main(["--models", str(learnt_run), "--device", "cpu"]).models
        slow = demo.main(["--models", str(learnt_run), "--device", "cpu", "--engine", "transformers"]).models
    assert [family for family, _ in fast.values()] == ["faster-whisper"]
    assert [family for family, _ in slow.values()] == ["whisper"]
    for path, text in zip(*clips):
        with one_thread():
            assert demo.compare_models(fast, str(path), list(fast))[0] == text
            assert demo.compare_models(slow, str(path), list(slow))[0] == text
    assert "with faster-whisper" in capsys.readouterr().out
