"""train_deepspeech.py and modeling_deepspeech2.py: the model's pieces, the run folder contract, a saved model
that loads and transcribes in a fresh process, a run from a notebook cell, exact resume, 2-process torchrun,
--eval-only, the refusals, a from-scratch model that learns to transcribe unseen voices, and transcribe.py /
demo.py running a model folder's own code only with --trust-remote-code. Offline, CPU."""
from __future__ import annotations

import ast
import functools
import json
import math
import os
import subprocess
import sys
import shutil
import textwrap
import types
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file

import modeling_deepspeech2 as modeling
import train_deepspeech as ds2
from make_vivos_like import make_corpus
from conftest import one_thread, read_csv, read_json
from tiny_deepspeech import TINY_ARGS, train_tiny_run

REPO = Path(__file__).resolve().parents[1]
OFFLINE_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1"}


def random_model(**overrides) -> modeling.DeepSpeech2:
    """An untrained small model over a toy vocabulary (features normalised with mean 0, std 1)."""
    args = ds2.parse_args(["--data", "d", "--output-dir", "o", "--preset", "tiny"])
    vocab = ds2.build_vocab(["xin chào", "việt nam"])
    config = {**ds2.model_config(args, vocab, [0.0] * args.n_mels, [1.0] * args.n_mels), **overrides}
    torch.manual_seed(0)
    return modeling.DeepSpeech2(config, vocab).eval()


# ----------------------------------------------------------------------------- model pieces

def test_vocabulary_is_built_like_train_wav2vec2():
    vocab = ds2.build_vocab(["xin chào", "chào bạn"])
    assert list(vocab)[:3] == ["[PAD]", "[UNK]", "|"] and list(vocab)[3:] == sorted(set("xinchàoạb"))
    assert " " not in vocab and sorted(vocab.values()) == list(range(len(vocab)))
    assert ds2.encode_text("xin ơ", vocab) == [vocab["x"], vocab["i"], vocab["n"], vocab["|"], vocab["[UNK]"]]
    assert ds2.unknown_characters(["xin ơ ơ"], vocab) == {"ơ": 2}


def test_greedy_decoding_merges_repeats_and_drops_blanks_and_padding():
    vocab = ds2.build_vocab(["ba ba"])
    tokens = {i: t for t, i in vocab.items()}
    b, a, sep, blank = vocab["b"], vocab["a"], vocab["|"], vocab["[PAD]"]
    # "b b a | blank b a a blank a" then the Trainer's -100 padding: "ba baa" needs a blank to repeat a letter
    ids = np.array([b, b, a, sep, blank, b, a, a, blank, a, -100, -100])
    assert modeling.ctc_greedy_text(ids, tokens, blank) == "ba baa"
    assert ds2.label_text(np.array([b, a, sep, b, a, -100]), tokens) == "ba ba"


def spelled(vocab: dict[str, int], frames: list[dict[str, float]]) -> np.ndarray:
    """(frames, vocabulary) log-probabilities: each frame's listed tokens get their probability, the
    rest of the mass is the blank's (and a trace for every other token)."""
    log_probs = np.full((len(frames), len(vocab)), math.log(1e-6))
    for row, frame in enumerate(frames):
        for token, prob in frame.items():
            log_probs[row, vocab[token]] = math.log(prob)
        log_probs[row, vocab["[PAD]"]] = math.log(max(1.0 - sum(frame.values()), 1e-6))
    return log_probs


def test_lm_decoding_needs_a_language_model_and_a_model_without_one_decodes_greedily():
    model = random_model()
    clip = [np.random.default_rng(0).normal(0, 0.1, 8000).astype(np.float32)]
    with pytest.raises(ValueError, match="saved without a language model"):
        modeling.transcribe(model, clip, decoder="lm")
    assert model.lm_decoder is None
    assert modeling.transcribe(model, clip) == modeling.transcribe(model, clip, decoder="greedy")
    scores = modeling.log_probs(model, clip + [clip[0][:4000]], batch_size=2)
    assert [len(s) for s in scores] == model.output_lengths(torch.tensor([8000, 4000])).tolist()
    np.testing.assert_allclose(np.exp(scores[1]).sum(axis=1), 1.0, rtol=1e-4)


def test_spec_augment_masks_cover_about_the_requested_share():
    torch.manual_seed(0)
    sizes = torch.tensor([1000, 500, 0])
    mask = modeling.span_mask(sizes, 1000, prob=0.1, span=10)
    assert 0.05 < mask[0].float().mean() <= 0.1 and 0.05 < mask[1, :500].float().mean() / 1 <= 0.1
    assert not mask[1, 500:].any() and not mask[2].any()


def test_speed_perturbation_moves_duration_and_pitch_together_and_only_while_training():
    torch.manual_seed(0)
    seconds = torch.arange(16000) / ds2.SAMPLING_RATE
    tone = torch.sin(2 * math.pi * 1000.0 * seconds)  # 1 s at 1 kHz
    waves = torch.stack([tone, torch.where(seconds < 0.5, tone, torch.zeros_like(tone))])
    lengths = torch.tensor([16000, 8000])
    perturbed, new_lengths = modeling.perturb_speed(waves, lengths, spread=0.1)
    factors = (lengths / new_lengths).tolist()
    assert all(0.9 <= f <= 1.1 for f in factors) and abs(factors[0] - factors[1]) > 1e-3  # one speed per clip
    for row, (factor, new) in enumerate(zip(factors, new_lengths.tolist())):
        spectrum = np.abs(np.fft.rfft(perturbed[row, :new].numpy()))
        pitch = np.argmax(spectrum) * ds2.SAMPLING_RATE / new
        assert pitch == pytest.approx(1000.0 * factor, abs=2.0)  # faster clip, higher pitch, same factor
        assert not perturbed[row, new:].any()
    model = random_model(speed_perturb=0.1)
    values, input_lengths = modeling.pad_waveforms([np.random.default_rng(0).standard_normal(8000).astype(np.float32)])
    first, second = (model(values, input_lengths)["logits"] for _ in range(2))  # eval mode: no perturbation
    assert torch.equal(first, second)


