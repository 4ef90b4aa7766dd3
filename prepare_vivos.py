"""Prepare VIVOS (or any corpus listed in a CSV) for the three trainers, as an Arrow DatasetDict on disk.

Shortest command (raw VIVOS as downloaded and unpacked, with train/ and test/ inside):

    python prepare_vivos.py --vivos-dir vivos --out data/vivos_whisper                      # Whisper
    python prepare_vivos.py --vivos-dir vivos --out data/vivos_wave --features waveform    # Wav2Vec2, DS2

What it writes in --out (first into a temporary folder, renamed only when complete):
  train/, validation/, test/, dataset_dict.json   datasets.load_from_disk(OUT) gives the DatasetDict
  prepare_summary.json                            splits (utterances, hours, speakers, shares), settings
  skipped.csv                                     every input left out, with its reason
--out must be a new or empty folder outside the corpus; --overwrite replaces only a dataset this script
wrote, and only once the new one is complete.

Validation is carved out of train by speaker (no speaker in two splits); VIVOS's test/ is always the
test split (a run fails rather than borrow train speakers), never used for model selection. Audio is
read with soundfile (no torchcodec, no FFmpeg), mixed to mono and resampled to 16 kHz with soxr.
Whisper features are stored trimmed to the speech and in float16 (about 2-8 % of the naive
80 x 3000 float32 array); the trainer restores the 30 s input exactly (see README, "How the Whisper
features are stored").
"""
from __future__ import annotations

import argparse
import codecs
import csv
import io
import json
import multiprocessing
import os
import random
import re
import shlex
import shutil
import signal
import sys
import time
import unicodedata
from collections import Counter
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from tqdm.auto import tqdm

SAMPLE_RATE = 16000  # every model we train expects 16 kHz mono
WHISPER_MAX_SECONDS = 30.0  # Whisper's encoder sees at most 30 s
WHISPER_FRAMES = 3000  # 30 s at Whisper's 10 ms hop
SILENCE_PEAK = 1e-4  # a clip whose loudest sample is below this carries no speech
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg"}
SPLITS = ("train", "validation", "test")
NORMALIZATION = ("Unicode NFC, lower case, punctuation and symbols replaced by spaces, whitespace collapsed; "
                 "Vietnamese letters and tone marks kept")


# Copied from train_whisper.normalize_text
def normalize_text(text: str) -> str:
    """NFC, lower case, punctuation and symbols to spaces, whitespace collapsed; tone marks kept."""
    text = unicodedata.normalize("NFC", text).lower()
    text = "".join(ch if unicodedata.category(ch)[0] in "LMN" else " " for ch in text)
    return " ".join(text.split())


# Copied from train_whisper.InputError
class InputError(SystemExit):
    """Bad input: the message says what was expected, what was found and what to type next."""


# ----------------------------------------------------------------------------- 1. find the utterances

def describe_folder(folder: Path, limit: int = 12) -> str:
    """A short listing of what a folder holds, for error messages."""
    if not folder.is_dir():
        return "(no such folder)"
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    return ", ".join(names[:limit]) + (f", ... ({len(names)} entries)" if len(names) > limit else "") or "(empty)"


def check_vivos_layout(vivos_dir: Path) -> None:
    """Refuse a folder that is not the VIVOS release root, naming the folder the user probably meant."""
    expected = (f"expected the VIVOS root: {vivos_dir}/train/prompts.txt, {vivos_dir}/train/waves/, "
                f"{vivos_dir}/test/prompts.txt, {vivos_dir}/test/waves/")
    if not vivos_dir.is_dir():
        raise InputError(f"--vivos-dir {vivos_dir}: no such folder; {expected}")
    if all((vivos_dir / split / "prompts.txt").is_file() and (vivos_dir / split / "waves").is_dir()
           for split in ("train", "test")):
        return
    found = describe_folder(vivos_dir)
    if (vivos_dir / "prompts.txt").is_file() or (vivos_dir / "waves").is_dir():
        hint = (f"this looks like one split of VIVOS (it holds prompts.txt / waves/); "
                f"pass its parent: --vivos-dir {quoted(vivos_dir.parent)}")
    else:
        inner = [p for p in sorted(vivos_dir.iterdir()) if (p / "train" / "prompts.txt").is_file()]
        if inner:
            hint = f"the corpus is one level down: --vivos-dir {quoted(inner[0])}"
        else:
            hint = ("download and unpack VIVOS (https://ailab.hcmus.edu.vn/vivos), or use --manifest FILE.csv "
                    "for another corpus")
    raise InputError(f"--vivos-dir {vivos_dir}: {expected}; found: {found}. {hint}")


