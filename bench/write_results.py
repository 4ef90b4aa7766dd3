"""Write bench/RESULTS.md from the result files the benchmarks saved in bench/results/.

    python bench/write_results.py            # rewrite bench/RESULTS.md
    python bench/write_results.py --check    # exit 1 if bench/RESULTS.md is not what this would write

Every benchmark saves one JSON file per run in bench/results/ through `save_result` (date, commit, machine,
settings, figures). RESULTS.md is only ever written from those files, so no figure in it is typed by hand:
to add a measurement, run a benchmark (it saves its file), then run this script.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS_DIR = BENCH / "results"
RESULTS_MD = BENCH / "RESULTS.md"


def current_commit() -> str:
    """Short hash of the checked-out commit, with -dirty when tracked files differ from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short=7", "HEAD") or "unknown"
    return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def machine_description() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, {gpu}, torch {torch.__version__}, "
            f"python {platform.python_version()}")


def save_result(bench: str, settings: dict, figures: dict, results_dir: Path = RESULTS_DIR) -> Path:
    """Save one benchmark run as bench/results/<date>_<bench>_<commit>.json; returns the path."""
    now = datetime.now(timezone.utc)
    commit = current_commit()
    record = {"bench": f"{bench}.py", "date": now.strftime("%Y-%m-%dT%H:%M:%SZ"), "commit": commit,
              "machine": machine_description(),
              "source": f"measured by bench/{bench}.py at commit {commit}", "settings": settings, **figures}
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{now.strftime('%Y-%m-%dT%H%M%S')}_{bench.removeprefix('bench_')}_{commit}.json"
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"saved {path.relative_to(REPO) if path.is_relative_to(REPO) else path}; "
          "run `python bench/write_results.py` to update bench/RESULTS.md")
    return path


