"""The word n-gram language model of the CTC trainers (train_wav2vec2.py is the source of the shared code,
train_deepspeech.py holds marked copies): the ARPA file KenLM reads, the Vietnamese syllables it adds, how its
weight is chosen on validation, the saved folder pipeline() decodes with, and greedy decoding when kenlm is
missing."""
from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from datasets import load_from_disk

import train_wav2vec2 as w2v
import transcribe
from conftest import read_csv, read_json
from tiny_wav2vec2 import one_thread

pytest.importorskip("pyctcdecode")
kenlm = pytest.importorskip("kenlm")


def without_kenlm(monkeypatch) -> None:
    """This process as on a machine where kenlm could not be built (Windows without a compiler)."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None if name == "kenlm" else real(name, *a, **k))


def arpa_ngrams(path: Path) -> dict[int, dict[tuple, float]]:
    """{order: {words: log10 probability}} of an ARPA file."""
    grams: dict[int, dict[tuple, float]] = {}
    order = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        heading = re.fullmatch(r"\\(\d)-grams:", line)
        if heading:
            order = int(heading.group(1))
            grams[order] = {}
        elif order and line and line != "\\end\\":
            fields = line.split("\t")
            grams[order][tuple(fields[1].split())] = float(fields[0])
    return grams


# ----------------------------------------------------------------------------- syllables and the ARPA file

def test_syllable_parts_and_spelling_rules():
    """Onset, toneless rhyme and where the tone mark sits; possible syllables follow Vietnamese spelling (k, gh,
    ngh before e/ê/i; c, g, ng elsewhere) and give a syllable ending in p/t/c/ch only the sắc or nặng tone."""
    assert w2v.syllable_parts("nghĩa") == ("ngh", "ia", 0, "\u0303")
    assert w2v.syllable_parts("quả") == ("qu", "a", 0, "\u0309")
    assert w2v.syllable_parts("gì")[:2] == ("g", "i")
    assert w2v.syllable_parts("hòa") == ("h", "oa", 0, "\u0300")
    assert w2v.syllable_parts("wifi") is None and w2v.syllable_parts("xyz") is None
    made = w2v.possible_syllables({"cá", "kể", "gà", "nghe", "tốt", "bơm", "hòa"})
    assert {"cá", "kể", "gà", "nghe", "tốt", "bơm", "hòa"} <= made
    assert {"cơm", "bá", "kế", "nghế", "cột", "bốt", "hỏa", "bòa"} <= made  # seen onsets x seen rhymes x tones
    assert not {"kà", "ce", "gè", "nghá", "tồt", "tôt", "bỏt"} & made


def test_arpa_is_a_normalised_kneser_ney_model_kenlm_reads(tmp_path):
    """Every context's probabilities over the vocabulary sum to one in KenLM's own reading of the file; a
    word the text lacks but the syllable set allows costs a known probability, far above KenLM's unknown word."""
    sentences = ["tôi đi học", "tôi đi chợ", "mẹ đi chợ mua cá", "cá ở chợ rất tươi", "tôi học bài"]
    facts = w2v.write_arpa(sentences, 3, {"bơi", "tươi"}, tmp_path / "lm.arpa")
    model = kenlm.Model(str(tmp_path / "lm.arpa"))
    grams = arpa_ngrams(tmp_path / "lm.arpa")
    vocabulary = [g[0] for g in grams[1] if g[0] != "<s>"]
    assert facts["order"] == 3 and facts["words_added"] == 1 and "bơi" in vocabulary
    for context in ([], ["tôi"], ["tôi", "đi"], ["cá", "ở"], ["bơi"]):
        state, out = kenlm.State(), kenlm.State()
        model.BeginSentenceWrite(state)
        for word in context:
            model.BaseScore(state, word, out)
            state, out = out, kenlm.State()
        total = sum(10 ** model.BaseScore(state, word, kenlm.State()) for word in vocabulary)
        assert total == pytest.approx(1.0, abs=1e-4), context
    assert model.score("tôi đi chợ") > model.score("chợ đi tôi")
    assert "bơi" in model and "zzz" not in model  # pyctcdecode's unknown-word penalty falls on zzz only
    assert grams[1][("bơi",)] == grams[1][("<unk>",)] > -3  # the uniform share of the unseen mass


