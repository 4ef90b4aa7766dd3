"""Compare trained models side by side in the browser: record or upload a clip, read each model's transcript
and how long it took to decode.

Shortest command (run folders or their best_model/ folders, from any of our three trainers; a run cut off
before best_model/ was written gives its newest complete checkpoint-N/, named as such on the page):

    python demo.py --models runs/whisper-small runs/wav2vec2-base runs/deepspeech2

then open http://127.0.0.1:7860. --share prints a public https link too (Colab; the browser allows the
microphone only on localhost or https). A clip longer than --max-seconds (default 30) is turned away, and
a silent one answered "no speech found", instead of transcribed. Writes nothing; Gradio keeps uploads in its
temporary folder.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import importlib
import importlib.util
import json
import os
import re
import shlex
import time
import unicodedata
import zipfile
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
# The demo is for short utterances. Every visitor shares one queue, so a long clip holds up everyone behind it
# (and takes memory in proportion to its length); one Whisper window is enough for a few sentences, and
# transcribe.py is the tool for long recordings (chunks, timestamps, files).
MAX_SECONDS = 30.0
# A clip whose loudest 50 ms stretch stays below this level (RMS, dB below full scale) holds no speech: a muted
# or unplugged microphone, digital silence, a quiet room. Speech, even quiet or far from the microphone, is
# louder. The models would still write words for such a clip, words nobody said.
SILENCE_DBFS = -50.0
LOUDNESS_FRAME = SAMPLE_RATE // 20  # 50 ms: one syllable is longer, so speech always fills a frame
# faster-whisper exports: transcribe.py --export-ct2 writes them (see there).
# Copied from transcribe.CT2_MARKER
CT2_MARKER = "exported_by_transcribe.json"
# Copied from transcribe.CT2_PREFERENCE
CT2_PREFERENCE = {"cpu": ("int8", "float32", "int8_float16", "float16"),
                  "cuda": ("float16", "int8_float16", "int8", "float32")}


# Copied from train_whisper.InputError
class InputError(SystemExit):
    """Bad input: the message says what was expected, what was found and what to type next."""


# Copied from train_whisper.normalize_text
def normalize_text(text: str) -> str:
    """NFC, lower case, punctuation and symbols to spaces, whitespace collapsed; tone marks kept."""
    text = unicodedata.normalize("NFC", text).lower()
    text = "".join(ch if unicodedata.category(ch)[0] in "LMN" else " " for ch in text)
    return " ".join(text.split())


# ----------------------------------------------------------------------------- model (same code in transcribe.py)

# Copied from train_whisper.checkpoint_folders
def checkpoint_folders(output_dir: Path) -> list[Path]:
    """The checkpoint-N folders of a run folder, newest first."""
    numbered = [p for p in output_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(numbered, key=lambda folder: int(folder.name.split("-")[-1]), reverse=True)


# Copied from train_whisper.cut_off
def cut_off(path: Path) -> bool:
    """Whether a torch or safetensors file ends before its format says it should (a full disk or a power cut
    while it was written), checked cheaply: a torch file is a zip archive whose directory sits at its end, a
    safetensors header gives the file's length."""
    if path.suffix in (".pt", ".pth", ".bin"):
        return not zipfile.is_zipfile(path)
    if path.suffix != ".safetensors":
        return False
    with path.open("rb") as handle:
        header_size = int.from_bytes(handle.read(8), "little")
        try:
            header = json.loads(handle.read(header_size))
            end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, AttributeError, IndexError):
            return True
    return path.stat().st_size < 8 + header_size + end


# Copied from train_whisper.checkpoint_problem
def checkpoint_problem(folder: Path) -> str | None:
    """Why training cannot continue from this checkpoint (None: it can): Trainer writes trainer_state.json
    last, and no file of it may be cut off."""
    try:
        json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "no trainer_state.json"
    except ValueError:
        return "trainer_state.json is cut off"
    return next((f"{path.name} is cut off" for path in sorted(folder.iterdir()) if cut_off(path)), None)


# Copied from train_whisper.last_complete_checkpoint
def last_complete_checkpoint(output_dir: Path) -> Path | None:
    """The newest checkpoint-N that training can continue from."""
    return next((folder for folder in checkpoint_folders(output_dir) if checkpoint_problem(folder) is None), None)


