"""train_wav2vec2.py: a tiny Wav2Vec2 (built from a config, offline) on espeak-ng VIVOS-shaped data.

The expensive runs are shared: `wav2vec2_run` (conftest) is the complete 3-epoch run that report.py,
transcribe.py and demo.py read too. What the three trainers promise alike (run folder, resume, --eval-only,
refusals) is tests/test_trainer_contract.py."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from datasets import DatasetDict, load_from_disk

import train_wav2vec2
from conftest import read_csv, read_json
from tiny_wav2vec2 import make_tiny_wav2vec2, one_thread, tiny_run_args

REPO = Path(__file__).resolve().parents[1]
METRIC_KEYS = {"wer", "cer", "ser", "substitutions", "deletions", "insertions", "hits", "ref_words",
               "num_utterances", "audio_seconds", "decode_seconds", "rtf",
               "decoder", "greedy_wer", "greedy_cer", "greedy_decode_seconds"}


def derived_dataset(source: Path, out: Path, splits: dict) -> Path:
    """A prepared dataset made from another (its prepare_summary.json copied), for the cases a test needs."""
    DatasetDict(splits).save_to_disk(str(out))
    shutil.copy(source / "prepare_summary.json", out / "prepare_summary.json")
    return out


@pytest.fixture(scope="session")
def tiny_model(work_dir) -> Path:
    """A randomly initialised encoder without a tokenizer, like facebook/wav2vec2-xls-r-300m."""
    return make_tiny_wav2vec2(work_dir / "tiny wav2vec2 encoder")


# ----------------------------------------------------------------------------- vocabulary and collator

def test_vocabulary_blank_delimiter_and_unknown_characters():
    """[PAD] is the CTC blank (id 0 = config.pad_token_id), spaces become `|`, double letters survive
    decoding when a blank separates them, and characters missing from the vocabulary are counted."""
    vocab = train_wav2vec2.build_vocab(["xin chào", "cà phê sữa", "ll"])
    assert list(vocab)[:3] == ["[PAD]", "[UNK]", "|"] and vocab["[PAD]"] == 0
    assert set(vocab) - {"[PAD]", "[UNK]", "|"} == set("xinchàophêsữal")
    tokenizer = train_wav2vec2.tokenizer_from_vocabulary(vocab)
    assert len(tokenizer) == len(vocab) and tokenizer.pad_token_id == 0
    ids = tokenizer("xin chào")["input_ids"]
    assert ids[3] == vocab["|"] and tokenizer.decode(ids, group_tokens=False) == "xin chào"
    assert tokenizer("xin zô")["input_ids"][4] == vocab["[UNK]"]
    l, pad = vocab["l"], vocab["[PAD]"]
    greedy = np.array([[l, l, pad, l, -100]])  # frames: l l <blank> l <batch padding>
    assert train_wav2vec2.decode_predictions(tokenizer, greedy) == ["ll"]
    known = train_wav2vec2.tokenizer_characters(tokenizer)
    assert train_wav2vec2.missing_characters(["xin zô", "zzz ff"], known) == {"z": 4, "ô": 1, "f": 2}


def test_collator_normalises_pads_and_masks_labels(tiny_model, waveform_data):
    """Each clip is normalised by the model's feature extractor (zero mean, unit variance) and padded to
    the longest in the batch, with an attention mask; label padding is -100 so the CTC loss ignores it."""
    data = load_from_disk(str(waveform_data))
    args = train_wav2vec2.parse_args(["--data", str(waveform_data), "--model", str(tiny_model),
                                      "--output-dir", "unused"])
    processor, origin = train_wav2vec2.choose_processor(args, data, None)
    assert "new CTC head" in origin
    rows = [train_wav2vec2.model_inputs(data["train"])[i] for i in (0, 1)]
    batch = train_wav2vec2.DataCollatorCTCWithPadding(processor)(rows)
    lengths = [len(row["input_values"]) for row in rows]
    assert batch["input_values"].shape == (2, max(lengths))
    assert batch["attention_mask"].sum(dim=1).tolist() == lengths
    first = batch["input_values"][0, : lengths[0]]
    assert abs(float(first.mean())) < 1e-3 and abs(float(first.std()) - 1) < 1e-2
    short = int(np.argmin([len(row["sentence"]) for row in rows]))
    n = len(rows[short]["sentence"])
    assert (batch["labels"][short, n:] == -100).all() and (batch["labels"][short, :n] >= 0).all()
    assert processor.tokenizer.decode(batch["labels"][short, :n], group_tokens=False) == rows[short]["sentence"]


def test_reuse_vocab_keeps_a_covering_ctc_head_only(waveform_data, tmp_path, capsys):
    """--reuse-vocab auto keeps the checkpoint's CTC tokenizer when it covers the train text, and builds a
    new one (saying so) when a character is missing or with --reuse-vocab never."""
    data = load_from_disk(str(waveform_data))
    text = "".join(data["train"]["sentence"])
    covering = make_tiny_wav2vec2(tmp_path / "covering", vocab_chars=text + "zw")
    lacking = make_tiny_wav2vec2(tmp_path / "lacking", vocab_chars=text.replace("đ", ""))

    def origin(model: Path, *extra: str) -> tuple[str, int]:
        args = train_wav2vec2.parse_args(["--data", str(waveform_data), "--model", str(model),
                                          "--output-dir", str(tmp_path / "run"), *extra])
        processor, why = train_wav2vec2.choose_processor(args, data, None)
        return why, len(processor.tokenizer)

    assert origin(covering) == ("the checkpoint's own CTC head (its vocabulary covers the train text)",
                                len(set(text + "zw")) + 2)
    why, size = origin(lacking)
    assert "new CTC head" in why and size == len(set(text)) + 2
    assert "vocabulary lacks đ: training a new head" in capsys.readouterr().out
    assert "new CTC head" in origin(covering, "--reuse-vocab", "never")[0]


# ----------------------------------------------------------------------------- settings

def test_preset_fills_defaults_and_flags_win():
    args = train_wav2vec2.parse_args(["--data", "d", "--output-dir", "o", "--preset", "low-vram",
                                      "--batch-size", "2"])
    assert args.batch_size == 2 and args.grad_accum == 8 and args.gradient_checkpointing
    assert args.max_duration == 10.0 and args.optim == "adamw_bnb_8bit"


def test_the_default_model_is_xls_r_300m():
    assert train_wav2vec2.parse_args(["--data", "d", "--output-dir", "o"]).model == "facebook/wav2vec2-xls-r-300m"


def test_history_rows_average_the_loss_between_evaluations():
    log = [{"loss": 4.0, "learning_rate": 1e-4, "step": 2, "epoch": 0.5},
           {"loss": 2.0, "learning_rate": 2e-4, "step": 4, "epoch": 1.0},
           {"eval_validation_loss": 1.5, "eval_validation_wer": 0.9, "eval_validation_cer": 0.5, "step": 4,
            "epoch": 1.0},
           {"eval_train_subset_wer": 0.8, "eval_train_subset_cer": 0.4, "eval_train_subset_loss": 1.2, "step": 4,
            "epoch": 1.0},
           {"loss": 1.0, "learning_rate": 1e-4, "step": 8, "epoch": 2.0},
           {"eval_validation_loss": 1.0, "eval_validation_wer": 0.7, "eval_validation_cer": 0.3, "step": 8,
            "epoch": 2.0}]
    rows = train_wav2vec2.history_rows(log)
    assert rows[0] == {"epoch": 1.0, "step": 4, "train_loss": 3.0, "val_loss": 1.5, "val_wer": 0.9, "val_cer": 0.5,
                       "train_wer": 0.8, "train_cer": 0.4, "learning_rate": 2e-4}
    assert rows[1]["train_loss"] == 1.0 and rows[1]["train_wer"] == ""


# ----------------------------------------------------------------------------- training runs

@pytest.fixture(scope="session")
def overfit_run(waveform_data, work_dir, tiny_model) -> tuple[Path, Path]:
    """(run folder, dataset): 8 espeak utterances that are train, validation and test at once, learned from
    random initialisation (measured: validation WER 0 from step 150 on, about 40 s of one CPU core)."""
    data = load_from_disk(str(waveform_data))
    few = data["train"].select(range(8))
    overfit = derived_dataset(waveform_data, work_dir / "data overfit", {"train": few, "validation": few,
                                                                         "test": few})
    out = work_dir / "runs" / "wav2vec2 overfit"
    with one_thread():
        train_wav2vec2.main([
            "--data", str(overfit), "--model", str(tiny_model), "--output-dir", str(out),
            "--max-steps", "200", "--eval-every", "50", "--batch-size", "8", "--grad-accum", "1", "--lr", "5e-3",
            "--warmup-ratio", "0.05", "--scheduler", "constant_with_warmup", "--dropout", "0", "--layerdrop", "0",
            "--no-spec-augment", "--train-eval-size", "0", "--patience", "0", "--logging-steps", "50",
            "--num-workers", "0", "--save-total-limit", "1", "--seed", "0"])
    return out, overfit


@pytest.mark.slow
def test_overfits_a_handful_of_utterances_to_exact_transcripts(overfit_run):
    """From random initialisation, 8 espeak utterances are learned well enough that best_model/ transcribes
    every one exactly through transformers.pipeline, which decodes with the run's language model, as the run's
    own test predictions say (greedy and with the language model)."""
    from transformers import pipeline

    out, data = overfit_run
    few = load_from_disk(str(data))["test"]
    info = read_json(out / "run_info.json")
    assert info["best_val_wer"] == 0.0 and info["stop_reason"] == "max_steps" and info["decoder"] == "lm"
    assert read_json(out / "test_metrics.json")["wer"] == 0.0 == read_json(out / "test_metrics.json")["greedy_wer"]
    asr = pipeline("automatic-speech-recognition", model=str(out / "best_model"))
    assert asr.type == "ctc_with_lm"
    heard = [asr(np.asarray(row["input_values"], dtype=np.float32))["text"] for row in few]
    assert heard == list(few["sentence"])
    assert [r["prediction"] for r in read_csv(out / "test_predictions.csv")] == heard


@pytest.mark.slow
def test_run_folder_holds_a_ctc_model_and_its_vocabulary(wav2vec2_run, waveform_data):
    """What Wav2Vec2 adds to the shared run-folder contract (tests/test_trainer_contract.py): the CTC head,
    its tokenizer and vocabulary facts, and a best_model that transformers.pipeline transcribes with."""
    from transformers import AutoConfig, AutoTokenizer, pipeline

    data = load_from_disk(str(waveform_data))
    best = wav2vec2_run / "best_model"
    for name in ("best_model/vocab.json", "best_model/processor_config.json"):
        assert (wav2vec2_run / name).is_file(), name
    assert sorted(p.name for p in wav2vec2_run.glob("checkpoint-*")) == ["checkpoint-18", "checkpoint-27",
                                                                        "checkpoint-9"]

    info = read_json(wav2vec2_run / "run_info.json")
    assert info["family"] == "wav2vec2" and info["lora"] is None and info["eval_only"] is False
    assert info["stop_reason"] == "completed" and info["epochs_run"] == 3 and info["peak_gpu_memory_mb"] is None
    assert info["dataset"]["splits"] == {split: len(data[split]) for split in ("train", "validation", "test")}
    assert info["effective_batch_size"] == 8 and info["warmup_steps"] == 3
    assert info["best_step"] in (9, 18, 27) and info["best_epoch"] == info["best_step"] / 9
    train_letters = set("".join(data["train"]["sentence"]))
    for split in ("validation", "test"):  # espeak sentences of unseen speakers bring a few unseen letters
        unseen = [ch for ch in "".join(data[split]["sentence"]) if ch not in train_letters]
        assert info["vocabulary"]["unknown_characters"][split] == {ch: unseen.count(ch) for ch in set(unseen)}
    assert info["command"].startswith("python train_wav2vec2.py --data ")

    config = AutoConfig.from_pretrained(best)
    tokenizer = AutoTokenizer.from_pretrained(best)
    assert config.model_type == "wav2vec2" and config.vocab_size == len(tokenizer) == info["architecture"]["vocab_size"]
    assert config.pad_token_id == tokenizer.pad_token_id == tokenizer.get_vocab()["[PAD]"]
    assert config.ctc_loss_reduction == "mean" and config.ctc_zero_infinity
    assert set("".join(data["train"]["sentence"])) - {" "} <= set(tokenizer.get_vocab())

    history = read_csv(wav2vec2_run / "history.csv")
    assert [(float(r["epoch"]), int(r["step"])) for r in history] == [(1.0, 9), (2.0, 18), (3.0, 27)]
    assert all(value != "" for row in history for value in row.values())
    assert float(history[-1]["train_loss"]) < float(history[0]["train_loss"])

    predictions = read_csv(wav2vec2_run / "test_predictions.csv")
    assert [r["id"] for r in predictions] == list(data["test"]["id"])
    assert [r["reference"] for r in predictions] == list(data["test"]["sentence"])
    metrics = read_json(wav2vec2_run / "test_metrics.json")
    assert set(metrics) == METRIC_KEYS and metrics["num_utterances"] == len(data["test"])
    # rtf and decode_seconds are both rounded in the file: compare within that rounding
    assert metrics["rtf"] == pytest.approx(metrics["decode_seconds"] / metrics["audio_seconds"], rel=1e-3, abs=2e-4)

    card = (best / "README.md").read_text(encoding="utf-8")
    assert card.startswith("---\nlanguage:\n- vi\n") and "model-index:" in card
    assert f"value: {100 * metrics['wer']:.2f}, name: Test WER" in card

    asr = pipeline("automatic-speech-recognition", model=str(best))
    clip = np.asarray(data["test"][0]["input_values"], dtype=np.float32)
    beams = {"beam_width": info["language_model"]["beam_width"]}  # as the run decoded with its language model
    heard = train_wav2vec2.normalize_text(asr(clip, decoder_kwargs=beams)["text"].replace("[UNK]", ""))
    assert heard == predictions[0]["prediction"]


def test_early_stopping_keeps_the_best_checkpoint(waveform_data, tiny_model, work_dir):
    """With --patience 1, training stops at the first evaluation that does not beat the best validation WER
    (the tiny model's stays at 100 % after epoch 1), and best_model/ holds epoch 1's weights, not the last."""
    from safetensors.numpy import load_file

    out = work_dir / "runs" / "wav2vec2 early stop"
    with one_thread():
        info = train_wav2vec2.main(tiny_run_args(waveform_data, out, tiny_model, "--epochs", "5", "--patience", "1"))
    assert info["stop_reason"] == "early_stopping" and info["epochs_run"] == 2
    assert info["best_step"] == 9 and info["best_epoch"] == 1
    assert [r["step"] for r in read_csv(out / "history.csv")] == ["9", "18"]
    best, first, last = (load_file(out / folder / "model.safetensors")
                         for folder in ("best_model", "checkpoint-9", "checkpoint-18"))
    assert all(np.array_equal(best[name], first[name]) for name in first)
    assert not all(np.array_equal(best[name], last[name]) for name in last)


@pytest.mark.slow
def test_eval_only_scores_the_model_as_it_is(overfit_run, work_dir, capsys):
    """--eval-only on a trained best_model reproduces its test transcripts, trains nothing, writes the same
    run folder, and counts validation/test characters its vocabulary lacks, scoring them as errors."""
    trained, data_dir = overfit_run
    data = load_from_disk(str(data_dir))

    def with_foreign_letters(example, index):
        return {"sentence": example["sentence"] + " zw" if index == 0 else example["sentence"]}

    odd = derived_dataset(data_dir, work_dir / "data unknown letters", {
        "train": data["train"], "validation": data["validation"].map(with_foreign_letters, with_indices=True),
        "test": data["test"].map(with_foreign_letters, with_indices=True)})
    out = work_dir / "runs" / "wav2vec2 eval only"
    with one_thread():
        info = train_wav2vec2.main(["--data", str(odd), "--model", str(trained / "best_model"),
                                    "--output-dir", str(out), "--eval-only", "--num-workers", "0"])

    printed = capsys.readouterr().out
    assert "test: 2 characters the vocabulary lacks, scored as errors: 'z' x1, 'w' x1" in printed
    assert info["vocabulary"]["unknown_characters"] == {"validation": {"z": 1, "w": 1}, "test": {"z": 1, "w": 1}}
    assert info["eval_only"] and info["stop_reason"] == "eval_only" and info["train_seconds"] == 0.0
    assert not list(out.glob("checkpoint-*"))
    again = read_csv(out / "test_predictions.csv")
    assert [r["prediction"] for r in again] == list(data["test"]["sentence"])
    assert again[0]["reference"].endswith(" zw") and float(again[0]["wer"]) > 0
    assert all(float(r["wer"]) == 0 for r in again[1:])
    (row,) = read_csv(out / "history.csv")
    assert row["train_loss"] == "" and float(row["val_wer"]) > 0 and float(row["train_wer"]) == 0
    assert (out / "best_model" / "README.md").is_file() and (out / "test_metrics.json").is_file()


@pytest.mark.slow
def test_torchrun_two_cpu_processes(waveform_data, tiny_model, work_dir):
    """The same script under torchrun trains with DDP on gloo: each step takes a batch per process, so an
    epoch of 72 clips at batch 8 is 5 steps instead of 9, and one process writes the run folder. It runs
    with what real runs use and DDP must cope with: non-reentrant gradient checkpointing, layers skipped
    by layerdrop (parameters without a gradient in a step) and SpecAugment."""
    out = work_dir / "runs" / "wav2vec2 ddp"
    args = tiny_run_args(waveform_data, out, tiny_model, "--epochs", "1", "--gradient-checkpointing",
                         "--layerdrop", "0.5", "--spec-augment", "--mask-time-prob", "0.2")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(REPO / "train_wav2vec2.py"), *args], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("parameters on cpu x2 processes") == 1  # rank 0 alone prints
    info = read_json(out / "run_info.json")
    assert info["device"] == "cpu x2 processes" and info["effective_batch_size"] == 16
    assert info["gradient_checkpointing"] and info["regularisation"]["layerdrop"] == 0.5
    assert read_json(out / "trainer_state.json")["global_step"] == 5
    assert len(read_csv(out / "test_predictions.csv")) == len(load_from_disk(str(waveform_data))["test"])


# ----------------------------------------------------------------------------- refusals

def test_refuses_eval_only_without_a_ctc_head(waveform_data, tiny_model, tmp_path):
    with pytest.raises(SystemExit, match="--eval-only needs a model with a CTC head and its tokenizer"):
        train_wav2vec2.main(["--data", str(waveform_data), "--model", str(tiny_model),
                             "--output-dir", str(tmp_path / "run"), "--eval-only"])


def test_deepspeech2_trains_on_the_ids_a_wav2vec2_tokenizer_gives_the_same_text():
    """Both CTC trainers build their vocabulary one way ([PAD] the blank at 0, [UNK] 1, `|` 2, then the
    sorted letters): DeepSpeech2's labels are what train_wav2vec2's tokenizer makes of the text."""
    import train_deepspeech

    sentences = ["xin chào", "cà phê sữa"]
    vocab = train_wav2vec2.build_vocab(sentences)
    assert train_deepspeech.build_vocab(sentences) == vocab
    tokenizer = train_wav2vec2.tokenizer_from_vocabulary(vocab)
    for text in ("cà phê xin", "sữa zô"):  # z and ô are not in the vocabulary
        assert train_deepspeech.encode_text(text, vocab) == tokenizer(text)["input_ids"]
