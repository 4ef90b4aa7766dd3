"""Benchmark: Whisper on the CPU through faster-whisper (CTranslate2, int8 and float32) against the transformers
pipeline, as transcribe.py runs each (`--engine`), on the same weights and the same clips.

    python bench/bench_faster_whisper.py                 # a few minutes on 2 cores
    python bench/bench_faster_whisper.py --windows 2 --tokens 40

Two parts:
1. Transcripts. A small Whisper with the real 30-s input learns the first CLIPS clips of the bundled sample
   (sample_data/offline_models.py: overfit_whisper), is exported with transcribe.py's export (int8, float32),
   and each engine transcribes the clips through transcribe.main: WER and CER against the references, and
   each engine's difference from the pipeline.
2. Speed and memory, with whisper-small's shape (random weights: nothing downloaded). Each test window is sample
   clips joined to about 25 s (one 30-s window, decoded without timestamps as transcribe.py decodes a clip of up
   to 30 s). A random model never stops on its own, so every engine generates exactly TOKENS tokens per window
   (end-of-text is suppressed until then): both do the same work, one encoder pass and TOKENS decoder steps per
   window. Each engine runs in its own process, loading the model as transcribe.py does, decoding one warm-up
   window, then WINDOWS windows; RTF = decode seconds / audio seconds, peak memory = the process's peak resident
   set (Python, torch and the model). Both engines use the same number of CPU threads.
The figures are saved as a result file in bench/results/ (`python bench/write_results.py` then updates
bench/RESULTS.md).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "sample_data"))
sys.path.insert(0, str(REPO / "bench"))

SAMPLE = REPO / "sample_data" / "vivos_sample" / "test"
ENGINES = ("transformers", "faster-whisper int8", "faster-whisper float32")
# The transcript part's model: Whisper's 30-s input and vocabulary size, small enough to learn a few clips in a
# minute of full-batch steps.
LEARNT_SHAPE = {"chunk_length": 30, "d_model": 64, "encoder_layers": 1, "decoder_layers": 2,
                "encoder_attention_heads": 2, "decoder_attention_heads": 2, "encoder_ffn_dim": 256,
                "decoder_ffn_dim": 256, "max_target_positions": 448, "vocab_size": 51865}
WINDOW_SECONDS = 25.0  # each speed window: sample clips joined up to this length


def sample_clips() -> tuple[list[Path], list[str]]:
    """The sample's test clips and their normalised reference text."""
    import transcribe

    prompts = dict(line.split(" ", 1) for line in (SAMPLE / "prompts.txt").read_text(encoding="utf-8").splitlines())
    paths = sorted((SAMPLE / "waves").rglob("*.flac"))
    return paths, [transcribe.normalize_text(prompts[path.stem]) for path in paths]


def transcripts(work: Path, count: int, steps: int) -> dict:
    """Part 1: each engine's transcripts of `count` clips a small Whisper has learnt, with WER and CER."""
    import torch
    import train_whisper
    import transcribe
    from offline_models import make_tiny_whisper, overfit_whisper

    paths, texts = (items[:count] for items in sample_clips())
    run = work / "learnt"
    folder = make_tiny_whisper(run / "best_model", shape=LEARNT_SHAPE, full_vocabulary=True)
    torch.set_num_threads(1)  # tiny tensors: a second thread only waits
    overfit_whisper(folder, [transcribe.load_audio(path) for path in paths], texts, steps=steps)
    for quantization in ("int8", "float32"):
        transcribe.export_ct2(folder, "whisper", quantization)
    rows = {}
    for engine in ENGINES:
        name, _, quantization = engine.partition(" ")
        # The engine picks the export the device prefers (int8 on a CPU): hide the other one.
        hidden = folder / "ct2-int8" if quantization == "float32" else None
        if hidden:
            hidden.rename(folder / "int8-hidden")
        with contextlib.redirect_stdout(io.StringIO()):
            result = transcribe.main(["--model", str(run), *map(str, paths), "--engine", name, "--device", "cpu",
                                      "--format", "json", "--output-dir", str(work / engine)])
        if hidden:
            (folder / "int8-hidden").rename(hidden)
        predictions = [item["text"] for item in result["files"]]
        scores = train_whisper.compute_wer_cer(texts, predictions)
        rows[engine] = {"wer": round(scores["wer"], 4), "cer": round(scores["cer"], 4), "predictions": predictions}
    for row in rows.values():
        row["wer_diff"] = round(row["wer"] - rows["transformers"]["wer"], 4)
        row["cer_diff"] = round(row["cer"] - rows["transformers"]["cer"], 4)
        row["same_text"] = row["predictions"] == rows["transformers"]["predictions"]
    return {"clips": count, "steps": steps, "references": texts, "engines": rows}


def speed_windows(count: int):
    """`count` + 1 waveforms of sample clips joined to about WINDOW_SECONDS each (the first is the warm-up)."""
    import numpy as np
    import transcribe

    audio = [transcribe.load_audio(path) for path in sample_clips()[0]]
    windows, current, index = [], [], 0
    while len(windows) < count + 1:
        current.append(audio[index % len(audio)])
        index += 1
        if sum(map(len, current)) + len(audio[index % len(audio)]) > WINDOW_SECONDS * 16000:
            windows.append(np.concatenate(current))
            current = []
    return windows