def test_lm_text_reading_leaves_out_held_out_sentences(tmp_path, capsys):
    """--lm-text: normalised like the transcripts, UTF-16 with a BOM read, validation/test sentences dropped
    with a line; another encoding is named with what to do."""
    path = tmp_path / "thêm văn bản.txt"
    path.write_text("Hôm nay TRỜI đẹp.\nXin chào các bạn\n\n", encoding="utf-16")
    assert w2v.read_lm_text(path, {"xin chào các bạn"}) == ["hôm nay trời đẹp"]
    assert "left out 1 sentences that the validation or test split contains" in capsys.readouterr().out
    path.write_bytes("Hôm nay đi chơi".encode("cp1258"))  # what a Windows editor may save
    with pytest.raises(SystemExit, match="is not UTF-8 .* save it as UTF-8"):
        w2v.read_lm_text(path, set())
    with pytest.raises(SystemExit, match="no such file"):
        w2v.read_lm_text(tmp_path / "missing.txt", set())
    with pytest.raises(SystemExit, match="a folder. Give a text file"):
        w2v.read_lm_text(tmp_path, set())


# ----------------------------------------------------------------------------- a trained Wav2Vec2 run

def test_language_model_built_from_train_text_only(wav2vec2_run, waveform_data):
    """best_model/language_model/lm.arpa holds the train transcripts' word sequences and no other: no
    bigram or trigram that only a validation or test sentence has."""
    data = load_from_disk(str(waveform_data))
    info = read_json(wav2vec2_run / "run_info.json")["language_model"]
    assert info["used"] and info["sentences"] == len(data["train"]) and info["extra_sentences"] == 0
    grams = arpa_ngrams(wav2vec2_run / "best_model" / "language_model" / "lm.arpa")

    def bigrams(sentences):
        return {pair for s in sentences for pair in zip(["<s>", *s.split()], [*s.split(), "</s>"])}

    train = bigrams(w2v.normalize_text(s) for s in data["train"]["sentence"])
    held_out = bigrams(w2v.normalize_text(s) for name in ("validation", "test") for s in data[name]["sentence"])
    assert set(grams[2]) == train and held_out - train
    assert not (held_out - train) & set(grams[2])


def test_weight_chosen_on_validation_and_both_decoders_scored(wav2vec2_run):
    """alpha and beta are the validation grid's best; test_metrics.json and test_predictions.csv carry the
    language-model decoder's scores and text beside the greedy ones."""
    info = read_json(wav2vec2_run / "run_info.json")
    lm = info["language_model"]
    assert info["decoder"] == "lm" and lm["grid"] and "validation" in lm["tuned_on"]
    best = min(g["wer"] for g in lm["grid"])
    assert {"alpha": lm["alpha"], "beta": lm["beta"], "wer": lm["validation_wer_lm"]} in lm["grid"]
    assert lm["validation_wer_lm"] == best
    assert {g["alpha"] for g in lm["grid"]} == set(w2v.LM_ALPHAS)
    metrics = read_json(wav2vec2_run / "test_metrics.json")
    rows = read_csv(wav2vec2_run / "test_predictions.csv")
    assert metrics["decoder"] == "lm" and {"greedy_wer", "greedy_cer", "wer", "cer"} <= set(metrics)
    assert {"prediction", "greedy_prediction", "greedy_wer"} <= set(rows[0])
    references = [r["reference"] for r in rows]
    assert metrics["greedy_wer"] == pytest.approx(w2v.compute_wer_cer(references, [r["greedy_prediction"]
                                                                                    for r in rows])["wer"])
    assert metrics["wer"] == pytest.approx(w2v.compute_wer_cer(references, [r["prediction"] for r in rows])["wer"])


def test_pipeline_decodes_with_the_saved_language_model(wav2vec2_run, waveform_data):
    """pipeline("automatic-speech-recognition", model=best_model) attaches the saved decoder by itself, and its
    text is pyctcdecode's beam search with the run's alpha/beta over the model's own scores."""
    from pyctcdecode import BeamSearchDecoderCTC
    from transformers import AutoModelForCTC, Wav2Vec2Processor, pipeline

    best = wav2vec2_run / "best_model"
    asr = pipeline("automatic-speech-recognition", model=str(best))
    assert asr.type == "ctc_with_lm"
    lm = read_json(wav2vec2_run / "run_info.json")["language_model"]
    decoder = BeamSearchDecoderCTC.load_from_dir(str(best))
    assert (decoder.model_container[decoder._model_key].alpha, decoder.model_container[decoder._model_key].beta) \
        == (lm["alpha"], lm["beta"])
    test = load_from_disk(str(waveform_data))["test"].select(range(3))
    model, processor = AutoModelForCTC.from_pretrained(best), Wav2Vec2Processor.from_pretrained(best)
    for log_probs, row in zip(w2v.ctc_log_probs(model, processor, test, 1), test):
        heard = asr(np.asarray(row["input_values"], dtype=np.float32), decoder_kwargs={"beam_width": 8})["text"]
        assert heard == decoder.decode(log_probs, beam_width=8)


