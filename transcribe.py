"""Transcribe audio files and folders with a model trained by our trainers (Whisper, Wav2Vec2, DeepSpeech2).

Shortest command (a run folder or its best_model/; the family is read from its config.json):

    python transcribe.py --model runs/whisper-small audio.wav more.flac recordings/

A run cut off before it finished (a Colab disconnect) has no best_model/: the run folder then gives its newest
complete checkpoint-N/ (Whisper, Wav2Vec2), and a checkpoint-N/ folder can be passed itself; a line says which
checkpoint is used, since it is not the validated best model.

Files of any sample rate and channel count that soundfile reads (WAV, FLAC, OGG, MP3) are mixed to
mono and resampled to 16 kHz. Recordings longer than one chunk (30 s for Whisper, 20 s for Wav2Vec2,
15 s for DeepSpeech2) are cut into chunks and get timestamps: the transformers pipeline's chunking
for Whisper and Wav2Vec2, windows cut at the quietest moment for DeepSpeech2. The text is normalised
exactly as the trainers scored it. A file that cannot be read is reported and skipped; the others are
still transcribed. Each transcript is printed, then the real-time factor.

Whisper runs faster on a CPU through faster-whisper (CTranslate2): `--export-ct2` converts the model once into
its folder (ct2-int8/), and from then on --engine auto decodes with it, to the same text and outputs.

What it writes in --output-dir (default transcripts/):
  --format txt   one NAME.txt per audio file: the transcript                 (default)
  --format srt   one NAME.srt per audio file: subtitles, one per chunk or phrase
  --format csv   transcripts.csv: path,start,end,text, one row per chunk or phrase
  --format json  transcripts.json: model, family, engine, per file {path, duration, text, segments
                 [{start, end, text}]}, skipped files with the reason, audio and decode seconds, rtf
NAME keeps the files' folders below the inputs' common folder, so two a.wav never overwrite each other;
a.wav and a.flac in one folder become a.wav.txt and a.flac.txt. written_by_transcribe.json lists the files
this script wrote there: running the same command again replaces them, but any other file in the way (your
own notes, a transcript you corrected) stops the run before the model loads, unless you add --overwrite.
"""
from __future__ import annotations

import argparse
import collections
import csv
import hashlib
import importlib.util
import io
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import unicodedata
import zipfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch
from tqdm.auto import tqdm

SAMPLE_RATE = 16000  # every model we train expects 16 kHz mono
FAMILIES = ("whisper", "wav2vec2", "deepspeech2")
# Longest piece decoded at once: Whisper's encoder sees 30 s; the CTC models were trained on short
# utterances and keep their accuracy on pieces of this length.
CHUNK_SECONDS = {"whisper": 30.0, "wav2vec2": 20.0, "deepspeech2": 15.0}
PAUSE_SEARCH_SECONDS = 3.0  # a DeepSpeech2 window ends at the quietest 20 ms of its last 3 s
PHRASE_SECONDS = 6.0  # Wav2Vec2 word timestamps are grouped into subtitle phrases of at most 6 s ...
PHRASE_GAP_SECONDS = 0.5  # ... and a silence this long starts a new phrase
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".mp3", ".opus", ".aif", ".aiff"}
# In --output-dir: {"written_by": "transcribe.py", "files": {NAME: sha256}}. A file listed with the same content
# is ours to replace; any other (not listed, or edited since) is the user's.
MANIFEST = "written_by_transcribe.json"
DECODER_NAMES = {"beam": "beam search", "lm": "beam search with the n-gram language model",
                 "greedy": "greedy decoding"}
# faster-whisper (CTranslate2) exports of a Whisper model live in its folder as ct2-<quantization>/, each with
# this file, written last: {"written_by": "transcribe.py", "quantization", "weights": {file: sha256}}. A folder of
# that name without it is the user's; an export whose weights differ from the model's is out of date.
CT2_MARKER = "exported_by_transcribe.json"
CT2_QUANTIZATIONS = ("int8", "int8_float16", "float16", "float32")
# The export each device looks for first: int8 is CTranslate2's fast type on a CPU, float16 on a GPU; any other
# export still runs, converted to a type the device supports when it loads.
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


# ----------------------------------------------------------------------------- model (same code in demo.py)

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