def test_augmentation_starts_when_the_learning_rate_warm_up_ends(tmp_path):
    model = random_model(speed_perturb=0.1, spec_augment=True, dropout=0.0).train()
    values, lengths = modeling.pad_waveforms([np.random.default_rng(0).standard_normal(16000).astype(np.float32)])
    args = transformers.TrainingArguments(output_dir=str(tmp_path), warmup_steps=0.25, report_to=[])
    repeatable = {}
    for step in (0, 24, 25, 99):
        ds2.AugmentAfterWarmup().on_step_begin(args, transformers.TrainerState(global_step=step, max_steps=100),
                                               None, model=model)
        first, second = (model(values, lengths)["logits"] for _ in range(2))
        repeatable[step] = torch.equal(first, second)  # without augmentation a train-mode pass is deterministic
    assert repeatable == {0: True, 24: True, 25: False, 99: False}


def test_pitch_features_follow_the_tone_contour_relative_to_the_speaker():
    """A voice at 110 Hz, then a fifth higher (165 Hz), then an octave higher (220 Hz), then silence: the
    relative F0 is 0 at the utterance's median (110 Hz) and 3 * log2(165 / 110) for the fifth, a frame an
    octave away from the median is folded back as a tracking error, the silence is unvoiced, and a clip
    gets the same features alone as inside a padded batch."""
    def voice(f0, samples):  # ten harmonics falling off like a glottal source
        seconds = torch.arange(samples) / ds2.SAMPLING_RATE
        return sum(torch.sin(2 * math.pi * k * f0 * seconds) / k for k in range(1, 11)) * 0.1
    clip = torch.cat([voice(110.0, 11200), voice(165.0, 6400), voice(220.0, 4800), torch.zeros(4800)])
    pitch = modeling.PitchFeatures({"hop_length": 160, "sampling_rate": ds2.SAMPLING_RATE})
    relative, slope, voicing = pitch(clip[None], torch.tensor([len(clip)]))[0]
    assert relative.shape == (len(clip) // 160 + 1,)
    # frames away from the edges: 0-70 at 110 Hz, 70-110 at 165 Hz, 110-140 at 220 Hz, then silence
    low, fifth, octave, silent = slice(5, 65), slice(76, 104), slice(116, 134), slice(150, 165)
    assert relative[low].abs().max() < 0.05
    assert relative[fifth].mean() == pytest.approx(3 * math.log2(165 / 110), abs=0.05)
    assert relative[octave].abs().max() < 0.05
    assert (voicing[low] > 0.9).all() and (voicing[fifth] > 0.9).all() and (slope[low].abs() < 0.05).all()
    assert not voicing[silent].any() and not relative[silent].any()
    other = torch.randn(30000) * 0.05
    values, lengths = modeling.pad_waveforms([clip.numpy(), other.numpy()])
    alone = torch.stack([relative, slope, voicing])
    torch.testing.assert_close(pitch(values, lengths)[0, :, : relative.shape[0]], alone)


def test_pitch_features_track_a_low_voice_under_60_hz():
    """A low male voice at 55 Hz, then a fifth up (82.5 Hz): the tracker's 50 Hz floor and 50 ms frames hear
    both, and the fifth comes out 3 * log2(1.5) above the median."""
    def voice(f0, samples):
        seconds = torch.arange(samples) / ds2.SAMPLING_RATE
        return sum(torch.sin(2 * math.pi * k * f0 * seconds) / k for k in range(1, 21)) * 0.05
    clip = torch.cat([voice(55.0, 9600), voice(82.5, 6400)])
    config = {"hop_length": 160, "sampling_rate": ds2.SAMPLING_RATE}
    low, fifth = slice(8, 52), slice(68, 94)  # frames away from the edges: 0-60 at 55 Hz, 60-100 at 82.5 Hz
    relative, _, voicing = modeling.PitchFeatures(config)(clip[None], torch.tensor([len(clip)]))[0]
    assert (voicing[low] > 0.9).all() and (voicing[fifth] > 0.9).all()
    assert relative[low].abs().max() < 0.05 and relative[fifth].mean() == pytest.approx(3 * math.log2(1.5), abs=0.05)


def test_a_model_saved_without_pitch_features_loads_and_transcribes_as_trained(tmp_path):
    """Models saved before pitch features existed have no "pitch" in config.json: they load without them."""
    model = random_model(pitch=False)
    ds2.save_best_model(model, tmp_path)
    config = read_json(tmp_path / "config.json")
    del config["pitch"]
    (tmp_path / "config.json").write_text(json.dumps(config), encoding="utf-8")
    loaded = modeling.load_model(tmp_path)
    assert loaded.pitch is None and random_model().pitch is not None  # pitch is on for new models
    clip = [np.random.default_rng(0).normal(0, 0.1, 12000).astype(np.float32)]
    assert modeling.transcribe(loaded, clip, decoder="greedy") == modeling.transcribe(model, clip, decoder="greedy")


def test_a_config_saved_by_earlier_versions_loads_and_transcribes_as_trained(tmp_path):
    """Models saved until now carry "pitch_version": 2 in config.json (the pitch tracker there is now): they
    load, strictly (the first layer's input size must match), and transcribe as they did."""
    model = random_model()
    assert model.pitch_projection.out_features == modeling.PITCH_PROJECTION
    ds2.save_best_model(model, tmp_path)
    config = read_json(tmp_path / "config.json")
    assert "pitch_version" not in config
    (tmp_path / "config.json").write_text(json.dumps({**config, "pitch_version": 2}), encoding="utf-8")
    loaded = modeling.load_model(tmp_path)
    clip = [np.random.default_rng(0).normal(0, 0.1, 12000).astype(np.float32)]
    assert modeling.transcribe(loaded, clip, decoder="greedy") == modeling.transcribe(model, clip, decoder="greedy")


def test_a_folder_saved_with_the_old_lexicon_decoder_loads_and_decodes_greedily(tmp_path):
    """Folders saved before the language model say "decoder": "beam" and hold lexicon.json: they still load
    and transcribe, greedily, and say why there is no language model."""
    model = random_model()
    ds2.save_best_model(model, tmp_path)
    config = read_json(tmp_path / "config.json")
    (tmp_path / "config.json").write_text(json.dumps({**config, "decoder": "beam", "beam": {"beam_width": 8}}),
                                          encoding="utf-8")
    (tmp_path / "lexicon.json").write_text(json.dumps({"xin": 2, "chào": 1}), encoding="utf-8")
    loaded = modeling.load_model(tmp_path)
    clip = [np.random.default_rng(0).normal(0, 0.1, 12000).astype(np.float32)]
    assert loaded.lm_decoder is None and "without a language model" in loaded.lm_note
    assert modeling.transcribe(loaded, clip) == modeling.transcribe(model, clip, decoder="greedy")


def test_sortagrad_sampler_sorts_first_epoch_then_groups_lengths_deterministically():
    lengths = list(np.random.default_rng(0).uniform(1, 10, 200))
    sampler = ds2.SortaGradSampler(lengths, batch_size=8, seed=3, group_batches=5)
    first = list(sampler)
    assert [lengths[i] for i in first] == sorted(lengths)
    sampler.set_epoch(1)
    second = list(sampler)
    assert sorted(second) == list(range(200)) and second != first
    batches = [second[i: i + 8] for i in range(0, 200, 8)]
    spread = np.mean([np.ptp([lengths[i] for i in batch]) for batch in batches])
    assert spread < 3.0, "batches should hold utterances of similar length (random batches spread ~7 s)"
    again = ds2.SortaGradSampler(lengths, batch_size=8, seed=3, group_batches=5)
    again.set_epoch(1)
    assert list(again) == second, "a resumed run must see the same order"


def test_padded_batch_gives_each_clip_its_own_logits():
    """A clip alone and inside a padded batch: same logits on its frames, blank beyond them; this is
    what makes greedy decoding of the Trainer's padded evaluation logits exact."""
    model = random_model()
    rng = np.random.default_rng(0)
    clips = [rng.normal(0, 0.1, n).astype(np.float32) for n in (16000, 9000, 23000)]
    values, lengths = modeling.pad_waveforms(clips)
    with torch.no_grad():
        batch = model(values, lengths)["logits"]
        out_lengths = model.output_lengths(lengths)
        for k, clip in enumerate(clips):
            alone = model(*modeling.pad_waveforms([clip]))["logits"][0]
            n = int(out_lengths[k])
            assert alone.shape[0] == n
            torch.testing.assert_close(batch[k, :n], alone, atol=1e-4, rtol=1e-4)
            assert (batch[k, n:].argmax(-1) == model.settings["blank_id"]).all()


def test_gradient_checkpointing_gives_the_same_gradients():
    model = random_model(dropout=0.0, spec_augment=False, speed_perturb=0.0)
    model.train()
    values, lengths = modeling.pad_waveforms([np.random.default_rng(1).normal(0, 0.1, 12000).astype(np.float32)])
    labels = torch.tensor([ds2.encode_text("xin chào", model.vocab)])
    grads = []
    for flag in (False, True):
        model.zero_grad()
        model.gradient_checkpointing = flag
        model(values, lengths, labels)["loss"].backward()
        grads.append(model.rnns[0].forward_rnn.weight_ih_l0.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_best_model_gets_the_model_file_verbatim_and_it_needs_only_torch_numpy_safetensors(tmp_path):
    ds2.save_best_model(random_model(), tmp_path)
    assert (tmp_path / "modeling_deepspeech2.py").read_bytes() == (REPO / "modeling_deepspeech2.py").read_bytes()
    tree = ast.parse((REPO / "modeling_deepspeech2.py").read_text(encoding="utf-8"))

    def imported(nodes) -> set[str]:
        return ({alias.name.split(".")[0] for node in nodes if isinstance(node, ast.Import) for alias in node.names}
                | {node.module.split(".")[0] for node in nodes if isinstance(node, ast.ImportFrom)})

    assert imported(tree.body) == {"__future__", "importlib", "json", "math", "unicodedata", "pathlib", "numpy",
                                   "torch", "safetensors"}
    # the language model's decoder only when a folder has one and it is installed
    assert imported(list(ast.walk(tree))) - imported(tree.body) == {"pyctcdecode"}


def test_history_rows_average_the_losses_since_the_previous_evaluation():
    log = [{"loss": 4.0, "learning_rate": 1e-3, "step": 5, "epoch": 0.5},
           {"loss": 2.0, "learning_rate": 9e-4, "step": 10, "epoch": 1.0},
           {"eval_validation_loss": 2.5, "eval_validation_wer": 0.9, "eval_validation_cer": 0.5, "step": 10,
            "epoch": 1.0},
           {"eval_train_subset_wer": 0.8, "eval_train_subset_cer": 0.4, "step": 10, "epoch": 1.0},
           {"loss": 1.0, "learning_rate": 5e-4, "step": 12, "epoch": 1.2},
           {"loss": 0.5, "learning_rate": 1e-4, "step": 20, "epoch": 2.0},
           {"eval_validation_loss": 1.5, "eval_validation_wer": 0.5, "eval_validation_cer": 0.2, "step": 20,
            "epoch": 2.0}]
    rows = ds2.history_rows(log)
    assert [r["step"] for r in rows] == [10, 20]
    assert rows[0]["train_loss"] == pytest.approx(3.0) and rows[0]["train_wer"] == 0.8
    assert rows[1]["train_loss"] == pytest.approx((1.0 * 2 + 0.5 * 8) / 10) and rows[1]["train_wer"] == ""
    assert rows[1]["learning_rate"] == 1e-4


# ----------------------------------------------------------------------------- refusals

def test_refuses_whisper_features_naming_the_waveform_preparation(whisper_data, vivos_dir, work_dir):
    with pytest.raises(SystemExit) as error:
        ds2.main(["--data", str(whisper_data), "--output-dir", str(work_dir / "runs" / "never")])
    message = str(error.value)
    assert "--features waveform" in message and str(vivos_dir) in message and "prepare_vivos.py" in message
    assert not (work_dir / "runs" / "never").exists()


def test_refuses_missing_dataset_bad_model_and_non_empty_folder_for_no_resume(waveform_data, tmp_path):
    with pytest.raises(SystemExit, match="prepare_vivos.py --vivos-dir"):
        ds2.main(["--data", str(tmp_path / "nothing"), "--output-dir", str(tmp_path / "out")])
    (tmp_path / "not a model").mkdir()
    with pytest.raises(SystemExit, match="best_model/ folder written by train_deepspeech.py"):
        ds2.main(["--data", str(waveform_data), "--output-dir", str(tmp_path / "out"),
                  "--model", str(tmp_path / "not a model")])
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "history.csv").write_text("x", encoding="utf-8")
    with pytest.raises(SystemExit, match="only into an empty folder"):
        ds2.main(["--data", str(waveform_data), "--output-dir", str(tmp_path / "used"), "--no-resume"])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="needs a CUDA GPU"):
            ds2.main(["--data", str(waveform_data), "--output-dir", str(tmp_path / "out"), "--precision", "fp16"])