def load_results(results_dir: Path) -> list[dict]:
    """Every result file, newest first."""
    records = []
    for path in sorted(results_dir.glob("*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        record["file"] = path.name
        records.append(record)
    return sorted(records, key=lambda r: (r["date"], r["file"]), reverse=True)


def num(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def pair(first, second) -> str:
    return num(first) if second is None else f"{num(first)} / {num(second)}"


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def deepspeech_defaults(records: list[dict]) -> list[dict]:
    """The newest run of each seed with the default settings."""
    by_seed = {}
    for record in records:
        for run in record["runs"]:
            if run["setting"].startswith("defaults") and run["seed"] not in by_seed:
                by_seed[run["seed"]] = run
    return list(by_seed.values())


def minutes_range(runs: list[dict]) -> str:
    values = [m for run in runs for m in str(run["minutes"]).split("-")]
    low, high = min(values, key=float), max(values, key=float)
    return f"{low} min" if low == high else f"{low}-{high} min"


def summary(groups: dict[str, list[dict]]) -> list[str]:
    """One row per model family: its bench figure and run time (the README copies this table)."""
    lines = ["| model | bench figure | run time |", "| --- | --- | --- |"]
    quick = groups.get("quickstart.py", [None])[0]
    stage = (lambda name: f"{quick['stages_seconds'][name]} s in the offline quick start") if quick else (lambda name: "–")
    memory = groups.get("bench_whisper_memory.py")
    if memory:
        low = next((row for row in memory[0]["rows"] if row["preset"] == "low-vram"), None)
        whisper = (f"whisper-small `--preset low-vram`: peak {num(low['peak_gb'], 2)} GB, "
                   f"{num(low['samples_per_s'], 2)} samples/s ({memory[0]['gpu']})") if low else "–"
    else:
        whisper = "GPU memory per preset not measured yet (`bench_whisper_memory.py` needs a GPU)"
    estimates = {row["model"]: row for row in (groups.get("bench_estimates.py") or [{"rows": []}])[0]["rows"]}

    def on_cpu(model: str) -> str:
        row = estimates.get(model)
        return (f"; CPU `--estimate` for {model}: {num(row['estimate']['seconds_per_step'], 1)} s per step, about "
                f"{row['vivos_epoch_minutes'] / 60:.1f} h per VIVOS epoch on 2 cores") if row else ""

    lines.append(f"| Whisper | {whisper}{on_cpu('whisper-small')} | {stage('Whisper')} (tiny model: checks the "
                 "pipeline only) |")
    fast = groups.get("bench_faster_whisper.py")
    if fast:
        rows = {row["engine"]: row for row in fast[0]["speed"]}
        base, int8 = rows["transformers"], rows["faster-whisper int8"]
        same = all(row["same_text"] for row in fast[0]["transcripts"]["engines"].values())
        lines.append(f"| Whisper, `transcribe.py` on the CPU | whisper-small shape: faster-whisper int8 RTF "
                     f"{num(int8['rtf'], 3)} vs transformers {num(base['rtf'], 3)} ({num(int8['speedup'], 2)}x), "
                     f"peak {int8['peak_rss_mb']} vs {base['peak_rss_mb']} MB; "
                     f"{'same' if same else 'different'} transcripts of a learnt model | "
                     f"{num(fast[0]['bench_minutes'], 1)} min bench on {fast[0]['settings']['threads']} threads |")
    wav2vec2 = on_cpu("wav2vec2-base")[2:] or "no benchmark yet"
    lines.append(f"| Wav2Vec2 | {wav2vec2} | {stage('Wav2Vec2')} (tiny model: checks the pipeline only) |")
    runs = deepspeech_defaults(groups.get("bench_deepspeech_learning.py", []))
    if runs:
        lines.append(f"| DeepSpeech2 | test CER {mean([r['test_cer'] for r in runs]):.3f}, WER "
                     f"{mean([r['test_wer'] for r in runs]):.3f} (mean of {len(runs)} seeds, defaults, synthetic "
                     f"12-voice corpus, unseen voices and sentences) | {minutes_range(runs)} per run on one CPU "
                     f"thread; {stage('DeepSpeech2')} |")
    newest = {}
    for record in groups.get("bench_ctc_lm.py", []):
        newest.setdefault(record["settings"].get("family", "deepspeech2"), record)
    for family, record in newest.items():
        rows = {row["decoder"]: row for row in record["rows"]}
        greedy, lexicon = rows["greedy"], rows.get("lexicon beam (train words, unigram)")
        lm, more = rows["LM: train text"], rows["LM: train text + --lm-text"]
        lines.append(f"| {'DeepSpeech2' if family == 'deepspeech2' else 'Wav2Vec2'} + n-gram LM | held-out prose, "
                     f"test WER {num(greedy['wer'])} greedy (CER {num(greedy['cer'])})"
                     + (f", {num(lexicon['wer'])} lexicon beam" if lexicon else "")
                     + f", {num(lm['wer'])} with the train-text 3-gram, {num(more['wer'])} with `--lm-text`; "
                     f"{num(lm['ms_per_utterance'], 1)} ms per utterance | RTF {num(lm['rtf'], 3)} with the network "
                     "on one CPU thread |")
    return lines


def deepspeech_section(records: list[dict]) -> list[str]:
    # The header describes the default runs; a run with other flags names them in its setting.
    settings = next((r for r in records if any(run["setting"].startswith("defaults") for run in r["runs"])),
                    records[0])["settings"]
    lines = ["## DeepSpeech2 learning (`bench/bench_deepspeech_learning.py`)", "",
             f"Corpus: {settings['corpus']}; splits "
             + ", ".join(f"{name} {count}" for name, count in settings["splits"].items())
             + f". Validation: {settings['validation']}. "
             f"Test: {settings['test']}. {settings['epochs']} epochs, batch {settings['batch_size']}, "
             f"{settings['torch_threads']} torch thread per run, unless the setting says otherwise. Newest first; * the CPU was shared with a further "
             "program. A seed whose model leaves CTC's blank-only start late (high validation CER after epoch 1) "
             "ends worse.", "",
             "| setting | seed | val CER after epoch 1 | val CER / WER | test CER / WER, the run's decoder | "
             "test CER / WER, greedy | "
             "minutes | commit |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for record in records:
        for run in record["runs"]:
            shared = " *" if run.get("shared_cpu") else ""
            decoder = f" ({run['decoder']})" if "decoder" in run else ""  # runs saved before it was recorded
            lines.append(f"| {run['setting']} | {run['seed']} | {num(run.get('val_cer_epoch1'), 2)} | "
                         f"{pair(run['val_cer'], run['val_wer'])} | "
                         f"{pair(run['test_cer'], run['test_wer'])}{decoder} | "
                         f"{pair(run['test_cer_greedy'], run['test_wer_greedy'])} | {num(run['minutes'], 1)}{shared} | "
                         f"{record['commit']} |")
    lines += notes(records)
    return lines


def prepare_section(records: list[dict]) -> list[str]:
    lines = ["## Data preparation (`bench/bench_prepare.py`)", "",
             "`prepare_vivos.py` against the naive preparation of the Whisper fine-tuning blog (`datasets.map` with "
             "`WhisperFeatureExtractor`, full float32 features) on the same espeak-ng corpus, each in its own "
             "process. Ratios are ours / naive; the last column prepares a corpus twice as large with our script "
             "(flat memory: near 1).", "",
             "| date | commit | utterances | peak RSS MB, ours / naive | disk MB, ours / naive | time ratio | "
             "peak RSS ratio | disk ratio | peak RSS, corpus x2 / x1 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for record in records:
        ours, naive, ratios = record["variants"]["ours"], record["variants"]["naive"], record["ratios"]
        lines.append(f"| {record['date'][:10]} | {record['commit']} | {record['settings']['utterances']} | "
                     f"{num(ours['peak_rss_mb'], 0)} / {num(naive['peak_rss_mb'], 0)} | "
                     f"{num(ours['disk_mb'], 1)} / {num(naive['disk_mb'], 1)} | {num(ratios['time'], 2)} | "
                     f"{num(ratios['peak_rss'], 2)} | {num(ratios['disk'], 3)} | {num(ratios['peak_rss_x2'], 2)} |")
    return lines + notes(records)


def whisper_memory_section(records: list[dict]) -> list[str]:
    lines = ["## Whisper GPU memory per preset (`bench/bench_whisper_memory.py`)", "",
             "whisper-small's shape with random weights, a few training steps on 30 s inputs per `--preset`, next "
             "to the full fine-tune. Target: `low-vram` under 3.5 GB peak at no less than half the full "
             "fine-tune's samples/s.", ""]
    if not records:
        return lines + ["Not measured yet: it needs an NVIDIA GPU (a Colab T4 will do)."]
    lines += ["| date | commit | GPU | setting | batch | checkpointing | optimizer | precision | peak GB | "
              "samples/s | vs full |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for record in records:
        for row in record["rows"]:
            lines.append(f"| {record['date'][:10]} | {record['commit']} | {record['gpu']} | {row['preset']} | "
                         f"{row['batch']} | {'yes' if row['checkpointing'] else 'no'} | {row['optimizer']} | "
                         f"{row['precision']} | {num(row['peak_gb'], 2)} | {num(row['samples_per_s'], 2)} | "
                         f"{num(row['vs_full'], 2)} |")
    return lines + notes(records)


def estimates_section(records: list[dict]) -> list[str]:
    settings = records[0]["settings"]
    lines = ["## Estimates before a run (CPU) (`bench/bench_estimates.py`)", "",
             "Each trainer's `--estimate`, run as a user would on the bundled sample "
             f"({settings['sample_train_utterances']} synthetic train clips of {settings['sample_mean_seconds']} s "
             "on average), with the real model shapes and random weights (nothing downloaded). Seconds per step, "
             "memory, checkpoint and disk are the estimate's own; sample epoch minutes are for the sample's train "
             "split. The VIVOS columns are extrapolated: seconds per step x ceil(utterances / (batch x accumulation)) "
             "per epoch, times the planned epochs (early stopping may end sooner), for about "
             f"{settings['vivos_train_utterances']:,} train utterances (VIVOS's {settings['vivos_corpus_utterances']:,}"
             f" less the {settings['val_ratio']:.0%} that `prepare_vivos.py` holds out for validation by whole "
             "speakers). Training only: evaluation is not included (a random-weight Whisper never stops generating, "
             "so its evaluation time says nothing of a real model's).", "",
             "| date | commit | model | settings | seconds per step | peak memory (MB) | checkpoint MB | "
             "disk needed MB | sample epoch minutes | VIVOS epoch minutes (extrapolated) | "
             "VIVOS total minutes (extrapolated) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for record in records:
        for row in record["rows"]:
            estimate, memory = row["estimate"], row["estimate"]["peak_memory_mb"]
            peak = num(memory["rss"], 0) if "rss" in memory else f"{num(memory['allocated'], 0)} allocated on the GPU"
            lines.append(f"| {record['date'][:10]} | {record['commit']} | {row['model']} | {row['settings']} | "
                         f"{num(estimate.get('seconds_per_step'), 2)} | {peak} | "
                         f"{num(estimate.get('checkpoint_mb'), 0)} | {num(estimate.get('disk_needed_mb'), 0)} | "
                         f"{num(estimate.get('epoch_minutes'), 1)} | {num(row.get('vivos_epoch_minutes'), 0)} | "
                         f"{num(row.get('vivos_total_minutes'), 0)} |")
    if any(record["device"] == "cuda" for record in records):
        gpu = "GPU figures: a row measured on a card says \"allocated on the GPU\"; the card is in its machine line."
    else:
        gpu = "GPU figures are not measured: every row ran on the CPU. On a GPU, run the trainer's `--estimate` there."
    ratio = settings["vivos_mean_seconds"] / settings["sample_mean_seconds"]
    lines += ["", *[f"Machine ({record['commit']}): {record['machine']}; {record['bench_minutes']} min for the "
                    "whole bench." for record in records], "", gpu, "",
              f"The CTC models' steps grow with clip length: VIVOS's clips average {settings['vivos_mean_seconds']} s "
              f"against the sample's {settings['sample_mean_seconds']} s, so expect wav2vec2-base's and DeepSpeech2's "
              f"VIVOS figures to be up to {ratio:.1f}x these. Whisper pads every clip to 30 s: its steps hardly "
              "depend on clip length."]
    return lines + notes(records)


def faster_whisper_section(records: list[dict]) -> list[str]:
    settings = records[0]["settings"]
    lines = ["## Whisper inference on the CPU: faster-whisper vs transformers (`bench/bench_faster_whisper.py`)", "",
             "`transcribe.py --engine` on the same weights and clips, each engine in its own process. Speed and "
             f"memory: whisper-small's shape with random weights; {settings['windows']} windows of about "
             f"{settings['window_seconds']:g} s (sample clips joined), each decoded as one clip without timestamps, "
             f"with exactly {settings['tokens_per_window']} text tokens generated per window by every engine (a "
             "random model never stops on its own), after one warm-up window; peak memory is the process's peak "
             "resident set (Python, torch and the model). Transcripts: a small Whisper with the 30-s input that "
             f"learnt {settings['clips']} sample clips in {settings['steps']} steps, WER and CER against their "
             "references.", "",
             "| date | commit | engine | RTF | speed-up | peak RSS (MB) | WER | CER | WER diff | CER diff | "
             "same text as transformers |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for record in records:
        scores = record["transcripts"]["engines"]
        for row in record["speed"]:
            score = scores[row["engine"]]
            lines.append(f"| {record['date'][:10]} | {record['commit']} | {row['engine']} | {num(row['rtf'], 3)} | "
                         f"{num(row['speedup'], 2)}x | {row['peak_rss_mb']} | {num(score['wer'], 3)} | "
                         f"{num(score['cer'], 3)} | {num(score['wer_diff'], 3)} | {num(score['cer_diff'], 3)} | "
                         f"{'yes' if score['same_text'] else 'no'} |")
    lines += ["", *[f"Machine ({record['commit']}): {record['machine']}; {record['settings']['threads']} threads "
                    f"per engine; {record['bench_minutes']} min for the whole bench." for record in records]]
    return lines + notes(records)


def quickstart_section(records: list[dict]) -> list[str]:
    lines = ["## Quick start on the bundled sample (`python quickstart.py`)", "",
             "The bundled sample is synthetic (espeak-ng): its figures show that the pipeline works, not how well a "
             "model does on real Vietnamese.", "",
             "| date | commit | machine | stages (seconds) | total | DeepSpeech2 test CER / WER, beam | greedy |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for record in records:
        stages = ", ".join(f"{name} {seconds}" for name, seconds in record["stages_seconds"].items())
        ds2 = record["deepspeech2"]
        lines.append(f"| {record['date'][:10]} | {record['commit']} | {record['machine']} | {stages} | "
                     f"{num(record['total_minutes'], 1)} min | {pair(ds2['test_cer'], ds2['test_wer'])} | "
                     f"{pair(ds2['test_cer_greedy'], ds2['test_wer_greedy'])} |")
    return lines + notes(records)


def notes(records: list[dict]) -> list[str]:
    lines = [f"- {note} ({record['commit']})" for record in records for note in record.get("notes", [])]
    return ["", "Notes:", "", *lines] if lines else []


def ctc_lm_section(records: list[dict]) -> list[str]:
    """Decoders of one trained CTC model compared on the same test scores, newest run first."""
    settings = records[0]["settings"]
    lines = ["## CTC decoding with a language model (`bench/bench_ctc_lm.py`)", "",
             f"Corpus: {settings['corpus']}; splits "
             + ", ".join(f"{name} {count}" for name, count in settings["splits"].items())
             + f"; {settings['extra_text_sentences']} further sentences of the text are the `--lm-text` extra text; "
             f"{100 * settings['test_words_not_in_train_text']:.0f} % of test words are not in the train text. "
             "Each model's test scores decoded each way; the language models weighted on validation as the trainers "
             "do. Decode time is after the network; the real-time factor includes the network (one CPU thread).",
             "", "| model | decoder | test WER | test CER | decode ms / utterance | real-time factor | alpha / beta | "
             "commit |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for record in records:
        run = record["settings"]
        model = (f"{run.get('family', 'deepspeech2')}, {run['params']:,} parameters, {run['epochs_run']:g} epochs, "
                 f"{run['train_minutes']} min" if "params" in run else
                 f"deepspeech2, defaults, {run['epochs_run']:g} epochs, {run['train_minutes']} min")
        for row in record["rows"]:
            lm = record["language_models"].get(row["decoder"])
            weights = f"{lm['alpha']} / {lm['beta']}" if lm else "–"
            lines.append(f"| {model} | {row['decoder']} | {num(row['wer'])} | {num(row['cer'])} | "
                         f"{num(row['ms_per_utterance'], 2)} | {num(row['rtf'], 4)} | {weights} | {record['commit']} |")
    return lines + notes(records)


SECTIONS = {"bench_deepspeech_learning.py": deepspeech_section, "bench_ctc_lm.py": ctc_lm_section,
            "bench_prepare.py": prepare_section,
            "bench_whisper_memory.py": whisper_memory_section, "bench_estimates.py": estimates_section,
            "bench_faster_whisper.py": faster_whisper_section, "quickstart.py": quickstart_section}


def render(results_dir: Path = RESULTS_DIR) -> str:
    records = load_results(results_dir)
    groups = {}
    for record in records:
        if record["bench"] not in SECTIONS:
            raise SystemExit(f"{record['file']}: unknown bench {record['bench']!r}; expected one of {', '.join(SECTIONS)}")
        groups.setdefault(record["bench"], []).append(record)
    lines = ["# Benchmark results", "",
             "Written by `python bench/write_results.py` from the result files in `bench/results/` (one per bench "
             "run: date, commit, machine, settings, figures). Do not edit: run a benchmark, then the script.", "",
             "## Summary", "", *summary(groups)]
    for bench, section in SECTIONS.items():
        if groups.get(bench) or bench == "bench_whisper_memory.py":
            lines += ["", *section(groups.get(bench, []))]
    lines += ["", "## Sources", "", *[f"- `{r['file']}`: {r['source']}; {r['machine']}" for r in records]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when RESULTS.md is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not RESULTS_MD.is_file() or RESULTS_MD.read_text(encoding="utf-8") != text:
            print("bench/RESULTS.md is not what bench/results/ gives: run `python bench/write_results.py`")
            return 1
        print("bench/RESULTS.md is up to date")
        return 0
    RESULTS_MD.write_text(text, encoding="utf-8")
    print(f"wrote {RESULTS_MD.relative_to(REPO)} from {len(load_results(RESULTS_DIR))} result files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
