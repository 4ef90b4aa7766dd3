"""report.py: figures, tables and captioned report from run folders (hand-made per docs/FORMATS.md, and
the real tiny trainers' runs), checked for what a student pastes into the course report."""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

import jiwer
import numpy as np
import pandas as pd
import pytest

import report

WORDS = ("tôi bạn anh chị em ông bà mẹ cha con nhà trường lớp học sinh viên người bệnh viện chợ đường phố sông "
         "núi biển trời mưa nắng gió lạnh nóng đẹp xấu tốt vui buồn ăn uống ngủ đi đến về làm việc đọc viết "
         "nói nghe nhìn thấy biết hiểu muốn cần có không cơm phở bánh mì cà phê trà sữa nước cá thịt gà").split()
SWAPS = {"mẹ": "mẻ", "bà": "ba", "đi": "đì", "có": "cỏ", "sữa": "sửa", "học": "hóc", "nắng": "nẵng", "về": "vế"}
DPI = 60  # tests check content, not print quality; 300 dpi costs seconds per figure


# ----------------------------------------------------------------------------- hand-made run folders

def transcripts(seed: int, count: int = 24, error_rate: float = 0.25) -> pd.DataFrame:
    """References and predictions with tone swaps, substitutions, deletions and insertions (seeded)."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        ref = [rng.choice(WORDS) for _ in range(rng.randint(3, 9))]
        hyp = []
        for word in ref:
            roll = rng.random()
            if roll < error_rate * 0.4 and word in SWAPS:
                hyp.append(SWAPS[word])
            elif roll < error_rate * 0.6:
                hyp.append(rng.choice(WORDS))
            elif roll < error_rate * 0.8:
                continue
            else:
                hyp.append(word)
            if rng.random() < error_rate * 0.1:
                hyp.append(rng.choice(WORDS))
        rows.append({"id": f"VIVOSDEV0{i % 3 + 1}_{i:03d}", "speaker": f"VIVOSDEV0{i % 3 + 1}",
                     "duration": round(rng.uniform(1.0, 11.0), 2), "reference": " ".join(ref),
                     "prediction": " ".join(hyp), "raw_prediction": " ".join(hyp).capitalize()})
    table = pd.DataFrame(rows)
    table["wer"] = [jiwer.wer(r, h) for r, h in zip(table["reference"], table["prediction"])]
    table["cer"] = [jiwer.cer(r, h) for r, h in zip(table["reference"], table["prediction"])]
    return table


def metrics_of(predictions: pd.DataFrame) -> dict:
    """test_metrics.json as a trainer writes it, computed here with jiwer directly."""
    refs, hyps = predictions["reference"].tolist(), predictions["prediction"].tolist()
    words = jiwer.process_words(refs, hyps)
    audio = float(predictions["duration"].sum())
    return {"wer": words.wer, "cer": jiwer.process_characters(refs, hyps).cer,
            "ser": float(np.mean([r != h for r, h in zip(refs, hyps)])), "substitutions": words.substitutions,
            "deletions": words.deletions, "insertions": words.insertions, "hits": words.hits,
            "ref_words": words.hits + words.substitutions + words.deletions, "num_utterances": len(refs),
            "audio_seconds": audio, "decode_seconds": audio * 0.05, "rtf": 0.05}


ARCHITECTURES = {
    "whisper": {"encoder_layers": 12, "decoder_layers": 12, "d_model": 768, "heads": 12, "ffn_dim": 3072,
                "activation": "gelu", "vocab_size": 51865, "num_mel_bins": 80, "dropout": 0.1},
    "wav2vec2": {"encoder_layers": 12, "d_model": 768, "heads": 12, "ffn_dim": 3072, "activation": "gelu",
                 "vocab_size": 96, "conv_layers": 7},
    "deepspeech2": {"conv_layers": 2, "conv_channels": 32, "rnn_type": "gru", "rnn_layers": 5, "rnn_hidden": 512,
                    "activation": "hardtanh(0, 20)", "vocab_size": 96, "n_mels": 80},
}
# best_model/config.json: where the dropout and SpecAugment switches of the saved model live
MODEL_CONFIGS = {
    "whisper": {"model_type": "whisper", "dropout": 0.1, "apply_spec_augment": False, "mask_time_prob": 0.05},
    "wav2vec2": {"model_type": "wav2vec2", "apply_spec_augment": True, "mask_time_prob": 0.05, "layerdrop": 0.1},
    "deepspeech2": {"model_type": "deepspeech2", "dropout": 0.1, "spec_augment": False},
}


def write_run(folder: Path, name: str, family: str, history: list[dict] | None, predictions: pd.DataFrame | None,
              eval_only: bool = False, stop_reason: str = "completed", metrics: dict | None = None) -> Path:
    """A run folder exactly as docs/FORMATS.md §4 describes it (None leaves that file out)."""
    folder.mkdir(parents=True)
    params = {"whisper": 241_734_912, "wav2vec2": 94_396_320, "deepspeech2": 26_000_000}[family]
    epochs = [row["epoch"] for row in history or []]
    best = min(history, key=lambda row: row["val_wer"]) if history and not eval_only else None
    info = {"family": family, "base_model": {"deepspeech2": "scratch"}.get(family, f"openai/{family}-small"),
            "run_name": name, "params_total": params, "params_trainable": params, "architecture": ARCHITECTURES[family],
            "loss": "cross-entropy" if family == "whisper" else "CTC", "optimizer": "adamw_torch",
            "learning_rate": 1e-5, "scheduler": "linear", "warmup_steps": 50, "weight_decay": 0.01,
            "batch_size": 8, "grad_accum": 2, "effective_batch_size": 16, "precision": "fp16", "lora": None,
            "epochs_planned": 10, "epochs_run": max(epochs) if epochs and not eval_only else 0,
            "best_epoch": best["epoch"] if best else None, "best_step": best["step"] if best else None,
            "best_val_wer": best["val_wer"] if best else None,
            "stop_reason": "eval_only" if eval_only else stop_reason, "train_seconds": 0 if eval_only else 5400.0,
            "peak_gpu_memory_mb": 3900.5, "device": "cuda (Tesla T4)",
            "dataset": {"path": "data/vivos", "features": "whisper", "splits": {"train": 9000, "validation": 1600,
                                                                                "test": 760}},
            "eval_only": eval_only, "command": f"train_{family}.py --output-dir {folder}", "versions": {}}
    (folder / "run_info.json").write_text(json.dumps(info, ensure_ascii=False), encoding="utf-8")
    if history is not None:
        columns = ["epoch", "step", "train_loss", "val_loss", "val_wer", "val_cer", "train_wer", "train_cer",
                   "learning_rate"]
        pd.DataFrame(history, columns=columns).to_csv(folder / "history.csv", index=False)
    if predictions is not None:
        (folder / "best_model").mkdir()
        (folder / "best_model" / "config.json").write_text(json.dumps(MODEL_CONFIGS[family]), encoding="utf-8")
        predictions.to_csv(folder / "test_predictions.csv", index=False)
        (folder / "test_metrics.json").write_text(json.dumps(metrics or metrics_of(predictions)), encoding="utf-8")
    return folder


def history_rows(val_losses: list[float], train_losses: list[float], val_wers: list[float]) -> list[dict]:
    return [{"epoch": float(i + 1), "step": 100 * (i + 1), "train_loss": t, "val_loss": v, "val_wer": w,
             "val_cer": w / 3, "train_wer": w * 0.6, "train_cer": w / 5, "learning_rate": 1e-5}
            for i, (v, t, w) in enumerate(zip(val_losses, train_losses, val_wers))]


OVERFIT = history_rows([2.0, 1.5, 1.2, 1.3, 1.5, 1.8], [2.5, 1.8, 1.2, 0.8, 0.5, 0.3],
                       [0.9, 0.6, 0.42, 0.40, 0.45, 0.5])


@pytest.fixture(scope="module")
def fixture_runs(tmp_path_factory) -> dict:
    """Six run folders: three trained families (one with a stale test_metrics.json), a zero-shot baseline,
    a run still training (checkpoint only) and a folder that does not exist; plus a dataset summary."""
    root = tmp_path_factory.mktemp("report") / "chạy thử"
    runs = {}
    runs["whisper"] = write_run(root / "whisper-small", "whisper-small", "whisper",
                                history_rows([1.2, 0.8, 0.6, 0.55, 0.54], [1.5, 0.9, 0.6, 0.5, 0.45],
                                             [0.5, 0.3, 0.22, 0.2, 0.21]), transcripts(1, error_rate=0.15),
                                stop_reason="early_stopping")
    runs["wav2vec2"] = write_run(root / "wav2vec2-base", "wav2vec2-base", "wav2vec2", OVERFIT, transcripts(2))
    stale = transcripts(3, error_rate=0.4)
    runs["deepspeech2"] = write_run(root / "deepspeech2", "deepspeech2", "deepspeech2",
                                    history_rows([3.0, 2.5, 2.0, 1.6], [3.5, 2.8, 2.2, 1.7], [1.0, 0.9, 0.8, 0.7]),
                                    stale, stop_reason="max_steps",
                                    metrics={**metrics_of(stale), "wer": metrics_of(stale)["wer"] + 0.05})
    runs["baseline"] = write_run(root / "whisper zero-shot", "whisper-small zero-shot", "whisper",
                                 [{"epoch": 0.0, "step": 0, "val_loss": 2.2, "val_wer": 0.8, "val_cer": 0.4}],
                                 transcripts(4, error_rate=0.5), eval_only=True)
    partial = write_run(root / "wav2vec2 still training", "wav2vec2-large", "wav2vec2", None, None)
    (partial / "checkpoint-200").mkdir()
    log = [{"loss": 3.1, "epoch": 0.5, "step": 100}, {"eval_loss": 2.9, "eval_wer": 0.95, "epoch": 0.5, "step": 100},
           {"loss": 2.4, "epoch": 1.0, "step": 200}, {"eval_loss": 2.2, "eval_wer": 0.8, "epoch": 1.0, "step": 200}]
    (partial / "checkpoint-200" / "trainer_state.json").write_text(json.dumps({"global_step": 200, "log_history": log}))
    runs["partial"] = partial
    runs["missing"] = root / "không có"
    data = root / "dữ liệu"
    data.mkdir()
    summary = {"features": "whisper", "sampling_rate": 16000, "n_mels": 80, "val_split": "speaker",
               "normalization": "NFC, lower case, punctuation to spaces, tone marks kept", "min_seconds": 0.5,
               "max_seconds": 30.0, "skipped": {"too_long": 2, "unreadable": 1}, "skipped_total": 3,
               "source": "vivos", "command": "prepare_vivos.py --vivos-dir vivos --out data",
               "splits": {split: {"utterances": n, "hours": h, "speakers": s, "genders": {"m": s // 2, "f": s - s // 2},
                                  "share_utterances": n / 11660, "share_hours": h / 15.67,
                                  "duration_seconds": {"histogram": {"edges": [0, 2, 4, 6, 8, 10],
                                                                     "counts": [n // 10, n // 3, n // 3, n // 6, 5]}}}
                          for split, n, h, s in (("train", 9300, 12.5, 37), ("validation", 1600, 2.1, 9),
                                                 ("test", 760, 1.07, 19))}}
    (data / "prepare_summary.json").write_text(json.dumps(summary, ensure_ascii=False), encoding="utf-8")
    return {"root": root, "runs": runs, "data": data}


def make_report(fixture_runs: dict, lang: str, name: str) -> Path:
    out = fixture_runs["root"] / name
    runs = [fixture_runs["runs"][key] for key in ("whisper", "wav2vec2", "deepspeech2", "baseline", "partial",
                                                  "missing")]
    code = report.main(["--runs", *map(str, runs), "--data", str(fixture_runs["data"]), "--out", str(out),
                        "--lang", lang, "--dpi", str(DPI)])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def english(fixture_runs) -> Path:
    return make_report(fixture_runs, "en", "báo cáo en")


@pytest.fixture(scope="module")
def vietnamese(fixture_runs) -> Path:
    return make_report(fixture_runs, "vi", "báo cáo vi")


def read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, encoding="utf-8-sig", keep_default_na=False)


# ----------------------------------------------------------------------------- tones, hand-made transcripts

def test_split_tone_separates_tone_from_vowel_marks_and_d_stroke():
    assert report.split_tone("người") == ("ngươi", "huyền")
    assert report.split_tone("ấy") == ("ây", "sắc")  # circumflex stays, acute is the tone
    assert report.split_tone("phở") == ("phơ", "hỏi")
    assert report.split_tone("ngã") == ("nga", "ngã")
    assert report.split_tone("đẹp") == ("đep", "nặng")
    assert report.split_tone("trăng") == ("trăng", "ngang")
    assert report.strip_tones("tiếng việt") == "tiêng viêt"


TONE_REFS = ["tôi đi học ở hà nội", "mẹ mua về cá", "bánh mì ngon sữa cô đá"]
TONE_HYPS = ["tôi đì học ơ hà nồi", "mẹ mùa về", "bán mì ngọn sửa co dá"]


def test_tone_matrix_counts_only_aligned_syllables_with_the_same_letters():
    matrix = report.tone_confusion(TONE_REFS, TONE_HYPS)
    expected = {("ngang", "ngang"): 1, ("ngang", "huyền"): 2, ("nặng", "nặng"): 2, ("hỏi", "ngang"): 1,
                ("huyền", "huyền"): 3, ("nặng", "huyền"): 1, ("ngang", "nặng"): 1, ("ngã", "hỏi"): 1}
    assert list(matrix.index) == list(matrix.columns) == report.TONES
    for ref in report.TONES:
        for hyp in report.TONES:
            assert matrix.loc[ref, hyp] == expected.get((ref, hyp), 0), (ref, hyp)
    # cá (deleted), bánh/bán, cô/co (vowel mark) and đá/dá (đ is a letter) say nothing about tone
    assert matrix.values.sum() == 12 and np.trace(matrix.values) == 6


def test_wer_without_tone_marks_and_character_confusions():
    refs = [report.strip_tones(t) for t in TONE_REFS]
    hyps = [report.strip_tones(t) for t in TONE_HYPS]
    assert jiwer.wer(TONE_REFS, TONE_HYPS) == pytest.approx(10 / 16)
    assert jiwer.wer(refs, hyps) == pytest.approx(4 / 16)
    pairs = {(a, b): n for a, b, n in report.character_confusions(TONE_REFS, TONE_HYPS, top=50)}
    assert pairs[("ộ", "ồ")] == 1 and pairs[("ữ", "ử")] == 1
    assert report.character_pair_kind("ữ", "ử") == "ch_tone"
    assert report.character_pair_kind("ô", "o") == "ch_vowel"
    assert report.character_pair_kind("đ", "d") == "ch_vowel"
    assert report.character_pair_kind("b", "m") == "ch_letter"


# ----------------------------------------------------------------------------- curve sentences

def test_rising_validation_loss_is_called_overfitting_after_the_lowest_epoch():
    history = pd.DataFrame(OVERFIT)
    english = report.describe_curves(history, {"best_epoch": 4.0, "best_val_wer": 0.40}, "en")
    assert "overfits after epoch 3" in english
    assert "best checkpoint (epoch 4, validation WER 40.0%)" in english
    vietnamese = report.describe_curves(history, {"best_epoch": 4.0, "best_val_wer": 0.40}, "vi")
    assert "quá khớp (overfitting) sau epoch 3" in vietnamese


def test_other_curve_shapes_get_their_own_sentence():
    falling = pd.DataFrame(history_rows([3.0, 2.5, 2.0, 1.6], [3.5, 2.8, 2.2, 1.7], [1.0, 0.9, 0.8, 0.7]))
    assert "has not converged yet" in report.describe_curves(falling, {"stop_reason": "max_steps"}, "en")
    assert "step limit" in report.describe_curves(falling, {"stop_reason": "max_steps"}, "en")
    flat = pd.DataFrame(history_rows([1.2, 0.8, 0.6, 0.595], [1.5, 0.9, 0.6, 0.5], [0.5, 0.3, 0.22, 0.2]))
    assert "has converged" in report.describe_curves(flat, {"stop_reason": "early_stopping"}, "en")
    diverging = pd.DataFrame(history_rows([2.0, 1.5, 2.5], [2.0, 1.4, 3.0], [0.9, 0.7, 0.95]))
    assert "diverges" in report.describe_curves(diverging, {}, "en")
    assert "zero-shot baseline" in report.describe_curves(None, {"eval_only": True, "run_name": "x"}, "en")


def test_curves_of_a_run_still_training_come_from_trainer_state_with_either_metric_naming():
    log = [{"loss": 3.0, "step": 50, "epoch": 0.5}, {"loss": 2.0, "step": 100, "epoch": 1.0},
           {"eval_validation_loss": 2.5, "eval_validation_wer": 0.9, "step": 100, "epoch": 1.0},
           {"eval_train_subset_wer": 0.7, "eval_train_subset_loss": 1.9, "step": 100, "epoch": 1.0},
           {"loss": 1.0, "step": 200, "epoch": 2.0}, {"eval_loss": 1.5, "eval_wer": 0.6, "step": 200, "epoch": 2.0}]
    history = report.history_from_trainer_state({"log_history": log})
    assert history[["epoch", "train_loss", "val_loss", "val_wer"]].values.tolist() == [[1.0, 2.5, 2.5, 0.9],
                                                                                    [2.0, 1.0, 1.5, 0.6]]
    assert history["train_wer"].tolist()[0] == 0.7 and np.isnan(history["train_wer"].tolist()[1])


def test_remedies_come_from_run_info_and_the_saved_model_config():
    info = {"weight_decay": 0.01, "stop_reason": "early_stopping", "architecture": {}}
    whisper = report.remedies_used(info, {"dropout": 0.1, "apply_spec_augment": False, "mask_time_prob": 0.05}, "en")
    assert "weight decay 0.01" in whisper and "dropout 0.1" in whisper and "early stopping" in whisper
    assert "SpecAugment" not in whisper  # Whisper's config keeps mask_time_prob even when SpecAugment is off
    wav2vec2 = report.remedies_used(info, {"apply_spec_augment": True, "mask_time_prob": 0.05, "layerdrop": 0.1}, "en")
    assert "SpecAugment (Park et al., 2019): time masks 5 %" in wav2vec2 and "layerdrop 0.1" in wav2vec2
    assert "SpecAugment (Park et al., 2019): on" in report.remedies_used(info, {"spec_augment": True}, "en")
    assert "early stopping" not in report.remedies_used({"command": "x.py --patience 0"}, {"dropout": 0.1}, "en")
    whisper_info = {**info, "architecture": {"spec_augment": {"time_prob": 0.05, "feature_prob": 0.0}}}
    assert "SpecAugment (Park et al., 2019): time masks 5 %, frequency masks 0 %;" in report.remedies_used(
        whisper_info, {}, "en")  # in words, not the dict run_info.json stores


# ----------------------------------------------------------------------------- the whole report

def test_every_file_is_written_and_every_figure_and_table_is_numbered(english):
    for name in ("report.md", "report.html", "comparison.csv", "comparison.md", "comparison.png"):
        assert (english / name).stat().st_size > 0, name
    text = (english / "report.md").read_text(encoding="utf-8")
    images = re.findall(r"!\[Figure (\d+)\]\(([^)]+)\)\n\nFigure \1\. ", text.replace("*", ""))
    assert [int(n) for n, _ in images] == list(range(1, len(images) + 1))
    # durations, 5 diagrams, 4 learning curves (not the baseline), 4 x (breakdown, tone matrix), comparison
    assert len(images) == 1 + 5 + 4 + 8 + 1 == text.count("![")
    for _, png in images:
        assert (english / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    titles = re.findall(r"\*\*Table (\d+)\. (.+)\*\*\n\n\| ", text)
    assert [int(n) for n, _ in titles] == list(range(1, len(titles) + 1))
    assert len(titles) == len(re.findall(r"^\|( --- \|)+$", text, flags=re.M))  # every table has its title
    assert all(title.endswith(")") for _, title in titles)  # units / meaning in brackets
    html = (english / "report.html").read_text(encoding="utf-8")
    assert html.count("<figure>") == len(images) and html.count('src="data:image/png;base64,') == len(images)
    assert html.count("<caption>Table ") == len(titles) and "<figcaption>Figure 1. " in html
    assert len(list((english / "tables").glob("*.csv"))) == len(titles)
    for png in (english / "figures").glob("*.png"):
        assert png.with_suffix(".csv").is_file(), png


def test_comparison_numbers_are_the_runs_own_metrics(english, fixture_runs):
    table = read_csv(english / "comparison.csv")
    assert list(table["model"]) == ["whisper-small", "wav2vec2-base", "deepspeech2", "whisper-small zero-shot"]
    for key, values in zip(("whisper", "wav2vec2", "deepspeech2", "baseline"), table.to_dict("records")):
        folder = fixture_runs["runs"][key]
        metrics = json.loads((folder / "test_metrics.json").read_text())
        info = json.loads((folder / "run_info.json").read_text())
        assert values["test WER (%)"] == round(metrics["wer"] * 100, 2)
        assert values["test CER (%)"] == round(metrics["cer"] * 100, 2)
        assert values["RTF"] == metrics["rtf"]
        assert values["parameters total (M)"] == round(info["params_total"] / 1e6, 2)
        assert values["kind"] == ("baseline (zero-shot)" if key == "baseline" else "fine-tuned")
    assert list(table["training time (min)"]) == ["90.0", "90.0", "90.0", ""]  # a baseline did not train
    markdown = (english / "comparison.md").read_text(encoding="utf-8")
    assert markdown.startswith("**Comparison of all runs (") and "| whisper-small zero-shot |" in markdown


def test_metric_mismatch_missing_and_partial_runs_are_reported_and_the_rest_written(english, fixture_runs):
    text = (english / "report.md").read_text(encoding="utf-8")
    status = read_csv(english / "tables" / "run_status.csv").set_index("run")
    assert status.loc["whisper-small", "status"] == "complete" and status.loc["whisper-small", "problems"] == "none"
    assert status.loc["whisper-small zero-shot", "status"] == "baseline (eval-only)"
    assert status.loc["wav2vec2-large", "status"] == "partial"
    assert "test_predictions.csv missing" in status.loc["wav2vec2-large", "problems"]
    assert "checkpoint-200/trainer_state.json (step 200)" in status.loc["wav2vec2-large", "problems"]
    assert status.loc["không có", "status"] == "missing"
    stale = json.loads((fixture_runs["runs"]["deepspeech2"] / "test_metrics.json").read_text())["wer"]
    assert f"MISMATCH wer: test_metrics.json says {round(stale, 6)}" in status.loc["deepspeech2", "problems"]
    assert "> ⚠ deepspeech2: MISMATCH wer" in text
    metrics = read_csv(english / "tables" / "deepspeech2_test_metrics.csv").set_index("metric")
    assert metrics.loc["WER (%)", "check"] == "MISMATCH" and metrics.loc["CER (%)", "check"] == "equal"
    predictions = pd.read_csv(fixture_runs["runs"]["deepspeech2"] / "test_predictions.csv", keep_default_na=False)
    subs = jiwer.process_words(predictions["reference"].tolist(), predictions["prediction"].tolist()).substitutions
    assert f"| substitutions (words) | {subs} | {subs} | equal |" in text  # counts stay integers
    assert "wav2vec2-large: no test predictions yet" in text
    assert "So far the best checkpoint is epoch 1 (validation WER 80.0%)" in text  # still training
    assert (english / "figures" / "wav2vec2-large_learning_curves.png").is_file()  # curves from the checkpoint


def test_report_sentences_tables_and_tone_analysis(english, fixture_runs):
    text = (english / "report.md").read_text(encoding="utf-8")
    assert "the model overfits after epoch 3" in text  # wav2vec2-base's synthetic rising validation loss
    assert "Training stopped early at epoch 5" in text and "has not converged yet" in text
    assert "weight decay 0.01; layerdrop 0.1; SpecAugment (Park et al., 2019): time masks 5 %" in text
    assert "weight decay 0.01; dropout 0.1; early stopping" in text  # whisper-small: SpecAugment off
    predictions = pd.read_csv(fixture_runs["runs"]["wav2vec2"] / "test_predictions.csv", keep_default_na=False)
    tones = read_csv(english / "figures" / "wav2vec2-base_tone_confusion.csv").set_index("reference tone")
    assert tones.values.sum() == report.tone_confusion(predictions["reference"].tolist(),
                                                       predictions["prediction"].tolist()).values.sum() > 0
    effect = read_csv(english / "tables" / "wav2vec2-base_tone_effect.csv").set_index("setting")["value"]
    plain = jiwer.wer([report.strip_tones(t) for t in predictions["reference"]],
                      [report.strip_tones(t) for t in predictions["prediction"]])
    assert float(effect["WER with tone marks removed (%)"]) == round(plain * 100, 2)
    worst = read_csv(english / "tables" / "wav2vec2-base_worst_utterances.csv")
    assert len(worst) == 10 and worst["WER (%)"].is_monotonic_decreasing
    errors = read_csv(english / "tables" / "wav2vec2-base_word_errors.csv")
    assert set(errors["type"]) == {"substitution", "deletion", "insertion"}
    assert not errors["reference"].str.contains(" ").any()  # word by word, not phrases
    speakers = read_csv(english / "figures" / "wav2vec2-base_wer_breakdown.csv")
    words = jiwer.process_words(predictions["reference"].tolist(), predictions["prediction"].tolist())
    total_errors = words.substitutions + words.deletions + words.insertions
    assert speakers["errors"].sum() == total_errors and set(speakers["speaker"]) == set(predictions["speaker"])
    splits = read_csv(english / "tables" / "dataset_splits.csv")
    assert list(splits["utterances"]) == [9300, 1600, 760] and list(splits["speakers m/f"]) == ["18/19", "4/5", "9/10"]
    assert "val_split = speaker" in text


def test_vietnamese_report(vietnamese):
    text = (vietnamese / "report.md").read_text(encoding="utf-8")
    assert text.startswith("# Nhận dạng tiếng nói tiếng Việt trên VIVOS")
    assert "*Hình 1. Phân bố thời lượng câu" in text and "**Bảng 1. Tình trạng từng thư mục chạy" in text
    assert "Figure" not in text and "**Table" not in text
    assert "quá khớp (overfitting) sau epoch 3" in text and "Ma trận nhầm lẫn thanh điệu" in text
    assert "SAI LỆCH wer" in text and "chưa có kết quả dự đoán" in text
    comparison = read_csv(vietnamese / "comparison.csv")
    assert "WER kiểm tra (%)" in comparison.columns and "cơ sở (zero-shot)" in set(comparison["loại"])
    html = (vietnamese / "report.html").read_text(encoding="utf-8")
    assert '<html lang="vi">' in html and "<figcaption>Hình 1. " in html


def test_a_folder_of_runs_stands_for_the_runs_in_it(fixture_runs, tmp_path):
    folders = report.expand_run_folders([fixture_runs["root"]])
    assert fixture_runs["runs"]["whisper"] in folders and fixture_runs["runs"]["partial"] in folders


def test_histogram_from_the_dataset_when_the_summary_has_none(tmp_path):
    from datasets import Dataset, DatasetDict

    data = tmp_path / "dữ liệu"
    DatasetDict({split: Dataset.from_dict({"duration": durations}) for split, durations in
                 (("train", [1.2, 3.4, 3.6]), ("test", [0.7]))}).save_to_disk(str(data))
    histograms = report.duration_histograms({"splits": {"train": {"utterances": 3}}}, data)
    assert sum(histograms["train"][1]) == 3 and sum(histograms["test"][1]) == 1


def test_bad_out_and_data_arguments_explain_what_to_type(tmp_path, capsys):
    a_file = tmp_path / "report.md"
    a_file.write_text("x")
    with pytest.raises(SystemExit):
        report.main(["--runs", str(tmp_path), "--out", str(a_file)])
    assert "--out must be a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        report.main(["--runs", str(tmp_path), "--data", str(tmp_path / "nowhere")])
    assert "prepare_vivos.py --out" in capsys.readouterr().err


# ----------------------------------------------------------------------------- REAL RUNS (needs the trainers)
# Uses conftest's whisper_run / wav2vec2_run / deepspeech_run: run folders written by the real tiny
# trainers. Select with `-k real_runs`; it cannot pass before train_whisper.py, train_wav2vec2.py and
# train_deepspeech2.py and their tests/tiny_*.py helpers exist.

@pytest.mark.slow
def test_real_runs_report_from_the_three_tiny_trainers(whisper_run, wav2vec2_run, deepspeech_run, whisper_data,
                                                      tmp_path):
    out = tmp_path / "báo cáo"
    assert report.main(["--runs", str(whisper_run), str(wav2vec2_run), str(deepspeech_run), "--data",
                        str(whisper_data), "--out", str(out), "--lang", "en", "--dpi", str(DPI), "--strict"]) == 0
    status = read_csv(out / "tables" / "run_status.csv")
    assert list(status["problems"]) == ["none"] * 3, status.to_dict("records")
    comparison = read_csv(out / "comparison.csv")
    for folder, row in zip((whisper_run, wav2vec2_run, deepspeech_run), comparison.to_dict("records")):
        metrics = json.loads((folder / "test_metrics.json").read_text(encoding="utf-8"))
        info = json.loads((folder / "run_info.json").read_text(encoding="utf-8"))
        assert row["family"] == info["family"]
        assert row["test WER (%)"] == round(metrics["wer"] * 100, 2)
        assert row["test CER (%)"] == round(metrics["cer"] * 100, 2)
    text = (out / "report.md").read_text(encoding="utf-8")
    for family in ("whisper", "wav2vec2", "deepspeech2"):
        assert f"({family}), drawn from the architecture facts" in text
    for diagram in (out / "figures").glob("*_architecture.csv"):  # every block filled from run_info.json
        assert "?" not in " ".join(read_csv(diagram)["block"]), diagram.name
    decoder = json.loads((deepspeech_run / "run_info.json").read_text(encoding="utf-8"))["decoder"]
    blocks = " ".join(read_csv(next((out / "figures").glob("*deepspeech*_architecture.csv")))["block"])
    assert report.decoder_name(decoder, "en") in blocks  # lm, beam (before the language model) or greedy
    wav2vec2 = " ".join(read_csv(next((out / "figures").glob("*wav2vec2*_architecture.csv")))["block"])
    assert "CTC beam search + n-gram LM" in wav2vec2  # the tiny run decodes with its language model
    docx = pytest.importorskip("docx")
    assert len(docx.Document(str(out / "report.docx")).inline_shapes) == text.count("![")


# ----------------------------------------------------------------------------- CTC decoders (needs the trainers)
# wav2vec2_run decodes with its n-gram language model as the trainer writes it; copies of deepspeech_run are
# rewritten the way the same run-folder contract has it (docs/FORMATS.md §4), with transcripts whose greedy and
# language-model scores differ, and one as a run from before the language model.

LANGUAGE_MODEL = {"used": True, "order": 4, "ngrams": [4405, 268, 241, 90], "words_in_text": 119,
                  "words_added": 4283, "discounts": [0.36, 0.9, 0.44, 0.5], "sentences": 80,
                  "extra_text": "văn bản thêm.txt", "extra_sentences": 8, "alpha": 0.8, "beta": 2.0,
                  "beam_width": 16,
                  "tuned_on": "30 of 40 validation utterances, those whose sentence is not in the language "
                              "model's text",
                  "validation_wer_lm": 0.31, "validation_wer_greedy": 0.4,
                  "grid": [{"alpha": 0.8, "beta": 2.0, "wer": 0.31}]}


def as_lm_contract(source: Path, folder: Path, name: str, language_model: dict, with_lm: bool) -> Path:
    """A copy of a DeepSpeech2 run folder as a CTC run decoded by the contract: greedy transcripts (the
    reference without its first and last words) beside the decoder's (without the last word when `with_lm`,
    else the greedy ones), test_metrics.json with both scores, run_info.json's decoder and language_model."""
    import shutil

    shutil.copytree(source, folder)
    predictions = pd.read_csv(folder / "test_predictions.csv", keep_default_na=False, dtype=str)
    words = predictions["reference"].str.split()
    predictions["greedy_prediction"] = words.map(lambda w: " ".join(w[1:-1]))
    predictions["prediction"] = words.map(lambda w: " ".join(w[:-1])) if with_lm else predictions["greedy_prediction"]
    predictions["raw_prediction"] = predictions["prediction"]
    for prefix, column in (("", "prediction"), ("greedy_", "greedy_prediction")):
        predictions[f"{prefix}wer"] = [jiwer.wer(r, h) for r, h in zip(predictions["reference"], predictions[column])]
        predictions[f"{prefix}cer"] = [jiwer.cer(r, h) for r, h in zip(predictions["reference"], predictions[column])]
    predictions.to_csv(folder / "test_predictions.csv", index=False)
    predictions["duration"] = predictions["duration"].astype(float)
    refs = predictions["reference"].tolist()
    metrics = {**metrics_of(predictions), "decoder": "lm" if with_lm else "greedy",
               "greedy_wer": jiwer.wer(refs, predictions["greedy_prediction"].tolist()),
               "greedy_cer": jiwer.cer(refs, predictions["greedy_prediction"].tolist()), "greedy_decode_seconds": 0.5}
    (folder / "test_metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    info = json.loads((folder / "run_info.json").read_text(encoding="utf-8"))
    info.update(run_name=name, decoder="lm" if with_lm else "greedy", language_model=language_model)
    (folder / "run_info.json").write_text(json.dumps(info, ensure_ascii=False), encoding="utf-8")
    return folder


def as_old_run(source: Path, folder: Path) -> Path:
    """A copy of a DeepSpeech2 run folder as runs before the language model wrote it: the lexicon beam search
    as its decoder, no language model, no greedy scores beside."""
    import shutil

    shutil.copytree(source, folder)
    predictions = pd.read_csv(folder / "test_predictions.csv", keep_default_na=False, dtype=str)
    predictions.drop(columns=["greedy_prediction", "greedy_wer", "greedy_cer"]).to_csv(
        folder / "test_predictions.csv", index=False)
    metrics = json.loads((folder / "test_metrics.json").read_text(encoding="utf-8"))
    for key in ("decoder", "greedy_wer", "greedy_cer", "greedy_decode_seconds"):
        metrics.pop(key, None)
    (folder / "test_metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    info = json.loads((folder / "run_info.json").read_text(encoding="utf-8"))
    info.pop("language_model", None)
    info["decoder"] = "beam"
    (folder / "run_info.json").write_text(json.dumps(info, ensure_ascii=False), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def decoder_reports(wav2vec2_run, deepspeech_run, tmp_path_factory) -> dict:
    """English and Vietnamese reports of: wav2vec2_run (language model), DeepSpeech2 copies decoded with a
    language model, with --lm-order 0 and with a language model that lost to greedy on validation,
    deepspeech_run as it is (lexicon beam search, no greedy scores) and a hand-made Whisper run."""
    root = tmp_path_factory.mktemp("decoders") / "lần chạy"
    runs = {"wav2vec2": wav2vec2_run,
            "ds2-lm": as_lm_contract(deepspeech_run, root / "ds2 lm", "ds2-lm", LANGUAGE_MODEL, with_lm=True),
            "ds2-greedy": as_lm_contract(deepspeech_run, root / "ds2 greedy", "ds2-greedy",
                                         {"used": False, "reason": "--lm-order 0"}, with_lm=False),
            "ds2-rejected": as_lm_contract(deepspeech_run, root / "ds2 rejected", "ds2-rejected",
                                           {**LANGUAGE_MODEL, "used": False, "validation_wer_lm": 0.45,
                                            "reason": "greedy decoding scored better on validation"}, with_lm=False),
            "ds2-old": as_old_run(deepspeech_run, root / "deepspeech2 tiny"),
            "whisper": write_run(root / "whisper", "whisper-small", "whisper", OVERFIT, transcripts(1))}
    reports = {}
    for lang in ("en", "vi"):
        reports[lang] = root / f"báo cáo {lang}"
        assert report.main(["--runs", *map(str, runs.values()), "--out", str(reports[lang]), "--lang", lang,
                            "--dpi", str(DPI), "--strict"]) == 0
    return {"runs": runs, **reports}


@pytest.mark.slow
def test_ctc_runs_show_test_wer_greedy_and_with_the_language_model_side_by_side(decoder_reports):
    out, runs = decoder_reports["en"], decoder_reports["runs"]
    metrics = {key: json.loads((folder / "test_metrics.json").read_text(encoding="utf-8"))
               for key, folder in runs.items()}
    assert metrics["wav2vec2"]["decoder"] == "lm"  # the trainer decoded its test split with the language model
    comparison = read_csv(out / "comparison.csv").set_index("model")
    assert comparison["decoder"].to_dict() == {
        "wav2vec2 tiny": "CTC beam search + n-gram LM", "ds2-lm": "CTC beam search + n-gram LM",
        "ds2-greedy": "CTC greedy decoding", "ds2-rejected": "CTC greedy decoding",
        "deepspeech2 tiny": "CTC beam search + lexicon", "whisper-small": "—"}
    for key, name in (("wav2vec2", "wav2vec2 tiny"), ("ds2-lm", "ds2-lm"), ("ds2-old", "deepspeech2 tiny")):
        assert comparison.loc[name, "test WER (%)"] == round(metrics[key]["wer"] * 100, 2)  # the decoder it names

    decoders = read_csv(out / "tables" / "ctc_decoders.csv").astype(str).set_index("model")
    assert list(decoders.index) == ["wav2vec2 tiny", "ds2-lm", "ds2-greedy", "ds2-rejected"]  # no Whisper, no
    # run from before the language model
    predictions = pd.read_csv(runs["ds2-lm"] / "test_predictions.csv", keep_default_na=False, dtype=str)
    refs = predictions["reference"].tolist()
    greedy_wer = round(100 * jiwer.wer(refs, predictions["greedy_prediction"].tolist()), 2)
    lm_wer = round(100 * jiwer.wer(refs, predictions["prediction"].tolist()), 2)
    assert greedy_wer > lm_wer
    assert decoders.loc["ds2-lm"].to_dict() == {
        "family": "deepspeech2", "decoder": "CTC beam search + n-gram LM", "test WER greedy (%)": str(greedy_wer),
        "test WER with LM (%)": str(lm_wer),
        "test CER greedy (%)": str(round(100 * metrics["ds2-lm"]["greedy_cer"], 2)),
        "test CER with LM (%)": str(round(100 * metrics["ds2-lm"]["cer"], 2)), "note": "4-gram, alpha 0.8, beta 2.0"}
    wav2vec2 = decoders.loc["wav2vec2 tiny"]
    assert wav2vec2["test WER greedy (%)"] == str(round(100 * metrics["wav2vec2"]["greedy_wer"], 2))
    assert wav2vec2["test WER with LM (%)"] == str(round(100 * metrics["wav2vec2"]["wer"], 2))
    greedy_only = decoders.loc["ds2-greedy"]
    assert greedy_only["test WER greedy (%)"] == str(greedy_wer) and greedy_only["test WER with LM (%)"] == "—"
    assert greedy_only["note"] == "no LM: --lm-order 0"
    assert decoders.loc["ds2-rejected", "note"] == "no LM: greedy decoding scored better on validation"
    assert decoders.loc["ds2-rejected", "test WER with LM (%)"] == "—"

    text = (out / "report.md").read_text(encoding="utf-8")
    assert f"| ds2-lm | deepspeech2 | CTC beam search + n-gram LM | {greedy_wer} | {lm_wer} |" in text
    assert (f"ds2-lm: the language model takes test WER from {greedy_wer}% (greedy) to {lm_wer}% "
            f"({lm_wer - greedy_wer:+.2f} points)") in text
    status = read_csv(out / "tables" / "run_status.csv")
    assert list(status["problems"]) == ["none"] * 6  # greedy scores recomputed from greedy_prediction agree
    checked = read_csv(out / "tables" / "ds2-lm_test_metrics.csv").astype(str).set_index("metric")
    assert checked.loc["WER, greedy decoding (%)"].tolist() == [str(greedy_wer), str(greedy_wer), "equal"]
    older = read_csv(out / "tables" / "deepspeech2-tiny_test_metrics.csv")
    assert "WER, greedy decoding (%)" not in set(older["metric"])  # a run from before the language model

    document = pytest.importorskip("docx").Document(str(out / "report.docx"))
    table = next(t for t in document.tables if [c.text for c in t.rows[0].cells][:5] == [
        "model", "family", "decoder", "test WER greedy (%)", "test WER with LM (%)"])
    assert [c.text for c in table.rows[2].cells][3:5] == [str(greedy_wer), str(lm_wer)]


@pytest.mark.slow
def test_the_language_model_is_described_and_the_error_analysis_names_the_decoder(decoder_reports):
    out = decoder_reports["en"]
    text = (out / "report.md").read_text(encoding="utf-8")
    assert ("Language model: a word 4-gram model with Kneser-Ney smoothing (Kneser and Ney, 1995), queried with "
            "KenLM (Heafield, 2011)") in text
    assert ("built from 80 sentences (the training transcripts and 8 sentences of văn bản thêm.txt; never "
            "validation or test sentences), whose 119 distinct words it knows, plus 4,283 other syllables") in text
    assert ("alpha = 0.8 and the word bonus beta = 2.0 were chosen on validation (30 of 40 validation utterances "
            "whose sentence is not in the language model's text): validation WER 31.0% with the language model "
            "against 40.0% greedy.") in text
    assert "ds2-greedy decodes the test split greedily (no LM: --lm-order 0)." in text
    assert ("validation WER 45.0% with the language model against 40.0% greedy. Greedy decoding scored better on "
            "validation, so the test split is decoded greedily") in text
    rejected = read_csv(out / "tables" / "ds2-rejected_language_model.csv").set_index("setting")["value"]
    assert rejected["used for the test split"] == "no"
    facts = read_csv(out / "tables" / "ds2-lm_language_model.csv").set_index("setting")["value"]
    assert facts["n-grams of each order"] == "4,405 / 268 / 241 / 90" and facts["used for the test split"] == "yes"
    listed = text.split("## References\n\n")[1]
    assert "Heafield, K. (2011). KenLM: Faster and smaller language model queries." in listed
    assert "Kneser, R., & Ney, H. (1995). Improved backing-off for m-gram language modeling." in listed

    config = read_csv(out / "tables" / "ds2-lm_training_config.csv").set_index("setting")["value"]
    assert config["decoder of the test split"] == "CTC beam search + n-gram LM"
    old = read_csv(out / "tables" / "deepspeech2-tiny_training_config.csv").set_index("setting")["value"]
    assert old["decoder of the test split"] == "CTC beam search + lexicon"  # a run from before the LM
    diagram = " ".join(read_csv(out / "figures" / "wav2vec2-tiny_architecture.csv")["block"])
    assert "CTC beam search + n-gram LM → Text" in diagram and "greedy" not in diagram
    architecture = read_csv(out / "tables" / "wav2vec2-tiny_architecture.csv")
    assert "greedy CTC" not in set(architecture["value"])  # the test decoder is stated once, in the config table

    worst_title = "The 10 worst test utterances of ds2-lm decoded with CTC beam search + n-gram LM ("
    assert worst_title in text and "Tone confusion matrix of ds2-lm decoded with CTC beam search + n-gram LM" in text
    predictions = pd.read_csv(decoder_reports["runs"]["ds2-lm"] / "test_predictions.csv", keep_default_na=False)
    worst = read_csv(out / "tables" / "ds2-lm_worst_utterances.csv")
    assert set(worst["prediction"]) <= set(predictions["prediction"])  # the decoder's text, not the greedy one
    assert not set(worst["prediction"]) & set(predictions["greedy_prediction"])
    assert "The 10 worst test utterances of whisper-small (" in text  # no decoder to name


@pytest.mark.slow
def test_vietnamese_report_names_both_decoders(decoder_reports):
    out = decoder_reports["vi"]
    decoders = read_csv(out / "tables" / "ctc_decoders.csv").astype(str).set_index("mô hình")
    assert list(decoders.columns) == ["họ", "bộ giải mã", "WER kiểm tra, tham lam (%)",
                                      "WER kiểm tra, có mô hình ngôn ngữ (%)", "CER kiểm tra, tham lam (%)",
                                      "CER kiểm tra, có mô hình ngôn ngữ (%)", "ghi chú"]
    assert decoders.loc["ds2-lm", "bộ giải mã"] == "CTC beam search + mô hình ngôn ngữ n-gram"
    assert decoders.loc["ds2-greedy", "ghi chú"] == "không có mô hình ngôn ngữ: --lm-order 0"
    text = (out / "report.md").read_text(encoding="utf-8")
    assert "làm trơn Kneser-Ney (Kneser và Ney, 1995), truy vấn bằng KenLM (Heafield, 2011)" in text
    assert "(30 trong 40 câu kiểm định có câu không nằm trong văn bản của mô hình ngôn ngữ)" in text
    assert "10 câu kiểm tra sai nhiều nhất của ds2-lm giải mã bằng CTC beam search + mô hình ngôn ngữ n-gram" in text
    assert "ds2-greedy giải mã tập kiểm tra theo cách tham lam (không có mô hình ngôn ngữ: --lm-order 0)." in text


def test_why_a_ctc_run_has_no_language_model_in_a_short_note():
    missing = ("kenlm not installed, so decoding is greedy (no language model); to decode with it: pip install "
               "--no-deps -r requirements-lm.txt (kenlm needs a C++ compiler: see the README)")
    assert report.no_lm_reason(missing, "en") == "no LM: kenlm not installed"
    assert report.no_lm_reason(missing.replace("kenlm", "pyctcdecode and kenlm", 1), "vi") == \
        "không có mô hình ngôn ngữ: chưa cài pyctcdecode, kenlm"
    assert report.no_lm_reason("greedy decoding scored better on validation", "en") == \
        "no LM: greedy decoding scored better on validation"
    assert report.tuned_on_text("all 24 validation utterances: only 5 have a sentence outside the language "
                                "model's text, so ...", "vi").startswith("cả 24 câu kiểm định: chỉ 5 câu")
    # run_info of a wav2vec2 run from before the language model: greedy, written among the architecture facts
    assert report.run_decoder({"family": "wav2vec2", "architecture": {"decoder": "greedy CTC"}}) == "greedy"
    assert report.run_decoder({"family": "whisper", "architecture": {"decoder_layers": 12}}) is None