def eval_only(run: Path, data: Path, out: Path, *extra: str) -> dict:
    with one_thread():
        return w2v.main(["--data", str(data), "--model", str(run / "best_model"), "--output-dir", str(out),
                         "--eval-only", "--num-workers", "0", "--eval-batch-size", "16", "--train-eval-size", "0",
                         "--lm-beam-width", "8", *extra])


def test_greedy_with_one_line_when_kenlm_is_missing(wav2vec2_run, waveform_data, tmp_path, monkeypatch, capsys):
    """Without kenlm the run says so in one line, decodes greedily (wer == greedy_wer), saves no language
    model, and the saved folder still loads (its processor too, for a run that continues from it)."""
    without_kenlm(monkeypatch)
    info = eval_only(wav2vec2_run, waveform_data, tmp_path / "run")
    printed = capsys.readouterr().out
    assert "kenlm not installed, so decoding is greedy (no language model)" in printed
    assert "pip install --no-deps -r requirements-lm.txt" in printed
    assert info["decoder"] == "greedy" and not info["language_model"]["used"]
    metrics = read_json(tmp_path / "run" / "test_metrics.json")
    assert metrics["wer"] == metrics["greedy_wer"] and metrics["decoder"] == "greedy"
    assert not (tmp_path / "run" / "best_model" / "language_model").exists()
    assert not (tmp_path / "run" / w2v.LM_BUILD_FOLDER).exists()
    assert w2v.pretrained_ctc_processor(str(wav2vec2_run / "best_model")) is not None


def test_lm_text_and_lm_order_flags(wav2vec2_run, waveform_data, tmp_path, capsys):
    """--lm-text adds sentences but never a test sentence; --lm-order 0 decodes greedily; bad values are
    refused in one line before any work."""
    data = load_from_disk(str(waveform_data))
    extra = tmp_path / "more.txt"
    extra.write_text(f"{data['test'][0]['sentence']}\nmột câu hoàn toàn mới ở đây\n", encoding="utf-8")
    info = eval_only(wav2vec2_run, waveform_data, tmp_path / "with text", "--lm-text", str(extra))
    assert info["language_model"]["extra_sentences"] == 1
    assert info["language_model"]["sentences"] == len(data["train"]) + 1
    assert "left out 1 sentences that the validation or test split contains" in capsys.readouterr().out
    grams = arpa_ngrams(tmp_path / "with text" / "best_model" / "language_model" / "lm.arpa")
    assert ("hoàn", "toàn", "mới") in grams[3]
    info = eval_only(wav2vec2_run, waveform_data, tmp_path / "greedy", "--lm-order", "0")
    assert info["decoder"] == "greedy" and info["language_model"] == {"used": False, "reason": "--lm-order 0"}
    for bad in (["--lm-order", "9"], ["--lm-beam-width", "0"], ["--lm-text", str(tmp_path / "nope.txt")]):
        with pytest.raises(SystemExit, match="--lm-"):
            eval_only(wav2vec2_run, waveform_data, tmp_path / "refused", *bad)
        assert not (tmp_path / "refused").exists()


# ----------------------------------------------------------------------------- transcribe.py

def test_transcribe_decoder_choice(wav2vec2_run, vivos_dir, tmp_path, monkeypatch, capsys):
    """transcribe.py decodes with the language model by default and says so; --decoder greedy gives the
    run's greedy text; without kenlm it decodes greedily with one line, and --decoder lm is refused."""
    rows = read_csv(wav2vec2_run / "test_predictions.csv")[:2]
    clips = [next((vivos_dir / "test" / "waves").rglob(f"{row['id']}.wav")) for row in rows]
    common = ["--model", str(wav2vec2_run), "--format", "json", "--beam-width", "8", *map(str, clips)]
    result = transcribe.main([*common, "--output-dir", str(tmp_path / "lm")])
    assert result["decoder"] == "lm" and "with the n-gram language model" in capsys.readouterr().out
    greedy = transcribe.main([*common, "--output-dir", str(tmp_path / "greedy"), "--decoder", "greedy"])
    assert greedy["decoder"] == "greedy"
    assert [f["text"] for f in greedy["files"]] == [row["greedy_prediction"] for row in rows]
    without_kenlm(monkeypatch)
    fallback = transcribe.main([*common, "--output-dir", str(tmp_path / "fallback")])
    assert fallback["decoder"] == "greedy" and [f["text"] for f in fallback["files"]] == [f["text"] for f in greedy["files"]]
    assert "decoding greedily, without its language model: kenlm not installed" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--decoder lm: kenlm not installed"):
        transcribe.main([*common, "--output-dir", str(tmp_path / "refused"), "--decoder", "lm"])