def checkpoint_note(folder: Path) -> str | None:
    """One line when the model is a checkpoint-N/ rather than best_model/: which one, and what that means."""
    if folder not in checkpoint_folders(folder.parent):
        return None
    state = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    return (f"using {folder.name} of {folder.resolve().parent.name} (step {state.get('global_step')}, epoch "
            f"{round(state.get('epoch') or 0, 2):g}): weights saved during training, not the validated best model that "
            "best_model/ holds once the run finishes")


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


def language_model_problem(folder: Path) -> str | None:
    """Why a CTC model folder cannot decode with its n-gram language model; None when it can."""
    if not (folder / "alphabet.json").is_file() or not (folder / "language_model").is_dir():
        return "the model was saved without a language model (trained with --lm-order 0, or before they existed)"
    missing = [name for name in ("pyctcdecode", "kenlm") if importlib.util.find_spec(name) is None]
    if missing:
        return (f"{' and '.join(missing)} not installed: pip install --no-deps -r requirements-lm.txt (kenlm "
                "needs a C++ compiler; see the README)")
    return None


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


def trained_beam_width(folder: Path) -> int:
    """The beams the run kept when it scored its test split with the language model (its run_info.json beside
    best_model/), so a clip is decoded as the trainer decoded it; 64 for a folder without one."""
    try:
        info = json.loads((folder.parent / "run_info.json").read_text(encoding="utf-8"))
        return int(info["language_model"]["beam_width"])
    except (OSError, ValueError, KeyError, TypeError):
        return 64


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


def sha256_file(path: Path) -> str:
    """sha256 of a file read in 16 MB blocks (model weights do not fit in memory twice)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_fingerprint(folder: Path) -> dict[str, str]:
    """sha256 of the files an export is converted from, so that a model trained again after its export (the
    trainer rewrites best_model/ in place) is never decoded from the old export."""
    files = ["config.json", "generation_config.json", *sorted(p.name for p in folder.glob("*.safetensors")),
             *sorted(p.name for p in folder.glob("*.bin"))]
    return {name: sha256_file(folder / name) for name in files if (folder / name).is_file()}


def ct2_marker(export: Path) -> dict | None:
    """The CT2_MARKER of a folder that transcribe.py --export-ct2 wrote; None for any other folder."""
    try:
        marker = json.loads((export / CT2_MARKER).read_text(encoding="utf-8"))
        return marker if marker["written_by"] == "transcribe.py" else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def ct2_export_problem(export: Path, folder: Path) -> str | None:
    """Why the faster-whisper export `export` of the model in `folder` cannot be used (None: it can)."""
    marker = ct2_marker(export)
    if marker is None:
        return f"{export} was not written by transcribe.py --export-ct2 (no {CT2_MARKER} in it)"
    if marker.get("weights") != weights_fingerprint(folder):
        return f"{export} was exported from other weights than {folder} holds now (the model was trained again)"
    return None


def export_command(model: Path, quantization: str) -> str:
    return f"python transcribe.py --model {quoted(model)} --export-ct2 --ct2-quantization {quantization}"


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


# ----------------------------------------------------------------------------- long audio and timestamps

def segment(start: float, end: float, text: str) -> dict:
    return {"start": round(float(start), 3), "end": round(float(end), 3), "text": text}


def whole_clip(text: str, duration: float) -> list[dict]:
    """A clip decoded in one piece is one segment from 0 to its end."""
    return [segment(0.0, duration, text)] if text else []


def whisper_segments(chunks: list[dict], duration: float) -> list[dict]:
    """Whisper's timestamped segments, clipped to the recording (the last one may have no end)."""
    segments = []
    for chunk in chunks:
        start, end = chunk["timestamp"]
        start = min(max(start or 0.0, 0.0), duration)
        end = duration if end is None else min(max(end, start), duration)
        if chunk["text"]:
            segments.append(segment(start, end, chunk["text"]))
    return segments


def phrase_segments(words: list[dict]) -> list[dict]:
    """Wav2Vec2 word timestamps grouped into subtitle phrases: a new one after a pause or PHRASE_SECONDS."""
    segments = []
    for word in (word for word in words if word["text"]):
        start, end = word["timestamp"]
        last = segments[-1] if segments else None
        if last and start - last["end"] <= PHRASE_GAP_SECONDS and end - last["start"] <= PHRASE_SECONDS:
            last["end"], last["text"] = round(float(end), 3), f"{last['text']} {word['text']}"
        else:
            segments.append(segment(start, end, word["text"]))
    return segments


