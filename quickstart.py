"""The whole course plan in one command: prepare, zero-shot baseline, three trainers, report, resumable.

    python quickstart.py                                          # the bundled sample, minutes on a CPU
    python quickstart.py --vivos-dir vivos --preset low-vram      # all of VIVOS, e.g. overnight

Runs, and prints before running them, the commands of the full VIVOS workflow:
  prepare_vivos.py twice (--features whisper and waveform) -> train_whisper.py --eval-only (zero-shot
  baseline) -> train_whisper.py, train_wav2vec2.py, train_deepspeech.py -> report.py -> transcribe.py on
  a test recording with the run of lowest test WER.
Writes under --out: data/<corpus>_whisper, data/<corpus>_wave, estimates/<step>/, runs/whisper-zero-shot,
runs/whisper, runs/wav2vec2, runs/deepspeech2, report/, transcripts/ and logs/<step>.log (each step's output).

Before training, each trainer estimates its run (`--estimate`: a few steps) and the plan prints the
minutes, peak memory and disk per run against the free disk; a run that does not fit stops the plan
with the trainer's advice unless --continue-anyway. Running the same command again continues: a step
whose output is complete is skipped, a run cut off (power cut, Colab disconnect, Ctrl-C) resumes from
its last complete checkpoint.

Without --vivos-dir it uses the bundled sample with small settings. Online, Whisper and Wav2Vec2 then
start from openai/whisper-tiny and facebook/wav2vec2-base; offline (or --offline) from tiny random
models built from configs, whose numbers only show that the pipeline works. DeepSpeech2 is trained from
scratch in both cases and really learns the sample.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent
SAMPLE = REPO / "sample_data" / "vivos_sample"
ONLINE_BASES = {"whisper": "openai/whisper-tiny", "wav2vec2": "facebook/wav2vec2-base"}
TRAINERS = {"whisper": "train_whisper.py", "wav2vec2": "train_wav2vec2.py", "deepspeech2": "train_deepspeech.py"}
# The preset each trainer gets for --preset. DeepSpeech2's presets are "tiny" (smoke test) and "gpu"
# (CUDA, full VIVOS): every card preset means a CUDA GPU, and its model is small enough for 4 GB.
PRESETS = {
    "low-vram": {"whisper": "low-vram", "wav2vec2": "low-vram", "deepspeech2": "gpu"},
    "t4": {"whisper": "t4", "wav2vec2": "t4", "deepspeech2": "gpu"},
    "a100": {"whisper": "a100", "wav2vec2": "a100", "deepspeech2": "gpu"},
}
# The bundled sample's settings, per step: the models are small and the sample has 160 train utterances.
# A small GRU without pitch features or speed perturbation leaves CTC's blank-only start within 12 epochs
# on it, where the default LSTM with pitch does not (bench/RESULTS.md).
SAMPLE_FLAGS = {
    "prepare": {"--val-ratio": "0.1"},
    "whisper-zero-shot": {"--generation-max-length": "40"},
    "whisper": {"--epochs": "3", "--batch-size": "8", "--train-eval-size": "20", "--generation-max-length": "40"},
    # 16 language-model beams: the offline tiny model learns little in 3 epochs, and beam search over its flat
    # scores is slow with the default 64 beams.
    "wav2vec2": {"--epochs": "3", "--batch-size": "8", "--train-eval-size": "20", "--lm-beam-width": "16"},
    "deepspeech2": {"--rnn-type": "gru", "--no-pitch": None, "--rnn-layers": "2", "--rnn-hidden": "128",
                    "--batch-size": "8", "--epochs": "12", "--speed-perturb": "0", "--train-eval-size": "40"},
    "report": {"--dpi": "120"},
}
# Learning rates on the sample: pretrained checkpoints are fine-tuned gently, tiny random models need more.
SAMPLE_LR = {"pretrained": {"whisper": "1e-5", "wav2vec2": "1e-4"}, "random": {"whisper": "3e-3", "wav2vec2": "3e-3"}}


class PlanError(Exception):
    """Bad input or a failed step: printed as one line, without a traceback."""


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


# Copied from train_whisper.quoted
def quoted(path) -> str:
    """A path as the shell of this machine reads it back from a pasted command: POSIX quoting, or double
    quotes on Windows (cmd.exe knows no single quotes; Windows paths hold no double quote)."""
    text = str(path)
    if os.name != "nt":
        return shlex.quote(text)
    return text if re.fullmatch(r"[\w@%+=:,./\\-]+", text, re.ASCII) else f'"{text}"'


def flag_list(flags: dict) -> list[str]:
    """{"--epochs": "3", "--no-pitch": None} -> ["--epochs", "3", "--no-pitch"]."""
    return [str(item) for flag, value in flags.items() for item in ((flag,) if value is None else (flag, value))]


def step(name: str, title: str, script: str, flags: dict, output: Path, kind: str) -> dict:
    """One step of the plan: `script` run with `flags`, writing `output`, whose completeness `kind` says how
    to check (prepare, run, report, transcribe)."""
    return {"name": name, "title": title, "script": script, "args": flag_list(flags), "output": output, "kind": kind}


def plan_steps(args: argparse.Namespace, bases: dict[str, str | None], corpus: Path, out: Path,
               random_bases: set[str]) -> list[dict]:
    """Every step of the plan, in order, with its flags: the sample's small settings without --vivos-dir,
    the trainers' own defaults with it; --preset, --epochs and the models on top. `random_bases`: the
    families that start from tiny random models (they need a higher learning rate)."""
    sample = args.vivos_dir is None
    settings = SAMPLE_FLAGS if sample else {}
    name = "sample" if sample else corpus.name
    data = {"whisper": out / "data" / f"{name}_whisper", "waveform": out / "data" / f"{name}_wave"}
    runs = out / "runs"
    steps = [step(f"prepare-{'wave' if features == 'waveform' else features}",
                  f"Prepare {corpus.name} ({features} features)", "prepare_vivos.py",
                  {"--vivos-dir": corpus, "--features": features, **settings.get("prepare", {})},
                  data[features], "prepare")
             for features in ("whisper", "waveform")]
    model = {family: {"--model": bases[family]} if bases.get(family) else {} for family in TRAINERS}
    preset = {family: {"--preset": PRESETS[args.preset][family]} if args.preset else {} for family in TRAINERS}
    steps.append(step("whisper-zero-shot", "Zero-shot Whisper baseline (no training)", TRAINERS["whisper"],
                      {"--data": data["whisper"], **model["whisper"], **preset["whisper"], "--eval-only": None,
                       **settings.get("whisper-zero-shot", {})}, runs / "whisper-zero-shot", "run"))
    titles = {"whisper": "Fine-tune Whisper", "wav2vec2": "Fine-tune Wav2Vec2 (CTC)",
              "deepspeech2": "Train DeepSpeech2 from scratch"}
    for family, script in TRAINERS.items():
        flags = {"--data": data["whisper" if family == "whisper" else "waveform"], **model[family],
                 **preset[family], **settings.get(family, {})}
        if sample and family in SAMPLE_LR["random"]:
            flags["--lr"] = SAMPLE_LR["random" if family in random_bases else "pretrained"][family]
        if args.epochs is not None:
            flags["--epochs"] = f"{args.epochs:g}"
        steps.append(step(family, titles[family], script, flags, runs / family, "run"))
    steps.append(step("report", "Write the report", "report.py",
                      {"--runs": runs, "--data": data["whisper"], **settings.get("report", {})}, out / "report", "report"))
    return steps


def command(item: dict, output: Path | None = None) -> list[str]:
    """The step's arguments after the script name, its output folder flag included."""
    flag = {"prepare": "--out", "run": "--output-dir", "report": "--out", "transcribe": "--output-dir"}[item["kind"]]
    return [*item["args"], flag, str(output or item["output"])]