def read_text(path: Path) -> str:
    """A text file's content: UTF-8 with or without BOM, or UTF-16 with BOM (what Windows editors save).

    Anything else is refused with the file named: guessing a legacy code page (cp1258, ...) would turn
    Vietnamese letters into other letters without any error, and train on wrong transcripts.
    """
    data = path.read_bytes()
    fix = (f"open {path} in a text editor and save it as UTF-8 (Notepad: File > Save as, Encoding: UTF-8), "
           "then run the same command again")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as error:
            raise InputError(f"{path} starts as UTF-16 but is damaged ({error.reason}); {fix}") from None
    if b"\x00" in data:
        raise InputError(f"{path} holds NUL bytes: UTF-16 without a byte-order mark, expected UTF-8; {fix}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise InputError(f"{path} is not UTF-8 text: line {line} holds byte 0x{data[error.start]:02x}, which "
                         f"UTF-8 does not allow (probably saved as Windows-1258 / ANSI); {fix}") from None


def read_lines(path: Path) -> list[tuple[int, str, str]]:
    """(line number, first word, rest) for each non-blank line of a text file."""
    lines = []
    for number, line in enumerate(read_text(path).split("\n"), start=1):  # line numbers as editors count
        key, _, rest = line.strip().lstrip("\ufeff").partition(" ")  # files joined with `cat` keep their BOMs
        if key:
            lines.append((number, key, rest.strip()))
    return lines


def read_genders(path: Path) -> dict[str, str]:
    """speaker -> 'm' | 'f' from VIVOS genders.txt (missing file: no genders)."""
    if not path.is_file():
        return {}
    return {speaker: gender.lower() for _, speaker, gender in read_lines(path) if gender.lower() in ("m", "f")}


def skip_row(path, split: str, utt_id: str, reason: str, detail: str = "") -> dict:
    return {"path": str(path), "split": split, "id": utt_id, "reason": reason, "detail": detail}


def unique_prompts(path: Path, split: str) -> tuple[dict[str, str], list[dict]]:
    """id -> transcript from prompts.txt, and the lines left out because their id repeats.

    A repeated line with the same text is used once. An id given two different texts is left out
    entirely: nothing says which text was read aloud, and a wrong transcript is worse than none.
    """
    lines: dict[str, list[tuple[int, str]]] = {}
    for number, utt_id, text in read_lines(path):
        lines.setdefault(utt_id, []).append((number, text))
    prompts, skipped = {}, []
    for utt_id, found in lines.items():
        numbers = ", ".join(str(number) for number, _ in found)
        if len({text for _, text in found}) > 1:
            skipped.append(skip_row(path, split, utt_id, "conflicting transcripts",
                                    f"lines {numbers} give this id different texts; keep the right one"))
            continue
        prompts[utt_id] = found[0][1]
        skipped += [skip_row(path, split, utt_id, "repeated prompt line", f"line {number} repeats line "
                             f"{found[0][0]}; used once") for number, _ in found[1:]]
    return prompts, skipped


def unique_audio(waves: Path, split: str) -> tuple[dict[str, Path], list[dict]]:
    """id -> audio file under waves/SPEAKER/, and the copies left out because their file name repeats.

    The speaker comes from the folder, so a name found in two folders needs a choice: VIVOS ids begin
    with their speaker's folder name (VIVOSSPK01_R001 in VIVOSSPK01/), and the one copy in that folder
    is used. With no such copy, or several, the speaker is unknown and every copy is left out.
    """
    copies: dict[str, list[Path]] = {}
    for path in sorted(waves.glob("*/*")):
        if path.suffix.lower() in AUDIO_SUFFIXES:
            copies.setdefault(path.stem, []).append(path)
    audio, skipped = {}, []
    for utt_id, paths in copies.items():
        if len(paths) == 1:
            audio[utt_id] = paths[0]
            continue
        own = [path for path in paths if utt_id.startswith(path.parent.name + "_")]
        copies_found = ", ".join(f"{path.parent.name}/{path.name}" for path in paths)
        if len(own) == 1:
            audio[utt_id] = own[0]
            detail = f"found {copies_found}; the copy in {own[0].parent.name}/, named by the id, is used"
        else:
            detail = f"found {copies_found}: the speaker is ambiguous, all copies left out; keep one"
        skipped += [skip_row(path, split, utt_id, "repeated audio file name", detail)
                    for path in paths if path != audio.get(utt_id)]
    return audio, skipped


def find_vivos_utterances(split_dir: Path, split: str) -> tuple[list[dict], list[dict]]:
    """Utterances of one VIVOS split (prompt + wave file), and the inputs that cannot be paired."""
    genders = read_genders(split_dir / "genders.txt")
    prompts, prompt_skips = unique_prompts(split_dir / "prompts.txt", split)
    audio, audio_skips = unique_audio(split_dir / "waves", split)
    conflicting = {row["id"] for row in prompt_skips} - set(prompts)  # already listed with their reason
    ambiguous = {row["id"] for row in audio_skips} - set(audio)
    items, skipped = [], prompt_skips + audio_skips
    for utt_id, sentence in prompts.items():
        if utt_id not in audio:
            if utt_id not in ambiguous:
                skipped.append(skip_row(split_dir / "waves", split, utt_id, "transcript without audio"))
            continue
        speaker = audio[utt_id].parent.name
        items.append({"id": utt_id, "speaker": speaker, "gender": genders.get(speaker, ""),
                      "raw_sentence": sentence, "path": str(audio[utt_id]), "split": split})
    skipped += [skip_row(path, split, utt_id, "audio without transcript")
                for utt_id, path in audio.items() if utt_id not in prompts and utt_id not in conflicting]
    return items, skipped


