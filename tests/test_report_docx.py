"""report.py's course-report content read back the way a student and a marker use it: report.docx opened with
python-docx (and, where LibreOffice is installed, printed to PDF), the references, the reasons given for each
hyper-parameter, word and per-tone precision / recall / F1, and values written for people. Run folders are
written by hand (docs/FORMATS.md §4), so this file takes seconds."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jiwer
import numpy as np
import pandas as pd
import pytest

import report
from test_report import DPI, history_rows, read_csv, transcripts, write_run

docx = pytest.importorskip("docx", reason="python-docx is in requirements.txt: pip install python-docx")

CURVES = history_rows([1.2, 0.8, 0.6, 0.55, 0.54], [1.5, 0.9, 0.6, 0.5, 0.45], [0.5, 0.3, 0.22, 0.2, 0.21])


def edit_json(path: Path, **changes) -> None:
    content = json.loads(path.read_text(encoding="utf-8"))
    content.update(changes)
    path.write_text(json.dumps(content, ensure_ascii=False), encoding="utf-8")


@pytest.fixture(scope="module")
def course_runs(tmp_path_factory) -> dict:
    """Two Whisper runs (LoRA, different learning rates), an XLS-R wav2vec2 run and a DeepSpeech2 run with the
    lexicon beam search and speed perturbation, as the trainers record them; plus a dataset summary."""
    root = tmp_path_factory.mktemp("docx") / "lần chạy"
    lora = {"r": 32, "alpha": 64, "dropout": 0.05, "targets": ["q_proj", "v_proj"]}
    runs = {"whisper": write_run(root / "whisper-lora", "whisper-lora", "whisper", CURVES, transcripts(1, 40, 0.15)),
            "whisper-2": write_run(root / "whisper-lora-lr", "whisper-lora-lr", "whisper",
                                   history_rows([1.3, 0.9, 0.8], [1.6, 1.0, 0.8], [0.6, 0.4, 0.35]),
                                   transcripts(5, 40, 0.3)),
            "wav2vec2": write_run(root / "xls-r", "xls-r", "wav2vec2", CURVES, transcripts(2, 40)),
            "deepspeech2": write_run(root / "deepspeech2", "deepspeech2", "deepspeech2", CURVES, transcripts(3, 40))}
    edit_json(runs["whisper"] / "run_info.json", lora=lora, learning_rate=1e-3, preset="t4", params_total=243_503_616,
              params_trainable=1_371_392, warmup_steps=58, precision="bf16",
              architecture={**json.loads((runs["whisper"] / "run_info.json").read_text())["architecture"],
                            "spec_augment": {"time_prob": 0.05, "feature_prob": 0.0}})
    edit_json(runs["whisper-2"] / "run_info.json", lora=lora, learning_rate=5e-4, preset="t4", best_val_cer=0.12,
              params_trainable=1_371_392)
    edit_json(runs["wav2vec2"] / "run_info.json", base_model="facebook/wav2vec2-xls-r-300m", learning_rate=1e-4,
              freeze_feature_encoder=True)
    edit_json(runs["deepspeech2"] / "run_info.json", decoder="beam", learning_rate=5e-4, preset=None)
    edit_json(runs["deepspeech2"] / "best_model" / "config.json", speed_perturb=0.1, spec_augment=True,
              mask_time_prob=0.05, mask_feature_prob=0.1)
    data = root / "dữ liệu"
    data.mkdir()
    summary = {"features": "whisper", "sampling_rate": 16000, "n_mels": 80, "val_split": "speaker",
               "normalization": "NFC, chữ thường", "source": "vivos",
               "splits": {split: {"utterances": n, "hours": h, "speakers": k, "share_utterances": n / 11660,
                                  "share_hours": h / 15.67,
                                  "duration_seconds": {"histogram": {"edges": [0, 2, 4, 6], "counts": [n // 3] * 3}}}
                          for split, n, h, k in (("train", 9300, 12.5, 37), ("validation", 1600, 2.1, 9),
                                                 ("test", 760, 1.07, 19))}}
    (data / "prepare_summary.json").write_text(json.dumps(summary, ensure_ascii=False), encoding="utf-8")
    return {"root": root, "runs": runs, "data": data}


def build(course_runs: dict, name: str, *options: str) -> Path:
    out = course_runs["root"] / name
    runs = [str(course_runs["runs"][key]) for key in ("whisper", "whisper-2", "wav2vec2", "deepspeech2")]
    assert report.main(["--runs", *runs, "--data", str(course_runs["data"]), "--out", str(out), "--dpi", str(DPI),
                        *options]) == 0
    return out


@pytest.fixture(scope="module")
def vietnamese(course_runs) -> Path:
    return build(course_runs, "báo cáo")  # no --lang: Vietnamese is the default


@pytest.fixture(scope="module")
def english(course_runs) -> Path:
    return build(course_runs, "report en", "--lang", "en")


# ----------------------------------------------------------------------------- report.docx


def is_table(item) -> bool:
    from docx.table import Table

    return isinstance(item, Table)


def test_docx_has_every_heading_table_and_figure_of_the_report_with_numbered_captions(vietnamese):
    markdown = (vietnamese / "report.md").read_text(encoding="utf-8")
    document = docx.Document(str(vietnamese / "report.docx"))
    body = list(document.iter_inner_content())  # paragraphs and tables in page order
    headings = [(int(p.style.name[-1]), p.text) for p in body if not is_table(p) and p.style.name.startswith(
        "Heading")]
    assert headings == [(len(m.group(1)), m.group(2)) for m in re.finditer(r"^(#+) (.+)$", markdown, flags=re.M)]
    assert headings[0] == (1, "Nhận dạng tiếng nói tiếng Việt trên VIVOS: báo cáo thực nghiệm")

    titles = re.findall(r"^\*\*Bảng (\d+)\. (.+)\*\*$", markdown, flags=re.M)
    tables = [i for i, item in enumerate(body) if is_table(item)]
    assert len(tables) == len(document.tables) == len(titles) > 10
    for index, (number, title) in zip(tables, titles):
        caption = body[index - 1]  # the title right above its table, kept on the same page
        assert caption.style.name == "Caption" and caption.text == f"Bảng {number}. {title}"
        assert caption.paragraph_format.keep_with_next
        assert "SEQ Bảng" in caption._p.xml  # a Word field: References > Cross-reference finds it
    comparison = next(t for i, t in zip(tables, document.tables) if body[i - 1].text.split(". ", 1)[1].startswith(
        "So sánh các lần chạy"))
    csv = read_csv(vietnamese / "comparison.csv")
    assert [c.text for c in comparison.rows[0].cells] == list(csv.columns)
    assert [c.text for c in comparison.rows[1].cells] == [str(v) for v in csv.iloc[0]]

    captions = re.findall(r"^\*Hình (\d+)\. (.+)\*$", markdown, flags=re.M)
    pictures = [i for i, item in enumerate(body) if not is_table(item) and item._p.xpath(".//pic:pic")]
    assert len(document.inline_shapes) == len(pictures) == len(captions) == markdown.count("![")
    width = document.sections[0].page_width - document.sections[0].left_margin - document.sections[0].right_margin
    for shape in document.inline_shapes:
        assert 0 < shape.width <= width  # fits the page: nothing cropped at print
    for index, (number, text) in zip(pictures, captions):
        assert body[index].paragraph_format.keep_with_next  # the figure never leaves its caption
        assert body[index + 1].style.name == "Caption" and body[index + 1].text == f"Hình {number}. {text}"


def test_docx_font_covers_vietnamese_in_every_script_slot(vietnamese):
    document = docx.Document(str(vietnamese / "report.docx"))
    for name in ("Normal", "Heading 1", "Heading 2", "Caption"):
        fonts = document.styles[name].element.rPr.rFonts
        assert {fonts.get(f"{{{fonts.nsmap['w']}}}{slot}") for slot in ("ascii", "hAnsi", "eastAsia", "cs")} == {
            "Times New Roman"}, name
    text = "\n".join(p.text for p in document.paragraphs)
    assert "Tài liệu tham khảo" in text and "Hàm mất mát" in text and "Siêu tham số" in text


def test_docx_prints_to_pdf_with_libreoffice(vietnamese, tmp_path):
    office = shutil.which("soffice") or shutil.which("libreoffice")
    if office is None:
        pytest.skip("LibreOffice is not installed (soffice not on PATH): report.docx was checked by reading it back")
    source = tmp_path / "báo cáo.docx"
    shutil.copy(vietnamese / "report.docx", source)
    result = subprocess.run([office, "--headless", f"-env:UserInstallation=file://{tmp_path / 'profile'}",
                             "--convert-to", "pdf", "--outdir", str(tmp_path), str(source)],
                            capture_output=True, text=True, timeout=240)
    pdf = tmp_path / "báo cáo.pdf"
    assert pdf.is_file() and pdf.stat().st_size > 10_000, result.stdout + result.stderr
    assert pdf.read_bytes()[:5] == b"%PDF-"


def test_without_python_docx_the_rest_is_written_and_one_line_says_what_to_install(tmp_path, monkeypatch,
                                                                                      capsys):
    folder = write_run(tmp_path / "runs" / "whisper", "whisper", "whisper", CURVES, transcripts(1))
    monkeypatch.setitem(sys.modules, "docx", None)  # import docx now raises ImportError
    out = tmp_path / "report"
    assert report.main(["--runs", str(folder), "--out", str(out), "--dpi", str(DPI)]) == 0
    assert (out / "report.md").is_file() and (out / "report.html").is_file() and not (out / "report.docx").exists()
    assert "report.docx not written: python-docx is not installed; type pip install python-docx" in \
        capsys.readouterr().err


# ----------------------------------------------------------------------------- references


def test_only_cited_works_are_listed_and_every_listed_work_is_cited(english):
    text = (english / "report.md").read_text(encoding="utf-8")
    body, listed = text.split("## References\n\n")
    entries = listed.strip().split("\n\n")
    assert entries == sorted(entries) and len(entries) == len(set(entries))
    cited = {key for key, (forms, _) in report.REFERENCES.items() if forms[0] in body}
    assert {entry for entry in entries} == {report.REFERENCES[key][1] for key in cited}
    # what these runs use: Whisper, wav2vec 2.0 and XLS-R, DeepSpeech2, CTC, SpecAugment, speed perturbation,
    # LoRA (the Whisper runs), VIVOS, transformers, jiwer
    assert cited == {"radford2022", "baevski2020", "babu2021", "amodei2016", "graves2006", "park2019", "ko2015",
                     "hu2021", "luong2016", "wolf2020", "vaessen2025"}
    assert "Radford, A., Kim, J. W., Xu, T., Brockman, G., McLeavey, C., & Sutskever, I. (2022)." in listed


def test_works_a_report_does_not_use_are_not_listed(tmp_path):
    folder = write_run(tmp_path / "runs" / "whisper", "whisper", "whisper", CURVES, transcripts(1))
    out = tmp_path / "report"
    assert report.main(["--runs", str(folder), "--out", str(out), "--lang", "en", "--dpi", str(DPI)]) == 0
    listed = (out / "report.md").read_text(encoding="utf-8").split("## References\n\n")[1]
    assert "Radford" in listed and "Graves" not in listed  # no CTC model
    for absent in ("Hu, E. J.", "Babu", "Amodei", "Park, D. S.", "Ko, T."):  # no LoRA, XLS-R, DS2, augmentation
        assert absent not in listed


# ----------------------------------------------------------------------------- loss and hyper-parameters


def test_loss_and_hyper_parameter_reasons_come_from_run_info(english):
    text = (english / "report.md").read_text(encoding="utf-8")
    assert "Loss: token cross-entropy with teacher forcing. Whisper's decoder is autoregressive" in text
    assert text.count("Loss: CTC, connectionist temporal classification (Graves et al., 2006)") == 2
    assert "Learning rate 0.001: LoRA (Hu et al., 2021) trains only small low-rank adapter matrices" in text
    assert "LoRA (Hu et al., 2021) with rank 32, alpha 64 on q_proj, v_proj: 0.56% of the parameters" in text
    assert "Batch 8 clips × 2 accumulation steps = effective batch 16" in text
    assert "Precision bf16: half-precision arithmetic" in text and "Preset t4: a tested bundle" in text
    assert "Learning rate 0.0001: the CTC output layer starts from random weights" in text
    assert "CNN feature encoder frozen" in text and "The base model is XLS-R (Babu et al., 2021)" in text
    assert "Learning rate 0.0005: the model is trained from scratch" in text and "No preset: the trainer's" in text
    # one DeepSpeech2 run: said honestly; two Whisper runs: the table of what differed, chosen on validation
    assert "this report holds one run of the deepspeech2 family, so the values above were set by hand" in text
    assert "2 runs of the whisper family were trained with the settings of Table" in text
    tuning = read_csv(english / "tables" / "tuning_whisper.csv")
    assert list(tuning.columns) == ["run", "learning rate", "warm-up steps", "precision", "validation WER (%)",
                                    "validation CER (%)"]  # only what differs; LoRA and preset are the same
    assert tuning["run"].tolist() == ["whisper-lora", "whisper-lora-lr"]
    assert tuning["learning rate"].tolist() == [0.001, 0.0005]
    assert tuning["validation WER (%)"].tolist() == [20.0, 35.0]
    assert "Chosen: whisper-lora (validation WER 20.0%). The choice is made on the validation set only, never on " \
           "the test set" in text


def test_values_are_written_for_people(english):
    architecture = read_csv(english / "tables" / "whisper-lora_architecture.csv").set_index("setting")["value"]
    assert architecture["parameters, trained"] == "1,371,392"
    assert architecture["parameters, total"] == "243,503,616" and architecture["vocab_size"] == "51,865"
    assert architecture["spec_augment"] == "time masks 5 %, frequency masks 0 %"
    config = read_csv(english / "tables" / "whisper-lora_training_config.csv").set_index("setting")["value"]
    assert config["LoRA"] == "r 32, alpha 64, dropout 0.05, targets q_proj, v_proj"
    text = (english / "report.md").read_text(encoding="utf-8")
    assert "{'" not in text and '{"' not in text  # no Python dict or JSON anywhere
    diagram = read_csv(english / "figures" / "whisper-lora_architecture.csv")
    assert "243,503,616" not in " ".join(diagram["block"])  # the footer is drawn, the blocks hold layers


def test_preprocessing_lists_each_runs_augmentation(english):
    text = (english / "report.md").read_text(encoding="utf-8")
    preprocessing = text.split("### Preprocessing")[1].split("## Models")[0]
    assert ("- Augmentation of deepspeech2 (training only): speed perturbation, each clip played at a random speed "
            "between 0.9× and 1.1× (Ko et al., 2015); SpecAugment (Park et al., 2019): time masks 5 %, frequency "
            "masks 10 %.") in preprocessing
    assert ("- Augmentation of whisper-lora (training only): SpecAugment (Park et al., 2019): time masks 5 %, "
            "frequency masks 0 %.") in preprocessing
    # best_model/config.json: apply_spec_augment false
    assert "- Augmentation of whisper-lora-lr (training only): none." in preprocessing


def test_deepspeech2_diagram_names_the_decoder_run_info_records(english, tmp_path):
    blocks = " ".join(read_csv(english / "figures" / "deepspeech2_architecture.csv")["block"])
    assert "CTC beam search + lexicon" in blocks and "greedy" not in blocks
    config = read_csv(english / "tables" / "deepspeech2_training_config.csv").set_index("setting")["value"]
    assert config["decoder of the test split"] == "CTC beam search + lexicon"
    greedy = report.architecture_rows("deepspeech2", {}, "en", "greedy")[0][-1]
    assert greedy.startswith("CTC greedy")


def test_learning_curve_ticks_are_whole_epochs():
    history = pd.DataFrame(history_rows([2.0, 1.5, 1.2, 1.1, 1.0, 0.95, 0.9, 0.88, 0.87, 0.86],
                                        [2.5] * 10, [0.5] * 10))
    figure = report.plot_curves(history, 8.0, "en")
    figure.canvas.draw()
    for ax in figure.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks


# ----------------------------------------------------------------------------- precision, recall, F1


def test_word_precision_recall_f1_on_a_hand_made_alignment():
    # ref "tôi đi học về nhà", hyp "tôi đi hóc về nhà nhé": 4 hits, 1 substitution, 0 deletions, 1 insertion;
    # ref "mẹ nấu cơm", hyp "mẹ cơm": 2 hits, 1 deletion
    scores = report.word_scores(report.compute_wer_cer(["tôi đi học về nhà", "mẹ nấu cơm"],
                                                       ["tôi đi hóc về nhà nhé", "mẹ cơm"]))
    assert scores["precision"] == pytest.approx(6 / (6 + 1 + 1))  # H / (H + S + I)
    assert scores["recall"] == pytest.approx(6 / (6 + 1 + 1))  # H / (H + S + D)
    scores = report.word_scores({"hits": 6, "substitutions": 1, "deletions": 3, "insertions": 0})
    assert scores["precision"] == pytest.approx(6 / 7) and scores["recall"] == pytest.approx(0.6)
    assert scores["f1"] == pytest.approx(2 * (6 / 7) * 0.6 / (6 / 7 + 0.6))
    assert report.word_scores({"hits": 0, "substitutions": 0, "deletions": 0, "insertions": 0})["f1"] == 0.0


def test_per_tone_precision_recall_f1_from_the_confusion_matrix():
    matrix = pd.DataFrame(0, index=report.TONES, columns=report.TONES)
    matrix.loc["ngang", "ngang"], matrix.loc["ngang", "huyền"] = 8, 2  # 10 level tones, 2 heard as falling
    matrix.loc["huyền", "huyền"], matrix.loc["sắc", "huyền"] = 3, 1
    scores = report.tone_scores(matrix).set_index("tone")
    assert list(scores.index) == ["ngang", "huyền", "sắc", "macro"]  # tones on neither side are left out
    assert scores.loc["ngang", "precision"] == 1.0 and scores.loc["ngang", "recall"] == 0.8
    assert scores.loc["huyền", "precision"] == pytest.approx(3 / 6) and scores.loc["huyền", "recall"] == 1.0
    assert scores.loc["sắc", "precision"] == 0.0 and scores.loc["sắc", "f1"] == 0.0  # never predicted: counts 0
    assert scores.loc["macro", "f1"] == pytest.approx(np.mean(scores["f1"].iloc[:3]))
    assert scores.loc["macro", "support"] == 14


def test_precision_recall_f1_in_the_test_metrics_the_tone_table_and_the_comparison(english, course_runs):
    predictions = pd.read_csv(course_runs["runs"]["wav2vec2"] / "test_predictions.csv", keep_default_na=False)
    words = jiwer.process_words(predictions["reference"].tolist(), predictions["prediction"].tolist())
    precision = words.hits / (words.hits + words.substitutions + words.insertions)
    recall = words.hits / (words.hits + words.substitutions + words.deletions)
    metrics = read_csv(english / "tables" / "xls-r_test_metrics.csv").set_index("metric")
    assert float(metrics.loc["word precision = H / (H + S + I) (%)", "recomputed (jiwer)"]) == round(precision * 100, 2)
    assert float(metrics.loc["word recall = H / (H + S + D) (%)", "test_metrics.json"]) == round(recall * 100, 2)
    comparison = read_csv(english / "comparison.csv").set_index("model")
    assert comparison.loc["xls-r", "test word F1 (%)"] == round(200 * precision * recall / (precision + recall), 2)
    tones = read_csv(english / "tables" / "xls-r_tone_scores.csv")
    assert tones["tone"].iloc[-1] == "macro average" and set(tones["tone"].iloc[:-1]) <= set(report.TONES)
    text = (english / "report.md").read_text(encoding="utf-8")
    assert "WER and CER remain the primary metrics for speech recognition because" in text
