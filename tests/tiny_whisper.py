"""A tiny Whisper built offline (no download) and one complete tiny training run, for the tests.

`make_tiny_whisper(folder)` saves a WhisperForConditionalGeneration + WhisperProcessor that
`train_whisper.py --model FOLDER`, `transformers.pipeline` and `generate(language="vi",
task="transcribe")` accept like a Hub checkpoint (PITFALLS #21). `train_tiny_run(data, out)` is the
run folder that the report.py / transcribe.py / demo.py tests read (conftest's `whisper_run`).
"""
from __future__ import annotations

from pathlib import Path

from make_vivos_like import WORDS
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (GenerationConfig, WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration,
                          WhisperProcessor, WhisperTokenizer)
from transformers.models.whisper.tokenization_whisper import LANGUAGES

# Whisper's own order: the prefix tokens are found by position after <|startoftranscript|>.
SPECIAL_TOKENS = (["<|endoftext|>", "<|startoftranscript|>"] + [f"<|{code}|>" for code in LANGUAGES]
                  + ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>",
                     "<|notimestamps|>"])


def byte_level_bpe(vocab_size: int = 400) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges of a byte-level BPE learnt on the espeak corpus words, as Whisper's is."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    # Upper and lower case: the corpus prompts are upper case, the normalised targets lower case.
    text = [" ".join(WORDS), " ".join(WORDS).upper()]
    tokenizer.train_from_iterator(text, trainer=trainer)
    state = tokenizer.to_str()
    import json

    bpe = json.loads(state)["model"]
    return bpe["vocab"], [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in bpe["merges"]]