def pause_windows(waveform: np.ndarray, window_s: float) -> list[tuple[int, int]]:
    """(start, end) samples of windows at most window_s long, each ending at the quietest 20 ms of its last
    PAUSE_SEARCH_SECONDS, so that a window boundary falls between words rather than inside one."""
    window, search, frame = int(window_s * SAMPLE_RATE), int(PAUSE_SEARCH_SECONDS * SAMPLE_RATE), SAMPLE_RATE // 50
    windows, start = [], 0
    while len(waveform) - start > window:
        low = start + window - search
        energy = np.add.reduceat(waveform[low: start + window] ** 2, np.arange(0, search, frame))
        end = low + int(np.argmin(energy)) * frame + frame // 2
        windows.append((start, end))
        start = end
    return windows + [(start, len(waveform))]


def transcribe_hf(asr, family: str, waveforms: list[np.ndarray], chunk_s: float, batch_size: int) -> list[dict]:
    """Whisper / Wav2Vec2 through the pipeline. A recording longer than chunk_s is decoded in overlapping
    chunks (batch_size at a time) with timestamps; a shorter one in one piece, as the trainers scored it."""
    kwargs = decode_kwargs(family, asr)
    durations = [len(w) / SAMPLE_RATE for w in waveforms]
    short = [i for i, d in enumerate(durations) if d <= chunk_s]
    long = [i for i, d in enumerate(durations) if d > chunk_s]
    # Whisper pads every clip to 30 s anyway, so short clips batch freely. A CTC batch pads the shorter clips and
    # the pipeline decodes their padding frames into letters the trainer never scored: one clip at a time.
    one_piece = {"batch_size": batch_size if family == "whisper" else 1}
    chunked = {"batch_size": batch_size, "chunk_length_s": chunk_s,
               "return_timestamps": True if family == "whisper" else "word"}
    results = [None] * len(waveforms)
    for indices, settings in ((short, one_piece), (long, chunked)):
        inputs = [{"raw": waveforms[i], "sampling_rate": SAMPLE_RATE} for i in indices]
        for i, output in zip(indices, asr(inputs, **settings, **kwargs) if inputs else []):
            text = scored_text(family, asr, output["text"])
            if "chunks" not in output:
                results[i] = {"text": text, "segments": whole_clip(text, durations[i])}
                continue
            chunks = [{"text": scored_text(family, asr, c["text"]), "timestamp": c["timestamp"]}
                      for c in output["chunks"]]
            segments = whisper_segments(chunks, durations[i]) if family == "whisper" else phrase_segments(chunks)
            results[i] = {"text": text, "segments": segments}
    return results


def transcribe_faster_whisper(model, waveforms: list[np.ndarray], chunk_s: float) -> list[dict]:
    """Whisper through faster-whisper, one recording at a time: a clip of up to chunk_s decoded whole without
    timestamps, as the trainer scored it; a longer one in faster-whisper's 30-s windows, with the timestamps
    Whisper writes. The segments and text are those of transcribe_hf."""
    results = []
    for waveform in waveforms:
        duration = len(waveform) / SAMPLE_RATE
        pieces = faster_whisper_pieces(model, waveform, timestamps=duration > chunk_s)
        text = " ".join(piece for *_, piece in pieces if piece)
        segments = (whisper_segments([{"text": piece, "timestamp": (start, end)} for start, end, piece in pieces],
                                     duration) if duration > chunk_s else whole_clip(text, duration))
        results.append({"text": text, "segments": segments})
    return results


