"""Benchmark: peak GPU memory and speed of train_whisper.py's --preset bundles on whisper-small.

    python bench/bench_whisper_memory.py                    # on a machine with an NVIDIA GPU
    python bench/bench_whisper_memory.py --presets low-vram --steps 10

Builds whisper-small's architecture from its published shape (d_model 768, 12+12 layers, 12 heads,
FFN 3072, vocab 51865, 80 mels) with random weights, so nothing is downloaded. For the full fine-tune
(train_whisper.py's defaults) and each preset it runs a few optimizer steps on 30 s inputs with the
script's own Trainer settings (batch, accumulation, precision, gradient checkpointing, optimizer),
and prints peak GPU memory allocated and training samples/s next to the full fine-tune's; the figures are
saved as a result file in bench/results/ (`python bench/write_results.py` then updates bench/RESULTS.md).
Target: low-vram below 3.5 GB peak allocated (a 4 GB laptop GPU), at no less than half the full
fine-tune's samples/s. On a machine without a GPU it says so, saves nothing and exits 0.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
LOW_VRAM_TARGET_GB = 3.5
# openai/whisper-small's config.json, the parts that set its size.
WHISPER_SMALL = {"d_model": 768, "encoder_layers": 12, "decoder_layers": 12, "encoder_attention_heads": 12,
                 "decoder_attention_heads": 12, "encoder_ffn_dim": 3072, "decoder_ffn_dim": 3072,
                 "vocab_size": 51865, "num_mel_bins": 80, "max_source_positions": 1500, "max_target_positions": 448,
                 "decoder_start_token_id": 50258, "pad_token_id": 50257, "eos_token_id": 50257}
LABEL_TOKENS = 40  # a long VIVOS transcript with Whisper's prefix


def random_batches(count: int):
    """30 s log-Mel inputs and label token ids, as the trainer's collator hands them over."""
    import torch

    class RandomUtterances(torch.utils.data.Dataset):
        def __len__(self):
            return count

        def __getitem__(self, index):
            generator = torch.Generator().manual_seed(index)
            return {"input_features": torch.randn(80, 3000, generator=generator),
                    "labels": torch.randint(0, 50257, (LABEL_TOKENS,), generator=generator)}

    return RandomUtterances()


def measure(preset: str | None, steps: int, skip: int) -> dict:
    """Peak memory allocated (GB) and samples/s of a few training steps with train_whisper's settings."""
    import torch
    import train_whisper
    from transformers import Trainer, TrainerCallback, WhisperConfig, WhisperForConditionalGeneration

    with tempfile.TemporaryDirectory() as out:
        argv = ["--data", "unused", "--output-dir", out, "--max-steps", str(skip + steps), "--num-workers", "0"]
        args = train_whisper.parse_args(argv + (["--preset", preset] if preset else []))
        precision, optim = train_whisper.resolve_precision(args.precision), train_whisper.resolve_optimizer(args.optim)
        config = WhisperConfig(**WHISPER_SMALL, use_cache=not args.gradient_checkpointing,
                               apply_spec_augment=args.spec_augment, mask_time_prob=args.mask_time_prob)
        torch.manual_seed(0)
        model = train_whisper.prepare_for_training(WhisperForConditionalGeneration(config), args)
        # Only training is measured: no evaluation, checkpoints or logs.
        training_args = dataclasses.replace(train_whisper.training_arguments(args, precision, optim),
                                            eval_strategy="no", save_strategy="no", load_best_model_at_end=False,
                                            report_to="none", logging_strategy="no", disable_tqdm=True)

        class StepTimes(TrainerCallback):
            """When each optimizer step ended (after the GPU finished it)."""

            def __init__(self):
                self.times = []

            def on_step_end(self, args, state, control, **kwargs):
                torch.cuda.synchronize()
                self.times.append(time.perf_counter())

        clock = StepTimes()
        samples_per_step = args.batch_size * args.grad_accum
        trainer = Trainer(model=model, args=training_args, callbacks=[clock],
                          train_dataset=random_batches(samples_per_step * (skip + steps)))
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        try:
            trainer.train()
            peak = torch.cuda.max_memory_allocated() / 1e9
            # Timed from the end of the first `skip` steps (CUDA start-up, allocator warm-up).
            speed = samples_per_step * steps / (clock.times[-1] - clock.times[skip - 1])
        except torch.cuda.OutOfMemoryError:
            peak, speed = float("nan"), 0.0
        del trainer, model
        gc.collect()
        torch.cuda.empty_cache()
    return {"preset": preset or "full fine-tune", "batch": f"{args.batch_size} x {args.grad_accum}",
            "checkpointing": args.gradient_checkpointing, "optimizer": optim, "precision": precision,
            "peak_gb": peak, "samples_per_s": speed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["low-vram", "t4", "a100"],
                        help="presets to measure besides the full fine-tune (default: all)")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps measured per preset")
    parser.add_argument("--skip", type=int, default=2, help="first steps not timed (start-up), at least 1")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("no GPU: this benchmark measures CUDA memory and speed; run it on a machine with an NVIDIA GPU "
              "(a Colab T4 will do). Nothing was measured.")
        return 0
    sys.path.insert(0, str(REPO))
    print(f"whisper-small shape, random weights, 30 s inputs, {args.steps} timed steps each; "
          f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    rows = [measure(preset, args.steps, args.skip) for preset in [None, *args.presets]]
    full_speed = rows[0]["samples_per_s"]
    for row in rows:
        row["vs_full"] = row["samples_per_s"] / full_speed if full_speed else None
    print(f"\n{'setting':<16}{'batch':>8}{'ckpt':>6}{'optimizer':>18}{'precision':>10}{'peak GB':>9}"
          f"{'samples/s':>11}{'vs full':>9}")
    for row in rows:
        ratio = row["vs_full"] if row["vs_full"] is not None else float("nan")
        print(f"{row['preset']:<16}{row['batch']:>8}{'yes' if row['checkpointing'] else 'no':>6}{row['optimizer']:>18}"
              f"{row['precision']:>10}{row['peak_gb']:>9.2f}{row['samples_per_s']:>11.2f}{ratio:>8.2f}x")
    low = next((row for row in rows if row["preset"] == "low-vram"), None)
    if low:
        ratio = low["samples_per_s"] / full_speed if full_speed else float("nan")
        print(f"\nlow-vram target: peak {low['peak_gb']:.2f} GB < {LOW_VRAM_TARGET_GB} GB: "
              f"{'met' if low['peak_gb'] < LOW_VRAM_TARGET_GB else 'NOT met'}; speed {ratio:.2f}x the full "
              f"fine-tune's (>= 0.5x): {'met' if ratio >= 0.5 else 'NOT met'}")
    from write_results import save_result

    save_result("bench_whisper_memory", {"model": "whisper-small shape, random weights", "input_seconds": 30,
                                         "steps": args.steps, "skip": args.skip, "target_low_vram_gb": LOW_VRAM_TARGET_GB},
                {"gpu": torch.cuda.get_device_name(0),
                 "rows": [{key: (None if isinstance(value, float) and value != value else value)
                           for key, value in row.items()} for row in rows]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
