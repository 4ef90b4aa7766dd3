"""transcribe.py on a run cut off before it finished (no best_model/): the newest complete checkpoint-N/ is
used, and named, for every family that keeps a loadable model in its checkpoints; a checkpoint-N/ folder can be
passed itself; a run with no complete checkpoint, and a DeepSpeech2 checkpoint (weights only), get one line.

The selection tests use a step "model" kept in each checkpoint (it transcribes every clip as the step it was
saved at), so they show which checkpoint was loaded; the tiny trained runs show the text is the checkpoint's."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import save_file

import transcribe

STEP_MODEL = '''"""Step "model": every clip is transcribed as the training step of the checkpoint it was loaded from."""
import json
from pathlib import Path

import torch


def load_model(folder):
    model = torch.nn.Identity()
    model.step = json.loads((Path(folder) / "trainer_state.json").read_text(encoding="utf-8"))["global_step"]
    return model.eval()


def transcribe(model, waveforms):
    return [f"Bước {model.step}" for _ in waveforms]
'''


def make_checkpoint(run: Path, step: int) -> Path:
    """checkpoint-<step>/ as the Trainer leaves it: weights, optimizer state, trainer_state.json (written last)."""
    folder = run / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "deepspeech2"}), encoding="utf-8")
    (folder / "modeling_deepspeech2.py").write_text(STEP_MODEL, encoding="utf-8")
    save_file({"weight": torch.zeros(256)}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    torch.save({"state": {}}, folder / "optimizer.pt")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "epoch": step / 5}),
                                               encoding="utf-8")
    return folder


def cut(path: Path) -> None:
    """The file as a full disk or a power cut leaves it: its first half."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def folder_contents(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def clip(tmp_path) -> Path:
    path = tmp_path / "câu nói.wav"
    sf.write(path, 0.1 * np.random.default_rng(0).standard_normal(16000).astype(np.float32), 16000)
    return path


@pytest.fixture
def cut_off_run(tmp_path) -> Path:
    """A run stopped during training: checkpoints 5 and 10 complete, 15 with its weights cut off, 20 with its
    trainer_state.json cut off; no best_model/."""
    run = tmp_path / "lần chạy bị ngắt"
    for step in (5, 10, 15, 20):
        make_checkpoint(run, step)
    cut(run / "checkpoint-15" / "model.safetensors")
    cut(run / "checkpoint-20" / "trainer_state.json")
    return run


def run_transcribe(model: Path, clip: Path, out: Path, *extra: str) -> dict:
    return transcribe.main(["--model", str(model), str(clip), "--output-dir", str(out), "--device", "cpu",
                            "--format", "json", *extra])


def test_cut_off_run_uses_its_newest_complete_checkpoint_and_says_so(cut_off_run, clip, tmp_path, capsys):
    before = folder_contents(cut_off_run)
    result = run_transcribe(cut_off_run, clip, tmp_path / "out", "--trust-remote-code")

    assert [f["text"] for f in result["files"]] == ["bước 10"]
    assert result["model"] == str(cut_off_run / "checkpoint-10")
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == (f"using checkpoint-10 of {cut_off_run.name} (step 10, epoch 2): weights saved during "
                          "training, not the validated best model that best_model/ holds once the run finishes")
    assert folder_contents(cut_off_run) == before


def test_checkpoint_folder_passed_itself(cut_off_run, clip, tmp_path, capsys):
    result = run_transcribe(cut_off_run / "checkpoint-5", clip, tmp_path / "out", "--trust-remote-code")

    assert [f["text"] for f in result["files"]] == ["bước 5"]
    assert capsys.readouterr().out.startswith(f"using checkpoint-5 of {cut_off_run.name} (step 5, epoch 1):")


def test_cut_off_checkpoint_passed_itself_is_refused_in_one_line(cut_off_run, clip, tmp_path):
    with pytest.raises(SystemExit) as refused:
        run_transcribe(cut_off_run / "checkpoint-15", clip, tmp_path / "out", "--trust-remote-code")

    message = str(refused.value)
    assert "\n" not in message
    assert "checkpoint-15 is incomplete (model.safetensors is cut off)" in message
    assert f"--model {transcribe.quoted(cut_off_run)}" in message  # pasteable as it is
    assert not (tmp_path / "out").exists()


def test_run_without_a_complete_checkpoint_gets_one_line(tmp_path, clip):
    run = tmp_path / "run"
    for step in (3, 6):
        make_checkpoint(run, step)
    cut(run / "checkpoint-6" / "optimizer.pt")
    (run / "checkpoint-3" / "trainer_state.json").unlink()
    before = folder_contents(run)

    with pytest.raises(SystemExit) as refused:
        run_transcribe(run, clip, tmp_path / "out", "--trust-remote-code")

    message = str(refused.value)
    assert "\n" not in message
    assert re.search(r"has no best_model/ and no complete checkpoint \(checkpoint-6: optimizer\.pt is cut off; "
                     r"checkpoint-3: no trainer_state\.json\)", message)
    assert "Re-run the same train command" in message
    assert folder_contents(run) == before and not (tmp_path / "out").exists()


def test_best_model_wins_over_checkpoints(cut_off_run, clip, tmp_path, capsys):
    """A finished run keeps checkpoints too: its best_model/ is what gets transcribed, with no note."""
    best = make_checkpoint(cut_off_run, 99).rename(cut_off_run / "best_model")
    result = run_transcribe(cut_off_run, clip, tmp_path / "out", "--trust-remote-code")

    assert result["model"] == str(best) and [f["text"] for f in result["files"]] == ["bước 99"]
    assert "using checkpoint" not in capsys.readouterr().out