# Copied from transcribe.find_model_dir
def find_model_dir(path: Path) -> tuple[Path, str]:
    """The model folder and its family from config.json: a run folder's best_model/; in a run cut off before
    best_model/ was written, its newest complete checkpoint-N/; or the folder itself (best_model/, checkpoint-N/)."""
    path = Path(path).expanduser()
    if (path / "best_model" / "config.json").is_file():
        folder = path / "best_model"
    elif path in checkpoint_folders(path.parent):
        problem = checkpoint_problem(path)
        if problem:
            raise InputError(f"{path} is incomplete ({problem}): it was cut off while it was written. Pass the run "
                             f"folder instead, --model {quoted(path.parent)}, to use its newest complete checkpoint.")
        folder = path
    elif not (path / "config.json").is_file() and checkpoint_folders(path):
        folder = last_complete_checkpoint(path)
        if folder is None:
            problems = "; ".join(f"{c.name}: {checkpoint_problem(c)}" for c in checkpoint_folders(path)[:3])
            raise InputError(f"{path} has no best_model/ and no complete checkpoint ({problems}): each was cut off "
                             "while it was written, so there is no model to load. Re-run the same train command: "
                             "it starts the run over.")
    else:
        folder = path
    config = folder / "config.json"
    if not config.is_file() and folder in checkpoint_folders(folder.parent):
        raise InputError(f"{folder} holds weights but no config.json: a train_deepspeech.py checkpoint, and that "
                         "trainer writes the config.json and vocab.json needed to load them only into best_model/ "
                         "when the run finishes. Re-run the same train_deepspeech.py command to resume and finish "
                         "the run, then pass the run folder again.")
    if not config.is_file():
        found = ", ".join(sorted(p.name for p in path.iterdir())[:12]) if path.is_dir() else "no such folder"
        raise InputError(f"model folder {path}: expected a run folder holding best_model/config.json or "
                         "checkpoint-N/ folders, or a best_model/ or checkpoint-N/ folder itself; found: "
                         f"{found or 'an empty folder'}. Pass the --output-dir of train_whisper.py, "
                         "train_wav2vec2.py or train_deepspeech.py.")
    family = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    if family not in FAMILIES:
        raise InputError(f"{config}: model_type is {family!r}, expected one of {', '.join(FAMILIES)}; "
                         "pass a model folder written by one of our trainers.")
    return folder, family


# Copied from transcribe.checkpoint_note
def checkpoint_note(folder: Path) -> str | None:
    """One line when the model is a checkpoint-N/ rather than best_model/: which one, and what that means."""
    if folder not in checkpoint_folders(folder.parent):
        return None
    state = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    return (f"using {folder.name} of {folder.resolve().parent.name} (step {state.get('global_step')}, epoch "
            f"{round(state.get('epoch') or 0, 2):g}): weights saved during training, not the validated best model that "
            "best_model/ holds once the run finishes")


# Copied from transcribe.deepspeech2_code
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


# Copied from transcribe.language_model_problem
def language_model_problem(folder: Path) -> str | None:
    """Why a CTC model folder cannot decode with its n-gram language model; None when it can."""
    if not (folder / "alphabet.json").is_file() or not (folder / "language_model").is_dir():
        return "the model was saved without a language model (trained with --lm-order 0, or before they existed)"
    missing = [name for name in ("pyctcdecode", "kenlm") if importlib.util.find_spec(name) is None]
    if missing:
        return (f"{' and '.join(missing)} not installed: pip install --no-deps -r requirements-lm.txt (kenlm "
                "needs a C++ compiler; see the README)")
    return None


# Copied from transcribe.choose_decoder
def choose_decoder(folder: Path, family: str, asked: str) -> str:
    """"lm" or "greedy" for a CTC model (--decoder auto: the language model when the folder has one that can
    load, with one line when it cannot); Whisper decodes with its own beam search, "beam"."""
    if family == "whisper":
        return "beam"
    problem = language_model_problem(folder) if asked != "greedy" else None
    if asked == "lm" and problem:
        raise InputError(f"--decoder lm: {problem}. Use --decoder greedy, or a model trained with a language model.")
    if problem and (folder / "language_model").is_dir():
        print(f"{folder}: decoding greedily, without its language model: {problem}")
    return "greedy" if asked == "greedy" or problem else "lm"