# ----------------------------------------------------------------------------- the run folder

@pytest.mark.slow
def test_run_folder_contract(deepspeech_run, waveform_data):
    run = deepspeech_run
    splits = datasets.load_from_disk(str(waveform_data))
    for name in ("trainer_state.json", "history.csv", "run_info.json", "test_predictions.csv",
                 "test_metrics.json", "best_model/model.safetensors", "best_model/config.json",
                 "best_model/vocab.json", "best_model/modeling_deepspeech2.py", "best_model/README.md"):
        assert (run / name).is_file(), name
    assert list((run / "runs").rglob("events.out.tfevents.*")), "TensorBoard events"

    history = read_csv(run / "history.csv")
    assert list(history[0]) == ["epoch", "step", "train_loss", "val_loss", "val_wer", "val_cer", "train_wer",
                                "train_cer", "learning_rate"]
    assert [float(r["epoch"]) for r in history] == [1.0, 2.0]
    assert all(r["train_loss"] and r["val_wer"] and r["train_wer"] for r in history)

    info = read_json(run / "run_info.json")
    for key in ("family", "base_model", "run_name", "params_total", "params_trainable", "architecture", "loss",
                "optimizer", "learning_rate", "scheduler", "warmup_steps", "weight_decay", "batch_size",
                "grad_accum", "effective_batch_size", "precision", "lora", "epochs_planned", "epochs_run",
                "best_epoch", "best_step", "best_val_wer", "stop_reason", "train_seconds", "peak_gpu_memory_mb",
                "device", "dataset", "eval_only", "command", "versions"):
        assert key in info, key
    assert info["family"] == "deepspeech2" and info["base_model"] == "scratch" and info["loss"] == "ctc"
    assert info["params_total"] == info["params_trainable"] > 0 and info["precision"] == "fp32"
    assert info["device"] == "cpu x1 process"
    assert info["stop_reason"] == "completed" and info["epochs_run"] == 2.0 and info["lora"] is None
    assert info["dataset"]["splits"] == {name: len(splits[name]) for name in ("train", "validation", "test")}
    assert info["architecture"]["rnn_layers"] == 1 and info["architecture"]["vocab_size"] > 30
    best = min(history, key=lambda r: float(r["val_cer"]))  # the first of equals, as the Trainer keeps it
    assert (info["best_val_cer"], info["best_val_wer"]) == (float(best["val_cer"]), float(best["val_wer"]))
    assert info["best_step"] == int(best["step"])

    predictions = read_csv(run / "test_predictions.csv")
    assert list(predictions[0]) == ["id", "speaker", "duration", "reference", "prediction", "raw_prediction",
                                    "wer", "cer", "greedy_prediction", "greedy_wer", "greedy_cer"]
    assert [p["id"] for p in predictions] == list(splits["test"]["id"])
    assert [p["reference"] for p in predictions] == list(splits["test"]["sentence"])
    metrics = read_json(run / "test_metrics.json")
    assert set(metrics) == {"wer", "cer", "ser", "substitutions", "deletions", "insertions", "hits", "ref_words",
                            "num_utterances", "audio_seconds", "decode_seconds", "rtf", "decoder", "greedy_wer",
                            "greedy_cer", "greedy_decode_seconds"}
    assert metrics["num_utterances"] == len(splits["test"])
    assert metrics["ref_words"] == sum(len(s.split()) for s in splits["test"]["sentence"])

    config = read_json(run / "best_model" / "config.json")
    vocab = read_json(run / "best_model" / "vocab.json")
    assert config["model_type"] == "deepspeech2" and config["vocab_size"] == len(vocab)
    assert config["blank_id"] == vocab["[PAD]"] and "|" in vocab and "[UNK]" in vocab
    assert len(config["feature_mean"]) == len(config["feature_std"]) == config["n_mels"] == 40
    weights = load_file(str(run / "best_model" / "model.safetensors"))
    torch.testing.assert_close(weights["features.mean"], torch.tensor(config["feature_mean"]))
    card = (run / "best_model" / "README.md").read_text(encoding="utf-8")
    assert card.startswith("---\nlanguage: vi") and f"{100 * metrics['wer']:.2f}" in card
    # the defaults' pitch features and LSTM cell are said where a reader of the run looks
    assert config["pitch"] is True and config["rnn_type"] == "lstm" and "pitch features" in card and "LSTM" in card
    assert "relative to the utterance's median" in card
    assert config["speed_perturb"] == 0.1
    assert "speed perturbation within 1 +- 0.1 (both from the end of the warm-up)" in card
    assert "pitch" in info["architecture"]["features"]


