"""Does a word n-gram language model (pyctcdecode + KenLM, as train_deepspeech.py now decodes) beat greedy
decoding and the lexicon beam search it replaced? Trains one CTC model (DeepSpeech2 with its defaults, or a
small Wav2Vec2) on held-out text, then decodes the same model's test scores five ways.

    python bench/bench_ctc_lm.py                              # about 1 GB of disk in a temporary folder
    python bench/bench_ctc_lm.py --work-dir /tmp/lm-bench --keep
    python bench/bench_ctc_lm.py --work-dir /tmp/lm-bench --keep --family wav2vec2   # same corpus, Wav2Vec2

Corpus (sample_data/make_vivos_like.py --text sample_data/vietnamese_text.txt): espeak-ng voices read real
Vietnamese prose, each sentence read by one voice. 14 train voices x 30 utterances (prepare_vivos.py holds 2
voices out for validation, so validation sentences are not in the train text) and 3 unseen test voices x 40
unseen sentences; the file's remaining sentences (in no split) are the extra text of `--lm-text`.
train_deepspeech.py trains with its defaults (plus anything after `--`), one torch thread; with --family
wav2vec2, train_wav2vec2.py trains a small Wav2Vec2 from random weights instead (no pre-trained checkpoint is
offline). On the best model's test scores: greedy; the lexicon beam search over the train words that
train_deepspeech.py used before (kept here as the baseline); the language model of the train text, without and
with the syllables the text makes possible; and of the train text plus the extra text; each language model
weighted on validation as the trainers do. WER, CER and decode time (ms per utterance after the network, and
the real-time factor with the network) go to a result file in bench/results/ (`python bench/write_results.py`
then updates bench/RESULTS.md). Needs espeak-ng, sox, pyctcdecode and kenlm.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
import unicodedata
from pathlib import Path

import datasets
import numpy as np
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

TEXT = REPO / "sample_data" / "vietnamese_text.txt"
CORPUS = {"train_speakers": 14, "train_per_speaker": 30, "test_speakers": 3, "test_per_speaker": 40, "seed": 0}
# A small Wav2Vec2 for --family wav2vec2 (sample_data/offline_models.py's tiny one, wider and deeper: the tiny
# one stayed near CER 0.7 here) and its training flags; no language model in its run (the bench builds them).
WAV2VEC2_SMALL = {"hidden_size": 192, "num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 768,
                  "conv_dim": (96, 96, 96, 96), "conv_kernel": (10, 8, 4, 4), "conv_stride": (5, 4, 4, 4),
                  "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4, "feat_extract_norm": "layer",
                  "do_stable_layer_norm": True}
WAV2VEC2_ARGS = ["--epochs", "50", "--batch-size", "8", "--grad-accum", "1", "--eval-batch-size", "16", "--lr", "2e-3",
                 "--warmup-ratio", "0.1", "--dropout", "0", "--layerdrop", "0", "--no-spec-augment",
                 "--train-eval-size", "0", "--eval-every", "450", "--logging-steps", "50", "--save-total-limit", "1",
                 "--patience", "0", "--num-workers", "0", "--seed", "0", "--lm-order", "0"]
# The lexicon beam search's settings as train_deepspeech.py shipped them (chosen on validation then).
BEAM_DEFAULTS = {"beam_width": 16, "lm_weight": 0.2, "word_bonus": 1.0, "oov_penalty": -8.0, "prune_log_prob": -8.0}


def word_counts(sentences: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for sentence in sentences:
        for word in sentence.split():
            counts[word] = counts.get(word, 0) + 1
    return counts


def log_add(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    return max(a, b) + math.log1p(math.exp(-abs(a - b)))


class Lexicon:
    """The words of the train transcripts with their log relative frequency (a unigram language model),
    and every prefix of them, for decoding. Vietnamese writes one syllable per word, and the syllables of a
    language form a closed set, so the train text covers most of the words a test set uses."""

    def __init__(self, counts: dict[str, int]):
        total = max(sum(counts.values()), 1)
        self.counts = dict(counts)
        self.log_prob = {word: math.log(count / total) for word, count in counts.items()}
        self.prefixes = {word[:k] for word in self.log_prob for k in range(len(word) + 1)}


def ctc_lexicon_beam_search(log_probs: np.ndarray, tokens: dict[int, str], blank_id: int, lexicon: Lexicon,
                            settings: dict) -> str:
    """CTC prefix beam search (Hannun et al., 2014) over characters, scored with the lexicon's unigram
    model: a finished word adds lm_weight * log P(word) + word_bonus; a word that leaves every lexicon
    prefix pays oov_penalty once. `log_probs` is (frames, vocabulary) log-softmax of one utterance.

    Greedy decoding spells what it hears ("chời" for "trời" where a dialect merges tr and ch); this
    prefers words the train text contains and still lets a new word through when the sound insists."""
    width, lm_weight = settings["beam_width"], settings["lm_weight"]
    bonus, oov = settings["word_bonus"], settings["oov_penalty"]
    space = next(i for i, t in tokens.items() if t == "|")
    chars = {i: ("\ufffd" if t == "[UNK]" else t) for i, t in tokens.items() if i not in (blank_id, space)}

    def word_end(word: str) -> float:
        if word in lexicon.log_prob:
            return lm_weight * lexicon.log_prob[word] + bonus
        return bonus + (oov if word in lexicon.prefixes else 0.0)  # else it paid on leaving the prefixes

    # A beam is (finished words, partial word) -> [log P(ends in blank), log P(ends in a character),
    # language score, last token]; the last two depend on the text only.
    beams = {("", ""): [0.0, -math.inf, 0.0, None]}
    for frame in log_probs:
        candidates = [int(i) for i in np.flatnonzero(frame > settings["prune_log_prob"])]
        grown: dict = {}

        def add(key, blank_score, char_score, language, last):
            entry = grown.setdefault(key, [-math.inf, -math.inf, language, last])
            entry[0], entry[1] = log_add(entry[0], blank_score), log_add(entry[1], char_score)

        for (done, part), (p_blank, p_char, language, last) in beams.items():
            p_total = log_add(p_blank, p_char)
            for token in candidates:
                p = float(frame[token])
                if token == blank_id or (token == space and not part):  # no text change
                    add((done, part), p_total + p, -math.inf, language, last)
                    continue
                if token == last:  # a repeat merges unless a blank came between
                    add((done, part), -math.inf, p_char + p, language, last)
                    source = p_blank
                else:
                    source = p_total
                if source == -math.inf:
                    continue
                if token == space:
                    add(((done + " " + part).strip(), ""), -math.inf, source + p, language + word_end(part), token)
                else:
                    longer = part + chars[token]
                    leaves = part in lexicon.prefixes and longer not in lexicon.prefixes
                    add((done, longer), -math.inf, source + p, language + (oov if leaves else 0.0), token)
        ranked = sorted(grown.items(), key=lambda kv: log_add(kv[1][0], kv[1][1]) + kv[1][2], reverse=True)
        beams = dict(ranked[:width])

    def final(item):
        (done, part), (p_blank, p_char, language, _) = item
        return log_add(p_blank, p_char) + language + (word_end(part) if part else 0.0)

    done, part = max(beams.items(), key=final)[0]
    return unicodedata.normalize("NFC", (done + " " + part).strip())


def prompts(corpus: Path) -> set[str]:
    return {train_deepspeech.normalize_text(line.split(" ", 1)[1]) for split in ("train", "test")
            for line in (corpus / split / "prompts.txt").read_text(encoding="utf-8").splitlines() if " " in line}


def scored(name: str, references: list[str], texts: list[str], seconds: float, network_seconds: float,
           audio_seconds: float) -> dict:
    scores = train_deepspeech.compute_wer_cer(references, [train_deepspeech.normalize_text(t) for t in texts])
    row = {"decoder": name, "wer": round(scores["wer"], 4), "cer": round(scores["cer"], 4),
           "ms_per_utterance": round(1000 * seconds / len(texts), 2),
           "rtf": round((seconds + network_seconds) / audio_seconds, 5)}
    print(json.dumps(row, ensure_ascii=False), flush=True)
    return row


def language_model_row(name: str, vocab: dict, sentences: list[str], validation: tuple, test_scores: list,
                       references: list[str], network_seconds: float, audio_seconds: float, folder: Path,
                       beam_width: int, added_syllables: bool = True) -> tuple[dict, dict]:
    """Build the language model and weight it on validation as train_deepspeech.py's step 8 does (with or
    without the syllables the text makes possible), then decode the test scores with it."""
    from pyctcdecode import build_ctcdecoder

    if added_syllables:
        decoder, facts = train_deepspeech.build_lm_decoder(vocab, sentences, 3, folder)
    else:
        folder.mkdir(parents=True, exist_ok=True)
        facts = train_deepspeech.write_arpa(sentences, 3, set(), folder / "lm.arpa")
        words = sorted({word for sentence in sentences for word in sentence.split()})
        decoder = build_ctcdecoder(train_deepspeech.lm_labels(vocab), str(folder / "lm.arpa"), unigrams=words)
    val_scores, val_references = validation
    labels = train_deepspeech.lm_labels(vocab)
    greedy = [train_deepspeech.normalize_text(train_deepspeech.best_path_text(f, labels)) for f in val_scores]
    tuning = train_deepspeech.tune_lm_decoder(decoder, val_scores, val_references, greedy, set(sentences), beam_width)
    began = time.perf_counter()
    texts = train_deepspeech.lm_decode(decoder, test_scores, beam_width)
    seconds = time.perf_counter() - began
    row = scored(name, references, texts, seconds, network_seconds, audio_seconds)
    return row, {**facts, "sentences": len(sentences), **tuning}


def train_wav2vec2_run(data: Path, run: Path, work: Path, extra: list[str]) -> None:
    """A small Wav2Vec2 (WAV2VEC2_SMALL) trained from random weights: no pre-trained checkpoint is offline."""
    import offline_models
    import train_wav2vec2

    offline_models.WAV2VEC2_SIZES["bench small"] = WAV2VEC2_SMALL
    model = offline_models.make_tiny_wav2vec2(work / "wav2vec2 small", size="bench small")
    train_wav2vec2.main(["--data", str(data), "--model", str(model), "--output-dir", str(run), *WAV2VEC2_ARGS, *extra])


def wav2vec2_scores(run: Path, dataset) -> tuple[dict, dict, dict]:
    """(vocabulary, split -> each utterance's log-probabilities, split -> seconds the network took)."""
    import train_wav2vec2
    from transformers import Wav2Vec2ForCTC, Wav2Vec2Processor

    model = Wav2Vec2ForCTC.from_pretrained(run / "best_model").eval()
    processor = Wav2Vec2Processor.from_pretrained(run / "best_model")
    scores, seconds = {}, {}
    for name in ("validation", "test"):
        began = time.perf_counter()
        scores[name] = train_wav2vec2.ctc_log_probs(model, processor, dataset[name], 16)
        seconds[name] = time.perf_counter() - began
    return processor.tokenizer.get_vocab(), scores, seconds


def deepspeech2_scores(run: Path, dataset) -> tuple[dict, dict, dict]:
    model = modeling_deepspeech2.load_model(run / "best_model")
    scores, seconds = {}, {}
    for name in ("validation", "test"):
        waves = list(dataset[name].with_format("numpy", columns=["input_values"])["input_values"])
        began = time.perf_counter()
        scores[name] = modeling_deepspeech2.log_probs(model, waves, 32)
        seconds[name] = time.perf_counter() - began
    return model.vocab, scores, seconds


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, help="where corpus, dataset and run go (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (default: delete a temporary one)")
    parser.add_argument("--family", choices=["deepspeech2", "wav2vec2"], default="deepspeech2",
                        help="the CTC model trained and decoded (wav2vec2: a small one from random weights)")
    parser.add_argument("--beam-width", type=int, default=64, help="language-model beams (the trainers' default)")
    parser.add_argument("train_args", nargs="*", help="extra trainer flags, after `--`")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # a small recurrent model on a shared CPU runs faster on one thread than on two
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="lm-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        corpus, data = work / "corpus", work / "data"
        run = work / ("run" if args.family == "deepspeech2" else "run wav2vec2")
        if not (corpus / "test" / "prompts.txt").is_file():
            make_corpus(corpus, **CORPUS, text=TEXT)
        if not (data / "prepare_summary.json").is_file():
            prepare_vivos.main(["--vivos-dir", str(corpus), "--out", str(data), "--features", "waveform",
                                "--val-ratio", "0.1", "--seed", "0"])
        if not (run / "run_info.json").is_file():
            if args.family == "deepspeech2":
                train_deepspeech.main(["--data", str(data), "--output-dir", str(run), *args.train_args])
            else:
                train_wav2vec2_run(data, run, work, args.train_args)

        dataset = datasets.load_from_disk(str(data))
        normalize = train_deepspeech.normalize_text
        train_text = [normalize(s) for s in dataset["train"]["sentence"]]
        held_out = {normalize(s) for name in ("validation", "test") for s in dataset[name]["sentence"]}
        extra = [s for s in (normalize(line) for line in TEXT.read_text(encoding="utf-8").splitlines())
                 if s and s not in prompts(corpus) and s not in held_out]
        test_words = [w for s in dataset["test"]["sentence"] for w in normalize(s).split()]
        train_words = {w for s in train_text for w in s.split()}
        vocab, scores, network = (deepspeech2_scores if args.family == "deepspeech2" else wav2vec2_scores)(run, dataset)
        references = {name: [normalize(s) for s in dataset[name]["sentence"]] for name in ("validation", "test")}
        tokens, blank, labels = {i: t for t, i in vocab.items()}, vocab["[PAD]"], train_deepspeech.lm_labels(vocab)
        audio = float(sum(dataset["test"]["duration"]))
        refs, net = references["test"], network["test"]

        rows = []
        began = time.perf_counter()
        texts = [train_deepspeech.best_path_text(f, labels) for f in scores["test"]]
        rows.append(scored("greedy", refs, texts, time.perf_counter() - began, net, audio))
        lexicon = Lexicon(word_counts(train_text))
        began = time.perf_counter()
        texts = [ctc_lexicon_beam_search(f, tokens, blank, lexicon, BEAM_DEFAULTS) for f in scores["test"]]
        rows.append(scored("lexicon beam (train words, unigram)", refs, texts, time.perf_counter() - began, net, audio))
        validation = (scores["validation"], references["validation"])
        models = {}
        for name, sentences, added in (("LM: train text, no added syllables", train_text, False),
                                       ("LM: train text", train_text, True),
                                       ("LM: train text + --lm-text", train_text + extra, True)):
            row, models[name] = language_model_row(name, vocab, sentences, validation, scores["test"], refs, net,
                                                   audio, work / "lm" / str(len(models)), args.beam_width, added)
            rows.append(row)
        info = json.loads((run / "run_info.json").read_text(encoding="utf-8"))
        metrics = json.loads((run / "test_metrics.json").read_text(encoding="utf-8"))
        settings = {
            "corpus": "make_vivos_like.py --text sample_data/vietnamese_text.txt, 14 train voices x 30 + 3 test "
                      "voices x 40 utterances, one voice per sentence, seed 0",
            "splits": {name: len(dataset[name]) for name in ("train", "validation", "test")},
            "extra_text_sentences": len(extra),
            "test_words_not_in_train_text": round(sum(w not in train_words for w in test_words) / len(test_words), 3),
            "family": args.family, "params": info["params_total"],
            "beam_width": args.beam_width, "lexicon_beam": BEAM_DEFAULTS, "torch_threads": torch.get_num_threads(),
            "train_args": " ".join(args.train_args) or "defaults" if args.family == "deepspeech2"
            else " ".join(WAV2VEC2_ARGS + args.train_args),
            "epochs_run": info["epochs_run"], "train_minutes": round(info["train_seconds"] / 60, 1),
            "test_audio_seconds": round(audio, 1), "network_ms_per_utterance": round(1000 * net / len(refs), 2),
        }
        trainer_run = {key: metrics.get(key) for key in ("decoder", "wer", "cer", "greedy_wer", "greedy_cer")}
        result = {"rows": rows, "language_models": models, "trainer_run": trainer_run}
        if rows[0]["wer"] >= 0.95:
            result["notes"] = [f"{args.family}: the model has not learnt to write words (greedy test WER "
                               f"{rows[0]['wer']:.3f}), so its rows say little about the decoders"]
        save_result("bench_ctc_lm", settings, result)
        print(json.dumps(settings, indent=2, ensure_ascii=False))
        return result
    finally:
        if not args.keep and args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
