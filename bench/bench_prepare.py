"""Benchmark: prepare_vivos.py against the naive Hugging Face Whisper-blog preparation.

    python bench/bench_prepare.py [--speakers 12 --per-speaker 30]

Makes one espeak-ng VIVOS-shaped corpus, then prepares it (Whisper features, 80 mels) twice, each in a
fresh process so peak memory is its own:
  naive  datasets.map with WhisperFeatureExtractor, full 80 x 3000 float32 features, save_to_disk
  ours   prepare_vivos.py (streamed Arrow writes, trimmed float16 features)
and prints wall time, peak RSS and bytes on disk, with ours / naive ratios. It also prepares a corpus
twice the size with our script, to show that peak RSS stays flat as the corpus grows. The figures are
saved as a result file in bench/results/ (`python bench/write_results.py` then updates bench/RESULTS.md).
Needs espeak-ng and sox.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "sample_data"))
sys.path.insert(0, str(REPO / "bench"))


def naive_prepare(vivos_dir: Path, out: Path) -> None:
    """What the Whisper fine-tuning blog does, minus the Audio feature (it needs torchcodec now)."""
    import datasets
    import soundfile as sf
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(feature_size=80)
    splits = {}
    for split in ("train", "test"):
        lines = (vivos_dir / split / "prompts.txt").read_text(encoding="utf-8").splitlines()
        rows = [line.split(" ", 1) for line in lines if line.strip()]
        paths = [str(vivos_dir / split / "waves" / i.split("_")[0] / f"{i}.wav") for i, _ in rows]
        splits[split] = datasets.Dataset.from_dict({"path": paths, "sentence": [t for _, t in rows]})

    def prepare_dataset(batch):
        audio, rate = sf.read(batch["path"], dtype="float32")
        batch["input_features"] = extractor(audio, sampling_rate=rate).input_features[0]
        return batch

    dataset = datasets.DatasetDict(splits).map(prepare_dataset, remove_columns=["path"])
    dataset.save_to_disk(str(out))


def ours_prepare(vivos_dir: Path, out: Path) -> None:
    sys.path.insert(0, str(REPO))
    import prepare_vivos

    prepare_vivos.main(["--vivos-dir", str(vivos_dir), "--out", str(out), "--features", "whisper"])


def measure(variant: str, vivos_dir: Path, out: Path) -> dict:
    """Run one variant in a child process; returns seconds, peak RSS (MB) and bytes on disk."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_prepare as b, "
            "resource, time, json; from pathlib import Path; t = time.perf_counter(); "
            f"b.{variant}_prepare(Path({str(vivos_dir)!r}), Path({str(out)!r})); "
            "print('RESULT', json.dumps({'seconds': time.perf_counter() - t, "
            "'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "HF_DATASETS_CACHE": str(out.parent / "hf-cache"),
                               "HF_HUB_OFFLINE": "1"})
    result = json.loads(done.stdout.rsplit("RESULT", 1)[1])
    result["disk_mb"] = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20
    cache = out.parent / "hf-cache"
    result["disk_mb"] += sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) / 2**20
    shutil.rmtree(cache, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--speakers", type=int, default=12, help="train speakers (test: 3)")
    parser.add_argument("--per-speaker", type=int, default=30, help="utterances per speaker")
    args = parser.parse_args(argv)
    from make_vivos_like import make_corpus

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        small = make_corpus(tmp / "small", args.speakers, 3, args.per_speaker, args.per_speaker)
        large = make_corpus(tmp / "large", args.speakers * 2, 3, args.per_speaker, args.per_speaker, seed=1)
        n_small = sum(1 for _ in small.glob("*/waves/*/*.wav"))
        results = {
            "naive": measure("naive", small, tmp / "naive"),
            "ours": measure("ours", small, tmp / "ours"),
            "ours, corpus x2": measure("ours", large, tmp / "ours2"),
        }
    print(f"\n{n_small} utterances (x2: {2 * n_small - 3 * args.per_speaker} for the flat-memory check), "
          "Whisper features, 80 mels")
    print(f"{'variant':<17}{'seconds':>9}{'peak RSS MB':>13}{'disk MB':>10}")
    for name, r in results.items():
        print(f"{name:<17}{r['seconds']:>9.1f}{r['peak_rss_mb']:>13.0f}{r['disk_mb']:>10.1f}")
    naive, ours, ours2 = results["naive"], results["ours"], results["ours, corpus x2"]
    print(f"ratios ours/naive: time {ours['seconds'] / naive['seconds']:.2f}, "
          f"peak RSS {ours['peak_rss_mb'] / naive['peak_rss_mb']:.2f}, disk {ours['disk_mb'] / naive['disk_mb']:.3f}")
    print(f"ours, corpus x2 / corpus x1: peak RSS {ours2['peak_rss_mb'] / ours['peak_rss_mb']:.2f}")
    from write_results import save_result

    ratios = {"time": ours["seconds"] / naive["seconds"], "peak_rss": ours["peak_rss_mb"] / naive["peak_rss_mb"],
              "disk": ours["disk_mb"] / naive["disk_mb"], "peak_rss_x2": ours2["peak_rss_mb"] / ours["peak_rss_mb"]}
    save_result("bench_prepare", {"speakers": args.speakers, "per_speaker": args.per_speaker,
                                  "utterances": n_small, "features": "whisper, 80 mels"},
                {"variants": {name: {key: round(value, 2) for key, value in r.items()} for name, r in results.items()},
                 "ratios": {key: round(value, 3) for key, value in ratios.items()}})


if __name__ == "__main__":
    main()