def test_the_language_model_is_the_train_text_weighted_on_validation(deepspeech_run, waveform_data):
    """run_info.json says what the test split was decoded with: a language model of the train transcripts
    only (their sentences and words, no validation or test text), its weight and word bonus the best of the
    grid tried on validation; best_model/ holds it and loads with it; greedy scores stay beside."""
    splits = datasets.load_from_disk(str(waveform_data))
    info = read_json(deepspeech_run / "run_info.json")
    lm = info["language_model"]
    train = list(splits["train"]["sentence"])
    assert lm["sentences"] == len(train) and lm["extra_sentences"] == 0
    assert lm["words_in_text"] == len({w for s in train for w in s.split()})
    assert lm["grid"] and lm["validation_wer_lm"] == min(g["wer"] for g in lm["grid"])
    assert {"alpha": lm["alpha"], "beta": lm["beta"], "wer": lm["validation_wer_lm"]} in lm["grid"]
    assert "validation utterances" in lm["tuned_on"]
    assert lm["used"] is True and info["decoder"] == "lm" and "pyctcdecode" in info["decoder_description"]
    best = deepspeech_run / "best_model"
    assert read_json(best / "config.json")["decoder"] == "lm"
    held_out = sentence_ngrams(list(splits["validation"]["sentence"]) + list(splits["test"]["sentence"]))
    assert longer_ngrams(best / "language_model" / "lm.arpa") <= sentence_ngrams(train)
    assert held_out - sentence_ngrams(train)
    assert not (deepspeech_run / ds2.LM_BUILD_FOLDER).exists()
    predictions = read_csv(deepspeech_run / "test_predictions.csv")
    metrics = read_json(deepspeech_run / "test_metrics.json")
    greedy = ds2.compute_wer_cer([p["reference"] for p in predictions], [p["greedy_prediction"] for p in predictions])
    assert metrics["decoder"] == "lm" and metrics["greedy_wer"] == pytest.approx(greedy["wer"])

    model = modeling.load_model(best)
    waves = list(splits["test"].with_format("numpy", columns=["input_values"])["input_values"])[:6]
    assert model.lm_decoder is not None
    # by default with the language model and the beams the run scored with (--lm-beam-width 8)
    assert modeling.transcribe(model, waves) == [p["raw_prediction"] for p in predictions[:6]]
    assert read_json(best / "config.json")["lm_beam_width"] == 8
    assert [ds2.normalize_text(t) for t in modeling.transcribe(model, waves, decoder="greedy")] == \
        [p["greedy_prediction"] for p in predictions[:6]]


