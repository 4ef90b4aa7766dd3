"""prepare_vivos.py never loses or mixes data: unsafe --out refused, Ctrl-C, text encodings, test/ kept as
the test split, cut-off WAVs. Each test works on a temporary copy of the bundled sample."""
from __future__ import annotations

import csv
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
import soundfile as sf

import prepare_vivos
from conftest import REPO

SAMPLE = REPO / "sample_data" / "vivos_sample"


@pytest.fixture
def corpus(tmp_path) -> Path:
    """The bundled sample (10 train, 3 test speakers) copied to a folder with a space in its path."""
    root = tmp_path / "my corpora" / "vivos"
    shutil.copytree(SAMPLE, root)
    return root


def snapshot(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


def no_audio_read(*args):
    raise AssertionError("audio was read before --out was checked")


def refusal(argv: list[str]) -> str:
    with pytest.raises(SystemExit) as error:
        prepare_vivos.main(argv)
    assert error.value.code not in (0, None)
    return str(error.value)


def test_out_that_is_or_holds_or_lies_in_the_corpus_is_refused_and_the_proposal_works(corpus, monkeypatch):
    parent = corpus.parent
    (parent / "notes.txt").write_text("my other files", encoding="utf-8")
    before = snapshot(parent)
    monkeypatch.setattr(prepare_vivos, "load_audio", no_audio_read)
    for out in (corpus, parent, corpus / "train", corpus / "prepared", corpus / "train" / "waves" / "new"):
        message = refusal(["--vivos-dir", str(corpus), "--out", str(out), "--features", "waveform", "--overwrite"])
        assert str(out) in message and "Nothing was changed" in message
        assert snapshot(parent) == before, f"--out {out} changed the corpus or its neighbours"
    assert not (corpus / "prepared").exists()

    proposal = message.split("next to the corpus: ")[1]
    words = shlex.split(proposal)
    assert words[:2] == ["python", "prepare_vivos.py"] and "--overwrite" not in words
    assert words[words.index("--out") + 1] == str(parent / "vivos_wave"), "sibling named <corpus>_wave"
    monkeypatch.undo()
    prepare_vivos.main(words[2:])
    test = datasets.load_from_disk(str(parent / "vivos_wave"))["test"]
    assert set(test["speaker"]) == {"VIVOSDEV01", "VIVOSDEV02", "VIVOSDEV03"}
    assert snapshot(corpus) == {k[len("vivos/"):]: v for k, v in before.items() if k.startswith("vivos/")}

    words = shlex.split(refusal(["--vivos-dir", str(corpus), "--out", str(corpus)]).split("next to the corpus: ")[1])
    assert words[words.index("--out") + 1] == str(parent / "vivos_whisper"), "whisper features: <corpus>_whisper"


@pytest.mark.skipif(os.name == "nt", reason="symbolic links need extra rights on Windows")
def test_symlinks_dots_and_relative_paths_are_resolved_before_comparing(corpus, monkeypatch):
    before = snapshot(corpus.parent)
    link = corpus.parent.parent / "shortcut"
    link.symlink_to(corpus, target_is_directory=True)
    monkeypatch.setattr(prepare_vivos, "load_audio", no_audio_read)
    for out in (str(link), str(corpus / "train" / ".."), str(link / "test")):
        assert "corpus folder" in refusal(["--vivos-dir", str(corpus), "--out", out, "--overwrite"])
    monkeypatch.chdir(corpus)
    for out in (".", "..", "train/new"):
        assert "corpus folder" in refusal(["--vivos-dir", ".", "--out", out, "--overwrite"])
    assert snapshot(corpus.parent) == before


def test_case_is_ignored_when_comparing_paths_on_windows(monkeypatch):
    inside, corpus = Path("/Data/VIVOS/train"), Path("/data/vivos")
    assert not prepare_vivos.is_within(inside, corpus)
    monkeypatch.setattr(prepare_vivos.sys, "platform", "win32")
    assert prepare_vivos.is_within(inside, corpus)


def test_a_folder_this_script_did_not_write_is_never_replaced(corpus, tmp_path, monkeypatch):
    thesis = tmp_path / "Documents"
    (thesis / "thesis").mkdir(parents=True)
    (thesis / "thesis" / "chapter1.docx").write_bytes(b"three months of work")
    file_out = tmp_path / "results.txt"
    file_out.write_text("keep me", encoding="utf-8")
    with monkeypatch.context() as patched:
        patched.setattr(prepare_vivos, "load_audio", no_audio_read)
        message = refusal(["--vivos-dir", str(corpus), "--out", str(thesis), "--overwrite"])
        assert "did not write (thesis)" in message and "not even with --overwrite" in message
        assert "is a file" in refusal(["--vivos-dir", str(corpus), "--out", str(file_out), "--overwrite"])
    assert (thesis / "thesis" / "chapter1.docx").read_bytes() == b"three months of work"
    assert file_out.read_text(encoding="utf-8") == "keep me"

    empty = tmp_path / "made by hand"
    empty.mkdir()
    argv = ["--vivos-dir", str(corpus), "--out", str(empty), "--features", "waveform"]
    prepare_vivos.main(argv)  # an empty folder holds nothing to lose: no --overwrite needed
    (empty / "my notes.txt").write_text("added by the user", encoding="utf-8")
    ids = datasets.load_from_disk(str(empty))["train"]["id"]
    assert "my notes.txt" in refusal(argv + ["--overwrite", "--seed", "4"])
    assert (empty / "my notes.txt").read_text(encoding="utf-8") == "added by the user"
    assert datasets.load_from_disk(str(empty))["train"]["id"] == ids


def test_manifest_out_may_not_be_or_hold_the_manifest_or_audio_folder(corpus, tmp_path, monkeypatch):
    audio = sorted((corpus / "train" / "waves").glob("*/*.flac"))[:4]
    lists = tmp_path / "lists"
    lists.mkdir()
    manifest = lists / "m.csv"
    with manifest.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "text"])
        writer.writerows([[os.path.relpath(path, lists), "xin chào"] for path in audio])
    before = snapshot(tmp_path)
    monkeypatch.setattr(prepare_vivos, "load_audio", no_audio_read)
    for out, problem in ((lists, "is the corpus folder"), (tmp_path, "holds the corpus folder"),
                         (audio[0].parent, "is the corpus folder")):
        message = refusal(["--manifest", str(manifest), "--out", str(out), "--overwrite"])
        assert problem in message and str(lists.parent / "lists_whisper") in message
    assert snapshot(tmp_path) == before


