"""Does train_deepspeech.py with its CPU defaults learn? Trains one DeepSpeech2 from scratch and scores it.

    python bench/bench_deepspeech_learning.py                 # about 1 GB of disk in a temporary folder
    python bench/bench_deepspeech_learning.py --work-dir /tmp/ds2-bench --keep

Makes a VIVOS-shaped espeak-ng corpus (sample_data/make_vivos_like.py): 14 train voices x 60 utterances
and 3 test voices x 60 utterances whose sentences never occur in train. prepare_vivos.py holds out 2 of
the train voices (one per gender) for validation, leaving 720 train utterances of 12 voices; the test
split is 180 utterances of 3 unseen voices reading unseen sentences. Then train_deepspeech.py trains a
DeepSpeech2 from scratch with its defaults (only --data and --output-dir given, plus anything after
`--`), and the test CER/WER (with the run's decoder, by default the word language model of the train text,
and with greedy decoding of the same model), epochs and wall time are printed and saved as a result file in bench/results/
(`python bench/write_results.py` then updates bench/RESULTS.md).

Target: CER <= 0.05 and WER <= 0.13 on the test split after 9 epochs, in about 7 minutes on 2 CPU cores.
Needs espeak-ng and sox.
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import datasets
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "sample_data"))
sys.path.insert(0, str(REPO / "bench"))

import modeling_deepspeech2  # noqa: E402
import prepare_vivos  # noqa: E402
import train_deepspeech  # noqa: E402
from make_vivos_like import make_corpus  # noqa: E402
from write_results import save_result  # noqa: E402

TARGET = {"cer": 0.05, "wer": 0.13}
CORPUS = {"train_speakers": 14, "train_per_speaker": 60, "test_speakers": 3, "test_per_speaker": 60, "seed": 0}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, help="where corpus, dataset and run go (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (default: delete a temporary one)")
    parser.add_argument("train_args", nargs="*", help="extra train_deepspeech.py flags, after `--`")
    args = parser.parse_args(argv)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="ds2-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        began = time.perf_counter()
        corpus = work / "corpus"
        if not (corpus / "test" / "prompts.txt").is_file():
            make_corpus(corpus, **CORPUS)
        data = work / "data"
        if not (data / "prepare_summary.json").is_file():
            prepare_vivos.main(["--vivos-dir", str(corpus), "--out", str(data), "--features", "waveform",
                                "--val-ratio", "0.1", "--seed", "0"])
        splits = json.loads((data / "prepare_summary.json").read_text(encoding="utf-8"))["splits"]
        sizes = ", ".join(f"{name} {s['utterances']} utterances / {s['speakers']} voices" for name, s in splits.items())
        print(f"corpus and dataset ready in {time.perf_counter() - began:.0f} s: {sizes}")

        run = work / "run"
        began = time.perf_counter()
        train_deepspeech.main(["--data", str(data), "--output-dir", str(run), *args.train_args])
        seconds = time.perf_counter() - began

        metrics = json.loads((run / "test_metrics.json").read_text(encoding="utf-8"))
        info = json.loads((run / "run_info.json").read_text(encoding="utf-8"))
        test = datasets.load_from_disk(str(data))["test"].with_format("numpy", columns=["input_values", "sentence"])
        model = modeling_deepspeech2.load_model(run / "best_model")
        greedy = [train_deepspeech.normalize_text(text) for text in
                  modeling_deepspeech2.transcribe(model, list(test["input_values"]), 32, decoder="greedy")]
        greedy_scores = train_deepspeech.compute_wer_cer([str(s) for s in test["sentence"]], greedy)
        result = {
            "test_cer": round(metrics["cer"], 4), "test_wer": round(metrics["wer"], 4), "decoder": info["decoder"],
            "test_cer_greedy": round(greedy_scores["cer"], 4), "test_wer_greedy": round(greedy_scores["wer"], 4),
            "target": TARGET, "met": metrics["cer"] <= TARGET["cer"] and metrics["wer"] <= TARGET["wer"],
            "epochs_run": info["epochs_run"], "best_epoch": info["best_epoch"], "stop_reason": info["stop_reason"],
            "params": info["params_total"], "train_seconds": info["train_seconds"], "wall_seconds": round(seconds, 1),
            "splits": {name: s["utterances"] for name, s in splits.items()},
            "torch_threads": torch.get_num_threads(), "extra_args": args.train_args,
        }
        train_args = train_deepspeech.parse_args(["--data", str(data), "--output-dir", str(run), *args.train_args])
        history = [row for row in csv.DictReader((run / "history.csv").open(encoding="utf-8"))]
        run_row = {
            "setting": " ".join(args.train_args) or "defaults", "seed": train_args.seed,
            "val_cer": info["best_val_cer"], "val_wer": info["best_val_wer"],
            "test_cer": result["test_cer"], "test_wer": result["test_wer"],
            "test_cer_greedy": result["test_cer_greedy"], "test_wer_greedy": result["test_wer_greedy"],
            "minutes": round(seconds / 60, 1),
            "val_cer_epoch1": float(history[0]["val_cer"]) if history and history[0].get("val_cer") else None,
            **{key: result[key] for key in ("decoder", "met", "epochs_run", "best_epoch", "stop_reason", "params")},
        }
        save_result("bench_deepspeech_learning",
                    {"corpus": "make_vivos_like.py, 14 train voices x 60 + 3 test voices x 60 utterances, seed 0",
                     "splits": result["splits"],
                     "validation": "2 held-out voices reading train sentences, greedy decoding",
                     "test": "3 unseen voices reading unseen sentences, with the run's decoder (by default the "
                             "word language model of the train text) and greedily",
                     "epochs": train_args.epochs, "batch_size": info["batch_size"],
                     "torch_threads": result["torch_threads"], "target": TARGET},
                    {"runs": [run_row]})
        print(json.dumps(result, indent=2))
        print(f"test CER {result['test_cer']:.4f} (target <= {TARGET['cer']}), WER {result['test_wer']:.4f} "
              f"(target <= {TARGET['wer']}), {result['decoder']} decoding (greedy: CER {result['test_cer_greedy']:.4f}, "
              f"WER {result['test_wer_greedy']:.4f}) after {result['epochs_run']} epochs, {seconds / 60:.1f} min: "
              + ("target met" if result["met"] else "target NOT met"))
        return result
    finally:
        if not args.keep and args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
