"""transcribe.py: the transcripts the trainers scored, from the tiny run folders of all three families; every
output format; long recordings in timestamped chunks; odd audio files and files it cannot read.

Format, windowing and audio tests use the length model (tests/length_model.py), which transcribes each
waveform as its sample count, so they check exactly what reached the model whatever the tiny runs learnt."""
from __future__ import annotations

import csv
import itertools
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

import transcribe
from length_model import make_length_model, samples_in

RUNS = {"whisper": "whisper_run", "wav2vec2": "wav2vec2_run", "deepspeech2": "deepspeech_run"}
GAP_SECONDS = 1.0  # silence after each utterance of the long recording


def trainer_predictions(run: Path) -> list[dict]:
    with (run / "test_predictions.csv").open(encoding="utf-8") as f:
        return sorted(csv.DictReader(f), key=lambda row: row["id"])


def clip_path(vivos_dir: Path, row: dict) -> Path:
    return vivos_dir / "test" / "waves" / row["speaker"] / f"{row['id']}.wav"


def srt_stamp(seconds: float) -> str:
    millis = round(seconds * 1000)
    return f"{millis // 3600000:02d}:{millis // 60000 % 60:02d}:{millis // 1000 % 60:02d},{millis % 1000:03d}"


def run_transcribe(model: Path, inputs: list[Path], out: Path, fmt: str, *extra: str) -> dict:
    return transcribe.main(["--model", str(model), *map(str, inputs), "--format", fmt, "--output-dir", str(out),
                            "--device", "cpu", *extra])


def run_length_model(length_run: Path, inputs: list[Path], out: Path, fmt: str, *extra: str) -> dict:
    """The length model is test code kept in its model folder: like any folder's code, it runs only when
    the user trusts it."""
    return run_transcribe(length_run, inputs, out, fmt, "--trust-remote-code", *extra)


@pytest.fixture(scope="module")
def length_run(tmp_path_factory) -> Path:
    return make_length_model(tmp_path_factory.mktemp("models") / "mô hình độ dài")


@pytest.fixture(scope="module")
def clips(vivos_dir) -> list[Path]:
    return sorted((vivos_dir / "test" / "waves").rglob("*.wav"))[:2]


@pytest.fixture(scope="module")
def long_recording(tmp_path_factory, vivos_dir) -> tuple[Path, np.ndarray]:
    """About 36 s of test utterances (each under 2.5 s) with a second of silence after each: longer than
    one chunk of every family, so it must be cut and timestamped."""
    utterances = [sf.read(path, dtype="float32")[0] for path in sorted((vivos_dir / "test" / "waves").rglob("*.wav"))]
    pieces = []
    for audio in itertools.cycle([audio for audio in utterances if len(audio) < 2.5 * 16000]):
        pieces += [audio, np.zeros(int(GAP_SECONDS * 16000), np.float32)]
        if sum(map(len, pieces)) > 36 * 16000:
            break
    waveform = np.concatenate(pieces)
    path = tmp_path_factory.mktemp("long") / "bản ghi dài.wav"
    sf.write(path, waveform, 16000)
    return path, waveform


@pytest.mark.slow
@pytest.mark.parametrize("family", RUNS)
def test_transcripts_are_what_the_trainer_scored(family, request, vivos_dir, tmp_path, capsys):
    """Same family detection, same decoding, same normalisation: the text equals test_predictions.csv.
    A run folder and its best_model/ folder are both accepted."""
    run = request.getfixturevalue(RUNS[family])
    rows = trainer_predictions(run)[:3]
    model = run / "best_model" if family == "wav2vec2" else run
    result = run_transcribe(model, [clip_path(vivos_dir, row) for row in rows], tmp_path, "json")

    assert result["family"] == family
    assert {Path(f["path"]).stem: f["text"] for f in result["files"]} == {row["id"]: row["prediction"]
                                                                       for row in rows}
    written = json.loads((tmp_path / "transcripts.json").read_text(encoding="utf-8"))
    assert [f["text"] for f in written["files"]] == [f["text"] for f in result["files"]]
    assert written["rtf"] == pytest.approx(written["decode_seconds"] / written["audio_seconds"], rel=0.05, abs=1e-3)
    printed = capsys.readouterr().out
    assert all(f"{row['id']}.wav: {row['prediction']}" in printed for row in rows)
    assert re.search(r"real-time factor \d+\.\d{3}", printed)