def pasteable(script: str, arguments: list[str]) -> str:
    """The command line a user types in the repository folder to run `script` with `arguments`."""
    return f"python {script} {' '.join(quoted(a) for a in arguments)}"


def step_state(item: dict, runs: list[Path] = ()) -> str:
    """'done' (its output is complete: skipped), 'partial' (started: the step continues it) or 'to do'."""
    output = item["output"]
    if item["kind"] == "prepare":
        complete = (output / "prepare_summary.json").is_file() and (output / "dataset_dict.json").is_file()
    elif item["kind"] == "run":
        complete = (output / "run_info.json").is_file() and (output / "test_metrics.json").is_file()
    elif item["kind"] == "report":
        # A report older than a run it reads is written again.
        report = output / "report.md"
        newest = max([(run / "test_metrics.json").stat().st_mtime for run in runs
                      if (run / "test_metrics.json").is_file()], default=0)
        complete = report.is_file() and report.stat().st_mtime >= newest
    else:
        complete = (output / item["expect"]).is_file()
    if complete:
        return "done"
    return "partial" if output.is_dir() and any(output.iterdir()) else "to do"


def read_estimate(item: dict, out: Path, log: Path, env: dict) -> dict:
    """The trainer's estimate of this run: `--estimate` into out/estimates/<step>/, reused when the same
    command made it before. A trainer that cannot estimate gives {"problem": why} and the plan goes on."""
    folder = out / "estimates" / item["name"]
    arguments = command(item, folder) + ["--estimate"]
    record = out / "estimates" / f"{item['name']}.command.json"
    estimate = folder / "estimate.json"
    if not (estimate.is_file() and record.is_file()
            and json.loads(record.read_text(encoding="utf-8")) == arguments):
        print(f"$ {pasteable(item['script'], arguments)}", flush=True)
        before = log.stat().st_size if log.is_file() else 0
        code = run_logged([sys.executable, str(REPO / item["script"]), *arguments], log, env, show=False)
        text = log.read_bytes()[before:].decode("utf-8", errors="replace")
        if code != 0 or not estimate.is_file():
            problem = ("this trainer has no --estimate yet" if "unrecognized arguments: --estimate" in text
                       else f"the estimate failed (exit code {code}; its output: {log})")
            return {"problem": problem}
        record.write_text(json.dumps(arguments, ensure_ascii=False), encoding="utf-8")
    return json.loads(estimate.read_text(encoding="utf-8"))