def peak_rss_kb() -> int:
    """This process's peak resident set in kB: VmHWM on Linux (ru_maxrss would include the parent's peak, kept
    across fork and exec), ru_maxrss elsewhere."""
    status = Path("/proc/self/status")
    if status.is_file():
        return int(next(line.split()[1] for line in status.read_text().splitlines() if line.startswith("VmHWM:")))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // (1024 if sys.platform == "darwin" else 1)


def worker(engine: str, model_dir: Path, windows: int, tokens: int) -> dict:
    """One engine in this process: load as transcribe.py does, decode the warm-up window, time the others."""
    import torch
    import transcribe

    name, _, quantization = engine.partition(" ")
    waveforms = speed_windows(windows)
    # Text tokens only: a random model's control and timestamp tokens would make the engines cut and re-decode
    # windows each in its own way. Masking a set of logits costs the same in both.
    eot = json.loads((model_dir / "generation_config.json").read_text(encoding="utf-8"))["eos_token_id"]
    vocab_size = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))["vocab_size"]
    not_text = list(range(eot, vocab_size))
    if name == "transformers":
        model = transcribe.load_recognizer(model_dir, "whisper", "cpu")
        generation = model.model.generation_config
        generation.min_new_tokens = generation.max_new_tokens = tokens  # end-of-text suppressed until then
        generation.suppress_tokens = not_text

        def decode(batch):
            return transcribe.transcribe_hf(model, "whisper", batch, 30.0, 8)
    else:
        model = transcribe.load_faster_whisper(model_dir / f"ct2-{quantization}", model_dir, "cpu")
        # CTranslate2 stops at half of max_length (the 4 prompt tokens + the new ones): room for `tokens` exactly.
        model[1].update(suppress_tokens=not_text, max_new_tokens=2 * tokens - 4)
        generated = sum(len(piece.tokens) for piece in model[0].transcribe(waveforms[0], without_timestamps=True,
                                                                           **model[1])[0])
        if generated != tokens:
            raise SystemExit(f"faster-whisper generated {generated} tokens per window, not {tokens}")

        def decode(batch):
            return transcribe.transcribe_faster_whisper(model, batch, 30.0)
    decode(waveforms[:1])
    started = time.perf_counter()
    decode(waveforms[1:])
    seconds = time.perf_counter() - started
    audio_seconds = sum(len(w) for w in waveforms[1:]) / 16000
    peak_kb = peak_rss_kb()
    return {"engine": engine, "threads": torch.get_num_threads(), "windows": windows, "tokens_per_window": tokens,
            "audio_seconds": round(audio_seconds, 2), "decode_seconds": round(seconds, 2),
            "rtf": round(seconds / audio_seconds, 4), "peak_rss_mb": round(peak_kb / 1024)}


def speed(work: Path, windows: int, tokens: int, threads: int) -> list[dict]:
    """Part 2: every engine in its own process on whisper-small's shape."""
    import transcribe
    from offline_models import make_tiny_whisper

    folder = make_tiny_whisper(work / "whisper-small" / "best_model", size="small", full_vocabulary=True)
    for quantization in ("int8", "float32"):
        transcribe.export_ct2(folder, "whisper", quantization)
    rows = []
    for engine in ENGINES:
        command = [sys.executable, __file__, "--worker", engine, "--model-dir", str(folder), "--windows",
                   str(windows), "--tokens", str(tokens), "--threads", str(threads)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode:
            raise SystemExit(f"{engine} failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"{engine}: RTF {rows[-1]['rtf']}, peak {rows[-1]['peak_rss_mb']} MB", flush=True)
    base = rows[0]["rtf"]
    for row in rows:
        row["speedup"] = round(base / row["rtf"], 2)
    return rows


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=3, help="clips learnt and transcribed in part 1 (default 3)")
    parser.add_argument("--steps", type=int, default=120, help="training steps on them (default 120)")
    parser.add_argument("--windows", type=int, default=3, help="timed 25-s windows per engine (default 3)")
    parser.add_argument("--tokens", type=int, default=60, help="tokens generated per window (default 60)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads of every engine")
    parser.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.worker:
        with contextlib.redirect_stdout(sys.stderr):
            row = worker(args.worker, args.model_dir, args.windows, args.tokens)
        print(json.dumps(row))
        return None
    from write_results import save_result

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        part1 = transcripts(Path(tmp), args.clips, args.steps)
        for engine, row in part1["engines"].items():
            print(f"{engine}: WER {row['wer']}, CER {row['cer']}, same text as transformers: {row['same_text']}")
        torch.set_num_threads(args.threads)
        part2 = speed(Path(tmp), args.windows, args.tokens, args.threads)
    settings = {"clips": args.clips, "steps": args.steps, "windows": args.windows, "window_seconds": WINDOW_SECONDS,
                "tokens_per_window": args.tokens, "threads": args.threads,
                "speed_model": "whisper-small shape, random weights", "transcript_model": LEARNT_SHAPE}
    figures = {"transcripts": part1, "speed": part2, "bench_minutes": round((time.perf_counter() - started) / 60, 1)}
    save_result("bench_faster_whisper", settings, figures)
    return figures


if __name__ == "__main__":
    main()
