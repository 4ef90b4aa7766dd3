"""Compare trained models side by side in the browser: record or upload a clip, read each model's transcript
and how long it took to decode.

Shortest command (run folders or their best_model/ folders, from any of our three trainers):

    python demo.py --models runs/whisper-small runs/wav2vec2-base runs/deepspeech2

then open http://127.0.0.1:7860. --share prints a public https link too (Colab; the browser allows the
microphone only on localhost or https). Writes nothing; Gradio keeps uploads in its temporary folder.
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import time
import unicodedata
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

try:
    import gradio as gr
except ImportError:  # optional requirement: only the demo needs it
    raise SystemExit("demo.py needs Gradio: pip install gradio (or pip install -r requirements-extra.txt)")

SAMPLE_RATE = 16000  # every model we train expects 16 kHz mono
FAMILIES = ("whisper", "wav2vec2", "deepspeech2")
# Longest piece decoded at once: Whisper's encoder sees 30 s; the CTC models were trained on short
# utterances and keep their accuracy on pieces of this length.
CHUNK_SECONDS = {"whisper": 30.0, "wav2vec2": 20.0, "deepspeech2": 15.0}


class InputError(SystemExit):
    """Wrong model folder or nothing to transcribe: the message says what was expected, found, and to do."""


def normalize_text(text: str) -> str:
    """NFC, lower case, punctuation and symbols to spaces, whitespace collapsed; tone marks kept."""
    text = unicodedata.normalize("NFC", text).lower()
    text = "".join(ch if unicodedata.category(ch)[0] in "LMN" else " " for ch in text)
    return " ".join(text.split())


# ----------------------------------------------------------------------------- model (same code in transcribe.py)

def find_model_dir(path: Path) -> tuple[Path, str]:
    """The model folder (a run folder's best_model/, or the folder itself) and its family from config.json."""
    path = Path(path).expanduser()
    folder = path / "best_model" if (path / "best_model" / "config.json").is_file() else path
    config = folder / "config.json"
    if not config.is_file():
        found = ", ".join(sorted(p.name for p in path.iterdir())[:12]) if path.is_dir() else "no such folder"
        raise InputError(f"model folder {path}: expected a run folder holding best_model/config.json, or the "
                         f"best_model/ folder itself; found: {found or 'an empty folder'}. Pass the "
                         "--output-dir of train_whisper.py, train_wav2vec2.py or train_deepspeech.py.")
    family = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    if family not in FAMILIES:
        raise InputError(f"{config}: model_type is {family!r}, expected one of {', '.join(FAMILIES)}; "
                         "pass a model folder written by one of our trainers.")
    return folder, family


def deepspeech2_code(folder: Path, trust_remote_code: bool):
    """The module that builds a DeepSpeech2: the repository's modeling_deepspeech2.py (next to this script), or,
    with --trust-remote-code, the copy saved in the model folder. Imported only here, so this script copied
    alone still serves Whisper and Wav2Vec2."""
    copy = folder / "modeling_deepspeech2.py"
    if trust_remote_code and copy.is_file():
        spec = importlib.util.spec_from_file_location("modeling_deepspeech2", copy)
        code = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(code)
        return code
    missing = [name for name in ("vocab.json", "model.safetensors") if not (folder / name).is_file()]
    if missing:
        raise InputError(f"{folder}: a DeepSpeech2 folder holds config.json, vocab.json and model.safetensors "
                         f"(written by train_deepspeech.py); missing: {', '.join(missing)}. Pass the --output-dir "
                         "of a finished train_deepspeech.py run")
    # A model folder is often shared (--push-to-hub), so its code is anyone's: never run it unasked, even
    # when it is the only modeling_deepspeech2.py on the import path (a notebook working inside the folder).
    spec = importlib.util.find_spec("modeling_deepspeech2")
    if spec is None or Path(spec.origin).resolve().parent == folder.resolve():
        raise InputError(f"modeling_deepspeech2.py not found next to this script, and it is needed to load the "
                         f"DeepSpeech2 in {folder}: copy it from the repository next to the script, or pass "
                         "--trust-remote-code to run the copy in that folder (only if you trust who made it)")
    return importlib.import_module("modeling_deepspeech2")


def load_model(folder: Path, family: str, device: str, trust_remote_code: bool = False):
    """A transformers ASR pipeline for Whisper and Wav2Vec2; for DeepSpeech2 (its code module, model)."""
    if family == "deepspeech2":
        code = deepspeech2_code(folder, trust_remote_code)
        return code, code.load_model(folder).to(device)
    from transformers import pipeline

    return pipeline("automatic-speech-recognition", model=str(folder), device=device)


def decode_kwargs(family: str, asr) -> dict:
    """Pipeline call arguments: Whisper transcribes Vietnamese with the beams its trainer scored with."""
    if family != "whisper":
        return {}
    config = asr.model.generation_config
    return {"ignore_warning": True,  # chunking long audio is what we want; the pipeline warns about it
            "generate_kwargs": {"language": getattr(config, "language", None) or "vi",
                                "task": getattr(config, "task", None) or "transcribe",
                                "num_beams": config.num_beams}}


def scored_text(family: str, asr, text: str) -> str:
    """A pipeline transcript as the trainers score it: normalised, and for Wav2Vec2 without the tokenizer's
    unknown token (train_wav2vec2.py drops it before scoring)."""
    if family == "wav2vec2":
        text = text.replace(asr.tokenizer.unk_token, "")
    return normalize_text(text)


def load_audio(path: Path) -> np.ndarray:
    """16 kHz mono float32, whatever the file's rate and channels (soundfile + soxr, no FFmpeg)."""
    audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if rate != SAMPLE_RATE:
        audio = soxr.resample(audio, rate, SAMPLE_RATE).astype(np.float32)
    return audio


# ----------------------------------------------------------------------------- the page

def transcribe_clip(family: str, model, waveform: np.ndarray) -> str:
    """One clip's normalised transcript. Whisper and Wav2Vec2 cut a clip longer than a chunk into chunks;
    DeepSpeech2 reads it whole (transcribe.py cuts long recordings into windows and adds timestamps)."""
    if family == "deepspeech2":
        code, net = model
        with torch.inference_mode():
            return normalize_text(code.transcribe(net, [waveform])[0])
    chunk_s = CHUNK_SECONDS[family]
    chunking = {"chunk_length_s": chunk_s} if len(waveform) > chunk_s * SAMPLE_RATE else {}
    output = model({"raw": waveform, "sampling_rate": SAMPLE_RATE}, **chunking, **decode_kwargs(family, model))
    return scored_text(family, model, output["text"])


def compare_models(models: dict, audio_path: str | None, chosen: list[str]) -> list[str]:
    """Transcript and decode time of each model (empty for the models not chosen), in the page's order."""
    if not audio_path:
        raise gr.Error("No audio yet: record a clip with the microphone or upload a file, then press Transcribe.")
    try:
        waveform = load_audio(Path(audio_path))
    except Exception as error:  # soundfile raises several types for unreadable or unsupported files
        raise gr.Error(f"Cannot read {Path(audio_path).name} as audio ({error}). Upload WAV, FLAC, OGG or MP3, "
                       "or record again.")
    duration = len(waveform) / SAMPLE_RATE
    if duration == 0:
        raise gr.Error("The clip holds no audio samples: record again or upload another file.")
    outputs = []
    for name, (family, model) in models.items():
        if name not in chosen:
            outputs += ["", "not chosen"]
            continue
        started = time.perf_counter()
        text = transcribe_clip(family, model, waveform)
        seconds = time.perf_counter() - started
        outputs += [text, f"{seconds:.2f} s for {duration:.1f} s of audio (real-time factor {seconds / duration:.2f})"]
    return outputs


def build_demo(models: dict):
    """The page: audio input and model choice on top, one column per model (transcript, decode time)."""
    with gr.Blocks(title="Vietnamese speech recognition: compare models", analytics_enabled=False) as demo:
        gr.Markdown("## Vietnamese speech recognition: compare models\n"
                    "Record or upload a clip, choose the models, press **Transcribe**. The text is normalised "
                    "as the models were scored: lower case, no punctuation.")
        with gr.Row():
            audio = gr.Audio(sources=["microphone", "upload"], type="filepath", label="Audio")
            chosen = gr.CheckboxGroup(list(models), value=list(models), label="Models to compare")
        button = gr.Button("Transcribe", variant="primary")
        outputs = []
        with gr.Row(equal_height=True):
            for name in models:
                with gr.Column(min_width=220):  # four models still fit side by side
                    outputs.append(gr.Textbox(label=name, lines=4, interactive=False))
                    outputs.append(gr.Textbox(label="decode time", interactive=False))
        button.click(functools.partial(compare_models, models), [audio, chosen], outputs, api_name="transcribe")
    return demo


def display_name(folder: Path, family: str, taken: dict) -> str:
    """The run folder's name and the family, numbered when two runs share a name."""
    name = f"{folder.parent.name if folder.name == 'best_model' else folder.name} ({family})"
    return name if name not in taken else f"{name} #{len(taken) + 1}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    models = parser.add_argument_group("models")
    models.add_argument("--models", nargs="+", type=Path, required=True,
                        help="run folders (OUTPUT_DIR of a trainer) or their best_model/ folders, any family")
    models.add_argument("--trust-remote-code", action="store_true",
                        help="DeepSpeech2: run the modeling_deepspeech2.py saved in each model folder instead of "
                             "the repository's; that file is code whoever shared the folder could have written, "
                             "so only for folders whose maker you trust")
    models.add_argument("--device", default="auto",
                        help="auto (CUDA GPU when there is one, else CPU), cpu, cuda, cuda:1, ...")
    server = parser.add_argument_group("server")
    server.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to "
                             "your network, where browsers allow the microphone only over https: use --share)")
    server.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    server.add_argument("--share", action="store_true",
                        help="also print a public https link from Gradio (for Colab, or to show the demo to others)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None):
    args = parse_args(argv)
    device = args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    models = {}
    for path in args.models:
        folder, family = find_model_dir(path)
        name = display_name(folder, family, models)
        started = time.perf_counter()
        models[name] = (family, load_model(folder, family, device, args.trust_remote_code))
        print(f"loaded {name} from {folder} on {device} in {time.perf_counter() - started:.1f} s")
    demo = build_demo(models)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share)
    return demo


if __name__ == "__main__":
    main()