def test_without_kenlm_the_run_says_so_once_and_decodes_greedily(deepspeech_run, waveform_data, tmp_path,
                                                                  monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "kenlm", None)  # as where kenlm cannot be built
    out = tmp_path / "greedy run"
    with one_thread():
        info = ds2.main(["--data", str(waveform_data), "--output-dir", str(out), "--eval-only", "--model",
                         str(deepspeech_run / "best_model"), "--train-eval-size", "0", "--lm-beam-width", "8"])
    said = [line for line in capsys.readouterr().out.splitlines() if "not installed" in line]
    assert len(said) == 1 and "pip install --no-deps -r requirements-lm.txt" in said[0]
    assert info["decoder"] == "greedy" and info["language_model"]["used"] is False
    assert "kenlm" in info["language_model"]["reason"]
    metrics = read_json(out / "test_metrics.json")
    assert metrics["decoder"] == "greedy" and metrics["wer"] == metrics["greedy_wer"]
    assert all(p["prediction"] == p["greedy_prediction"] for p in read_csv(out / "test_predictions.csv"))
    assert not (out / "best_model" / "language_model").exists()
    model = modeling.load_model(out / "best_model")
    assert model.lm_decoder is None and "kenlm" not in model.lm_note  # saved without one
    assert modeling.load_model(deepspeech_run / "best_model").lm_note.startswith("kenlm not installed")


def test_lm_text_adds_sentences_but_never_a_test_or_validation_one(deepspeech_run, waveform_data, tmp_path, capsys):
    splits = datasets.load_from_disk(str(waveform_data))
    text = tmp_path / "văn bản.txt"
    text.write_text(f"{splits['test']['sentence'][0].upper()}\nhôm nay trời đẹp lắm\n\n"
                    f"{splits['validation']['sentence'][0]}\n", encoding="utf-8")
    out = tmp_path / "with text"
    with one_thread():
        info = ds2.main(["--data", str(waveform_data), "--output-dir", str(out), "--eval-only", "--model",
                         str(deepspeech_run / "best_model"), "--train-eval-size", "0", "--lm-beam-width", "8",
                         "--lm-text", str(text)])
    assert "--lm-text: left out 2 sentences that the validation or test split contains" in capsys.readouterr().out
    lm = info["language_model"]
    assert lm["extra_sentences"] == 1 and lm["sentences"] == len(splits["train"]) + 1
    assert lm["extra_text"] == str(text)


def test_trains_in_a_notebook_cell_and_saves_a_model_that_loads(waveform_data, tmp_path, monkeypatch):
    """Colab: `git clone` + `%cd` into the repository, the script pasted into a cell (its source runs in a
    namespace without __file__), then main([...]). best_model/ gets the repository's model file and loads."""
    monkeypatch.syspath_prepend(str(REPO))
    cell = types.ModuleType("notebook_cell")
    assert not hasattr(cell, "__file__")
    exec(compile((REPO / "train_deepspeech.py").read_text(encoding="utf-8"), "<cell>", "exec"), cell.__dict__)
    out = tmp_path / "chạy thử"
    with one_thread():
        cell.main(["--data", str(waveform_data), "--output-dir", str(out), *TINY_ARGS, "--max-steps", "2",
                   "--train-eval-size", "0"])
    best = out / "best_model"
    assert (best / "modeling_deepspeech2.py").read_bytes() == (REPO / "modeling_deepspeech2.py").read_bytes()
    model = modeling.load_model(best)
    test = datasets.load_from_disk(str(waveform_data))["test"].with_format("numpy", columns=["input_values"])
    assert modeling.transcribe(model, list(test["input_values"])) == [
        r["raw_prediction"] for r in read_csv(out / "test_predictions.csv")]


def test_trainer_without_the_model_file_says_where_to_get_it(tmp_path):
    shutil.copy(REPO / "train_deepspeech.py", tmp_path)
    env = {key: value for key, value in OFFLINE_ENV.items() if key != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "train_deepspeech.py", "--help"], cwd=tmp_path, capture_output=True,
                            text=True, encoding="utf-8", env=env, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]  # lines before it: other packages' import notices
    assert "next to train_deepspeech.py" in line and "git clone" in line
    assert "%%writefile modeling_deepspeech2.py" in line


