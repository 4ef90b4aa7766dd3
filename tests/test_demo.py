"""demo.py for real: the server on a free loopback port, a clip transcribed through gradio_client by the
chosen models, and a headless Chromium screenshot of the page. Also: its loader is transcribe.py's."""
from __future__ import annotations

import ast
import csv
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

from conftest import REPO
from length_model import make_length_model

# Repeated in demo.py because scripts never import each other; they must stay identical to transcribe.py's.
SHARED = ["SAMPLE_RATE", "FAMILIES", "CHUNK_SECONDS", "InputError", "normalize_text", "checkpoint_folders", "cut_off",
          "checkpoint_problem", "last_complete_checkpoint", "find_model_dir", "checkpoint_note", "load_recognizer",
          "decode_kwargs", "scored_text", "load_audio", "quoted"]
WINDOW = (1280, 900)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def top_level_sources(script: str) -> dict[str, str]:
    source = (REPO / script).read_text(encoding="utf-8")
    sources = {}
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            sources[node.name] = ast.get_source_segment(source, node)
        elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            sources[node.targets[0].id] = ast.get_source_segment(source, node)
    return sources


def test_demo_loads_models_with_the_same_code_as_transcribe():
    demo, transcribe = top_level_sources("demo.py"), top_level_sources("transcribe.py")
    for name in SHARED:
        assert demo[name] == transcribe[name], f"demo.py's {name} differs from transcribe.py's"


def test_demo_serves_a_cut_off_run_from_its_newest_complete_checkpoint(tmp_path, monkeypatch, capsys):
    """A run without best_model/: the page names the checkpoint it loaded, whose model answers, and the
    console says it is not the validated best model."""
    import demo
    from test_transcribe_checkpoints import cut, make_checkpoint

    run = tmp_path / "whisper bị ngắt"
    for step in (4, 8):
        make_checkpoint(run, step)
    cut(run / "checkpoint-8" / "model.safetensors")
    monkeypatch.setattr(demo, "build_demo", lambda models, max_seconds: SimpleNamespace(
        models=models, launch=lambda **server: None))
    clip = tmp_path / "clip.wav"
    sf.write(clip, 0.1 * np.random.default_rng(0).standard_normal(8000).astype(np.float32), 16000)

    models = demo.main(["--models", str(run), "--device", "cpu", "--trust-remote-code"]).models

    name = f"{run.name} checkpoint-4 (deepspeech2)"
    assert list(models) == [name]
    assert demo.compare_models(models, str(clip), [name])[0] == "bước 4"
    assert f"using checkpoint-4 of {run.name} (step 4, epoch 0.8): weights saved during training, not the " \
           "validated best model" in capsys.readouterr().out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_server(url: str, process: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"demo.py exited with {process.returncode}:\n{log.read_text(encoding='utf-8')}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    pytest.fail(f"demo.py did not answer on {url} within {timeout} s:\n{log.read_text(encoding='utf-8')}")


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def length_run(tmp_path_factory) -> Path:
    return make_length_model(tmp_path_factory.mktemp("models") / "length model")


@pytest.fixture(scope="module")
def model_names(whisper_run, wav2vec2_run, deepspeech_run, length_run) -> dict[str, str]:
    """The names the page shows: the run folder's name and the family."""
    return {key: f"{run.name} ({family})" for key, family, run in
            [("whisper", "whisper", whisper_run), ("wav2vec2", "wav2vec2", wav2vec2_run),
             ("deepspeech2", "deepspeech2", deepspeech_run), ("length", "deepspeech2", length_run)]}


@pytest.fixture(scope="module")
def demo_server(whisper_run, wav2vec2_run, deepspeech_run, length_run, tmp_path_factory):
    """`python demo.py --models ...` with the three tiny runs (one given as best_model/) and the length model
    (tests/length_model.py), on 127.0.0.1."""
    port = free_port()
    log = tmp_path_factory.mktemp("demo") / "demo.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, str(REPO / "demo.py"), "--models", str(whisper_run), str(wav2vec2_run / "best_model"),
               str(deepspeech_run), str(length_run), "--port", str(port), "--device", "cpu",
               "--trust-remote-code"]
    with log.open("w", encoding="utf-8") as output:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_for_server(url, process, log)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.slow
def test_demo_transcribes_with_the_chosen_models(demo_server, model_names, wav2vec2_run, deepspeech_run, vivos_dir):
    """Through the same API the page uses: each chosen model's transcript is the one its trainer scored (the
    length model's is the clip's sample count: the upload reached it whole, at 16 kHz), with its decode time;
    the model not chosen is left empty."""
    from gradio_client import Client, handle_file

    with (deepspeech_run / "test_predictions.csv").open(encoding="utf-8") as f:
        row = min(csv.DictReader(f), key=lambda r: r["id"])
    with (wav2vec2_run / "test_predictions.csv").open(encoding="utf-8") as f:
        wav2vec2_text = next(r["prediction"] for r in csv.DictReader(f) if r["id"] == row["id"])
    clip = vivos_dir / "test" / "waves" / row["speaker"] / f"{row['id']}.wav"

    client = Client(demo_server, verbose=False, analytics_enabled=False, download_files=False)
    chosen = [model_names["wav2vec2"], model_names["deepspeech2"], model_names["length"]]
    outputs = client.predict(handle_file(str(clip)), chosen, api_name="/transcribe")

    texts, times = outputs[0::2], outputs[1::2]
    assert texts == ("", wav2vec2_text, row["prediction"], f"đoạn {sf.info(clip).frames}")
    assert times[0] == "not chosen"
    for decode_time in times[1:]:
        assert re.fullmatch(r"\d+\.\d\d s for \d+\.\d s of audio \(real-time factor \d+\.\d\d\)", decode_time)


@pytest.mark.slow
def test_demo_page_renders_in_headless_chromium(demo_server, model_names, tmp_path):
    """The page as a browser shows it: a screenshot of the window's size, and the rendered page (scripts
    left out, so not just the config Gradio embeds) names every model and the Transcribe button."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "the demo test needs Chromium: apt-get install chromium (Debian) or chromium-browser (Ubuntu)"
    screenshot = tmp_path / "demo.png"
    result = subprocess.run([browser, *CHROMIUM_FLAGS, f"--window-size={WINDOW[0]},{WINDOW[1]}",
                             "--virtual-time-budget=20000", f"--screenshot={screenshot}", "--dump-dom", demo_server],
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]

    assert png_size(screenshot) == WINDOW and screenshot.stat().st_size > 10_000
    rendered = re.sub(r"<script.*?</script>", "", result.stdout, flags=re.S)
    for name in model_names.values():
        assert f">{name}" in rendered, f"{name} is not on the rendered page"
    assert re.search(r"<button[^>]*>(<!---->|\s)*Transcribe", rendered)
