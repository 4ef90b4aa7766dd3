"""prepare_vivos.py: layout, splits, text, features, resampling, bad input, spawn workers, safe writes."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import datasets
import numpy as np
import pytest
import soundfile as sf
from transformers import WhisperFeatureExtractor

import prepare_vivos
from conftest import REPO


def load(path: Path) -> datasets.DatasetDict:
    return datasets.load_from_disk(str(path))


def summary_of(path: Path) -> dict:
    return json.loads((path / "prepare_summary.json").read_text(encoding="utf-8"))


def skipped_of(path: Path) -> list[dict]:
    with (path / "skipped.csv").open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def restore_whisper_input(stored) -> np.ndarray:
    """The trainer-side restoration documented in the README and docs/FORMATS.md."""
    feats = np.asarray(stored, dtype=np.float32).T
    full = np.full((feats.shape[0], 3000), feats.max() - 2.0, dtype=np.float32)
    full[:, : feats.shape[1]] = feats[:, :3000]
    return full


def test_layout_counts_and_speaker_disjoint_splits(whisper_data, vivos_dir):
    data = load(whisper_data)
    assert set(data) == {"train", "validation", "test"}
    # 8 train speakers x 12 with --val-ratio 0.25 -> 2 whole speakers held out; 3 test speakers x 8.
    assert (data["train"].num_rows, data["validation"].num_rows, data["test"].num_rows) == (72, 24, 24)
    for column in ("id", "speaker", "gender", "sentence", "raw_sentence", "duration", "input_features"):
        assert column in data["train"].column_names
    speakers = {name: set(data[name]["speaker"]) for name in data}
    assert not speakers["train"] & speakers["validation"]
    assert not (speakers["train"] | speakers["validation"]) & speakers["test"]
    assert all(s.startswith("VIVOSDEV") for s in speakers["test"])
    assert set(data["validation"]["gender"]) == {"m", "f"}, "validation keeps both genders"

    summary = summary_of(whisper_data)
    for name in data:
        split = summary["splits"][name]
        assert split["utterances"] == data[name].num_rows
        assert split["speakers"] == len(speakers[name])
        assert split["hours"] == pytest.approx(sum(data[name]["duration"]) / 3600, abs=1e-3)
    assert summary["splits"]["validation"]["share_utterances"] == pytest.approx(24 / 120, abs=1e-3)
    assert sum(s["share_hours"] for s in summary["splits"].values()) == pytest.approx(1.0, abs=1e-3)
    assert summary["features"] == "whisper" and summary["n_mels"] == 80 and summary["sampling_rate"] == 16000
    assert summary["skipped_total"] == 0 and skipped_of(whisper_data) == []


def test_same_seed_same_split_other_seed_other_split(vivos_dir, tmp_path):
    splits = {}
    for run, seed in (("a", 0), ("b", 0), ("c", 5)):
        items, _ = prepare_vivos.find_vivos_utterances(vivos_dir / "train", "train")
        splits[run] = {i["speaker"] for i in prepare_vivos.assign_splits(
            items, 0.25, 0.1, "speaker", seed)["validation"]}
    assert splits["a"] == splits["b"]
    assert splits["a"] != splits["c"]


def test_normalisation_upper_case_nfd_and_punctuation():
    text = "KHÁCH SẠN, “Đẹp”! (Giá: 500.000đ) – rất…  tốt?"
    assert prepare_vivos.normalize_text(text) == "khách sạn đẹp giá 500 000đ rất tốt"
    assert prepare_vivos.normalize_text(unicodedata.normalize("NFD", text)) == prepare_vivos.normalize_text(text)
    assert prepare_vivos.normalize_text("  NGÃ   HỎI\tNẶNG\n") == "ngã hỏi nặng"


def test_sentences_are_normalised_and_raw_text_kept(whisper_data, vivos_dir):
    row = load(whisper_data)["train"][0]
    prompts = dict(line.split(" ", 1) for line in
                   (vivos_dir / "train" / "prompts.txt").read_text(encoding="utf-8").splitlines())
    assert row["raw_sentence"] == prompts[row["id"]]
    assert row["raw_sentence"].isupper()
    assert row["sentence"] == row["raw_sentence"].lower()


def test_whisper_features_restore_to_feature_extractor_output_and_are_compact(whisper_data, vivos_dir):
    train = load(whisper_data)["train"]
    extractor = WhisperFeatureExtractor(feature_size=80)
    naive_bytes = 80 * 3000 * 4
    for row in train.select(range(5)):
        wav = vivos_dir / "train" / "waves" / row["speaker"] / f"{row['id']}.wav"
        audio, rate = sf.read(wav, dtype="float32")
        assert rate == 16000
        expected = extractor(audio, sampling_rate=16000, return_tensors="np")["input_features"][0]
        restored = restore_whisper_input(row["input_features"])
        assert restored.shape == (80, 3000)
        assert np.abs(restored - expected).max() < 1e-2
        stored = np.asarray(row["input_features"], dtype=np.float16)
        assert stored.nbytes <= 0.15 * naive_bytes
    arrow_bytes = sum(f.stat().st_size for f in (whisper_data / "train").glob("*.arrow"))
    assert arrow_bytes <= 0.15 * naive_bytes * train.num_rows


def test_waveform_features_are_raw_16k_samples(waveform_data, vivos_dir):
    data = load(waveform_data)
    assert "input_values" in data["train"].column_names and "input_features" not in data["train"].column_names
    assert summary_of(waveform_data)["features"] == "waveform"
    row = data["test"][0]
    audio, _ = sf.read(vivos_dir / "test" / "waves" / row["speaker"] / f"{row['id']}.wav", dtype="float32")
    np.testing.assert_allclose(np.asarray(row["input_values"], dtype=np.float32), audio, atol=1e-6)
    assert row["duration"] == pytest.approx(len(audio) / 16000, abs=1e-4)
    assert abs(float(np.mean(audio))) < 0.05 and float(np.std(audio)) != pytest.approx(1.0, abs=0.05)


def write_manifest(path: Path, rows: list[dict]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_22khz_stereo_input_is_resampled_to_16k_mono(vivos_dir, tmp_path):
    source = sorted((vivos_dir / "train" / "waves" / "VIVOSSPK01").glob("*.wav"))[:5]
    rows = []
    for k, wav in enumerate(source):
        audio, _ = sf.read(wav, dtype="float32")
        converted = tmp_path / f"stereo_{k}.wav"
        subprocess.run(["sox", str(wav), "-r", "22050", "-c", "2", str(converted)], check=True)
        rows.append({"path": converted.name, "text": f"câu số {k}", "split": ["train", "train", "test", "test",
                                                                              "validation"][k]})
    out = tmp_path / "out"
    prepare_vivos.main(["--manifest", str(write_manifest(tmp_path / "list.csv", rows)), "--out", str(out),
                        "--features", "waveform"])
    row = load(out)["train"][0]
    original, _ = sf.read(source[0], dtype="float32")
    restored = np.asarray(row["input_values"], dtype=np.float32)
    assert abs(len(restored) - len(original)) <= 2, "22.05 kHz stereo -> 16 kHz mono keeps the duration"
    n = min(len(restored), len(original))
    assert np.corrcoef(restored[:n], original[:n])[0, 1] > 0.99
    assert summary_of(out)["sampling_rate"] == 16000


@pytest.fixture(scope="module")
def broken_corpus(vivos_dir, tmp_path_factory) -> Path:
    """A VIVOS copy with one of each bad input a downloaded corpus can hold."""
    root = tmp_path_factory.mktemp("broken") / "vivos hỏng"
    shutil.copytree(vivos_dir, root)
    waves = root / "train" / "waves" / "VIVOSSPK01"
    (waves / "VIVOSSPK01_R001.wav").write_bytes(b"RIFF\x00\x00garbage, not a wave file")  # corrupt
    sf.write(waves / "VIVOSSPK01_R002.wav", np.zeros(0, dtype=np.float32), 16000)  # empty
    sf.write(waves / "VIVOSSPK01_R003.wav", np.zeros(16000, dtype=np.float32), 16000)  # silent
    sf.write(waves / "VIVOSSPK01_R004.wav", 0.3 * np.ones(400, dtype=np.float32), 16000)  # 25 ms: too short
    (waves / "VIVOSSPK01_R005.wav").unlink()  # prompt without audio
    shutil.copy(waves / "VIVOSSPK01_R006.wav", waves / "VIVOSSPK01_R099.wav")  # audio without prompt
    whole = (waves / "VIVOSSPK01_R008.wav").read_bytes()
    (waves / "VIVOSSPK01_R008.wav").write_bytes(whole[: len(whole) // 2])  # cut off: a half-copied download
    other = root / "train" / "waves" / "VIVOSSPK02"
    shutil.copy(waves / "VIVOSSPK01_R011.wav", other)  # misplaced copy: the id names its speaker
    for folder in (waves, other):  # one name in two speakers' folders, neither named by the id
        shutil.copy(waves / "VIVOSSPK01_R012.wav", folder / "EXTRA_R001.wav")
    prompts = (root / "train" / "prompts.txt").read_bytes().splitlines()
    prompts = [b"VIVOSSPK01_R007 ?!..." if p.startswith(b"VIVOSSPK01_R007") else p for p in prompts]
    repeated = next(p for p in prompts if p.startswith(b"VIVOSSPK01_R009"))
    prompts += [repeated, "VIVOSSPK01_R010 CÂU KHÁC HẲN".encode(), "EXTRA_R001 XIN CHÀO".encode()]
    (root / "train" / "prompts.txt").write_bytes(b"\r\n".join(prompts) + b"\r\n")  # Windows line ends too
    return root


def test_every_bad_input_is_skipped_and_listed_with_its_reason(broken_corpus, vivos_dir, tmp_path):
    out = tmp_path / "out"
    summary = prepare_vivos.main(["--vivos-dir", str(broken_corpus), "--out", str(out), "--features", "waveform"])
    reasons = sorted((row["id"], row["reason"], Path(row["path"]).parent.name) for row in skipped_of(out))
    assert reasons == sorted([
        ("VIVOSSPK01_R001", "unreadable audio", "VIVOSSPK01"),
        ("VIVOSSPK01_R002", "empty audio", "VIVOSSPK01"),
        ("VIVOSSPK01_R003", "silent audio", "VIVOSSPK01"),
        ("VIVOSSPK01_R004", "too short", "VIVOSSPK01"),
        ("VIVOSSPK01_R005", "transcript without audio", "train"),
        ("VIVOSSPK01_R099", "audio without transcript", "VIVOSSPK01"),
        ("VIVOSSPK01_R007", "empty transcript", "VIVOSSPK01"),
        ("VIVOSSPK01_R008", "truncated audio", "VIVOSSPK01"),
        ("VIVOSSPK01_R009", "repeated prompt line", "train"),
        ("VIVOSSPK01_R010", "conflicting transcripts", "train"),
        ("VIVOSSPK01_R011", "repeated audio file name", "VIVOSSPK02"),
        ("EXTRA_R001", "repeated audio file name", "VIVOSSPK01"),
        ("EXTRA_R001", "repeated audio file name", "VIVOSSPK02"),
    ])
    assert summary["skipped_total"] == 13 and summary["skipped"]["unreadable audio"] == 1
    data = load(out)
    kept = sum(data[name].num_rows for name in data)
    assert kept == 120 - 8, "8 of the 120 prompts are bad (R099, EXTRA are extra); the other 112 are all there"
    rows = {row["id"]: row for name in data for row in data[name].remove_columns("input_values")}
    assert "VIVOSSPK01_R008" not in rows, "a cut-off clip never keeps the full transcript"
    assert "VIVOSSPK01_R010" not in rows, "an id with two different transcripts is left out, not guessed"
    assert rows["VIVOSSPK01_R011"]["speaker"] == "VIVOSSPK01", "the copy in the id's own speaker folder is used"
    prompts = dict(line.split(" ", 1) for line in
                   (vivos_dir / "train" / "prompts.txt").read_text(encoding="utf-8").splitlines())
    assert rows["VIVOSSPK01_R009"]["raw_sentence"] == prompts["VIVOSSPK01_R009"], "a repeated line is used once"


def test_nothing_usable_fails_with_a_clear_message(tmp_path):
    for name in ("bad.wav", "bad too.wav"):
        (tmp_path / name).write_bytes(b"not audio")
    manifest = write_manifest(tmp_path / "m.csv", [{"path": "bad.wav", "text": "xin chào", "speaker": "a"},
                                                   {"path": "bad too.wav", "text": "tạm biệt", "speaker": "b"}])
    with pytest.raises(SystemExit, match="nothing usable left"):
        prepare_vivos.main(["--manifest", str(manifest), "--out", str(tmp_path / "out"), "--val-split",
                            "utterance"])
    assert not (tmp_path / "out").exists()


def test_wrong_level_names_the_right_folder(vivos_dir, tmp_path):
    with pytest.raises(SystemExit, match="one split of VIVOS") as error:
        prepare_vivos.main(["--vivos-dir", str(vivos_dir / "train"), "--out", str(tmp_path / "o")])
    assert f"--vivos-dir {prepare_vivos.quoted(vivos_dir)}" in str(error.value)  # pasteable as it is
    with pytest.raises(SystemExit, match="one level down") as error:
        prepare_vivos.main(["--vivos-dir", str(vivos_dir.parent), "--out", str(tmp_path / "o")])
    assert str(vivos_dir) in str(error.value)
    with pytest.raises(SystemExit, match="manifest"):
        prepare_vivos.main(["--vivos-dir", str(tmp_path), "--out", str(tmp_path / "o")])


def test_manifest_without_speakers_needs_utterance_split(tmp_path, vivos_dir):
    wavs = sorted((vivos_dir / "train" / "waves" / "VIVOSSPK02").glob("*.wav"))[:6]
    manifest = write_manifest(tmp_path / "m.csv", [{"path": str(w), "text": f"câu {k}"} for k, w in enumerate(wavs)])
    with pytest.raises(SystemExit, match="--val-split utterance"):
        prepare_vivos.main(["--manifest", str(manifest), "--out", str(tmp_path / "o")])
    prepare_vivos.main(["--manifest", str(manifest), "--out", str(tmp_path / "o"), "--val-split", "utterance",
                        "--features", "waveform", "--val-ratio", "0.2", "--test-ratio", "0.2"])
    data = load(tmp_path / "o")
    assert sorted(data[n].num_rows for n in data) == [1, 1, 4]


def test_existing_output_is_kept_unless_overwrite_and_survives_an_interrupted_run(vivos_dir, tmp_path,
                                                                                   monkeypatch, capsys):
    out = tmp_path / "kept"
    wavs = sorted((vivos_dir / "train" / "waves").glob("*/*.wav"))
    rows = [{"path": str(w), "text": f"câu {k}", "speaker": w.parent.name} for k, w in enumerate(wavs[:30])]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    argv = ["--manifest", str(manifest), "--out", str(out), "--features", "waveform"]
    prepare_vivos.main(argv)
    before = load(out)["train"]["id"]

    with pytest.raises(SystemExit, match="--overwrite"):
        prepare_vivos.main(argv)
    assert load(out)["train"]["id"] == before

    calls = {"n": 0}
    real = prepare_vivos.process_utterance

    def dies_midway(*args):
        calls["n"] += 1
        if calls["n"] == 10:
            raise KeyboardInterrupt  # Ctrl-C or a Colab disconnect in the middle of the run
        return real(*args)

    monkeypatch.setattr(prepare_vivos, "process_utterance", dies_midway)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        prepare_vivos.main(argv + ["--overwrite", "--seed", "3"])
    assert stopped.value.code == 130
    message = [line for line in capsys.readouterr().err.splitlines() if "Interrupted" in line]
    assert len(message) == 1 and str(out) in message[0] and "same command" in message[0]
    assert load(out)["train"]["id"] == before, "an interrupted run never replaces a good dataset"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [], "no half-written leftovers"

    monkeypatch.setattr(prepare_vivos, "process_utterance", real)
    prepare_vivos.main(argv + ["--overwrite", "--seed", "3"])
    assert summary_of(out)["seed"] == 3


@pytest.mark.slow
def test_num_proc_2_under_spawn_gives_the_same_dataset(vivos_dir, whisper_data, tmp_path):
    out = tmp_path / "spawned"
    code = ("import multiprocessing, sys; multiprocessing.set_start_method('spawn', force=True); "
            f"sys.path.insert(0, {str(REPO)!r}); import prepare_vivos; "
            f"prepare_vivos.main(['--vivos-dir', {str(vivos_dir)!r}, '--out', {str(out)!r}, "
            "'--val-ratio', '0.25', '--num-proc', '2'])")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=600)
    spawned, single = load(out), load(whisper_data)
    for name in single:
        assert spawned[name]["id"] == single[name]["id"]
    a = np.asarray(spawned["test"][3]["input_features"])
    b = np.asarray(single["test"][3]["input_features"])
    np.testing.assert_array_equal(a, b)


def test_bundled_sample_is_a_small_complete_vivos_corpus():
    sample = REPO / "sample_data" / "vivos_sample"
    assert sum(f.stat().st_size for f in sample.rglob("*") if f.is_file()) <= 10 * 2**20
    prepare_vivos.check_vivos_layout(sample)
    for split, speakers in (("train", 10), ("test", 3)):
        items, skipped = prepare_vivos.find_vivos_utterances(sample / split, split)
        assert skipped == [] and len({i["speaker"] for i in items}) == speakers
        assert set(prepare_vivos.read_genders(sample / split / "genders.txt").values()) == {"m", "f"}
