"""demo.py turns away what its models should not transcribe, through the function the page calls: a clip
longer than --max-seconds (left undecoded) and a clip without speech (a silent or muted microphone, on which
the models would write words nobody said). Real espeak-ng speech, loud or quiet, is still transcribed. The
model is the length model (tests/length_model.py), which answers each waveform's sample count."""
from __future__ import annotations

import importlib.util
import re
import socket
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest
import soundfile as sf

import demo
from length_model import make_length_model
from make_vivos_like import synthesize

NAME = "length (deepspeech2)"


@pytest.fixture()
def models(tmp_path) -> tuple[dict, list]:
    """The page's models ({name: (family, model)}) holding the length model, and the waveforms it was given."""
    folder = make_length_model(tmp_path / "length model") / "best_model"
    spec = importlib.util.spec_from_file_location("length_model_code", folder / "modeling_deepspeech2.py")
    code = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(code)
    given = []
    recording = SimpleNamespace(transcribe=lambda net, clips: given.extend(clips) or code.transcribe(net, clips))
    return {NAME: ("deepspeech2", (recording, code.load_model(folder)))}, given


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("speech") / "xin chào.wav"
    synthesize("xin chào các bạn hôm nay trời đẹp", {"voice": "vi+f2", "rate": 150, "pitch": 50}, path)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write(path: Path, waveform: np.ndarray) -> str:
    sf.write(path, waveform.astype(np.float32), 16000)
    return str(path)


def test_a_clip_longer_than_max_seconds_is_turned_away_undecoded(models, speech, tmp_path, monkeypatch):
    """A 10-minute recording gets one answer naming its length, the limit and transcribe.py, and is never
    decoded (the header gives its length); under a larger --max-seconds a long clip is transcribed whole."""
    models, given = models
    audio, _ = sf.read(speech, dtype="float32")
    lecture = write(tmp_path / "bài giảng.flac", np.tile(audio, int(600 * 16000 / len(audio)) + 1)[: 600 * 16000])
    with monkeypatch.context() as patch:
        patch.setattr(demo, "load_audio", lambda path: pytest.fail("the long clip was decoded"))
        with pytest.raises(gr.Error, match=r"The clip is 600\.0 s long; this demo transcribes clips of up to 30 s\. "
                                           r".*transcribe\.py.*--max-seconds"):
            demo.compare_models(models, lecture, [NAME])
    assert given == []

    minute = write(tmp_path / "một phút.wav", np.tile(audio, int(60 * 16000 / len(audio)) + 1)[: 60 * 16000])
    with pytest.raises(gr.Error, match=r"60\.0 s long.*up to 30 s"):
        demo.compare_models(models, minute, [NAME], max_seconds=demo.parse_args(["--models", "m"]).max_seconds)
    max_seconds = demo.parse_args(["--models", "m", "--max-seconds", "90"]).max_seconds
    assert demo.compare_models(models, minute, [NAME], max_seconds=max_seconds)[0] == f"đoạn {60 * 16000}"
    assert len(given) == 1 and len(given[0]) == 60 * 16000


@pytest.mark.parametrize("kind", ["digital silence", "quiet room", "microphone offset"])
def test_no_speech_found_for_a_silent_clip(kind, models, tmp_path):
    models, given = models
    rng = np.random.default_rng(0)
    waveform = {"digital silence": np.zeros(3 * 16000),
                "quiet room": 0.001 * rng.standard_normal(3 * 16000),  # noise 60 dB below full scale
                "microphone offset": 0.05 + 0.0005 * rng.standard_normal(3 * 16000)}[kind]
    with pytest.raises(gr.Error, match=r"No speech found: the clip is silent or nearly .*record again"):
        demo.compare_models(models, write(tmp_path / "im lặng.wav", waveform), [NAME])
    assert given == []


@pytest.mark.parametrize("gain_db", [0, -30])
def test_speech_loud_or_quiet_is_transcribed(gain_db, models, speech, tmp_path):
    """espeak-ng speech as made, and 30 dB quieter (a soft voice far from the microphone): transcribed whole."""
    models, given = models
    audio, _ = sf.read(speech, dtype="float32")
    text, decode_time = demo.compare_models(models, write(tmp_path / "nói.wav", audio * 10 ** (gain_db / 20)), [NAME])
    assert text == f"đoạn {len(audio)}"
    assert re.fullmatch(r"\d+\.\d\d s for \d+\.\d s of audio \(real-time factor \d+\.\d\d\)", decode_time)
    assert len(given) == 1 and np.allclose(given[0], audio * 10 ** (gain_db / 20), atol=1e-4)


def test_the_page_shows_the_answer(models, tmp_path):
    """Through the server and the API the page uses: the limit the page states, and the answer for a clip over
    it reaches the browser as the error Gradio shows, not a transcript."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    models, given = models
    page = demo.build_demo(models, max_seconds=5)
    page.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        client = Client(page.local_url, verbose=False, analytics_enabled=False, download_files=False)
        clip = write(tmp_path / "dài.wav", 0.1 * np.random.default_rng(0).standard_normal(6 * 16000))
        with pytest.raises(AppError, match=r"The clip is 6\.0 s long; this demo transcribes clips of up to 5 s"):
            client.predict(handle_file(clip), [NAME], api_name="/transcribe")
        assert "Record or upload a clip of up to 5 s" in urllib.request.urlopen(page.local_url).read().decode()
    finally:
        page.close()
    assert given == []