def test_only_a_leftover_temporary_folder_of_ours_is_cleared(corpus, tmp_path):
    out = tmp_path / "data"
    tmp = prepare_vivos.temporary_folder(out)
    tmp.mkdir()
    (tmp / "todo.txt").write_text("a user's file that happens to sit there", encoding="utf-8")
    argv = ["--vivos-dir", str(corpus), "--out", str(out), "--features", "waveform"]
    assert "not made by this script" in refusal(argv)
    assert (tmp / "todo.txt").is_file() and not out.exists()
    (tmp / "todo.txt").unlink()
    (tmp / prepare_vivos.INCOMPLETE_MARK).touch()  # what a killed run leaves behind
    prepare_vivos.main(argv)
    assert datasets.load_from_disk(str(out))["test"].num_rows == 36 and not tmp.exists()


def test_a_manifest_in_a_home_folder_gets_a_proposal_it_can_write(corpus, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    rows = [[str(path), "xin chào", path.parent.name]
            for speaker in sorted((corpus / "train" / "waves").iterdir())[:4]
            for path in sorted(speaker.glob("*.flac"))[:2]]
    manifest = home / "my list.csv"
    with manifest.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([["path", "text", "speaker"], *rows])
    real_access = os.access
    monkeypatch.setattr(prepare_vivos.os, "access", lambda path, mode: Path(path) != tmp_path
                        and real_access(path, mode))  # like /home, which a student cannot write to
    argv = ["--manifest", str(manifest), "--features", "waveform"]
    message = refusal(argv + ["--out", str(tmp_path / "new" / "data")])
    assert f"cannot be created: {tmp_path} is not writable" in message
    words = shlex.split(refusal(argv + ["--out", str(home)]).split("next to the corpus: ")[1])
    assert words[words.index("--out") + 1] == str(home / "my list_wave")
    prepare_vivos.main(words[2:])
    assert datasets.load_from_disk(str(home / "my list_wave"))["train"].num_rows > 0


def test_a_failed_replacement_puts_the_old_dataset_back(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    for name in ("dataset_dict.json", "prepare_summary.json"):
        (out / name).write_text("{}", encoding="utf-8")
    tmp = prepare_vivos.temporary_folder(out)
    tmp.mkdir()
    with pytest.raises(OSError):
        prepare_vivos.publish(tmp / "never written", out, tmp)
    assert sorted(p.name for p in out.iterdir()) == ["dataset_dict.json", "prepare_summary.json"]


@pytest.mark.skipif(os.name == "nt", reason="signals a POSIX process group")
def test_ctrl_c_with_worker_processes_prints_one_line_and_leaves_nothing(corpus, tmp_path):
    out = tmp_path / "interrupted"
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); import prepare_vivos; "
            "real = prepare_vivos.process_utterance; "
            "prepare_vivos.process_utterance = lambda *a: (time.sleep(0.2), real(*a))[1]; "  # slow enough to stop
            "prepare_vivos.main(['--vivos-dir', sys.argv[2], '--out', sys.argv[3], '--num-proc', '2', "
            "'--features', 'waveform'])")
    # A new session, signalled as a whole: Ctrl-C in a terminal reaches the workers too.
    run = subprocess.Popen([sys.executable, "-c", code, str(REPO), str(corpus), str(out)], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while not prepare_vivos.temporary_folder(out).exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(2)
    os.killpg(run.pid, signal.SIGINT)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    said = [line for line in err.splitlines() if "Interrupted" in line]
    assert len(said) == 1 and str(out) in said[0] and "run the same command again" in said[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my corpora"], "no dataset, no temporary folder left"


# ----------------------------------------------------------------------------- text encodings, test split

def rewrite(path: Path, encoding: str, bom: bytes = b"") -> None:
    path.write_bytes(bom + path.read_text(encoding="utf-8").encode(encoding, errors="replace"))


@pytest.mark.parametrize("encoding, bom", [("utf-16-le", b"\xff\xfe"), ("utf-16-be", b"\xfe\xff"),
                                           ("utf-8", b"\xef\xbb\xbf")])
def test_utf16_and_bom_files_read_like_utf8(corpus, encoding, bom):
    expected = prepare_vivos.find_vivos_utterances(corpus / "test", "test")
    for name in ("prompts.txt", "genders.txt"):
        rewrite(corpus / "test" / name, encoding, bom)
    assert prepare_vivos.find_vivos_utterances(corpus / "test", "test") == expected
    assert set(prepare_vivos.read_genders(corpus / "test" / "genders.txt").values()) == {"m", "f"}


def test_byte_order_marks_inside_a_joined_file_are_ignored(tmp_path):
    joined = tmp_path / "prompts.txt"
    joined.write_bytes("\ufeffSPK01_R001 XIN CHÀO\n\ufeffSPK02_R001 TẠM BIỆT\n".encode("utf-8"))
    assert prepare_vivos.read_lines(joined) == [(1, "SPK01_R001", "XIN CHÀO"), (2, "SPK02_R001", "TẠM BIỆT")]


def test_a_utf16_test_prompts_file_still_gives_the_test_speakers(corpus, tmp_path):
    rewrite(corpus / "test" / "prompts.txt", "utf-16")  # Python's utf-16 writes a BOM, as Notepad does
    out = tmp_path / "out"
    prepare_vivos.main(["--vivos-dir", str(corpus), "--out", str(out), "--features", "waveform"])
    test = datasets.load_from_disk(str(out))["test"]
    assert set(test["speaker"]) == {"VIVOSDEV01", "VIVOSDEV02", "VIVOSDEV03"} and test.num_rows == 36


@pytest.mark.parametrize("split, name", [("test", "prompts.txt"), ("train", "prompts.txt"),
                                         ("test", "genders.txt")])
def test_a_legacy_code_page_file_fails_naming_it(corpus, tmp_path, monkeypatch, split, name):
    path = corpus / split / name
    if name == "genders.txt":
        path.write_text(path.read_text(encoding="utf-8") + "VIVOSDEV04 f Đức\n", encoding="utf-8")
    rewrite(path, "cp1258")
    monkeypatch.setattr(prepare_vivos, "load_audio", no_audio_read)
    message = refusal(["--vivos-dir", str(corpus), "--out", str(tmp_path / "out")])
    assert str(path) in message and "not UTF-8" in message and "save it as UTF-8" in message
    assert "speaker" not in message and not (tmp_path / "out").exists()


def test_utf16_without_bom_fails_naming_the_file(corpus, tmp_path):
    rewrite(corpus / "test" / "prompts.txt", "utf-16-le")
    message = refusal(["--vivos-dir", str(corpus), "--out", str(tmp_path / "out")])
    assert str(corpus / "test" / "prompts.txt") in message and "UTF-16 without a byte-order mark" in message


def test_manifest_encodings(corpus, tmp_path):
    audio = sorted((corpus / "train" / "waves").glob("*/*.flac"))[:2]
    text = "path,text\n" + "".join(f"{path},khách sạn đẹp\n" for path in audio)
    manifest = tmp_path / "list.csv"
    manifest.write_bytes(b"\xff\xfe" + text.encode("utf-16-le"))
    items, _ = prepare_vivos.find_manifest_utterances(manifest)
    assert [item["raw_sentence"] for item in items] == ["khách sạn đẹp"] * 2
    manifest.write_bytes(text.encode("cp1258", errors="replace"))
    message = refusal(["--manifest", str(manifest), "--out", str(tmp_path / "out")])
    assert str(manifest) in message and "line 2" in message and "columns" not in message


def test_a_file_listed_twice_in_a_manifest_is_used_once_or_left_out_when_the_rows_disagree(corpus, tmp_path):
    audio = sorted((corpus / "train" / "waves" / "VIVOSSPK01").glob("*.flac"))[:3]
    text = ("path,text,split\n"
            f"{audio[0]},một,train\n{audio[0]},một,train\n"  # the same row twice
            f"{audio[1]},hai,train\n{audio[1]},ba,test\n"  # one recording, two transcripts and splits
            f"{audio[2]},bốn,train\n")
    manifest = tmp_path / "list.csv"
    manifest.write_text(text, encoding="utf-8")
    items, skipped = prepare_vivos.find_manifest_utterances(manifest)
    assert [(item["path"], item["raw_sentence"]) for item in items] == [(str(audio[0]), "một"),
                                                                        (str(audio[2]), "bốn")]
    assert sorted((row["id"], row["reason"], row["detail"]) for row in skipped) == [
        (audio[0].stem, "repeated manifest row", "row 3 repeats row 2; used once"),
        (audio[1].stem, "conflicting transcripts", "rows 4, 5 give this file different text, speaker or split")]


def test_a_test_folder_without_usable_utterances_fails_instead_of_borrowing_train_speakers(corpus, tmp_path):
    for path in (corpus / "test" / "waves").glob("*/*.flac"):
        path.rename(path.with_suffix(".mp3"))  # a format this script does not read: no test utterance pairs
    message = refusal(["--vivos-dir", str(corpus), "--out", str(tmp_path / "out")])
    assert str(corpus / "test") in message and "transcript without audio" in message
    assert not (tmp_path / "out").exists()


def test_a_test_folder_whose_audio_is_all_unreadable_fails(corpus, tmp_path):
    for path in (corpus / "test" / "waves").glob("*/*.flac"):
        path.write_bytes(b"not audio")
    message = refusal(["--vivos-dir", str(corpus), "--out", str(tmp_path / "out"), "--features", "waveform"])
    assert "nothing usable left in split(s) test" in message and not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- cut-off WAV files

def test_cut_off_wav_is_skipped_but_a_streamed_header_is_not(tmp_path):
    speech = (0.3 * np.sin(np.arange(16000) / 7)).astype(np.float32)
    whole = tmp_path / "whole.wav"
    sf.write(whole, speech, 16000, subtype="PCM_16")
    data = whole.read_bytes()
    cut, streamed = tmp_path / "cut.wav", tmp_path / "streamed.wav"
    cut.write_bytes(data[: len(data) // 2])
    # espeak-ng --stdout and other pipes cannot go back to write the length: they leave 0x7ffff000
    streamed.write_bytes(data[:4] + (0x7FFFF024).to_bytes(4, "little") + data[8:40]
                         + (0x7FFFF000).to_bytes(4, "little") + data[44:])
    item = {"id": "x", "speaker": "s", "gender": "", "raw_sentence": "xin chào", "split": "train"}

    def outcome(path):
        return prepare_vivos.process_utterance({**item, "path": str(path)}, "waveform", 80, 0.2, None)

    row, skip = outcome(cut)
    assert row is None and skip["reason"] == "truncated audio" and "32000" in skip["detail"]
    for path in (whole, streamed):
        row, skip = outcome(path)
        assert skip is None and len(row["input_values"]) == 16000


def test_the_recorded_command_can_be_pasted_back(waveform_data, vivos_dir):
    """prepare_summary.json's command (report.py prints it) is the call itself, paths with spaces quoted,
    whether the script ran from a shell, a test or a notebook cell."""
    command = json.loads((waveform_data / "prepare_summary.json").read_text(encoding="utf-8"))["command"]
    words = shlex.split(command)
    assert words[:2] == ["python", "prepare_vivos.py"]
    assert words[words.index("--vivos-dir") + 1] == str(vivos_dir)
    assert words[words.index("--out") + 1] == str(waveform_data)