# Copied from transcribe.trained_beam_width
def trained_beam_width(folder: Path) -> int:
    """The beams the run kept when it scored its test split with the language model (its run_info.json beside
    best_model/), so a clip is decoded as the trainer decoded it; 64 for a folder without one."""
    try:
        info = json.loads((folder.parent / "run_info.json").read_text(encoding="utf-8"))
        return int(info["language_model"]["beam_width"])
    except (OSError, ValueError, KeyError, TypeError):
        return 64


# Copied from transcribe.load_recognizer
def load_recognizer(folder: Path, family: str, device: str, trust_remote_code: bool = False,
                    decoder: str = "lm"):
    """A transformers ASR pipeline for Whisper and Wav2Vec2 (with the folder's language model when decoder
    is "lm"); for DeepSpeech2 (its code module, model)."""
    if family == "deepspeech2":
        code = deepspeech2_code(folder, trust_remote_code)
        model = code.load_model(folder).to(device)
        if decoder == "greedy":
            model.lm_decoder = None
        model.lm_beam_width = trained_beam_width(folder)
        return code, model
    from transformers import pipeline

    if family == "wav2vec2" and decoder == "greedy" and (folder / "language_model").is_dir():
        # Named by folder, the pipeline attaches the language model itself: given as objects, it decodes greedily.
        from transformers import AutoModelForCTC, Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor

        return pipeline("automatic-speech-recognition", model=AutoModelForCTC.from_pretrained(folder),
                        tokenizer=Wav2Vec2CTCTokenizer.from_pretrained(folder),
                        feature_extractor=Wav2Vec2FeatureExtractor.from_pretrained(folder), device=device)
    asr = pipeline("automatic-speech-recognition", model=str(folder), device=device)
    asr.lm_beam_width = trained_beam_width(folder)
    return asr


# Copied from transcribe.decode_kwargs
def decode_kwargs(family: str, asr) -> dict:
    """Pipeline call arguments: Whisper transcribes Vietnamese with the beams its trainer scored with; a
    Wav2Vec2 with a language model keeps as many beams as its trainer did (load_recognizer)."""
    if family != "whisper":
        return ({"decoder_kwargs": {"beam_width": asr.lm_beam_width}} if getattr(asr, "type", "") == "ctc_with_lm"
                else {})
    config = asr.model.generation_config
    return {"ignore_warning": True,  # chunking long audio is what we want; the pipeline warns about it
            "generate_kwargs": {"language": getattr(config, "language", None) or "vi",
                                "task": getattr(config, "task", None) or "transcribe",
                                "num_beams": config.num_beams}}


# Copied from transcribe.deepspeech2_decoding
def deepspeech2_decoding(net) -> dict:
    """modeling_deepspeech2.transcribe's decoder arguments: the language model when load_recognizer kept it, else
    the module's default (greedy without one; an older module's own decoder)."""
    return {"decoder": "lm", "beam_width": net.lm_beam_width} if getattr(net, "lm_decoder", None) else {}


# Copied from transcribe.scored_text
def scored_text(family: str, asr, text: str) -> str:
    """A pipeline transcript as the trainers score it: normalised, and for Wav2Vec2 without the tokenizer's
    unknown token (train_wav2vec2.py drops it before scoring)."""
    if family == "wav2vec2":
        text = text.replace(asr.tokenizer.unk_token, "")
    return normalize_text(text)


# Copied from prepare_vivos.load_audio
def load_audio(path: Path) -> np.ndarray:
    """16 kHz mono float32, whatever the file's rate and channels (soundfile + soxr, no FFmpeg)."""
    audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if rate != SAMPLE_RATE:
        audio = soxr.resample(audio, rate, SAMPLE_RATE).astype(np.float32)
    return audio


