"""Benchmark: what each trainer's `--estimate` says on this machine for the real model shapes, and the
full-VIVOS run time it implies.

    python bench/bench_estimates.py                        # all three models (minutes on a CPU)
    python bench/bench_estimates.py --models DeepSpeech2   # one of them

Prepares the bundled sample (sample_data/vivos_sample) with `prepare_vivos.py --features whisper` and
`--features waveform` into a temporary folder, saves whisper-small's and wav2vec2-base's shapes with random
weights (sample_data/offline_models.py: nothing is downloaded; time, memory and checkpoint size depend on the
shape, not on the weights), and runs each trainer with `--estimate` as a subprocess, as a user would:
whisper-small with `--preset low-vram` (the README's command), wav2vec2-base and DeepSpeech2 with the
trainer's defaults. Each estimate's steps per epoch are the sample's; the full-VIVOS figures are extrapolated
from its seconds per optimizer step (see VIVOS_TRAIN_UTTERANCES), training only. The figures are saved as a
result file in bench/results/ (`python bench/write_results.py` then updates bench/RESULTS.md).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data" / "vivos_sample"
sys.path[:0] = [str(REPO / "bench"), str(REPO / "sample_data"), str(REPO)]
VIVOS_CORPUS_UTTERANCES = 11660  # VIVOS's train/ folder
# prepare_vivos.py holds out --val-ratio (0.1) of them for validation, by whole speakers until the share is
# reached: 11,660 x 0.9 = 10,494 at most, less part of one more speaker (46 speakers, about 250 utterances each).
VIVOS_TRAIN_UTTERANCES = 10400
VIVOS_MEAN_SECONDS = round(15.7 * 3600 / (11660 + 760), 2)  # 15.7 h in its train and test clips
# What each model is trained with: trainer, prepared features, random-weight model to save (None: the trainer
# builds it), the user's flags, and the optimizer steps --estimate times (fewer for slower steps).
MODELS = {
    "whisper-small": {"script": "train_whisper.py", "features": "whisper", "maker": ("make_tiny_whisper", "small"),
                      "flags": ["--preset", "low-vram"], "steps": 1},
    "wav2vec2-base": {"script": "train_wav2vec2.py", "features": "waveform", "maker": ("make_tiny_wav2vec2", "base"),
                      "flags": [], "steps": 2},
    "DeepSpeech2": {"script": "train_deepspeech.py", "features": "waveform", "maker": None, "flags": [], "steps": 5},
}


def run(command: list, what: str) -> float:
    """Run a command from the repository root, offline; its seconds. A failure stops the bench with its output."""
    start = time.perf_counter()
    result = subprocess.run([str(part) for part in command], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    if result.returncode:
        sys.exit(f"{what} failed (exit {result.returncode}):\n{(result.stdout + result.stderr)[-4000:]}")
    return time.perf_counter() - start


def trainer_settings(script: str, argv: list[str]) -> dict:
    """Batch, accumulation, epochs and optimizer the trainer resolves from these flags on this machine."""
    module = __import__(Path(script).stem)
    args = module.parse_args(argv)
    with contextlib.redirect_stdout(io.StringIO()):  # its note on the 8-bit optimizer is not ours to print
        optim = module.resolve_optimizer(args.optim)
    return {"batch_size": args.batch_size, "grad_accum": args.grad_accum, "epochs": args.epochs, "optim": optim,
            "gradient_checkpointing": bool(getattr(args, "gradient_checkpointing", False))}


def describe(flags: list[str], resolved: dict) -> str:
    """The settings as the results table shows them."""
    extra = ", gradient checkpointing" if resolved["gradient_checkpointing"] else ""
    return (f"{' '.join(flags) or 'trainer defaults'}: batch {resolved['batch_size']} x {resolved['grad_accum']}, "
            f"{resolved['epochs']:g} epochs, {resolved['optim']}{extra}")


def vivos_figures(seconds_per_step: float, resolved: dict) -> dict:
    """Training minutes per epoch and for all epochs on full VIVOS, from the sample's seconds per step."""
    steps = math.ceil(VIVOS_TRAIN_UTTERANCES / (resolved["batch_size"] * resolved["grad_accum"]))
    epoch_minutes = steps * seconds_per_step / 60
    return {"vivos_steps_per_epoch": steps, "vivos_epoch_minutes": round(epoch_minutes, 1),
            "vivos_total_minutes": round(epoch_minutes * resolved["epochs"], 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS),
                        help="models to estimate (default: all)")
    args = parser.parse_args(argv)

    import offline_models
    import torch

    bench_start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench estimates ") as tmp:
        tmp = Path(tmp)
        data = {}
        for features in sorted({MODELS[name]["features"] for name in args.models}):
            data[features] = tmp / f"vivos_sample {features}"
            seconds = run([sys.executable, "prepare_vivos.py", "--vivos-dir", SAMPLE, "--out", data[features],
                           "--features", features], f"prepare_vivos.py --features {features}")
            print(f"prepared the sample ({features}) in {seconds:.0f} s", flush=True)
        summary = json.loads((data[sorted(data)[0]] / "prepare_summary.json").read_text(encoding="utf-8"))
        for name in args.models:
            spec = MODELS[name]
            model = "scratch"
            if spec["maker"]:
                function, size = spec["maker"]
                model = getattr(offline_models, function)(tmp / f"{name} random", size=size)
            out = tmp / f"{name} estimate"
            seconds = run([sys.executable, spec["script"], "--data", data[spec["features"]], "--model", model,
                           "--output-dir", out, *spec["flags"], "--estimate", "--estimate-steps", spec["steps"]],
                          f"{spec['script']} --estimate")
            estimate = json.loads((out / "estimate.json").read_text(encoding="utf-8"))
            resolved = trainer_settings(spec["script"], ["--data", "x", "--output-dir", "x", *spec["flags"]])
            row = {"model": name, "settings": describe(spec["flags"], resolved), **resolved,
                   "estimate_steps": spec["steps"], "wall_seconds": round(seconds), "estimate": estimate}
            if estimate.get("seconds_per_step") is not None:
                row.update(vivos_figures(estimate["seconds_per_step"], resolved))
            rows.append(row)
            print(f"{name}: {estimate.get('seconds_per_step')} s/step, peak {estimate['peak_memory_mb']} MB, "
                  f"sample epoch {estimate.get('epoch_minutes')} min, VIVOS epoch {row.get('vivos_epoch_minutes')} "
                  f"min, total {row.get('vivos_total_minutes')} min ({seconds:.0f} s)", flush=True)
    bench_minutes = (time.perf_counter() - bench_start) / 60
    print(f"bench time: {bench_minutes:.1f} min")
    train = summary["splits"]["train"]
    from write_results import save_result

    save_result("bench_estimates",
                {"data": "sample_data/vivos_sample (synthetic, espeak-ng)",
                 "sample_train_utterances": train["utterances"],
                 "sample_mean_seconds": train["duration_seconds"]["mean"],
                 "vivos_corpus_utterances": VIVOS_CORPUS_UTTERANCES,
                 "vivos_train_utterances": VIVOS_TRAIN_UTTERANCES, "vivos_mean_seconds": VIVOS_MEAN_SECONDS,
                 "val_ratio": summary["val_ratio"], "weights": "random, real shapes, no download"},
                {"device": "cuda" if torch.cuda.is_available() else "cpu", "bench_minutes": round(bench_minutes, 1),
                 "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