def find_manifest_utterances(manifest: Path) -> tuple[list[dict], list[dict]]:
    """Utterances from a CSV with columns path,text[,speaker][,split]; paths relative to the CSV."""
    if not manifest.is_file():
        raise InputError(f"--manifest {manifest}: no such file; expected a CSV with columns path,text[,speaker][,split]")
    rows = list(csv.DictReader(io.StringIO(read_text(manifest), newline="")))
    columns = set(rows[0]) if rows else set()
    if not {"path", "text"} <= columns:
        raise InputError(f"--manifest {manifest}: expected columns path,text[,speaker][,split]; "
                         f"found: {', '.join(sorted(columns)) or '(no rows)'}")
    split_names = {"train": "train", "validation": "validation", "dev": "validation", "valid": "validation",
                   "test": "test"}
    numbered, skipped = [], []
    for number, row in enumerate(rows, start=2):
        path = Path(row["path"])
        path = path if path.is_absolute() else manifest.parent / path
        split = split_names.get((row.get("split") or "train").strip().lower())
        if split is None:
            skipped.append(skip_row(path, row.get("split", ""), f"row {number}", "unknown split",
                                    "use train, validation or test"))
            continue
        numbered.append((number, {"id": path.stem, "speaker": (row.get("speaker") or "").strip() or "unknown",
                                  "gender": "", "raw_sentence": (row.get("text") or "").strip(), "path": str(path),
                                  "split": split}))
    items, repeats = unique_files(numbered)
    return items, skipped + repeats


def unique_files(numbered: list[tuple[int, dict]]) -> tuple[list[dict], list[dict]]:
    """Manifest items (with their row numbers) once per audio file, and the rows left out as repeats.

    As in prompts.txt: a repeated row is used once; rows that give one file different text, speaker or
    split leave the file out, since nothing says which one is right.
    """
    by_file: dict[str, list[tuple[int, dict]]] = {}
    for number, item in numbered:
        by_file.setdefault(os.path.normcase(os.path.abspath(item["path"])), []).append((number, item))
    items, skipped = [], []
    for found in by_file.values():
        (first_number, first), numbers = found[0], ", ".join(str(number) for number, _ in found)
        if len({(item["raw_sentence"], item["speaker"], item["split"]) for _, item in found}) > 1:
            skipped.append(skip_row(first["path"], first["split"], first["id"], "conflicting transcripts",
                                    f"rows {numbers} give this file different text, speaker or split"))
            continue
        items.append(first)
        skipped += [skip_row(first["path"], first["split"], first["id"], "repeated manifest row",
                             f"row {number} repeats row {first_number}; used once") for number, _ in found[1:]]
    return items, skipped


# ----------------------------------------------------------------------------- 2. split