# Copied from transcribe.sha256_file
def sha256_file(path: Path) -> str:
    """sha256 of a file read in 16 MB blocks (model weights do not fit in memory twice)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


# Copied from transcribe.weights_fingerprint
def weights_fingerprint(folder: Path) -> dict[str, str]:
    """sha256 of the files an export is converted from, so that a model trained again after its export (the
    trainer rewrites best_model/ in place) is never decoded from the old export."""
    files = ["config.json", "generation_config.json", *sorted(p.name for p in folder.glob("*.safetensors")),
             *sorted(p.name for p in folder.glob("*.bin"))]
    return {name: sha256_file(folder / name) for name in files if (folder / name).is_file()}


# Copied from transcribe.ct2_marker
def ct2_marker(export: Path) -> dict | None:
    """The CT2_MARKER of a folder that transcribe.py --export-ct2 wrote; None for any other folder."""
    try:
        marker = json.loads((export / CT2_MARKER).read_text(encoding="utf-8"))
        return marker if marker["written_by"] == "transcribe.py" else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


# Copied from transcribe.ct2_export_problem
def ct2_export_problem(export: Path, folder: Path) -> str | None:
    """Why the faster-whisper export `export` of the model in `folder` cannot be used (None: it can)."""
    marker = ct2_marker(export)
    if marker is None:
        return f"{export} was not written by transcribe.py --export-ct2 (no {CT2_MARKER} in it)"
    if marker.get("weights") != weights_fingerprint(folder):
        return f"{export} was exported from other weights than {folder} holds now (the model was trained again)"
    return None


# Copied from transcribe.export_command
def export_command(model: Path, quantization: str) -> str:
    return f"python transcribe.py --model {quoted(model)} --export-ct2 --ct2-quantization {quantization}"


# Copied from transcribe.choose_engine
def choose_engine(engine: str, folder: Path, family: str, device: str, model_arg: Path) -> Path | None:
    """The faster-whisper export to decode with, or None for transformers. auto: an up-to-date export of a Whisper
    model when faster-whisper is installed. A reason to use transformers instead is said in one line."""
    if engine == "transformers" or (engine == "auto" and family != "whisper"):
        return None
    if family != "whisper":
        raise InputError(f"--engine faster-whisper decodes Whisper models; {folder} holds a {family} model. Leave "
                         "--engine out (or pass --engine transformers).")
    kind = "cuda" if device.startswith("cuda") else "cpu"
    exports = [folder / f"ct2-{q}" for q in CT2_PREFERENCE[kind] if (folder / f"ct2-{q}").is_dir()]
    problems = {export: ct2_export_problem(export, folder) for export in exports}
    usable = [export for export in exports if problems[export] is None]
    if not usable:
        command = export_command(model_arg, "float16" if kind == "cuda" else "int8")
        problem = problems[exports[0]] if exports else f"{folder} holds no ct2-<type>/ folder"
        if engine == "faster-whisper":
            raise InputError(f"--engine faster-whisper needs an up-to-date CTranslate2 export of the model: "
                             f"{problem}. Write one with: {command}")
        if exports:
            print(f"not using faster-whisper: {problem}. Export it again with: {command}")
        return None
    try:
        importlib.import_module("faster_whisper")  # here: transformers serves everything without it
    except ImportError:
        print(f"faster-whisper is not installed, so {usable[0].name}/ is not used: transcribing with transformers. "
              "For the faster engine: pip install faster-whisper")
        return None
    return usable[0]


# Copied from transcribe.load_faster_whisper
def load_faster_whisper(export: Path, folder: Path, device: str):
    """(faster_whisper.WhisperModel, decoding options): the language, task and beams the model was trained and
    scored with, read from its generation_config.json, never detected from the audio."""
    import ctranslate2
    from faster_whisper import WhisperModel

    kind, _, index = device.partition(":")
    quantization, supported = ct2_marker(export)["quantization"], ctranslate2.get_supported_compute_types(kind)
    # int8_float16 on a CPU runs as int8, float16 as float32.
    compute_type = next(t for t in (quantization, quantization.split("_")[0], "float32") if t in supported)
    whisper = WhisperModel(str(export), device=kind, device_index=int(index or 0), compute_type=compute_type,
                           cpu_threads=torch.get_num_threads())
    config = json.loads((folder / "generation_config.json").read_text(encoding="utf-8"))
    # As the pipeline decodes: each window on its own, one temperature, no window dropped as silence.
    options = {"language": config.get("language") or "vi", "task": config.get("task") or "transcribe",
               "beam_size": config.get("num_beams") or 1, "temperature": 0.0, "condition_on_previous_text": False,
               "no_speech_threshold": None, "vad_filter": False}
    return whisper, options


# Copied from transcribe.faster_whisper_pieces
def faster_whisper_pieces(model, waveform: np.ndarray, timestamps: bool) -> list[tuple[float, float, str]]:
    """(start, end, normalised text) of each segment faster-whisper decodes from one recording. Without timestamps
    (a clip of one window, decoded as the trainer scored it) each 30-s window is one segment."""
    whisper, options = model
    if not timestamps:
        # faster-whisper pads a short clip's log-Mel features with zeros; the transformers feature extractor, whose
        # features the model was trained on, pads the audio with silence (the log-Mel floor). Pad the audio.
        waveform = np.pad(waveform, (0, max(int(CHUNK_SECONDS["whisper"] * SAMPLE_RATE) - len(waveform), 0)))
    segments, _ = whisper.transcribe(waveform, without_timestamps=not timestamps, **options)
    return [(piece.start, piece.end, normalize_text(piece.text)) for piece in segments]


# Copied from train_whisper.quoted
def quoted(path) -> str:
    """A path as the shell of this machine reads it back from a pasted command: POSIX quoting, or double
    quotes on Windows (cmd.exe knows no single quotes; Windows paths hold no double quote)."""
    text = str(path)
    if os.name != "nt":
        return shlex.quote(text)
    return text if re.fullmatch(r"[\w@%+=:,./\\-]+", text, re.ASCII) else f'"{text}"'


# ----------------------------------------------------------------------------- the page

def transcribe_clip(family: str, model, waveform: np.ndarray) -> str:
    """One clip's normalised transcript. Whisper and Wav2Vec2 cut a clip longer than a chunk into chunks;
    DeepSpeech2 reads it whole (transcribe.py cuts long recordings into windows and adds timestamps)."""
    if family == "deepspeech2":
        code, net = model
        with torch.inference_mode():
            return normalize_text(code.transcribe(net, [waveform], **deepspeech2_decoding(net))[0])
    chunk_s = CHUNK_SECONDS["whisper" if family == "faster-whisper" else family]
    if family == "faster-whisper":
        pieces = faster_whisper_pieces(model, waveform, timestamps=len(waveform) > chunk_s * SAMPLE_RATE)
        return " ".join(text for *_, text in pieces if text)
    chunking = {"chunk_length_s": chunk_s} if len(waveform) > chunk_s * SAMPLE_RATE else {}
    output = model({"raw": waveform, "sampling_rate": SAMPLE_RATE}, **chunking, **decode_kwargs(family, model))
    return scored_text(family, model, output["text"])


def loudest_dbfs(waveform: np.ndarray) -> float:
    """The level of the clip's loudest LOUDNESS_FRAME, in dB below full scale (its mean removed: some
    microphones record a constant offset, which is not sound)."""
    frames = waveform[: max(len(waveform) // LOUDNESS_FRAME, 1) * LOUDNESS_FRAME]
    rms = frames.reshape(-1, min(len(frames), LOUDNESS_FRAME)).std(axis=1).max()
    return 20 * float(np.log10(max(rms, 1e-5)))  # -100 dB: 16-bit audio holds nothing quieter


def compare_models(models: dict, audio_path: str | None, chosen: list[str],
                   max_seconds: float = MAX_SECONDS) -> list[str]:
    """Transcript and decode time of each model (empty for the models not chosen), in the page's order. A
    clip longer than max_seconds, or without sound loud enough to be speech, gets an answer instead."""
    if not audio_path:
        raise gr.Error("No audio yet: record a clip with the microphone or upload a file, then press Transcribe.")
    try:
        duration = sf.info(audio_path).duration  # from the header: a long clip is turned away undecoded
        waveform = None if duration > max_seconds else load_audio(Path(audio_path))
    except Exception as error:  # soundfile raises several types for unreadable or unsupported files
        raise gr.Error(f"Cannot read {Path(audio_path).name} as audio ({error}). Upload WAV, FLAC, OGG or MP3, "
                       "or record again.")
    if waveform is None:
        raise gr.Error(f"The clip is {duration:.1f} s long; this demo transcribes clips of up to {max_seconds:g} s. "
                       "Record or upload a shorter one; for long recordings use transcribe.py, which cuts them "
                       "into chunks with timestamps (or start the demo with a larger --max-seconds).")
    duration = len(waveform) / SAMPLE_RATE
    if duration == 0:
        raise gr.Error("The clip holds no audio samples: record again or upload another file.")
    level = loudest_dbfs(waveform)
    if level < SILENCE_DBFS:
        raise gr.Error(f"No speech found: the clip is silent or nearly (its loudest moment is {-level:.0f} dB "
                       "below full scale). Check that the right microphone is chosen and not muted, speak closer "
                       "to it, and record again.")
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


def build_demo(models: dict, max_seconds: float = MAX_SECONDS):
    """The page: audio input and model choice on top, one column per model (transcript, decode time)."""
    with gr.Blocks(title="Vietnamese speech recognition: compare models", analytics_enabled=False) as demo:
        gr.Markdown("## Vietnamese speech recognition: compare models\n"
                    f"Record or upload a clip of up to {max_seconds:g} s, choose the models, press **Transcribe**. "
                    "The text is normalised as the models were scored: lower case, no punctuation.")
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
        button.click(functools.partial(compare_models, models, max_seconds=max_seconds), [audio, chosen], outputs,
                     api_name="transcribe")
    return demo


def display_name(folder: Path, family: str, taken: dict) -> str:
    """The run folder's name and the family (and the checkpoint, for one), numbered when two runs share a name."""
    if folder.name == "best_model":
        name = f"{folder.resolve().parent.name} ({family})"
    elif folder in checkpoint_folders(folder.parent):
        name = f"{folder.resolve().parent.name} {folder.name} ({family})"
    else:
        name = f"{folder.resolve().name} ({family})"
    return name if name not in taken else f"{name} #{len(taken) + 1}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    models = parser.add_argument_group("models")
    models.add_argument("--models", nargs="+", type=Path, required=True,
                        help="run folders (OUTPUT_DIR of a trainer), their best_model/ or checkpoint-N/ folders, any "
                             "family (a run without best_model/: its newest complete checkpoint)")
    models.add_argument("--trust-remote-code", action="store_true",
                        help="DeepSpeech2: run the modeling_deepspeech2.py saved in each model folder instead of "
                             "the repository's; that file is code whoever shared the folder could have written, "
                             "so only for folders whose maker you trust")
    models.add_argument("--decoder", choices=["auto", "lm", "greedy"], default="auto",
                        help="Wav2Vec2 and DeepSpeech2: lm = beam search with the n-gram language model saved in the "
                             "model folder, greedy = best path; auto (default): lm when the folder has one and "
                             "pyctcdecode and kenlm are installed")
    models.add_argument("--device", default="auto",
                        help="auto (CUDA GPU when there is one, else CPU), cpu, cuda, cuda:1, ...")
    models.add_argument("--engine", choices=["auto", "transformers", "faster-whisper"], default="auto",
                        help="Whisper: faster-whisper (CTranslate2) decodes with an export written by transcribe.py "
                             "--export-ct2, transformers with the pipeline; auto (default): faster-whisper when the "
                             "model has an up-to-date export and faster-whisper is installed, else transformers")
    server = parser.add_argument_group("server")
    server.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to "
                             "your network, where browsers allow the microphone only over https: use --share)")
    server.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    server.add_argument("--share", action="store_true",
                        help="also print a public https link from Gradio (for Colab, or to show the demo to others)")
    server.add_argument("--max-seconds", type=float, default=MAX_SECONDS,
                        help=f"longest clip transcribed (default {MAX_SECONDS:g}: the demo is for short utterances "
                             "and every visitor waits in one queue; transcribe.py is for long recordings)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None):
    args = parse_args(argv)
    device = args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    models = {}
    for path in args.models:
        folder, family = find_model_dir(path)
        note = checkpoint_note(folder)
        if note:
            print(note)
        name = display_name(folder, family, models)
        export = choose_engine(args.engine, folder, family, device, path)
        started = time.perf_counter()
        decoder = choose_decoder(folder, family, args.decoder)
        models[name] = (("faster-whisper", load_faster_whisper(export, folder, device)) if export
                        else (family, load_recognizer(folder, family, device, args.trust_remote_code, decoder)))
        print(f"loaded {name} from {export or folder} on {device}{' with faster-whisper' if export else ''} in "
              f"{time.perf_counter() - started:.1f} s")
    demo = build_demo(models, args.max_seconds)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share)
    return demo


if __name__ == "__main__":
    main()