def export_ct2(folder: Path, family: str, quantization: str) -> Path:
    """folder/ct2-<quantization>/: the Whisper in `folder` converted by CTranslate2's own converter, with the
    preprocessor_config.json and tokenizer.json faster-whisper reads (transformers 5 saves the processor as
    processor_config.json). Written in a hidden folder and renamed when complete, so an interrupted export
    leaves nothing that is ever loaded; it replaces only an export this script wrote."""
    if family != "whisper":
        raise InputError(f"--export-ct2 converts Whisper models for faster-whisper; {folder} holds a {family} model. "
                         "Leave --export-ct2 out to transcribe with it.")
    target = folder / f"ct2-{quantization}"
    if target.exists() and ct2_marker(target) is None:
        raise InputError(f"{target} exists and transcribe.py did not write it (no {CT2_MARKER} in it), so it was "
                         "left as it is and nothing was exported. Move it out of the model folder, then run the "
                         "same command again.")
    try:
        from ctranslate2.converters import TransformersConverter
    except ImportError:
        raise InputError("--export-ct2 needs CTranslate2 and faster-whisper: pip install ctranslate2 faster-whisper")
    from transformers import AutoTokenizer, WhisperFeatureExtractor

    features = WhisperFeatureExtractor.from_pretrained(folder)
    if features.chunk_length != CHUNK_SECONDS["whisper"]:
        raise InputError(f"{folder} reads {features.chunk_length}-s windows; faster-whisper decodes Whisper's 30-s "
                         "windows only, so this model cannot be exported. Transcribe it with --engine transformers.")
    weights = weights_fingerprint(folder)
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}-partial-", dir=folder))
    try:
        TransformersConverter(str(folder)).convert(str(partial), quantization=quantization, force=True)
        vocabulary = json.loads((partial / "vocabulary.json").read_text(encoding="utf-8"))
        generation = json.loads((folder / "generation_config.json").read_text(encoding="utf-8"))
        # CTranslate2 tells a multilingual Whisper by the empty token its vocabulary holds; without it,
        # faster-whisper would decode in English with no language token.
        if generation.get("is_multilingual") and "" not in vocabulary:
            raise InputError(f"{folder}: its generation_config is multilingual but its vocabulary lacks the empty "
                             "token of Whisper's multilingual vocabulary, so faster-whisper would decode it as "
                             "English-only. Transcribe it with --engine transformers.")
        features.save_pretrained(partial)
        AutoTokenizer.from_pretrained(folder).backend_tokenizer.save(str(partial / "tokenizer.json"))
        (partial / CT2_MARKER).write_text(json.dumps({"written_by": "transcribe.py", "quantization": quantization,
                                                      "weights": weights}, indent=1), encoding="utf-8")
        old = target.rename(folder / f"{partial.name}-old") if target.exists() else None
        partial.rename(target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if old:
        shutil.rmtree(old)
    return target


def deepspeech2_decoding(net) -> dict:
    """modeling_deepspeech2.transcribe's decoder arguments: the language model when load_recognizer kept it, else
    the module's default (greedy without one; an older module's own decoder)."""
    return {"decoder": "lm", "beam_width": net.lm_beam_width} if getattr(net, "lm_decoder", None) else {}


def transcribe_deepspeech(model, waveforms: list[np.ndarray], chunk_s: float) -> list[dict]:
    """DeepSpeech2: every recording cut into pause-aligned windows, all windows decoded by the model's own
    transcribe() (which batches them), each window one timestamped segment."""
    code, net = model
    pieces = [(i, start, end) for i, w in enumerate(waveforms) for start, end in pause_windows(w, chunk_s)]
    with torch.inference_mode():
        texts = code.transcribe(net, [waveforms[i][start:end] for i, start, end in pieces],
                                **deepspeech2_decoding(net))
    results = [{"text": "", "segments": []} for _ in waveforms]
    for (i, start, end), text in zip(pieces, texts):
        text = normalize_text(text)
        if text:
            results[i]["segments"].append(segment(start / SAMPLE_RATE, end / SAMPLE_RATE, text))
    for result in results:
        result["text"] = " ".join(s["text"] for s in result["segments"])
    return results


# ----------------------------------------------------------------------------- inputs and outputs

def list_audio_files(paths: list[Path]) -> tuple[list[Path], list[dict]]:
    """Files given by name (whatever their suffix: unreadable ones are reported later) and the audio files
    found under folders, recursively; plus the paths that do not exist."""
    files, missing = [], []
    for path in paths:
        path = path.expanduser()
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            missing.append({"path": str(path), "reason": "no such file or folder"})
    return list(dict.fromkeys(p.resolve() for p in files)), missing


def read_audio_files(paths: list[Path], skipped: list[dict]) -> tuple[list[Path], list[np.ndarray]]:
    """The files that could be read and their 16 kHz mono waveforms; the others are added to `skipped`, with
    the reason, and reported at once."""
    read, waveforms = [], []
    for path in paths:
        try:
            waveform = load_audio(path)
        except Exception as error:  # soundfile raises several types for unreadable or unsupported files
            skipped.append({"path": str(path), "reason": f"cannot read it as audio ({error})"})
            tqdm.write(f"skipped {path}: cannot read it as audio ({error}). Expected a file soundfile reads "
                       "(WAV, FLAC, OGG, MP3); convert others first, e.g. ffmpeg -i in.m4a out.wav", file=sys.stderr)
            continue
        if waveform.size == 0:
            skipped.append({"path": str(path), "reason": "no audio samples"})
            tqdm.write(f"skipped {path}: the file holds no audio samples", file=sys.stderr)
            continue
        read.append(path)
        waveforms.append(waveform)
    return read, waveforms


def input_names(files: list[Path]) -> dict[Path, Path]:
    """Each file's path below the files' common folder, so outputs mirror the input folders."""
    try:
        base = Path(os.path.commonpath([str(p.parent) for p in files]))
    except ValueError:  # Windows: files on different drives share no folder; the drive letter keeps them apart
        return {p: Path("".join(ch for ch in p.drive if ch.isalnum()), *p.parts[1:]) for p in files}
    return {p: p.relative_to(base) for p in files}


def output_names(files: list[Path], fmt: str) -> dict[Path, Path]:
    """Each file's NAME.txt or NAME.srt: its input name with the format's suffix instead of the audio's, or
    after it (a.wav.txt, a.flac.txt) where two files would otherwise get one name. Names are compared
    ignoring case, as Windows and macOS folders compare them."""
    names = input_names(files)
    replace = set(files)  # the files whose audio suffix is replaced; the others keep it
    while True:
        outputs = {p: name.with_suffix(f".{fmt}") if p in replace else name.with_name(f"{name.name}.{fmt}")
                   for p, name in names.items()}
        counts = collections.Counter(str(name).casefold() for name in outputs.values())
        clashing = {p for p in replace if counts[str(outputs[p]).casefold()] > 1}
        if not clashing:
            return outputs
        replace -= clashing


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_manifest(out_dir: Path) -> dict[str, str] | None:
    """{NAME: sha256} of the files this script wrote in out_dir ({} when there are none yet); None when a
    file of that name is there but is not ours."""
    path = out_dir / MANIFEST
    if not path.exists():
        return {}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        return dict(manifest["files"]) if manifest["written_by"] == "transcribe.py" else None
    except (OSError, ValueError, KeyError, TypeError):  # a folder, not JSON, or JSON of another shape
        return None


def files_in_the_way(targets: list[Path], out_dir: Path, manifest: dict[str, str] | None) -> list[Path]:
    """The targets that exist but are not, byte for byte, a file this script wrote: the user's files."""
    if manifest is None:
        return [out_dir / MANIFEST] + files_in_the_way(targets, out_dir, {})
    return [t for t in targets if t.exists() and not (
        t.is_file() and manifest.get(t.relative_to(out_dir).as_posix()) == sha256(t.read_bytes()))]


def refusal(in_the_way: list[Path], out_dir: Path) -> str:
    """One line: which files are in the way, that nothing was written, and the two ways on."""
    shown = ", ".join(str(p.relative_to(out_dir)) for p in in_the_way[:5])
    more = f" and {len(in_the_way) - 5} more" if len(in_the_way) > 5 else ""
    folders = (out_dir.parent / f"{out_dir.name or 'transcripts'}-{n}" for n in itertools.count(2))
    free = next(folder for folder in folders if not folder.exists())
    them = "them" if len(in_the_way) > 1 else "it"
    return (f"refusing to overwrite {shown}{more} in {out_dir}: transcribe.py did not write {them} (not listed in "
            f"{MANIFEST}, or changed since), so nothing was written. Pass a new folder, e.g. --output-dir "
            f"{quoted(free)}, or add --overwrite to replace {them}.")


# Copied from train_whisper.describe_device
def describe_device() -> str:
    """The compute this process will use, for a start-up banner: the GPU and its memory, or the CPU cores; and a
    warning with the install command when nvidia-smi lists a GPU that this torch (a CPU-only build) cannot use."""
    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_properties(0)
        count = torch.cuda.device_count()
        return f"GPU {gpu.name}, {gpu.total_memory / 2**30:.1f} GB{f' (x{count})' if count > 1 else ''}"
    cpu = f"CPU, {os.cpu_count()} cores"
    smi = shutil.which("nvidia-smi")
    try:  # a hung or broken driver must not stop the script: no answer counts as no GPU
        listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10).stdout if smi else ""
        gpus = re.findall(r"^GPU \d+: (.+?)(?: \(UUID.*)?$", listed, re.M)
        header = subprocess.run([smi], capture_output=True, text=True, timeout=10).stdout if gpus else ""
    except (OSError, subprocess.SubprocessError):
        gpus, header = [], ""
    if not gpus:
        return cpu
    # The CUDA builds that download.pytorch.org/whl/<tag> has served for PyTorch 2.x releases; a driver runs a
    # build up to the CUDA version it reports, so the newest one not above it is the one to install.
    builds = [((11, 8), "cu118"), ((12, 1), "cu121"), ((12, 4), "cu124"), ((12, 6), "cu126"), ((12, 8), "cu128")]
    found = re.search(r"CUDA Version:\s*(\d+)\.(\d+)", header)
    driver = (int(found[1]), int(found[2])) if found else None
    fitting = [tag for cuda, tag in builds if driver is None or cuda <= driver]
    if not fitting:
        return (f"{cpu}. WARNING: nvidia-smi lists {gpus[0]}, but its driver (CUDA {driver[0]}.{driver[1]}) is older "
                "than any CUDA build of torch: update the NVIDIA driver, then install the CUDA build of torch. "
                "Until then everything runs on the CPU.")
    # --force-reinstall: pip takes the installed CPU build of the same version as already satisfying `torch`.
    return (f"{cpu}. WARNING: nvidia-smi lists {gpus[0]}, but this torch is a CPU-only build, so everything runs "
            f"on the CPU. Install the CUDA build with: pip install --force-reinstall torch --index-url "
            f"https://download.pytorch.org/whl/{fitting[-1]}")