def speaker_disjoint_split(items: list[dict], ratio: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Move whole speakers out of `items` until they hold about `ratio` of the utterances.

    Speakers are drawn alternately from each gender, and every gender with two or more speakers gets
    at least one held-out speaker, so a small validation set still has both (even if that exceeds
    `ratio`); at least one speaker stays on each side.
    """
    by_speaker: dict[str, list[dict]] = {}
    for item in items:
        by_speaker.setdefault(item["speaker"], []).append(item)
    if len(by_speaker) < 2:
        raise InputError(f"a speaker-disjoint split needs at least 2 speakers, found {len(by_speaker)}; "
                         "add a speaker column to the manifest or pass --val-split utterance")
    rng = random.Random(seed)
    pools: dict[str, list[str]] = {}
    for speaker in sorted(by_speaker):
        pools.setdefault(by_speaker[speaker][0]["gender"], []).append(speaker)
    for pool in pools.values():
        rng.shuffle(pool)
    genders = sorted(pools)
    rng.shuffle(genders)
    target, held, chosen = ratio * len(items), 0, set()
    must_cover = [g for g in genders if g and len(pools[g]) >= 2]
    while (held < target or must_cover) and len(chosen) < len(by_speaker) - 1:
        for gender in genders:
            wanted = held < target or gender in must_cover
            if pools[gender] and wanted and len(chosen) < len(by_speaker) - 1:
                speaker = pools[gender].pop()
                chosen.add(speaker)
                held += len(by_speaker[speaker])
                must_cover = [g for g in must_cover if g != gender]
    return ([i for i in items if i["speaker"] not in chosen], [i for i in items if i["speaker"] in chosen])


def utterance_split(items: list[dict], ratio: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Random utterances held out, for corpora without speaker labels."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    held = set(order[: max(1, round(ratio * len(items)))])
    return ([x for k, x in enumerate(items) if k not in held], [x for k, x in enumerate(items) if k in held])


def assign_splits(items: list[dict], val_ratio: float, test_ratio: float, by: str, seed: int) -> dict:
    """train / validation / test lists; validation (and test, when the corpus has none) carved from train."""
    carve = speaker_disjoint_split if by == "speaker" else utterance_split
    splits = {name: [i for i in items if i["split"] == name] for name in SPLITS}
    if not splits["test"]:
        splits["train"], splits["test"] = carve(splits["train"], test_ratio, seed + 1)
    if not splits["validation"]:
        splits["train"], splits["validation"] = carve(splits["train"], val_ratio, seed)
    for name, split_items in splits.items():
        for item in split_items:
            item["split"] = name
    return splits


# ----------------------------------------------------------------------------- 3. audio and features

@lru_cache(maxsize=None)
def whisper_feature_extractor(n_mels: int):
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(feature_size=n_mels)


def load_audio(path: Path) -> np.ndarray:
    """16 kHz mono float32, whatever the file's rate and channels (soundfile + soxr, no FFmpeg)."""
    audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if rate != SAMPLE_RATE:
        audio = soxr.resample(audio, rate, SAMPLE_RATE).astype(np.float32)
    return audio


def wav_truncation(path: str) -> str:
    """How much audio a WAV's header promises beyond the end of the file ('' when complete or not a WAV).

    libsndfile quietly reads a cut-off WAV as a shorter clip, which would keep the full transcript
    for part of the speech; only the data chunk's declared size shows what is missing.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        header = f.read(12)
        if header[:4] != b"RIFF" or header[8:] != b"WAVE":
            return ""
        while len(chunk := f.read(8)) == 8:
            length = int.from_bytes(chunk[4:], "little")
            if chunk[:4] == b"data":
                # 0 and sizes from 2 GiB up are what streaming writers (espeak-ng --stdout, pipes) leave
                # when they cannot go back to fill in the length: unknown, not truncated.
                if length == 0 or length >= 0x7FFF0000 or f.tell() + length <= size:
                    return ""
                return f"the header promises {length} bytes of audio, the file holds {size - f.tell()}"
            f.seek(length + length % 2, os.SEEK_CUR)
    return ""


def trimmed_whisper_features(audio: np.ndarray, n_mels: int) -> np.ndarray:
    """Whisper's log-Mel for the speech frames only, frames x mels, float16.

    480 zeros (3 hops) are appended so the last kept frames see the same zero padding that Whisper's
    30 s padding gives them; every frame after those equals max(features) - 2, which the trainer
    restores (README, "How the Whisper features are stored").
    """
    padded = np.concatenate([audio, np.zeros(480, dtype=np.float32)])
    features = whisper_feature_extractor(n_mels)(padded, sampling_rate=SAMPLE_RATE, padding="longest",
                                                 return_tensors="np")["input_features"][0]
    return features[:, :WHISPER_FRAMES].T.astype(np.float16)


def process_utterance(item: dict, features: str, n_mels: int, min_seconds: float,
                      max_seconds: float | None) -> tuple[dict | None, dict | None]:
    """(row for the dataset, None) or (None, skipped row with the reason). Runs in worker processes."""
    sentence = normalize_text(item["raw_sentence"])
    if not sentence:
        return None, skip_row(item["path"], item["split"], item["id"], "empty transcript")
    if not Path(item["path"]).is_file():
        return None, skip_row(item["path"], item["split"], item["id"], "audio missing")
    try:
        truncation = wav_truncation(item["path"])
        audio = load_audio(item["path"])
    except Exception as error:  # soundfile raises several types for broken files; all mean "unreadable"
        return None, skip_row(item["path"], item["split"], item["id"], "unreadable audio",
                              f"{type(error).__name__}: {error}")
    if truncation:
        return None, skip_row(item["path"], item["split"], item["id"], "truncated audio", truncation)
    duration = len(audio) / SAMPLE_RATE
    reason = ("empty audio" if len(audio) == 0
              else "too short" if duration < min_seconds
              else "too long" if max_seconds and duration > max_seconds
              else "silent audio" if float(np.abs(audio).max()) < SILENCE_PEAK
              else None)
    if reason:
        return None, skip_row(item["path"], item["split"], item["id"], reason, f"{duration:.2f} s")
    row = {"id": item["id"], "speaker": item["speaker"], "gender": item["gender"], "sentence": sentence,
           "raw_sentence": item["raw_sentence"], "duration": duration}
    if features == "whisper":
        row["input_features"] = trimmed_whisper_features(audio, n_mels)
    else:
        row["input_values"] = audio
    return row, None


def process_star(args: tuple):
    return process_utterance(*args)


def dataset_features(features: str, n_mels: int):
    import datasets

    columns = {"id": datasets.Value("string"), "speaker": datasets.Value("string"),
               "gender": datasets.Value("string"), "sentence": datasets.Value("string"),
               "raw_sentence": datasets.Value("string"), "duration": datasets.Value("float32")}
    if features == "whisper":
        columns["input_features"] = datasets.Array2D(shape=(None, n_mels), dtype="float16")
    else:
        columns["input_values"] = datasets.Sequence(datasets.Value("float32"))
    return datasets.Features(columns)


def write_split(items: list[dict], arrow_path: Path, split: str, args, pool) -> tuple[list[float], list[dict],
                                                                                         set[str]]:
    """Stream one split to an Arrow file in batches (memory stays flat); returns durations, skips, speakers."""
    from datasets.arrow_writer import ArrowWriter

    jobs = [(item, args.features, args.n_mels, args.min_seconds, args.max_seconds) for item in items]
    results = pool.imap(process_star, jobs, chunksize=4) if pool else map(process_star, jobs)
    durations, skipped, speakers = [], [], set()
    # The bar as a context: on Ctrl-C it ends its line before the one-line message.
    with ArrowWriter(features=dataset_features(args.features, args.n_mels), path=str(arrow_path),
                     writer_batch_size=64) as writer, \
            tqdm(results, total=len(jobs), desc=f"{split:<10}", unit="utt") as progress:
        for row, skip in progress:
            if skip:
                skipped.append(skip)
                continue
            writer.write(row)
            durations.append(row["duration"])
            speakers.add(row["speaker"])
        writer.finalize()
    return durations, skipped, speakers


# ----------------------------------------------------------------------------- 4. summary

def duration_histogram(durations: list[float], bin_seconds: float = 0.5) -> dict:
    top = max([bin_seconds, *durations])
    edges = np.arange(0.0, top + bin_seconds, bin_seconds)
    counts, _ = np.histogram(durations, bins=edges)
    return {"edges": [round(float(e), 3) for e in edges], "counts": counts.tolist()}


def build_summary(stats: dict, skipped: list[dict], items: dict, args, source: str) -> dict:
    total_utts = sum(len(s["durations"]) for s in stats.values()) or 1
    total_hours = sum(sum(s["durations"]) for s in stats.values()) / 3600 or 1.0
    splits = {}
    for name, s in stats.items():
        hours = sum(s["durations"]) / 3600
        genders = Counter(i["gender"] or "unknown" for i in items[name] if i["speaker"] in s["speakers"])
        splits[name] = {
            "utterances": len(s["durations"]), "hours": round(hours, 4), "speakers": len(s["speakers"]),
            "speaker_ids": sorted(s["speakers"]),
            "genders": {g: len({i["speaker"] for i in items[name] if (i["gender"] or "unknown") == g
                                and i["speaker"] in s["speakers"]}) for g in genders},
            "share_utterances": round(len(s["durations"]) / total_utts, 4),
            "share_hours": round(hours / total_hours, 4),
            "duration_seconds": {"min": round(min(s["durations"], default=0), 3),
                                 "mean": round(float(np.mean(s["durations"])) if s["durations"] else 0, 3),
                                 "max": round(max(s["durations"], default=0), 3),
                                 "histogram": duration_histogram(s["durations"])},
        }
    summary = {
        "features": args.features, "sampling_rate": SAMPLE_RATE, "normalization": NORMALIZATION,
        "val_split": args.val_split, "val_ratio": args.val_ratio, "seed": args.seed, "source": source,
        "splits": splits, "skipped": dict(Counter(s["reason"] for s in skipped)),
        "skipped_total": len(skipped), "min_seconds": args.min_seconds, "max_seconds": args.max_seconds,
        "command": " ".join(["python", "prepare_vivos.py", *map(quoted, args.argv)]),  # pasteable, also from a notebook
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if args.features == "whisper":
        summary.update({"n_mels": args.n_mels, "feature_storage": "trimmed frames x mels, float16; "
                        "restore: pad to 3000 frames with max(features) - 2.0"})
    return summary


def format_summary(summary: dict) -> str:
    """The printed table: utterances, hours, speakers and shares per split, then skipped inputs."""
    lines = [f"{'split':<11}{'utts':>7}{'hours':>8}{'speakers':>10}{'% utts':>8}{'% hours':>9}"]
    for name, s in summary["splits"].items():
        lines.append(f"{name:<11}{s['utterances']:>7}{s['hours']:>8.2f}{s['speakers']:>10}"
                     f"{100 * s['share_utterances']:>7.1f}%{100 * s['share_hours']:>8.1f}%")
    feats = summary["features"] + (f" ({summary['n_mels']} mels)" if summary["features"] == "whisper" else "")
    lines.append(f"features: {feats}, {summary['sampling_rate']} Hz; validation split by {summary['val_split']}")
    lines.append(f"text: {summary['normalization']}")
    skipped = ", ".join(f"{reason}: {n}" for reason, n in sorted(summary["skipped"].items())) or "none"
    lines.append(f"skipped {summary['skipped_total']} ({skipped})")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- 5. where the dataset goes

OUR_NAMES = {"train", "validation", "test", "dataset_dict.json", "prepare_summary.json", "skipped.csv"}
FILE_BROWSER_NAMES = {".DS_Store", "Thumbs.db", "desktop.ini"}  # added by Finder / Explorer, not by a user
INCOMPLETE_MARK = "prepare_vivos.incomplete"  # inside the temporary folder: ours to delete after a crash


# Copied from train_whisper.quoted
def quoted(path) -> str:
    """A path as the shell of this machine reads it back from a pasted command: POSIX quoting, or double
    quotes on Windows (cmd.exe knows no single quotes; Windows paths hold no double quote)."""
    text = str(path)
    if os.name != "nt":
        return shlex.quote(text)
    return text if re.fullmatch(r"[\w@%+=:,./\\-]+", text, re.ASCII) else f'"{text}"'


def path_key(path: Path) -> tuple[str, ...]:
    """A resolved path's parts as the file system compares them (case-insensitive on Windows and macOS)."""
    return tuple(part.casefold() for part in path.parts) if sys.platform in ("win32", "darwin") else path.parts


def is_within(path: Path, folder: Path) -> bool:
    """`path` is `folder` or lies inside it (both resolved)."""
    inner, outer = path_key(path), path_key(folder)
    return inner[: len(outer)] == outer


def temporary_folder(out: Path) -> Path:
    return out.parent / f".{out.name}.incomplete"


def folder_names(folder: Path) -> set[str]:
    """What a folder holds, less what a file browser adds on its own."""
    return {path.name for path in folder.iterdir()} - FILE_BROWSER_NAMES


def foreign_names(folder: Path) -> str:
    """The first few names in a folder that a dataset written by this script does not hold."""
    return ", ".join(sorted(folder_names(folder) - OUR_NAMES)[:8])


def is_replaceable(out: Path) -> bool:
    """An empty folder, or a dataset this script wrote with nothing added: the only folders ever replaced."""
    names = folder_names(out)
    return not names or {"prepare_summary.json", "dataset_dict.json"} <= names <= OUR_NAMES


def out_problem(out: Path, corpus_folders: set[Path], sealed: bool, overwrite: bool) -> str:
    """Why the dataset may not go to `out` ('' when it may).

    `out` may not be or hold a folder of the corpus (--overwrite would delete it), nor, when `sealed`
    (a VIVOS release, where everything belongs to the corpus), lie inside one, where the dataset would
    mix with the corpus's files. A manifest's folder is often a project folder, so a new dataset folder
    inside it is fine. An existing folder is replaced only when this script wrote it.
    """
    for folder in sorted(corpus_folders):
        if is_within(folder, out):
            return ("is the corpus folder" if path_key(folder) == path_key(out)
                    else f"holds the corpus folder {folder}")
        if sealed and is_within(out, folder):
            return f"lies inside the corpus folder {folder}, where the dataset would mix with the corpus's files"
    nearest = next((folder for folder in out.parents if folder.exists()), out)  # out itself: a drive root
    if not nearest.is_dir() or not os.access(nearest, os.W_OK):
        return f"cannot be created: {nearest} is {'a file' if not nearest.is_dir() else 'not writable for you'}"
    tmp = temporary_folder(out)
    if tmp.exists() and not (tmp / INCOMPLETE_MARK).is_file():
        return f"needs the temporary folder {tmp}, which exists and was not made by this script"
    if not out.exists():
        return ""
    if not out.is_dir():
        return "is a file, not a folder"
    if not is_replaceable(out):
        found = foreign_names(out) or describe_folder(out)
        return (f"already holds files that this script did not write ({found}); such a folder is never "
                "replaced, not even with --overwrite")
    if folder_names(out) and not overwrite:
        return ("already holds a dataset prepared by this script and was kept; pass --overwrite to replace it "
                "(the new dataset replaces it only once complete)")
    return ""


def dataset_name(name: str, features: str) -> str:
    """The folder name we propose for a dataset made from `name`: vivos -> vivos_whisper or vivos_wave."""
    return f"{name}_{'whisper' if features == 'whisper' else 'wave'}"


def proposed_out(places: list[Path], corpus_folders: set[Path], sealed: bool) -> Path | None:
    """The first of `places` (or of their numbered variants: vivos_whisper2, ...) that is new and that
    out_problem accepts."""
    for place in places:
        for number in range(1, 10):
            candidate = place.with_name(f"{place.name}{number}") if number > 1 else place
            if not candidate.exists() and not out_problem(candidate, corpus_folders, sealed, False):
                return candidate
    return None


def command_with_out(argv: list[str], out: Path) -> str:
    """The user's command with --out replaced and --overwrite dropped, safe to paste."""
    words, skip_value = [], False
    for word in argv:
        name, equals, _ = word.partition("=")
        if skip_value:
            skip_value = False
        elif len(name) > 3 and "--out".startswith(name):  # argparse also accepts a prefix such as --ou
            words += ["--out", str(out)]
            skip_value = not equals
        elif not (len(name) > 3 and "--overwrite".startswith(name)):
            words.append(word)
    return " ".join(["python", "prepare_vivos.py", *map(quoted, words)])


def check_out(out: Path, corpus_folders: set[Path], sealed: bool, places: list[Path], args) -> None:
    """Refuse an --out that would lose or mix data, with the command that writes to the first safe place."""
    problem = out_problem(out, corpus_folders, sealed, args.overwrite)
    if not problem:
        return
    safe = proposed_out(places, corpus_folders, sealed)
    next_step = (f"to write the dataset to a new folder next to the corpus: {command_with_out(args.argv, safe)}"
                 if safe else "choose a new folder outside the corpus, in a place you can write to")
    raise InputError(f"--out {out} {problem}. Nothing was changed; {next_step}")


def publish(dataset: Path, out: Path, tmp: Path) -> None:
    """Move the complete dataset to `out`. An old one there goes into `tmp` (deleted with it) only now,
    and is put back if the dataset cannot take its place."""
    if not out.exists():
        dataset.rename(out)
        return
    if not is_replaceable(out):
        raise InputError(f"--out {out} received files that this script did not write while it ran "
                         f"({foreign_names(out)}); it was kept, and no dataset was written")
    previous = tmp / "previous"
    try:
        out.rename(previous)
    except OSError as error:
        raise InputError(f"could not replace --out {out} ({error}); close any program using a file in it "
                         "and run the same command again; the old dataset was kept") from None
    try:
        dataset.rename(out)
    except BaseException:
        previous.rename(out)
        raise


# ----------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_argument_group("input (one of)")
    where = source.add_mutually_exclusive_group(required=True)
    where.add_argument("--vivos-dir", type=Path, help="raw VIVOS root: the folder holding train/ and test/")
    where.add_argument("--manifest", type=Path,
                       help="CSV with columns path,text[,speaker][,split] (paths relative to the CSV)")
    output = parser.add_argument_group("output")
    output.add_argument("--out", type=Path, required=True, help="folder for the DatasetDict (created)")
    output.add_argument("--features", choices=["whisper", "waveform"], default="whisper",
                        help="whisper: log-Mel for train_whisper.py; waveform: 16 kHz samples for "
                             "train_wav2vec2.py and train_deepspeech.py (default: whisper)")
    output.add_argument("--n-mels", type=int, default=80, help="Whisper mel bins: 80, or 128 for large-v3")
    output.add_argument("--overwrite", action="store_true",
                        help="replace an --out that this script wrote, once the new dataset is complete "
                             "(any other folder is never replaced)")
    split = parser.add_argument_group("splits")
    split.add_argument("--val-ratio", type=float, default=0.1, help="share of train utterances held out for "
                       "validation (default 0.1)")
    split.add_argument("--val-split", choices=["speaker", "utterance"], default="speaker",
                       help="hold out whole speakers (default) or random utterances (corpora without speakers)")
    split.add_argument("--test-ratio", type=float, default=0.1,
                       help="share carved out as test when a manifest has no test rows (default 0.1)")
    split.add_argument("--seed", type=int, default=0)
    audio = parser.add_argument_group("audio")
    audio.add_argument("--min-seconds", type=float, default=0.2, help="shorter clips are skipped (default 0.2)")
    audio.add_argument("--max-seconds", type=float, default=None,
                       help="longer clips are skipped (default: 30 for whisper features, no limit for waveform)")
    audio.add_argument("--num-proc", type=int, default=1,
                       help="worker processes for decoding and features (default 1; works on Windows)")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    if args.features == "whisper":
        args.max_seconds = min(args.max_seconds or WHISPER_MAX_SECONDS, WHISPER_MAX_SECONDS)
    if not 0 < args.val_ratio < 1 or not 0 < args.test_ratio < 1:
        parser.error("--val-ratio and --test-ratio must be between 0 and 1")
    return args


def find_utterances(args, out: Path) -> tuple[list[dict], list[dict], str]:
    """Utterances and unpaired inputs of the corpus, and its description; --out is checked on the way,
    before any audio is read."""
    if args.vivos_dir:
        vivos_dir = args.vivos_dir.expanduser().resolve()
        check_vivos_layout(vivos_dir)
        check_out(out, {vivos_dir}, True, [vivos_dir.with_name(dataset_name(vivos_dir.name, args.features))], args)
        items, skipped = [], []
        for split in ("train", "test"):
            split_items, split_skipped = find_vivos_utterances(vivos_dir / split, split)
            if not split_items:
                # VIVOS's test/ is the test split: one carved out of train would give scores that no
                # published VIVOS result can be compared with
                reasons = dict(Counter(row["reason"] for row in split_skipped)) or "none found"
                raise InputError(f"{vivos_dir / split}: expected utterances with both audio in waves/SPEAKER/ "
                                 f"and a transcript in prompts.txt, found none (inputs left out: {reasons}); "
                                 "make the audio file names match the ids in prompts.txt")
            items += split_items
            skipped += split_skipped
        return items, skipped, f"VIVOS {vivos_dir}"
    manifest = args.manifest.expanduser().resolve()
    items, skipped = find_manifest_utterances(manifest)
    audio_folders = {folder.resolve() for folder in {Path(item["path"]).parent for item in items}}
    # Next to the manifest's folder first; that folder may be a home folder whose parent is not writable.
    places = [manifest.parent.with_name(dataset_name(manifest.parent.name, args.features)),
              manifest.with_name(dataset_name(manifest.stem, args.features))]
    check_out(out, {manifest.parent, *audio_folders}, False, places, args)
    return items, skipped, f"manifest {args.manifest}"


def prepare_dataset(args, out: Path) -> tuple[dict, list[dict]]:
    """Write the DatasetDict to `out`; returns the summary and the skipped inputs."""
    # 1. find the utterances (and refuse an unsafe --out before any audio is read)
    items, skipped, source = find_utterances(args, out)
    if not items:
        raise InputError(f"no utterance with both audio and transcript found in {source}; inputs left out by "
                         f"reason: {dict(Counter(row['reason'] for row in skipped))}")

    # 2. split: validation (and test when a manifest has none) carved out by speaker, seeded
    splits = assign_splits(items, args.val_ratio, args.test_ratio, args.val_split, args.seed)

    # 3. decode, resample, featurise; stream each split to Arrow inside a temporary folder
    import datasets

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_folder(out)
    shutil.rmtree(tmp, ignore_errors=True)  # check_out made sure it is a leftover of ours, if it exists
    stats, pool = {}, None
    try:
        (tmp / "arrow").mkdir(parents=True)
        (tmp / INCOMPLETE_MARK).touch()
        # Pool from the platform's default start method: spawn on Windows/macOS (safe under the __main__
        # guard), fork on Linux/Colab (works from a notebook cell too). Workers ignore Ctrl-C so that the
        # main process alone reports it, in one line, and stops them.
        if args.num_proc > 1:
            pool = multiprocessing.get_context().Pool(args.num_proc, initializer=signal.signal,
                                                      initargs=(signal.SIGINT, signal.SIG_IGN))
        for name in SPLITS:
            durations, split_skipped, speakers = write_split(splits[name], tmp / "arrow" / f"{name}.arrow",
                                                             name, args, pool)
            stats[name] = {"durations": durations, "speakers": speakers}
            skipped += split_skipped
        if pool:
            pool.close()
        empty = [name for name in SPLITS if not stats[name]["durations"]]
        if empty:
            reasons = Counter(s["reason"] for s in skipped)
            raise InputError(f"nothing usable left in split(s) {', '.join(empty)}; skipped inputs by reason: "
                             f"{dict(reasons)}; see the reasons above and fix the corpus (no dataset written)")
        dataset = datasets.DatasetDict({name: datasets.Dataset.from_file(str(tmp / "arrow" / f"{name}.arrow"))
                                        for name in SPLITS})
        dataset.save_to_disk(str(tmp / "dataset"))
        del dataset
        summary = build_summary(stats, skipped, splits, args, source)
        (tmp / "dataset" / "prepare_summary.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2),
                                                               encoding="utf-8")
        with (tmp / "dataset" / "skipped.csv").open("w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["path", "split", "id", "reason", "detail"])
            writer.writeheader()
            writer.writerows(skipped)
        # 4. publish: the old dataset is replaced only now that the new one is complete
        publish(tmp / "dataset", out, tmp)
    finally:
        if pool:
            pool.terminate()
        shutil.rmtree(tmp, ignore_errors=True)
    return summary, skipped


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    out = args.out.expanduser().resolve()
    try:
        summary, skipped = prepare_dataset(args, out)
    except KeyboardInterrupt:
        print(f"Interrupted: no dataset was written and --out {out} is as it was before; run the same command "
              "again to start over.", file=sys.stderr)
        raise SystemExit(130) from None
    print(format_summary(summary))
    if skipped:
        print(f"skipped inputs are listed in {out / 'skipped.csv'}")
    print(f"dataset written to {out}")
    return summary


if __name__ == "__main__":
    main()