# ----------------------------------------------------------------------------- the tiny trained runs

def cut_off_copy(run: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of a finished tiny run as a Colab disconnect leaves it: no best_model/, the newest checkpoint's
    weights cut off; returns the copy and the checkpoint transcribe.py must use (the one before)."""
    copy = tmp_path / f"{run.name} cut off"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("best_model"))
    newest, previous = transcribe.checkpoint_folders(copy)[:2]
    cut(newest / "model.safetensors")
    return copy, previous


def speak_one_letter(checkpoint: Path, letter: str) -> None:
    """The tiny Wav2Vec2 learns to write nothing at all in its few steps: its head's bias is raised for one
    letter, so that this checkpoint writes that letter for every clip and an empty transcript proves nothing."""
    from safetensors.torch import load_file

    weights = load_file(str(checkpoint / "model.safetensors"))
    vocab = json.loads((checkpoint / "vocab.json").read_text(encoding="utf-8"))
    weights["lm_head.bias"][vocab[letter]] += 100.0
    save_file(weights, str(checkpoint / "model.safetensors"), metadata={"format": "pt"})


def checkpoint_texts(family: str, checkpoint: Path, clips: list[Path]) -> list[str]:
    """What the checkpoint's model transcribes, loaded with transformers itself and scored like the trainers."""
    from transformers import AutoProcessor, Wav2Vec2ForCTC, WhisperForConditionalGeneration

    processor = AutoProcessor.from_pretrained(checkpoint)
    audio = [transcribe.load_audio(clip) for clip in clips]
    with torch.inference_mode():
        if family == "whisper":
            model = WhisperForConditionalGeneration.from_pretrained(checkpoint).eval()
            features = processor.feature_extractor(audio, sampling_rate=16000, return_tensors="pt").input_features
            ids = model.generate(features, language="vi", task="transcribe",
                                 num_beams=model.generation_config.num_beams)
            texts = processor.batch_decode(ids, skip_special_tokens=True)
        else:
            model = Wav2Vec2ForCTC.from_pretrained(checkpoint).eval()
            texts = [processor.batch_decode(model(processor(a, sampling_rate=16000, return_tensors="pt")
                                                   .input_values).logits.argmax(-1))[0] for a in audio]
            texts = [text.replace(processor.tokenizer.unk_token, "") for text in texts]
    return [transcribe.normalize_text(text) for text in texts]


def some_clips(vivos_dir: Path) -> list[Path]:
    return sorted((vivos_dir / "test" / "waves").rglob("*.wav"))[:3]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["whisper", "wav2vec2"])
def test_cut_off_tiny_run_transcribes_like_its_checkpoint(family, request, vivos_dir, tmp_path, capsys):
    run, checkpoint = cut_off_copy(request.getfixturevalue(f"{family}_run"), tmp_path)
    if family == "wav2vec2":
        speak_one_letter(checkpoint, "ă")
    clips = some_clips(vivos_dir)
    result = transcribe.main(["--model", str(run), *map(str, clips), "--output-dir", str(tmp_path / "out"),
                              "--device", "cpu", "--format", "json"])

    assert result["family"] == family and result["model"] == str(checkpoint)
    texts = [f["text"] for f in result["files"]]
    assert texts == checkpoint_texts(family, checkpoint, clips) and all(texts)
    assert f"using {checkpoint.name} of {run.name}" in capsys.readouterr().out

    direct = transcribe.main(["--model", str(checkpoint), *map(str, clips), "--output-dir", str(tmp_path / "direct"),
                              "--device", "cpu", "--format", "json"])
    assert [f["text"] for f in direct["files"]] == [f["text"] for f in result["files"]]


@pytest.mark.slow
def test_a_cut_off_deepspeech2_run_transcribes_with_its_newest_checkpoint(deepspeech_run, vivos_dir, tmp_path):
    """train_deepspeech.py writes config.json and vocab.json into every checkpoint, so a run cut off before
    best_model/ transcribes with the checkpoint's own weights, as modeling_deepspeech2 loads them."""
    import modeling_deepspeech2

    run, checkpoint = cut_off_copy(deepspeech_run, tmp_path)
    assert (checkpoint / "config.json").is_file() and (checkpoint / "vocab.json").is_file()
    clips = some_clips(vivos_dir)
    result = transcribe.main(["--model", str(run), *map(str, clips), "--output-dir", str(tmp_path / "out"),
                              "--device", "cpu", "--format", "json"])
    net = modeling_deepspeech2.load_model(checkpoint)
    expected = modeling_deepspeech2.transcribe(net, [transcribe.load_audio(clip) for clip in clips])
    assert [f["text"] for f in result["files"]] == [transcribe.normalize_text(text) for text in expected]


@pytest.mark.slow
def test_a_deepspeech2_checkpoint_without_its_config_is_refused_in_one_line(deepspeech_run, vivos_dir, tmp_path):
    run, checkpoint = cut_off_copy(deepspeech_run, tmp_path)
    (checkpoint / "config.json").unlink()
    with pytest.raises(SystemExit) as refused:
        transcribe.main(["--model", str(run), *map(str, some_clips(vivos_dir)), "--output-dir",
                         str(tmp_path / "out"), "--device", "cpu"])
    message = str(refused.value)
    assert "\n" not in message and not (tmp_path / "out").exists()
    assert f"{checkpoint} holds weights but no config.json: a train_deepspeech.py checkpoint" in message