# Copied from train_whisper.quoted
def quoted(path) -> str:
    """A path as the shell of this machine reads it back from a pasted command: POSIX quoting, or double
    quotes on Windows (cmd.exe knows no single quotes; Windows paths hold no double quote)."""
    text = str(path)
    if os.name != "nt":
        return shlex.quote(text)
    return text if re.fullmatch(r"[\w@%+=:,./\\-]+", text, re.ASCII) else f'"{text}"'


def srt_time(seconds: float) -> str:
    millis = int(round(seconds * 1000))
    return f"{millis // 3600000:02d}:{millis // 60000 % 60:02d}:{millis // 1000 % 60:02d},{millis % 1000:03d}"


def srt_text(segments: list[dict]) -> str:
    return "".join(f"{n}\n{srt_time(s['start'])} --> {srt_time(s['end'])}\n{s['text']}\n\n"
                   for n, s in enumerate(segments, 1))


def per_file_bytes(result: dict, fmt: str) -> bytes:
    """NAME.txt (the transcript) or NAME.srt (subtitles) for one audio file."""
    return (result["text"] + "\n" if fmt == "txt" else srt_text(result["segments"])).encode("utf-8")


def table_bytes(results: list[dict], summary: dict, fmt: str) -> bytes:
    """transcripts.csv (one row per segment) or transcripts.json (everything)."""
    if fmt == "json":
        return json.dumps({**summary, "files": results}, ensure_ascii=False, indent=2).encode("utf-8")
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["path", "start", "end", "text"])
    for result in results:
        writer.writerows([result["path"], s["start"], s["end"], s["text"]] for s in result["segments"])
    return text.getvalue().encode("utf-8-sig")  # utf-8-sig: Excel on Windows shows Vietnamese only with the BOM