def figure(value, unit: str = "", digits: int = 0) -> str:
    """A number of an estimate as printed, with thousands separators; "?" where it has none (a run that ran
    out of memory has no time or disk)."""
    return f"{value:,.{digits}f}{unit}" if isinstance(value, (int, float)) else "?"


def peak_memory(estimate: dict) -> str:
    """The peak memory an estimate names: GPU reserved (else allocated) or CPU resident, in MB."""
    peak = estimate.get("peak_memory_mb") or {}
    if "reserved" in peak or "allocated" in peak:
        return figure(peak.get("reserved", peak.get("allocated")), " MB GPU")
    return figure(peak.get("rss"), " MB RAM")


def estimate_table(estimates: dict[str, dict], out: Path) -> tuple[list[str], list[str]]:
    """The printed table of estimates, total and free disk, and the problems that stop the plan."""
    lines = [f"  {'step':<13}{'minutes':>8}  {'peak memory':<16}{'disk':>11}  {'fits':<6}device"]
    problems, minutes, disk = [], 0.0, 0.0
    for name, estimate in estimates.items():
        if "problem" in estimate:
            lines.append(f"  {name:<13}no estimate: {estimate['problem']}")
            continue
        minutes += estimate.get("total_minutes") or 0
        disk += estimate.get("disk_needed_mb") or 0
        fits = estimate.get("fits", True)
        lines.append(f"  {name:<13}{figure(estimate.get('total_minutes'), digits=1):>8}  {peak_memory(estimate):<16}"
                     f"{figure(estimate.get('disk_needed_mb'), ' MB'):>11}  {'yes' if fits else 'NO':<6}"
                     f"{estimate.get('device', '?')}")
        if not fits:
            problems.append(f"{name} does not fit: {estimate.get('advice') or 'see its estimate.json'}")
    existing = next(folder for folder in (out, *out.parents) if folder.exists())
    free = shutil.disk_usage(existing).free / 2**20
    lines.append(f"  {'total':<13}{figure(minutes, digits=1):>8}  {'':<16}{figure(disk, ' MB'):>11}  "
                 f"(free at {existing}: {figure(free, ' MB')})")
    if disk > free:
        problems.append(f"the runs need {figure(disk, ' MB')} of disk and {existing} has {figure(free, ' MB')} free: "
                        "free some space or choose an --out on a larger disk")
    return lines, problems