def test_training_sees_clean_clips_until_the_warm_up_ends(waveform_data, tmp_path, monkeypatch):
    seen = []  # per training step: were speed perturbation and SpecAugment on?
    forward = modeling.DeepSpeech2.forward

    @functools.wraps(forward)  # the Trainer reads forward's signature
    def recording_forward(self, *args, **kwargs):
        if self.training:
            seen.append(self.augment)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(modeling.DeepSpeech2, "forward", recording_forward)
    train_tiny_run(waveform_data, tmp_path / "run", ("--max-steps", "8", "--warmup-ratio", "0.25",
                                                     "--train-eval-size", "0"))
    assert seen == [False] * 2 + [True] * 6


@pytest.mark.slow
def test_resume_after_interruption_continues_exactly(deepspeech_run, waveform_data, work_dir, monkeypatch, capsys):
    """Ctrl-C right after epoch 1's checkpoint, a half-written newer checkpoint, then the same command:
    the run ends where an uninterrupted one does, with the same losses (optimizer, scheduler, RNG and
    data order restored) and one history row per epoch."""
    out = work_dir / "runs" / "deepspeech2 resumed"
    save_checkpoint = transformers.Trainer._save_checkpoint

    def save_then_interrupt(self, model, trial):
        save_checkpoint(self, model, trial)
        raise KeyboardInterrupt

    monkeypatch.setattr(transformers.Trainer, "_save_checkpoint", save_then_interrupt)
    with pytest.raises(SystemExit, match="Re-run the same command to continue from") as stopped:
        train_tiny_run(waveform_data, out)
    monkeypatch.undo()
    first = ds2.last_complete_checkpoint(out)
    assert first is not None and str(first) in str(stopped.value) and not (out / "run_info.json").exists()
    (out / "checkpoint-999").mkdir()  # cut off mid-write: weights but no trainer_state.json
    (out / "checkpoint-999" / "model.safetensors").write_bytes(b"partial")
    capsys.readouterr()

    train_tiny_run(waveform_data, out)
    assert f"resuming from {first}" in capsys.readouterr().out
    resumed, reference = read_json(out / "trainer_state.json"), read_json(deepspeech_run / "trainer_state.json")
    assert resumed["global_step"] == reference["global_step"] and resumed["epoch"] == reference["epoch"] == 2.0
    losses = [[e["loss"] for e in state["log_history"] if "loss" in e] for state in (resumed, reference)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    history, reference_history = read_csv(out / "history.csv"), read_csv(deepspeech_run / "history.csv")
    assert [r["step"] for r in history] == [r["step"] for r in reference_history]
    val_losses = [[float(r["val_loss"]) for r in rows] for rows in (history, reference_history)]
    assert val_losses[0] == pytest.approx(val_losses[1], rel=1e-4)


@pytest.mark.slow
def test_torchrun_two_cpu_processes(waveform_data, work_dir):
    out = work_dir / "runs" / "deepspeech2 ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(REPO / "train_deepspeech.py"), "--data", str(waveform_data), "--output-dir", str(out),
               *TINY_ARGS, "--epochs", "1", "--train-eval-size", "0"]
    result = subprocess.run(command, capture_output=True, text=True, encoding="utf-8", env=OFFLINE_ENV, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    splits = datasets.load_from_disk(str(waveform_data))
    info = read_json(out / "run_info.json")
    assert info["device"] == "cpu x2 processes" and info["effective_batch_size"] == 16
    # each optimizer step consumed one batch of 8 per process: half the steps of a single process
    assert read_json(out / "trainer_state.json")["global_step"] == math.ceil(len(splits["train"]) / 16)
    assert len(read_csv(out / "test_predictions.csv")) == len(splits["test"])


# ----------------------------------------------------------------------------- learning

# 10 voices x 30 utterances: 8 voices (240 utterances) train, 2 (one per gender) validate; the test split
# is 2 other voices reading 12 sentences each that appear nowhere in train.
LEARNING_CORPUS = {"train_speakers": 10, "train_per_speaker": 30, "test_speakers": 2, "test_per_speaker": 12}
LEARNING_ARGS = ["--n-mels", "40", "--conv-channels", "16", "--rnn-type", "gru", "--no-pitch", "--rnn-layers", "2",
                 "--rnn-hidden", "128", "--batch-size", "4", "--epochs", "6", "--lr", "2e-3", "--no-spec-augment",
                 "--train-eval-size", "0", "--patience", "0", "--speed-perturb", "0", "--seed", "0"]
# An untrained model outputs blanks (CER 1.0), and one stuck in CTC's blank plateau or emitting a few
# frequent letters scores 0.7-1.0. Below 0.5, one character in two of sentences never heard, spoken by voices
# never heard, comes out right: that takes a learnt sound-to-letter mapping. A small GRU without pitch or
# speed perturbation rather than the defaults: PyTorch's GRU gives the same numbers every run on a CPU,
# while its LSTM goes through oneDNN, whose last bits differ from run to run, and how soon a small model
# leaves the blank plateau amplifies that. The full-size defaults are measured by
# bench/bench_deepspeech_learning.py (bench/RESULTS.md).
LEARNING_MAX_CER = 0.5


@pytest.fixture(scope="module")
def learned_run(work_dir) -> Path:
    """A small DeepSpeech2 trained from scratch on 240 espeak-ng utterances of 8 voices."""
    import prepare_vivos

    corpus = make_corpus(work_dir / "ds2 learning corpus", seed=1, **LEARNING_CORPUS)
    data = work_dir / "ds2 learning data"
    prepare_vivos.main(["--vivos-dir", str(corpus), "--out", str(data), "--features", "waveform",
                        "--val-ratio", "0.2", "--seed", "0"])
    out = work_dir / "runs" / "deepspeech2 learning"
    with one_thread():
        ds2.main(["--data", str(data), "--output-dir", str(out), *LEARNING_ARGS])
    return out


@pytest.mark.slow
def test_learns_to_transcribe_unseen_voices_and_sentences(learned_run):
    metrics = read_json(learned_run / "test_metrics.json")
    info = read_json(learned_run / "run_info.json")
    history = read_csv(learned_run / "history.csv")
    assert metrics["cer"] < LEARNING_MAX_CER, metrics
    assert info["decoder"] == metrics["decoder"] == "lm" and metrics["wer"] <= metrics["greedy_wer"]
    assert float(history[-1]["val_cer"]) < float(history[0]["val_cer"])
    assert float(history[-1]["train_loss"]) < float(history[0]["train_loss"]) / 2


def longer_ngrams(arpa: Path) -> set[tuple[str, ...]]:
    """The n-grams of order 2 and more in an ARPA file."""
    text = arpa.read_text(encoding="utf-8").split("\\2-grams:", 1)[1]
    return {tuple(line.split("\t")[1].split()) for line in text.splitlines() if "\t" in line}


def sentence_ngrams(sentences, orders=(2, 3)) -> set[tuple[str, ...]]:
    grams = set()
    for sentence in sentences:
        words = ["<s>", *sentence.split(), "</s>"]
        grams |= {tuple(words[i:i + n]) for n in orders for i in range(len(words) - n + 1)}
    return grams


@pytest.mark.slow
def test_the_language_model_knows_no_test_or_validation_sentence(learned_run):
    """best_model/language_model/lm.arpa is built from the train transcripts: each of its word pairs and
    triples occurs in a train sentence, so none that only validation or test sentences have."""
    splits = datasets.load_from_disk(str(learned_run.parents[1] / "ds2 learning data"))
    grams = longer_ngrams(learned_run / "best_model" / "language_model" / "lm.arpa")
    train = sentence_ngrams(splits["train"]["sentence"])
    held_out = sentence_ngrams(list(splits["validation"]["sentence"]) + list(splits["test"]["sentence"])) - train
    assert grams and held_out and grams <= train and not grams & held_out
    info = read_json(learned_run / "run_info.json")["language_model"]
    assert info["used"] is True and info["sentences"] == len(splits["train"]) and info["extra_sentences"] == 0


@pytest.mark.slow
def test_best_model_transcribes_wav_files_in_a_fresh_process(learned_run, work_dir):
    """What a user of a shared best_model/ does (and transcribe.py --trust-remote-code): import the folder's
    modeling_deepspeech2.py, nothing else."""
    predictions = read_csv(learned_run / "test_predictions.csv")
    corpus = work_dir / "ds2 learning corpus" / "test" / "waves"
    wavs = [str(corpus / p["speaker"] / f"{p['id']}.wav") for p in predictions]
    code = textwrap.dedent("""
        import importlib.util, json, sys
        import soundfile as sf
        folder, wavs = sys.argv[1], sys.argv[2:]
        spec = importlib.util.spec_from_file_location("modeling_deepspeech2", folder + "/modeling_deepspeech2.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        model = module.load_model(folder)
        waves = [sf.read(path, dtype="float32")[0] for path in wavs]
        print(json.dumps({"batched": module.transcribe(model, waves, batch_size=5),
                          "single": [module.transcribe(model, [w])[0] for w in waves],
                          "training": model.training,
                          "foreign": sorted(m for m in sys.modules if m.split(".")[0] in
                                            ("train_deepspeech", "transformers", "jiwer"))}))
    """)
    result = subprocess.run([sys.executable, "-c", code, str(learned_run / "best_model"), *wavs],
                            capture_output=True, text=True, encoding="utf-8", env=OFFLINE_ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["training"] is False and answer["foreign"] == []
    assert answer["batched"] == answer["single"] == [p["raw_prediction"] for p in predictions]
    assert sum(bool(text) for text in answer["batched"]) >= len(wavs) // 2


@pytest.mark.slow
def test_eval_only_reproduces_the_run_and_padded_decoding_is_exact(learned_run, work_dir):
    """--eval-only on best_model gives the run's test metrics; its validation CER (greedy decoding of
    the Trainer's padded, concatenated logits) equals the CER of transcribe() one clip at a time."""
    out = work_dir / "runs" / "deepspeech2 eval-only"
    data = work_dir / "ds2 learning data"
    with one_thread():
        ds2.main(["--data", str(data), "--output-dir", str(out), "--model", str(learned_run / "best_model"),
                  "--eval-only", "--train-eval-size", "0", "--eval-batch-size", "7"])
        validation = datasets.load_from_disk(str(data))["validation"]
        model = modeling.load_model(learned_run / "best_model")
        waves = list(validation.with_format("numpy", columns=["input_values"])["input_values"])
        hyps = [ds2.normalize_text(modeling.transcribe(model, [w], decoder="greedy")[0]) for w in waves]
    reference = read_json(learned_run / "test_metrics.json")
    assert read_json(out / "test_metrics.json")["cer"] == pytest.approx(reference["cer"])
    info = read_json(out / "run_info.json")
    assert info["eval_only"] is True and info["stop_reason"] == "eval_only"
    assert info["base_model"] == str(learned_run / "best_model")
    (row,) = read_csv(out / "history.csv")
    assert row["train_loss"] == "" and row["train_wer"] == ""

    scores = ds2.compute_wer_cer(list(validation["sentence"]), hyps)
    assert float(row["val_cer"]) == pytest.approx(scores["cer"])
    assert float(row["val_wer"]) == pytest.approx(scores["wer"])


@pytest.mark.slow
def test_lm_order_0_writes_best_path_test_predictions(learned_run, work_dir):
    out = work_dir / "runs" / "deepspeech2 greedy"
    data = work_dir / "ds2 learning data"
    with one_thread():
        ds2.main(["--data", str(data), "--output-dir", str(out), "--model", str(learned_run / "best_model"),
                  "--eval-only", "--train-eval-size", "0", "--lm-order", "0"])
        model = modeling.load_model(learned_run / "best_model")
        test = datasets.load_from_disk(str(data))["test"]
        greedy = modeling.transcribe(model, list(test.with_format("numpy", columns=["input_values"])["input_values"]),
                                decoder="greedy")
    assert read_json(out / "run_info.json")["decoder"] == "greedy"
    assert [r["raw_prediction"] for r in read_csv(out / "test_predictions.csv")] == greedy
    assert json.loads((out / "best_model" / "config.json").read_text(encoding="utf-8"))["decoder"] == "greedy"
    assert not (out / "best_model" / "language_model").exists()
    assert read_json(out / "run_info.json")["language_model"] == {"used": False, "reason": "--lm-order 0"}


# ----------------------------------------------------------------------------- code in a model folder

FOLDER_TEXT = "mã của thư mục"  # what the edited folder copy "transcribes"


@pytest.fixture()
def edited_folder(tmp_path) -> Path:
    """A saved DeepSpeech2 whose modeling_deepspeech2.py was edited by whoever shared it: on import it writes
    `ran.txt` next to itself, and its transcribe() returns FOLDER_TEXT."""
    folder = tmp_path / "mô hình chia sẻ" / "best_model"
    ds2.save_best_model(random_model(), folder)
    code = folder / "modeling_deepspeech2.py"
    code.write_text(code.read_text(encoding="utf-8") + textwrap.dedent(f"""
        Path(__file__).with_name("ran.txt").write_text("folder code ran", encoding="utf-8")


        def transcribe(model, waveforms, batch_size=16, decoder=None):
            return [{FOLDER_TEXT!r}] * len(waveforms)
        """), encoding="utf-8")
    return folder


@pytest.fixture()
def clip_wav(tmp_path) -> tuple[Path, np.ndarray]:
    """A 1.5 s noise clip as a WAV file, and its samples as the scripts read them."""
    import soundfile as sf

    wave = np.random.default_rng(0).normal(0, 0.1, 24000).astype(np.float32)
    path = tmp_path / "đoạn.wav"
    sf.write(path, wave, ds2.SAMPLING_RATE)
    return path, sf.read(path, dtype="float32")[0]


def repository_transcript(folder: Path, wave: np.ndarray) -> str:
    """The folder's weights run by the repository's modeling_deepspeech2.py."""
    return ds2.normalize_text(modeling.transcribe(modeling.load_model(folder), [wave])[0])


def test_transcribe_runs_folder_code_only_with_trust_remote_code(edited_folder, clip_wav, tmp_path):
    import transcribe

    path, wave = clip_wav
    expected = repository_transcript(edited_folder, wave)
    base = ["--model", str(edited_folder), str(path), "--format", "json", "--device", "cpu"]
    result = transcribe.main([*base, "--output-dir", str(tmp_path / "safe")])
    assert not (edited_folder / "ran.txt").exists()
    assert result["files"][0]["text"] == expected != FOLDER_TEXT
    result = transcribe.main([*base, "--output-dir", str(tmp_path / "trusted"), "--trust-remote-code"])
    assert (edited_folder / "ran.txt").is_file() and result["files"][0]["text"] == FOLDER_TEXT


def test_transcribe_names_the_missing_files_of_an_incomplete_deepspeech2_folder(edited_folder, clip_wav, tmp_path):
    import transcribe

    (edited_folder / "model.safetensors").unlink()
    with pytest.raises(SystemExit, match="missing: model.safetensors. Pass the --output-dir of a finished"):
        transcribe.main(["--model", str(edited_folder), str(clip_wav[0]), "--output-dir", str(tmp_path / "out")])
    assert not (edited_folder / "ran.txt").exists() and not (tmp_path / "out").exists()


def test_demo_runs_folder_code_only_with_trust_remote_code(edited_folder, clip_wav, monkeypatch):
    import demo

    path, wave = clip_wav
    expected = repository_transcript(edited_folder, wave)

    class Page:  # the page is built, never served
        def launch(self, **kwargs):
            return None

    for flags, marker, text in (([], False, expected), (["--trust-remote-code"], True, FOLDER_TEXT)):
        loaded = {}
        monkeypatch.setattr(demo, "build_demo", lambda models, max_seconds: loaded.update(models) or Page())
        demo.main(["--models", str(edited_folder), "--device", "cpu", *flags])
        assert (edited_folder / "ran.txt").exists() == marker
        (name,) = loaded
        assert demo.compare_models(loaded, str(path), [name])[0] == text


def test_transcribe_without_the_repository_model_file_refuses_or_runs_the_folder_copy_on_request(
        edited_folder, clip_wav, tmp_path, monkeypatch):
    """transcribe.py copied alone, or a notebook working inside the model folder: the folder's file is the only
    modeling_deepspeech2.py Python could import, and it still runs only with --trust-remote-code."""
    path, _ = clip_wav
    shutil.copy(REPO / "transcribe.py", tmp_path)
    env = {key: value for key, value in OFFLINE_ENV.items() if key != "PYTHONPATH"}
    command = [sys.executable, "transcribe.py", "--model", str(edited_folder), str(path), "--device", "cpu"]
    refused = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, encoding="utf-8", env=env,
                             timeout=300)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "modeling_deepspeech2.py not found next to this script" in refused.stderr
    assert "--trust-remote-code" in refused.stderr and not (edited_folder / "ran.txt").exists()
    trusted = subprocess.run([*command, "--trust-remote-code"], cwd=tmp_path, capture_output=True, text=True,
                             encoding="utf-8", env=env, timeout=300)
    assert trusted.returncode == 0, trusted.stderr[-2000:]
    assert FOLDER_TEXT in trusted.stdout and (edited_folder / "ran.txt").is_file()
    (edited_folder / "ran.txt").unlink()

    import transcribe

    monkeypatch.syspath_prepend(str(edited_folder))
    monkeypatch.delitem(sys.modules, "modeling_deepspeech2")
    with pytest.raises(SystemExit, match="--trust-remote-code"):
        transcribe.main(["--model", str(edited_folder), str(path), "--output-dir", str(tmp_path / "out")])
    assert not (edited_folder / "ran.txt").exists()


def test_the_estimate_order_starts_with_the_longest_batch_then_batches_of_every_length():
    """--estimate times a few steps: SortaGrad's shortest-first epoch would under-state both the time and
    the peak memory of a run, so the estimate sees the longest utterances first, then ordinary batches."""
    lengths = list(np.random.default_rng(0).uniform(1, 10, 200))
    order = list(ds2.SortaGradSampler(lengths, batch_size=8, seed=3, group_batches=5, for_estimate=True))
    assert sorted(order) == list(range(200))
    assert max(lengths) in [lengths[i] for i in order[:8]]
    following = [np.mean([lengths[i] for i in order[k: k + 8]]) for k in range(8, 48, 8)]
    assert np.mean(following) > np.mean(sorted(lengths)[:40]) + 2  # not the shortest clips
