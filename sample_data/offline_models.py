"""Tiny random Whisper and Wav2Vec2 models built from configs, with no download.

The tests and `quickstart.py --offline` train these when the Hugging Face Hub cannot be reached: they
run every code path of the trainers, `transformers.pipeline` and `generate(language="vi",
task="transcribe")` like a Hub checkpoint (the tokenizer carries every language token in Whisper's order,
and the generation config the fields `generate` reads), but learn little. The Whisper context is 4 s
instead of 30 s (sample clips are under 3.5 s): the same code paths at a tenth of the encoder's cost.

`size="small"` (Whisper) and `size="base"` (Wav2Vec2) build the real whisper-small and wav2vec2-base shapes
instead, still with random weights: what `--estimate` measures (time per step, memory, checkpoint size)
depends on the shape, not on the weights, so bench/bench_estimates.py times them with no download.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from make_vivos_like import WORDS
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (GenerationConfig, Wav2Vec2Config, Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor,
                          Wav2Vec2ForCTC, Wav2Vec2Processor, WhisperConfig, WhisperFeatureExtractor,
                          WhisperForConditionalGeneration, WhisperProcessor, WhisperTokenizer)
from transformers.models.whisper.tokenization_whisper import LANGUAGES

# Whisper's order: the language and task tokens are found by their position after <|startoftranscript|>.
SPECIAL_TOKENS = (["<|endoftext|>", "<|startoftranscript|>"] + [f"<|{code}|>" for code in LANGUAGES]
                  + ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>",
                     "<|notimestamps|>"])
# Whisper's 1501 timestamp tokens follow the special tokens: generate(return_timestamps=True) needs them.
TIMESTAMP_TOKENS = [f"<|{i * 0.02:.2f}|>" for i in range(1501)]
# The parts of a Whisper config.json that set the model's size, with the context (chunk_length) in seconds.
WHISPER_SIZES = {
    # 4 s instead of 30 s: the sample's clips are under 3.5 s.
    "tiny": {"chunk_length": 4, "d_model": 128, "encoder_layers": 2, "decoder_layers": 2,
             "encoder_attention_heads": 4, "decoder_attention_heads": 4, "encoder_ffn_dim": 512,
             "decoder_ffn_dim": 512, "max_target_positions": 64},
    # openai/whisper-small. Its 51,865-token vocabulary sizes the embedding; the tokenizer writes the first ids.
    "small": {"chunk_length": 30, "d_model": 768, "encoder_layers": 12, "decoder_layers": 12,
              "encoder_attention_heads": 12, "decoder_attention_heads": 12, "encoder_ffn_dim": 3072,
              "decoder_ffn_dim": 3072, "max_target_positions": 448, "vocab_size": 51865},
}


def byte_level_bpe(vocab_size: int = 1000) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges of a byte-level BPE (Whisper's kind) learnt on the espeak corpus words."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    # Both cases: corpus prompts are upper case, the normalised training targets lower case.
    tokenizer.train_from_iterator([" ".join(WORDS), " ".join(WORDS).upper()], trainer=trainer)
    bpe = json.loads(tokenizer.to_str())["model"]
    return bpe["vocab"], [tuple(pair) for pair in bpe["merges"]]


def make_tiny_whisper(folder: Path, num_mel_bins: int = 80, size: str = "tiny", shape: dict | None = None,
                      full_vocabulary: bool = False) -> Path:
    """Save a randomly initialised multilingual Whisper of WHISPER_SIZES[size] (tiny: d_model 128, 2+2 layers), or
    of `shape`, and its processor. full_vocabulary: a token for every row of the embedding, the last text token
    empty as in OpenAI's multilingual vocabulary (CTranslate2, and so faster-whisper, tells a multilingual
    Whisper by it), so that its CTranslate2 export decodes with the language and task tokens."""
    folder = Path(folder)
    shape = dict(shape or WHISPER_SIZES[size])
    chunk_length = shape.pop("chunk_length")
    vocab, merges = byte_level_bpe()
    if full_vocabulary:
        vocab[""] = len(vocab)
    tokenizer = WhisperTokenizer(vocab=vocab, merges=merges, pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS})
    tokenizer.add_tokens(TIMESTAMP_TOKENS)
    if full_vocabulary:
        tokenizer.add_tokens([f"<|unused{i}|>" for i in range(len(tokenizer), shape.get("vocab_size", 0))])
    tokenizer.set_prefix_tokens(language="vi", task="transcribe")
    feature_extractor = WhisperFeatureExtractor(feature_size=num_mel_bins, chunk_length=chunk_length)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    eot, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    # The suppress lists default to ids of OpenAI's vocabulary; ours are in generation_config below.
    shape["vocab_size"] = max(shape.get("vocab_size", 0), len(tokenizer))
    config = WhisperConfig(
        num_mel_bins=num_mel_bins, max_source_positions=feature_extractor.nb_max_frames // 2, pad_token_id=eot,
        bos_token_id=eot, eos_token_id=eot, decoder_start_token_id=sot, begin_suppress_tokens=None,
        suppress_tokens=None, **shape)
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config)
    # Built whole (not derived from the model config) so that from_pretrained keeps it as saved.
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot, bos_token_id=eot, eos_token_id=eot, pad_token_id=eot,
        max_length=config.max_target_positions, is_multilingual=True,
        lang_to_id={f"<|{code}|>": ids[f"<|{code}|>"] for code in LANGUAGES},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        no_timestamps_token_id=ids["<|notimestamps|>"], prev_sot_token_id=ids["<|startofprev|>"],
        max_initial_timestamp_index=50, begin_suppress_tokens=[eot],
        # As Whisper's own config does for its control tokens: a transcript is text (and timestamps).
        suppress_tokens=[ids[token] for token in SPECIAL_TOKENS[1:]])
    model.save_pretrained(folder)
    WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


# 4 conv layers with total stride 320 (20 ms frames, as in the real models), 2 transformer layers of width 64
TINY_CONFIG = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
    conv_dim=(32, 32, 32, 32), conv_kernel=(10, 8, 4, 4), conv_stride=(5, 4, 4, 4),
    num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
    feat_extract_norm="layer", do_stable_layer_norm=True,
)
# Wav2Vec2Config's defaults are facebook/wav2vec2-base's shape (7 conv layers of 512, 12 layers of 768, group norm).
WAV2VEC2_SIZES = {"tiny": TINY_CONFIG, "base": {}}


def make_tiny_wav2vec2(folder: Path, vocab_chars: str | None = None, size: str = "tiny") -> Path:
    """Save a randomly initialised Wav2Vec2ForCTC of WAV2VEC2_SIZES[size] (+ CTC tokenizer when `vocab_chars`
    is given)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    config = Wav2Vec2Config(vocab_size=32, pad_token_id=0, **WAV2VEC2_SIZES[size])
    # As the Hub checkpoints ship it: only layer-norm models take the attention mask.
    feature_extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                                 do_normalize=True,
                                                 return_attention_mask=config.feat_extract_norm == "layer")
    vocab = None
    if vocab_chars is not None:
        vocab = {"[PAD]": 0, "[UNK]": 1, "|": 2}
        vocab.update({ch: i for i, ch in enumerate(sorted(set(vocab_chars) - {" "}), start=3)})
        config.vocab_size = len(vocab)
    Wav2Vec2ForCTC(config).save_pretrained(folder)
    feature_extractor.save_pretrained(folder)
    if vocab:
        with tempfile.TemporaryDirectory() as tmp:
            vocab_file = Path(tmp) / "vocab.json"
            vocab_file.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
            tokenizer = Wav2Vec2CTCTokenizer(str(vocab_file), unk_token="[UNK]", pad_token="[PAD]",
                                             word_delimiter_token="|", bos_token=None, eos_token=None)
            Wav2Vec2Processor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def overfit_whisper(folder: Path, waveforms: list, texts: list[str], steps: int = 60, lr: float = 6e-3) -> Path:
    """Train the saved Whisper on a few clips until it transcribes them (full batch, no augmentation), with
    the language, task and beams that train_whisper.py sets on generation_config; saves it in place."""
    folder = Path(folder)
    processor = WhisperProcessor.from_pretrained(folder)
    model = WhisperForConditionalGeneration.from_pretrained(folder)
    features = processor.feature_extractor(waveforms, sampling_rate=16000, return_tensors="pt").input_features
    tokens = processor.tokenizer(texts, padding=True, return_tensors="pt")
    # The model prepends <|startoftranscript|> itself: the labels start after it.
    labels = tokens.input_ids.masked_fill(tokens.attention_mask.ne(1), -100)[:, 1:]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    torch.manual_seed(0)
    model.train()
    for _ in range(steps):
        model(input_features=features, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    generation = model.generation_config
    generation.language, generation.task, generation.forced_decoder_ids = "vi", "transcribe", None
    generation.num_beams = 1
    model.save_pretrained(folder)
    return folder