def run_logged(arguments: list[str], log: Path, env: dict, show: bool = True) -> int:
    """Run one of our scripts, its output added to `log` (and shown with `show`); returns its exit code."""
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    with log.open("ab") as kept:
        kept.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(map(quoted, arguments))}\n".encode("utf-8"))
        process = subprocess.Popen(arguments, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        try:
            # Chunks, not lines: progress bars redraw their line with carriage returns.
            for chunk in iter(lambda: process.stdout.read1(65536), b""):
                if show:
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.flush()
                kept.write(chunk)
        except KeyboardInterrupt:
            # Ctrl-C reached the step too: let it end as it does alone (a trainer keeps its checkpoints).
            for chunk in iter(lambda: process.stdout.read1(65536), b""):
                kept.write(chunk)
            process.wait()
            raise
        return process.wait()


def run_step(item: dict, log: Path, env: dict, again: str) -> float:
    """Run one step as the user would from a terminal; returns its wall time in seconds, or stops the plan
    naming the step, its log and command."""
    arguments = command(item)
    line = pasteable(item["script"], arguments)
    print(f"\n=== {item['title']}\n$ {line}", flush=True)
    start = time.perf_counter()
    code = run_logged([sys.executable, str(REPO / item["script"]), *arguments], log, env)
    if code != 0:
        raise PlanError(f"Step '{item['name']}' failed (exit code {code}); its output is in {log}, its command: "
                        f"{line}. Fix the cause, then run the same command again: finished steps are skipped "
                        f"and this one continues: {again}")
    return time.perf_counter() - start


def best_run(runs: list[Path]) -> Path:
    """The trained run with the lowest test WER (then CER)."""
    metrics = {run: json.loads((run / "test_metrics.json").read_text(encoding="utf-8")) for run in runs}
    return min(runs, key=lambda run: (metrics[run]["wer"], metrics[run]["cer"]))


def test_recording(corpus: Path) -> tuple[Path, str]:
    """The first test recording of the corpus and its transcript."""
    first = (corpus / "test" / "prompts.txt").read_text(encoding="utf-8-sig").splitlines()[0]
    utterance, _, text = first.partition(" ")
    found = sorted((corpus / "test" / "waves").rglob(f"{utterance}.*"))
    if not found:
        raise PlanError(f"{corpus / 'test' / 'waves'} holds no audio for {utterance}, the first line of "
                        f"test/prompts.txt; expected the VIVOS layout (test/waves/SPEAKER/{utterance}.wav)")
    return found[0], text


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vivos-dir", type=Path,
                        help="the VIVOS folder holding train/ and test/ (default: the bundled sample, small settings)")
    parser.add_argument("--out", type=Path, help="where everything is written (default: quickstart, or vivos_course "
                                                 "with --vivos-dir)")
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help="the GPU's settings, passed to the trainers (DeepSpeech2 gets its gpu preset)")
    parser.add_argument("--whisper-model", help="Whisper checkpoint: Hub name or local folder (default: the "
                                                "trainer's, or whisper-tiny on the sample)")
    parser.add_argument("--wav2vec2-model", help="Wav2Vec2 checkpoint: Hub name or local folder (default: the "
                                                 "trainer's, or wav2vec2-base on the sample)")
    parser.add_argument("--epochs", type=float, help="training epochs of all three trainers (default: each one's)")
    parser.add_argument("--offline", action="store_true",
                        help="on the sample: tiny random models even if the Hub answers")
    parser.add_argument("--no-estimate", dest="estimate", action="store_false",
                        help="train without estimating each run first")
    parser.add_argument("--continue-anyway", action="store_true",
                        help="train even when an estimate says a run does not fit (memory or disk)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    again = pasteable("quickstart.py", sys.argv[1:] if argv is None else argv)
    try:
        return run_plan(args, again)
    except PlanError as error:
        raise SystemExit(f"quickstart.py: {error}") from None
    except KeyboardInterrupt:
        raise SystemExit(f"\nInterrupted. Run the same command again to continue where it stopped: {again}") from None


def run_plan(args: argparse.Namespace, again: str) -> dict:
    """Prepare, estimate, train, report and transcribe, skipping what is done; returns seconds per step run."""
    corpus = (args.vivos_dir or SAMPLE).expanduser().resolve()
    if not (corpus / "train" / "prompts.txt").is_file() or not (corpus / "test" / "prompts.txt").is_file():
        raise PlanError(f"--vivos-dir {corpus} is not the VIVOS layout: expected train/prompts.txt and "
                        "test/prompts.txt in it; pass the unpacked folder that holds train/ and test/")
    out = (args.out or Path("quickstart" if args.vivos_dir is None else "vivos_course")).expanduser().resolve()
    bases = {"whisper": args.whisper_model, "wav2vec2": args.wav2vec2_model}
    random_bases = set()
    if args.vivos_dir is None and not (args.whisper_model and args.wav2vec2_model):
        online = not args.offline and hub_reachable()
        random_bases = set() if online else {family for family, base in bases.items() if not base}
        defaults = ONLINE_BASES if online else offline_bases(out / "base_models")
        bases = {family: bases[family] or defaults[family] for family in bases}
        print("Hugging Face Hub reachable." if online else
              "Offline: unless given, Whisper and Wav2Vec2 start from tiny random models; their numbers only show "
              "that the pipeline works. DeepSpeech2 is trained from scratch and really learns.")
    steps = plan_steps(args, bases, corpus, out, random_bases)
    trained = [item["output"] for item in steps if item["name"] in TRAINERS]
    recording, reference = test_recording(corpus)
    transcripts = out / "transcripts"
    steps.append({"name": "transcribe", "title": "Transcribe a test recording with the run of lowest test WER",
                  "script": "transcribe.py", "args": [], "output": transcripts, "kind": "transcribe",
                  "expect": f"{recording.stem}.txt"})

    print(f"\nPlan ({corpus} -> {out}); re-running the same command skips what is done:")
    for item in steps:
        print(f"  {item['name']:<20}{step_state(item, trained):<9}{item['output']}")
    if args.preset:
        print(f"  --preset {args.preset}: train_deepspeech.py has no such preset and gets --preset "
              f"{PRESETS[args.preset]['deepspeech2']} (its CUDA settings).")

    times, logs = {}, out / "logs"
    # The steps write into a pipe: UTF-8 (Windows would pick its ANSI code page, which has no Vietnamese)
    # and unbuffered, so that their progress shows as it happens.
    env = {"PYTHONIOENCODING": "utf-8", "PYTHONUNBUFFERED": "1", **os.environ}
    if args.vivos_dir is None:
        # The sample's models are small: one thread per process avoids threads spin-waiting on each other,
        # which made training steps several times slower on a 2-core machine (measured).
        env.setdefault("OMP_NUM_THREADS", "1")
    for item in steps[:2]:
        if step_state(item) == "done":
            print(f"\n=== {item['title']}: skipped, {item['output']} is complete")
        else:
            times[item["name"]] = run_step(item, logs / f"{item['name']}.log", env, again)

    to_train = [item for item in steps if item["name"] in TRAINERS and step_state(item) != "done"]
    if args.estimate and to_train:
        print("\n=== Estimate each run (a few training steps)", flush=True)
        estimates = {item["name"]: read_estimate(item, out, logs / f"estimate-{item['name']}.log", env) for item in to_train}
        lines, problems = estimate_table(estimates, out)
        print("\nEstimates (runs still to train):\n" + "\n".join(lines))
        for problem in problems:
            print(f"  ! {problem}")
        if problems and not args.continue_anyway:
            raise PlanError("stopped before training: " + "; ".join(problems) + ". Change the settings (e.g. "
                            "--preset low-vram, a smaller --whisper-model), or add --continue-anyway to train as it is.")

    for item in steps[2:]:
        if item["kind"] == "transcribe":
            item["args"] = ["--model", str(best_run(trained)), str(recording)]
        if step_state(item, trained) == "done":
            print(f"\n=== {item['title']}: skipped, {item['output']} is complete")
            continue
        times[item["name"]] = run_step(item, logs / f"{item['name']}.log", env, again)

    print("\n=== Done. Time per step run now:")
    for name, seconds in times.items():
        print(f"  {name:<20}{seconds:>7.0f} s")
    print(f"  {'total':<20}{sum(times.values()):>7.0f} s")
    print(f"Open {out / 'report' / 'report.docx'} (or report.html). The reference of {recording.name}: {reference}")
    return times


if __name__ == "__main__":
    main()
