"""Quick start: the whole path on the bundled Vietnamese sample, in a few minutes on a CPU, offline too.

    python quickstart.py

Runs, and prints, the same commands you will run on VIVOS:
  prepare_vivos.py (Whisper features and waveforms) -> train_whisper.py, train_wav2vec2.py,
  train_deepspeech.py -> report.py -> transcribe.py on a test recording.
Writes everything under --out (default quickstart/): data/, runs/, report/ and transcripts/.

Online, Whisper and Wav2Vec2 start from small pretrained checkpoints (openai/whisper-tiny,
facebook/wav2vec2-base). Offline (no Hugging Face Hub, as on a locked-down machine) they start from
tiny random models built from configs: their numbers then only show that the pipeline works. The
DeepSpeech2 model is trained from scratch in both cases and really learns the sample.
Running it again continues where it stopped (each step is skipped or resumed when its output exists).
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent
SAMPLE = REPO / "sample_data" / "vivos_sample"
ONLINE_BASES = {"whisper": "openai/whisper-tiny", "wav2vec2": "facebook/wav2vec2-base"}


def hub_reachable() -> bool:
    """True when the Hugging Face Hub answers within a few seconds (and HF_HUB_OFFLINE is not set)."""
    try:
        from huggingface_hub import HfApi
        from huggingface_hub.constants import HF_HUB_OFFLINE

        if HF_HUB_OFFLINE:
            return False
        HfApi().model_info(ONLINE_BASES["whisper"], timeout=5)
        return True
    except Exception:  # no network, proxy, DNS, offline mode: all mean "offline"
        return False


def offline_bases(folder: Path) -> dict[str, str]:
    """Tiny random Whisper and Wav2Vec2 built from configs (no download), saved once under `folder`."""
    sys.path.insert(0, str(REPO / "sample_data"))
    from offline_models import make_tiny_wav2vec2, make_tiny_whisper

    bases = {"whisper": folder / "tiny-whisper-random", "wav2vec2": folder / "tiny-wav2vec2-random"}
    if not (bases["whisper"] / "config.json").is_file():
        make_tiny_whisper(bases["whisper"])
    if not (bases["wav2vec2"] / "config.json").is_file():
        make_tiny_wav2vec2(bases["wav2vec2"])
    return {family: str(path) for family, path in bases.items()}


def run_step(title: str, script: str, *args: str) -> float:
    """Run one of our scripts as the user would from a terminal; returns its wall time in seconds."""
    command = [sys.executable, str(REPO / script), *map(str, args)]
    print(f"\n=== {title}\n$ python {script} {' '.join(quoted(a) for a in args)}", flush=True)
    start = time.perf_counter()
    # The sample's models are small: one thread per process avoids threads waiting on each other, which
    # made training steps several times slower on a 2-core machine (measured).
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return time.perf_counter() - start


# Copied from train_whisper.quoted
def quoted(path) -> str:
    """A path as the shell of this machine reads it back from a pasted command: POSIX quoting, or double
    quotes on Windows (cmd.exe knows no single quotes; Windows paths hold no double quote)."""
    text = str(path)
    if os.name != "nt":
        return shlex.quote(text)
    return text if re.fullmatch(r"[\w@%+=:,./\\-]+", text, re.ASCII) else f'"{text}"'


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("quickstart"), help="where everything is written")
    parser.add_argument("--offline", action="store_true", help="use tiny random models even if the Hub answers")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    data, runs = out / "data", out / "runs"
    online = not args.offline and hub_reachable()
    bases = ONLINE_BASES if online else offline_bases(out / "base_models")
    print("Hugging Face Hub reachable: starting from " + ", ".join(bases.values()) if online else
          "Offline: Whisper and Wav2Vec2 start from tiny random models; their numbers only show that the "
          "pipeline works. DeepSpeech2 is trained from scratch and really learns.")

    times = {}
    for features in ("whisper", "waveform"):
        if not (data / f"sample_{features}" / "prepare_summary.json").is_file():
            times[f"prepare ({features})"] = run_step(
                f"Prepare the sample ({features} features)", "prepare_vivos.py", "--vivos-dir", SAMPLE,
                "--out", data / f"sample_{features}", "--features", features, "--val-ratio", "0.1")
    # A small GRU without pitch features or speed perturbation: on the sample's 160 train utterances it leaves
    # CTC's blank-only start within these 12 epochs, where the default LSTM with pitch does not (bench/RESULTS.md).
    times["train DeepSpeech2"] = run_step(
        "Train DeepSpeech2 from scratch", "train_deepspeech.py", "--data", data / "sample_waveform",
        "--output-dir", runs / "deepspeech2", "--rnn-type", "gru", "--no-pitch", "--rnn-layers", "2",
        "--rnn-hidden", "128", "--batch-size", "8", "--epochs", "12", "--speed-perturb", "0", "--train-eval-size", "40")
    times["train Whisper"] = run_step(
        "Fine-tune Whisper", "train_whisper.py", "--data", data / "sample_whisper", "--model", bases["whisper"],
        "--output-dir", runs / "whisper", "--epochs", "3", "--batch-size", "8", "--lr",
        "1e-5" if online else "3e-3", "--train-eval-size", "20", "--generation-max-length", "40")
    times["train Wav2Vec2"] = run_step(
        "Fine-tune Wav2Vec2 (CTC)", "train_wav2vec2.py", "--data", data / "sample_waveform", "--model",
        bases["wav2vec2"], "--output-dir", runs / "wav2vec2", "--epochs", "3", "--batch-size", "8", "--lr",
        "1e-4" if online else "3e-3", "--train-eval-size", "20")
    times["report"] = run_step("Write the report", "report.py", "--runs", runs / "whisper", runs / "wav2vec2",
                               runs / "deepspeech2", "--data", data / "sample_whisper", "--out", out / "report",
                               "--lang", "en", "--dpi", "120")
    recording = SAMPLE / "test" / "waves" / "VIVOSDEV01" / "VIVOSDEV01_R001.flac"
    times["transcribe"] = run_step("Transcribe a test recording with the DeepSpeech2 model", "transcribe.py",
                                   "--model", runs / "deepspeech2", recording, "--output-dir", out / "transcripts")

    print("\n=== Done. Time per step:")
    for step, seconds in times.items():
        print(f"  {step:<22}{seconds:>7.0f} s")
    print(f"  {'total':<22}{sum(times.values()):>7.0f} s")
    print(f"Open {out / 'report' / 'report.html'}; the reference of that recording: "
          f"{(SAMPLE / 'test' / 'prompts.txt').read_text(encoding='utf-8').splitlines()[0]}")


if __name__ == "__main__":
    main()