def test_every_output_format(length_run, clips, tmp_path):
    """txt and srt: one file per audio file, mirroring the input folders; csv and json: one table. The text
    is normalised (the model said `Đoạn N!`)."""
    inputs = tmp_path / "thư mục ghi âm"
    (inputs / "buổi 2").mkdir(parents=True)
    shutil.copy(clips[0], inputs / "a.wav")
    shutil.copy(clips[1], inputs / "buổi 2" / "a.wav")  # same name in another folder: not overwritten
    samples = {"a.wav": sf.info(clips[0]).frames, str(Path("buổi 2") / "a.wav"): sf.info(clips[1]).frames}
    for fmt in ("txt", "srt", "csv", "json"):
        run_length_model(length_run, [inputs], tmp_path / fmt, fmt)

    for name, count in samples.items():
        assert (tmp_path / "txt" / name).with_suffix(".txt").read_text(encoding="utf-8") == f"đoạn {count}\n"
        srt = (tmp_path / "srt" / name).with_suffix(".srt").read_text(encoding="utf-8")
        assert srt == f"1\n00:00:00,000 --> {srt_stamp(round(count / 16000, 3))}\nđoạn {count}\n\n"

    with (tmp_path / "csv" / "transcripts.csv").open(encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    assert {str(Path(row["path"]).relative_to(inputs)): row["text"] for row in rows} == {
        name: f"đoạn {count}" for name, count in samples.items()}
    assert all(float(row["start"]) == 0.0 and float(row["end"]) == round(samples_in(row["text"]) / 16000, 3)
               for row in rows)

    table = json.loads((tmp_path / "json" / "transcripts.json").read_text(encoding="utf-8"))
    assert table["family"] == "deepspeech2" and table["skipped"] == []
    assert {str(Path(f["path"]).relative_to(inputs)): f["text"] for f in table["files"]} == {
        name: f"đoạn {count}" for name, count in samples.items()}
    assert all(f["segments"] == [{"start": 0.0, "end": f["duration"], "text": f["text"]}] for f in table["files"])


def test_long_recording_deepspeech2_windows_cut_at_pauses(length_run, long_recording, tmp_path):
    """DeepSpeech2 gets windows of at most 15 s that together are the whole recording, each ending inside a
    silence, and each window is one segment with its own timestamps (SRT)."""
    path, waveform = long_recording
    result = run_length_model(length_run, [path], tmp_path, "srt")
    segments = result["files"][0]["segments"]

    assert len(segments) >= 3  # 36-40 s in windows of 12-15 s
    assert sum(samples_in(s["text"]) for s in segments) == len(waveform)
    assert segments[0]["start"] == 0.0 and segments[-1]["end"] == round(len(waveform) / 16000, 3)
    for before, after in zip(segments, segments[1:]):
        assert before["end"] == after["start"]
        cut = round(before["end"] * 16000)
        assert np.abs(waveform[cut - 150: cut + 150]).max() < 1e-3, f"window cut inside speech at {before['end']} s"
    for s in segments:
        assert s["end"] - s["start"] <= 15.0
        assert samples_in(s["text"]) == pytest.approx((s["end"] - s["start"]) * 16000, abs=16)
    srt = (tmp_path / "bản ghi dài.srt").read_text(encoding="utf-8")
    assert srt == "".join(f"{n}\n{srt_stamp(s['start'])} --> {srt_stamp(s['end'])}\n{s['text']}\n\n"
                          for n, s in enumerate(segments, 1))


@pytest.mark.slow
@pytest.mark.parametrize("family", ["whisper", "wav2vec2"])
def test_long_recording_hugging_face_chunks_with_timestamps(family, request, long_recording, tmp_path):
    """The pipeline decodes a recording longer than a chunk in chunks (two per batch) with timestamps:
    ordered segments inside the recording, their words the transcript's."""
    path, waveform = long_recording
    result = run_transcribe(request.getfixturevalue(RUNS[family]), [path], tmp_path, "json", "--batch-size", "2")
    file = result["files"][0]
    starts = [s["start"] for s in file["segments"]]
    assert file["duration"] == pytest.approx(len(waveform) / 16000, abs=0.01)
    assert file["duration"] > transcribe.CHUNK_SECONDS[family]
    assert starts == sorted(starts)
    assert all(0 <= s["start"] <= s["end"] <= file["duration"] for s in file["segments"])
    assert " ".join(s["text"] for s in file["segments"]).split() == file["text"].split()


def test_timestamps_from_pipeline_chunks():
    """Whisper's last segment may have no end and empty ones are dropped; Wav2Vec2 words become phrases
    split at pauses and at PHRASE_SECONDS."""
    whisper = transcribe.whisper_segments([{"text": "xin chào", "timestamp": (0.0, 2.5)},
                                           {"text": "", "timestamp": (2.5, 3.0)},
                                           {"text": "tạm biệt", "timestamp": (31.0, None)}], duration=40.0)
    assert whisper == [{"start": 0.0, "end": 2.5, "text": "xin chào"},
                       {"start": 31.0, "end": 40.0, "text": "tạm biệt"}]
    words = [("một", 0.0, 0.3), ("hai", 0.4, 0.7), ("ba", 2.0, 2.3)] + [(f"t{i}", 3 + i, 3.5 + i) for i in range(7)]
    phrases = transcribe.phrase_segments([{"text": w, "timestamp": (s, e)} for w, s, e in words])
    assert phrases[:2] == [{"start": 0.0, "end": 0.7, "text": "một hai"}, {"start": 2.0, "end": 2.3, "text": "ba"}]
    assert all(p["end"] - p["start"] <= transcribe.PHRASE_SECONDS for p in phrases)
    assert " ".join(p["text"] for p in phrases).split() == [w for w, _, _ in words]


def test_any_rate_and_channels_and_unreadable_files(length_run, clips, tmp_path, capsys):
    """Stereo 44.1 kHz FLAC and 8 kHz OGG reach the model as the 16 kHz mono clip they were made from; a
    corrupt file, an empty one and a missing path are reported with the reason, the others still done."""
    inputs = tmp_path / "đầu vào"
    inputs.mkdir()
    audio, _ = sf.read(clips[0], dtype="float32")
    high = soxr.resample(audio, 16000, 44100)
    sf.write(inputs / "stereo 44k.flac", np.stack([high, 0.5 * high], axis=1), 44100)
    sf.write(inputs / "8k.ogg", soxr.resample(audio, 16000, 8000), 8000)
    (inputs / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVE not audio")
    sf.write(inputs / "empty.wav", np.zeros(0, np.float32), 16000)
    result = run_length_model(length_run, [inputs, tmp_path / "missing.wav"], tmp_path / "out", "json")

    samples = {Path(f["path"]).name: samples_in(f["text"]) for f in result["files"]}
    assert set(samples) == {"stereo 44k.flac", "8k.ogg"}
    assert samples["stereo 44k.flac"] == pytest.approx(len(audio), abs=2)
    assert samples["8k.ogg"] == pytest.approx(len(audio), abs=0.01 * len(audio))
    mixed = transcribe.load_audio(inputs / "stereo 44k.flac")
    n = min(len(mixed), len(audio))
    assert np.abs(mixed[:n] - 0.75 * audio[:n]).max() < 0.02  # mean of the two channels, back at 16 kHz

    reasons = {Path(s["path"]).name: s["reason"] for s in result["skipped"]}
    assert set(reasons) == {"corrupt.wav", "empty.wav", "missing.wav"}
    assert reasons["empty.wav"] == "no audio samples" and "cannot read it as audio" in reasons["corrupt.wav"]
    errors = capsys.readouterr().err
    assert "corrupt.wav: cannot read it as audio" in errors and "convert others first" in errors


def test_clear_messages_for_wrong_model_or_no_audio(length_run, tmp_path):
    (tmp_path / "empty run").mkdir()
    with pytest.raises(SystemExit, match=r"expected a run folder holding best_model/config\.json"):
        run_transcribe(tmp_path / "empty run", [tmp_path], tmp_path / "out", "txt")
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(SystemExit, match="model_type is 'bert', expected one of whisper, wav2vec2, deepspeech2"):
        run_transcribe(tmp_path / "bert", [tmp_path], tmp_path / "out", "txt")
    (tmp_path / "notes.wav").write_text("not audio")
    with pytest.raises(SystemExit, match="nothing was transcribed"):
        run_length_model(length_run, [tmp_path / "notes.wav"], tmp_path / "out", "txt")


def write_noise(path: Path, samples: int) -> Path:
    """A clip the length model transcribes as `đoạn <samples>`: which output holds which input is unambiguous."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, 0.1 * np.random.default_rng(samples).standard_normal(samples).astype(np.float32), 16000)
    return path


def folder_contents(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("fmt", ["txt", "srt"])
def test_inputs_sharing_a_name_get_their_own_output(fmt, length_run, tmp_path, capsys):
    """a.wav and a.flac in one folder become a.wav.txt and a.flac.txt (not one a.txt written twice); a.wav in
    another folder and b.wav keep the plain name; the summary counts the files that are really there."""
    inputs = tmp_path / "ghi âm"
    samples = {"a.wav": 16000, "a.flac": 17000, "b.wav": 18000, "buổi 2/a.wav": 19000}
    for name, count in samples.items():
        write_noise(inputs / name, count)
    run_length_model(length_run, [inputs], tmp_path / "out", fmt)

    written = folder_contents(tmp_path / "out")
    expected = {"a.wav": f"a.wav.{fmt}", "a.flac": f"a.flac.{fmt}", "b.wav": f"b.{fmt}",
                "buổi 2/a.wav": f"buổi 2/a.{fmt}"}
    assert set(written) == set(expected.values()) | {transcribe.MANIFEST}
    for name, output in expected.items():
        assert f"đoạn {samples[name]}\n" in written[output].decode("utf-8")
    assert f"wrote 4 .{fmt} files in" in capsys.readouterr().out


def test_output_names_unique_whatever_the_names():
    """Names that only clash after the suffix is added, or only in case (one file on Windows and macOS), are
    kept apart too; every other file keeps the plain name."""
    folder = Path("/recordings")
    files = [folder / name for name in ("a.wav", "a.flac", "a.wav.flac", "B.wav", "b.ogg", "c.mp3", "x/c.mp3")]
    names = {str(p.relative_to(folder)): str(name) for p, name in transcribe.output_names(files, "txt").items()}
    assert names == {"a.wav": "a.wav.txt", "a.flac": "a.flac.txt", "a.wav.flac": "a.wav.flac.txt",
                     "B.wav": "B.wav.txt", "b.ogg": "b.ogg.txt", "c.mp3": "c.txt", "x/c.mp3": str(Path("x/c.txt"))}


def test_never_replaces_a_file_it_did_not_write(length_run, tmp_path, monkeypatch, capsys):
    """--output-dir set to the input folder, where the user keeps lecture.txt: one line naming the file and
    what to type, before the model loads, and the folder left exactly as it was. --overwrite replaces it;
    then the same command runs again (its own output), until the user edits that output by hand."""
    inputs = tmp_path / "bài giảng"
    write_noise(inputs / "lecture.wav", 16000)
    write_noise(inputs / "other.wav", 17000)
    (inputs / "lecture.txt").write_text("ghi chú của tôi\n", encoding="utf-8")
    before = folder_contents(inputs)
    with monkeypatch.context() as patch:
        patch.setattr(transcribe, "load_recognizer", lambda *args, **kwargs: pytest.fail("the model was loaded"))
        with pytest.raises(SystemExit) as refused:
            run_length_model(length_run, [inputs], inputs, "txt")
    message = str(refused.value)
    assert message.startswith(f"refusing to overwrite lecture.txt in {inputs}: transcribe.py did not write it")
    assert "other.txt" not in message and "\n" not in message
    assert f"--output-dir {transcribe.quoted(inputs.parent / 'bài giảng-2')}" in message and "--overwrite" in message
    assert folder_contents(inputs) == before

    run_length_model(length_run, [inputs], inputs, "txt", "--overwrite")
    assert (inputs / "lecture.txt").read_text(encoding="utf-8") == "đoạn 16000\n"
    run_length_model(length_run, [inputs], inputs, "txt")  # the same command again: only its own files in the way
    assert (inputs / "other.txt").read_text(encoding="utf-8") == "đoạn 17000\n"

    (inputs / "other.txt").write_text("đoạn mười bảy nghìn\n", encoding="utf-8")  # corrected by hand
    with pytest.raises(SystemExit, match="refusing to overwrite other.txt in"):
        run_length_model(length_run, [inputs], inputs, "txt")
    assert (inputs / "other.txt").read_text(encoding="utf-8") == "đoạn mười bảy nghìn\n"


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_never_replaces_a_table_or_manifest_it_did_not_write(fmt, length_run, tmp_path):
    """The user's own transcripts.csv / transcripts.json, or a file that happens to have the manifest's name,
    stops the run with both named; a second run over its own table replaces it."""
    clip = write_noise(tmp_path / "in" / "a.wav", 16000)
    out = tmp_path / "out"
    out.mkdir()
    (out / f"transcripts.{fmt}").write_text("my table", encoding="utf-8")
    (out / transcribe.MANIFEST).write_text("[]", encoding="utf-8")
    with pytest.raises(SystemExit, match=f"refusing to overwrite {transcribe.MANIFEST}, transcripts.{fmt} in"):
        run_length_model(length_run, [clip], out, fmt)
    assert folder_contents(out) == {f"transcripts.{fmt}": b"my table", transcribe.MANIFEST: b"[]"}

    (out / f"transcripts.{fmt}").unlink()
    (out / transcribe.MANIFEST).unlink()
    for _ in range(2):
        run_length_model(length_run, [clip], out, fmt)
    assert "đoạn 16000" in (out / f"transcripts.{fmt}").read_text(encoding="utf-8-sig")