def write_outputs(outputs: dict[Path, bytes], out_dir: Path, manifest: dict[str, str]) -> None:
    """List the files in the manifest first, then write them: a run stopped in between leaves no file of ours
    unlisted, so the next run never mistakes it for the user's."""
    if not outputs:
        return
    manifest.update({target.relative_to(out_dir).as_posix(): sha256(data) for target, data in outputs.items()})
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).write_text(json.dumps({"written_by": "transcribe.py", "files": manifest},
                                               ensure_ascii=False, indent=1), encoding="utf-8")
    for target, data in outputs.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


# ----------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    inputs = parser.add_argument_group("input")
    inputs.add_argument("audio", nargs="*", type=Path,
                        help="audio files and/or folders (searched recursively for .wav .flac .ogg .mp3 ...)")
    inputs.add_argument("--model", type=Path, required=True,
                        help="a run folder (OUTPUT_DIR of a trainer), its best_model/ folder or one of its "
                             "checkpoint-N/ folders (a run without best_model/: its newest complete checkpoint)")
    inputs.add_argument("--trust-remote-code", action="store_true",
                        help="DeepSpeech2: run the modeling_deepspeech2.py saved in the model folder instead of the "
                             "repository's; that file is code whoever shared the folder could have written, so "
                             "only for folders whose maker you trust")
    output = parser.add_argument_group("output")
    output.add_argument("--format", choices=["txt", "csv", "srt", "json"], default="txt",
                        help="txt/srt: one file per audio file; csv/json: one table for all (default txt)")
    output.add_argument("--output-dir", type=Path, default=Path("transcripts"),
                        help="folder for the transcripts (created; default transcripts/)")
    output.add_argument("--overwrite", action="store_true",
                        help="replace files in --output-dir that this script did not write (by default it "
                             f"replaces only the files listed in its {MANIFEST}, and stops before any other)")
    decoding = parser.add_argument_group("decoding")
    decoding.add_argument("--device", default="auto",
                          help="auto (CUDA GPU when there is one, else CPU), cpu, cuda, cuda:1, ...")
    decoding.add_argument("--engine", choices=["auto", "transformers", "faster-whisper"], default="auto",
                          help="Whisper: faster-whisper (CTranslate2) decodes with an export written by --export-ct2, "
                               "transformers with the pipeline; auto (default): faster-whisper when the model has an "
                               "up-to-date export and faster-whisper is installed, else transformers")
    decoding.add_argument("--batch-size", type=int, default=8,
                          help="files read per step, and clips or chunks of a long recording decoded "
                               "together; lower it if the GPU runs out of memory (default 8)")
    decoding.add_argument("--decoder", choices=["auto", "lm", "greedy"], default="auto",
                          help="Wav2Vec2 and DeepSpeech2: lm = beam search with the n-gram language model saved "
                               "in the model folder, greedy = best path; auto (default): lm when the folder has one "
                               "and pyctcdecode and kenlm are installed")
    decoding.add_argument("--beam-width", type=int, default=None,
                          help="beams the language-model decoder keeps (default: as many as the run used on its "
                               "test split, --lm-beam-width, usually 64)")
    decoding.add_argument("--chunk-length", type=float, default=None,
                          help="seconds per chunk of a long recording (default 30 Whisper, 20 Wav2Vec2, "
                               "15 DeepSpeech2; Whisper at most 30)")
    export = parser.add_argument_group("faster-whisper export (Whisper)")
    export.add_argument("--export-ct2", action="store_true",
                        help="convert the Whisper model to CTranslate2 into its folder as ct2-<type>/ for "
                             "faster-whisper (replacing only an export of ours), then transcribe the audio, if given, "
                             "with it; speed figures: bench/RESULTS.md")
    export.add_argument("--ct2-quantization", choices=CT2_QUANTIZATIONS, default="int8",
                        help="weight type of the export: int8 for a CPU (default), float16 or int8_float16 for a GPU")
    args = parser.parse_args(argv)
    if not args.audio and not args.export_ct2:
        parser.error("give the audio files or folders to transcribe (or --export-ct2 to export the model only)")
    if args.batch_size < 1 or args.beam_width is not None and args.beam_width < 1:
        parser.error("--batch-size and --beam-width must be at least 1")
    if args.chunk_length is not None and args.chunk_length <= PAUSE_SEARCH_SECONDS:
        parser.error(f"--chunk-length must be more than {PAUSE_SEARCH_SECONDS:g} seconds")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    folder, family = find_model_dir(args.model)
    note = checkpoint_note(folder)
    if note:
        print(note)
    if args.export_ct2:
        started = time.perf_counter()
        export = export_ct2(folder, family, args.ct2_quantization)
        print(f"wrote {export} in {time.perf_counter() - started:.1f} s: transcribe.py and demo.py now decode this "
              "model with faster-whisper when it is installed (--engine transformers for the pipeline)")
        if not args.audio:
            return {"model": str(folder), "family": family, "export": str(export)}
    chunk_s = args.chunk_length or CHUNK_SECONDS[family]
    if family == "whisper" and chunk_s > CHUNK_SECONDS["whisper"]:
        raise InputError(f"--chunk-length {chunk_s:g}: Whisper sees at most 30 s at once; pass 30 or less")
    files, skipped = list_audio_files(args.audio)
    for item in skipped:
        print(f"skipped {item['path']}: {item['reason']}", file=sys.stderr)
    if not files:
        raise InputError(f"no audio found in {' '.join(str(p) for p in args.audio)}; expected audio files or "
                         f"folders holding {', '.join(sorted(AUDIO_SUFFIXES))} files")

    out_dir = args.output_dir.expanduser()
    names = input_names(files)
    targets = output_names(files, args.format) if args.format in ("txt", "srt") else {}
    planned = [out_dir / name for name in targets.values()] or [out_dir / f"transcripts.{args.format}"]
    manifest = read_manifest(out_dir)
    in_the_way = [] if args.overwrite else files_in_the_way(planned, out_dir, manifest)
    if in_the_way:
        raise InputError(refusal(in_the_way, out_dir))
    manifest = manifest or {}

    device = args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
    print(f"device:     {describe_device()}\ntorch:      {torch.__version__} ({build}), running on {device}\n"
          f"audio:      {len(files)} file{'s' if len(files) != 1 else ''}")
    export = choose_engine(args.engine, folder, family, device, args.model)
    started = time.perf_counter()
    decoder = choose_decoder(folder, family, args.decoder)
    model = (load_faster_whisper(export, folder, device) if export
             else load_recognizer(folder, family, device, args.trust_remote_code, decoder))
    print(f"{family} model from {export or folder} on {device}{' with faster-whisper' if export else ''}, "
          f"{DECODER_NAMES[decoder]} "
          f"(loaded in {time.perf_counter() - started:.1f} s)")
    if args.beam_width and not export:
        (model[1] if family == "deepspeech2" else model).lm_beam_width = args.beam_width

    results, written, audio_seconds, decode_seconds = [], 0, 0.0, 0.0
    progress = tqdm(total=len(files), unit="file", desc="transcribing")
    for first in range(0, len(files), args.batch_size):
        batch, waveforms = read_audio_files(files[first: first + args.batch_size], skipped)
        started = time.perf_counter()
        decoded = (transcribe_faster_whisper(model, waveforms, chunk_s) if export
                   else transcribe_deepspeech(model, waveforms, chunk_s) if family == "deepspeech2"
                   else transcribe_hf(model, family, waveforms, chunk_s, args.batch_size))
        decode_seconds += time.perf_counter() - started
        outputs = {}
        for path, waveform, result in zip(batch, waveforms, decoded):
            duration = len(waveform) / SAMPLE_RATE
            audio_seconds += duration
            result = {"path": str(path), "duration": round(duration, 3), **result}
            results.append(result)
            tqdm.write(f"{names[path]}: {result['text']}")
            if targets:
                outputs[out_dir / targets[path]] = per_file_bytes(result, args.format)
        write_outputs(outputs, out_dir, manifest)
        written += len(outputs)
        progress.update(len(files[first: first + args.batch_size]))
    progress.close()

    rtf = round(decode_seconds / audio_seconds, 4) if audio_seconds else None
    engine = "faster-whisper" if export else "torch" if family == "deepspeech2" else "transformers"
    summary = {"model": str(folder), "family": family, "engine": engine, "decoder": decoder, "device": device,
               "audio_seconds": round(audio_seconds, 3), "decode_seconds": round(decode_seconds, 3), "rtf": rtf,
               "skipped": skipped}
    if args.format in ("csv", "json") and results:
        write_outputs({planned[0]: table_bytes(results, summary, args.format)}, out_dir, manifest)
        print(f"wrote {planned[0]}")
    elif written:
        print(f"wrote {written} .{args.format} file{'s' * (written != 1)} in {out_dir} (listed in {MANIFEST})")
    if results:
        print(f"transcribed {len(results)} file{'s' * (len(results) != 1)}, {audio_seconds:.1f} s of audio in "
              f"{decode_seconds:.1f} s: real-time factor {rtf:.3f} (below 1 is faster than real time)")
    if skipped:
        print(f"skipped {len(skipped)} input(s): " + "; ".join(f"{s['path']} ({s['reason']})" for s in skipped),
              file=sys.stderr)
    if not results:
        raise InputError("nothing was transcribed: none of the inputs could be read as audio (see above)")
    return {**summary, "files": results}


if __name__ == "__main__":
    main()
