"""train_whisper.py, tested on what a student relies on: a model that learns its transcripts, a best_model
that transformers.pipeline loads, LoRA, two processes, and the refusals only Whisper has. What the three
trainers promise alike (run folder, resume, --eval-only, refusals) is tests/test_trainer_contract.py.
A tiny Whisper (tests/tiny_whisper.py) on the espeak-ng corpus; offline, CPU."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
from datasets import DatasetDict, load_from_disk
from safetensors.torch import save_file

import train_whisper
from conftest import REPO, read_csv, read_json
from tiny_whisper import make_tiny_whisper, one_thread, tiny_train_args

QUICK = ("--generation-max-length", "16", "--train-eval-size", "4")  # short evaluations for runs that learn little


@pytest.fixture(autouse=True)
def one_torch_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_whisper(tmp_path_factory.mktemp("whisper") / "mô hình nhỏ")


@pytest.fixture(scope="module")
def eight_data(whisper_data, tmp_path_factory) -> Path:
    """8 train utterances as train, validation and test: the set the tiny model must learn by heart."""
    eight = load_from_disk(str(whisper_data))["train"].select(range(8))
    out = tmp_path_factory.mktemp("whisper") / "tám câu"
    DatasetDict(train=eight, validation=eight, test=eight).save_to_disk(str(out))
    (out / "prepare_summary.json").write_text((whisper_data / "prepare_summary.json").read_text(encoding="utf-8"),
                                              encoding="utf-8")
    return out


def wav(vivos_dir: Path, split: str, utterance_id: str) -> np.ndarray:
    speaker = utterance_id.split("_")[0]
    return sf.read(vivos_dir / split / "waves" / speaker / f"{utterance_id}.wav", dtype="float32")[0]


def test_collator_restores_the_30_s_input_and_never_targets_the_start_token(whisper_data, vivos_dir, tiny_model):
    """Trimmed float16 frames padded back equal Whisper's own 30 s features; labels start at the language
    token (the model prepends <|startoftranscript|> itself) and padding is -100."""
    from transformers import WhisperFeatureExtractor, WhisperProcessor

    columns = ["id", "input_features", "sentence"]
    train = load_from_disk(str(whisper_data))["train"].with_format("numpy", columns=columns)
    examples = [train[0], train[1]]
    expected = WhisperFeatureExtractor(feature_size=80)(wav(vivos_dir, "train", str(examples[0]["id"])),
                                                        sampling_rate=16000)["input_features"][0]
    restored = train_whisper.restore_full_input(examples[0]["input_features"], 3000)
    assert restored.shape == (80, 3000) and np.abs(restored - expected).max() < 1e-3

    tokenizer = WhisperProcessor.from_pretrained(tiny_model).tokenizer
    tokenizer.set_prefix_tokens(language="vi", task="transcribe")
    sot = tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
    batch = train_whisper.WhisperCollator(tokenizer, 400, sot)(examples)
    assert batch["input_features"].shape == (2, 80, 400)
    labels = batch["labels"]
    assert (labels[:, 0] == tokenizer.convert_tokens_to_ids("<|vi|>")).all() and not (labels == sot).any()
    shorter = int((labels != -100).sum(1).argmin())
    assert labels[shorter, -1] == -100  # padding is ignored by the loss
    for row, example in zip(labels, examples):
        assert tokenizer.decode(row[row != -100], skip_special_tokens=True) == example["sentence"]

    lengths = [len(tokenizer(str(s)).input_ids) - 1 for s in train["sentence"]]
    kept, dropped = train_whisper.without_long_transcripts(load_from_disk(str(whisper_data))["train"], tokenizer,
                                                           max_tokens=sorted(lengths)[-3])
    assert dropped == sum(n > sorted(lengths)[-3] for n in lengths) >= 1 and len(kept) == len(train) - dropped


@pytest.mark.slow
def test_run_folder_is_what_report_transcribe_and_demo_read(whisper_run, whisper_data, vivos_dir):
    """What Whisper adds to the shared run-folder contract (tests/test_trainer_contract.py): its history,
    settings, test scores and a best_model that transformers.pipeline loads with the language and task."""
    test_ids = list(load_from_disk(str(whisper_data))["test"]["id"])
    history = read_csv(whisper_run / "history.csv")
    assert [(float(r["epoch"]), int(r["step"])) for r in history] == [(1.0, 9), (2.0, 18), (3.0, 27)]
    assert float(history[0]["train_loss"]) > float(history[-1]["train_loss"])  # it learns

    info = read_json(whisper_run / "run_info.json")
    assert info["family"] == "whisper" and info["stop_reason"] == "completed" and info["epochs_run"] == 3.0
    assert info["dataset"]["splits"] == {"train": 72, "validation": 24, "test": 24}
    assert info["architecture"]["d_model"] == 128 and info["architecture"]["encoder_layers"] == 2
    assert info["params_trainable"] == info["params_total"] > 1e6 and info["lora"] is None
    assert info["best_val_wer"] == min(float(r["val_wer"]) for r in history)
    assert info["best_step"] in [int(r["step"]) for r in history] and info["peak_gpu_memory_mb"] is None
    assert read_json(whisper_run / "trainer_state.json")["global_step"] == 27

    predictions = read_csv(whisper_run / "test_predictions.csv")
    assert [r["id"] for r in predictions] == test_ids
    metrics = read_json(whisper_run / "test_metrics.json")
    scores = train_whisper.compute_wer_cer([r["reference"] for r in predictions],
                                           [r["prediction"] for r in predictions])
    assert metrics["wer"] == scores["wer"] and metrics["num_utterances"] == 24
    assert {"ser", "ref_words", "audio_seconds", "decode_seconds", "rtf"} <= set(metrics)

    from transformers import pipeline

    asr = pipeline("automatic-speech-recognition", model=str(whisper_run / "best_model"))
    first = predictions[0]
    assert train_whisper.normalize_text(asr(wav(vivos_dir, "test", first["id"]))["text"]) == first["prediction"]
    generation = read_json(whisper_run / "best_model" / "generation_config.json")
    assert (generation["language"], generation["task"]) == ("vi", "transcribe")
    assert generation.get("forced_decoder_ids") is None  # deprecated: language and task do it
    card = (whisper_run / "best_model" / "README.md").read_text(encoding="utf-8")
    assert card.startswith("---\nlanguage:\n- vi") and "type: wer" in card and "Test WER" in card


@pytest.mark.slow
def test_tiny_whisper_learns_eight_utterances_by_heart(eight_data, tiny_model, vivos_dir, tmp_path):
    """The measured overfit: d_model 128, 2+2 layers, 120 steps; best_model through pipeline gives exact text."""
    out = tmp_path / "thuộc lòng"
    info = train_whisper.main(tiny_train_args(eight_data, tiny_model, out, "--epochs", "120", "--eval-every", "60",
                                              "--warmup-ratio", "0.05", "--train-eval-size", "2"))
    assert info["best_val_wer"] == 0.0 and read_json(out / "test_metrics.json")["wer"] == 0.0

    from transformers import pipeline

    asr = pipeline("automatic-speech-recognition", model=str(out / "best_model"))
    eight = load_from_disk(str(eight_data))["train"]
    heard = [train_whisper.normalize_text(asr(wav(vivos_dir, "train", i))["text"]) for i in eight["id"]]
    assert heard == list(eight["sentence"])


def test_early_stopping_ends_a_run_that_stops_improving(eight_data, tiny_model, tmp_path):
    """With a learning rate too small to change anything, validation WER never improves: patience 1
    stops the run after its second evaluation, not after the 5 planned epochs."""
    out = tmp_path / "dừng sớm"
    info = train_whisper.main(tiny_train_args(eight_data, tiny_model, out, "--epochs", "5", "--lr", "1e-12",
                                              "--patience", "1", *QUICK))
    assert info["stop_reason"] == "early_stopping" and info["epochs_run"] == 2.0 and info["best_epoch"] == 1.0
    assert len(read_csv(out / "history.csv")) == 2


@pytest.mark.slow
def test_eval_only_scores_the_model_as_it_is(whisper_run, whisper_data, tmp_path):
    """--eval-only on the run's best checkpoint writes the same test artifacts with the same predictions:
    the best checkpoint (not the last) is what the run loaded at the end and saved as best_model."""
    from safetensors.torch import load_file

    best = whisper_run / f"checkpoint-{read_json(whisper_run / 'run_info.json')['best_step']}"
    saved, kept = load_file(whisper_run / "best_model" / "model.safetensors"), load_file(best / "model.safetensors")
    assert saved.keys() == kept.keys() and all(torch.equal(saved[k], kept[k]) for k in saved)
    out = tmp_path / "zero-shot"
    info = train_whisper.main(["--data", str(whisper_data), "--model", str(best),
                               "--output-dir", str(out), "--eval-only", "--eval-batch-size", "24",
                               "--train-eval-size", "4", "--num-workers", "0"])
    assert info["stop_reason"] == "eval_only" and info["eval_only"] and info["epochs_run"] == 0
    assert info["train_seconds"] == 0 and not list(out.glob("checkpoint-*"))
    before = read_csv(whisper_run / "test_predictions.csv")
    assert [r["prediction"] for r in read_csv(out / "test_predictions.csv")] == [r["prediction"] for r in before]
    assert read_json(out / "test_metrics.json")["wer"] == read_json(whisper_run / "test_metrics.json")["wer"]
    (row,) = read_csv(out / "history.csv")
    assert row["step"] == "0" and row["train_loss"] == "" and row["val_wer"] != "" and row["train_wer"] != ""
    assert (out / "best_model" / "config.json").is_file() and (out / "trainer_state.json").is_file()


def test_lora_with_gradient_checkpointing_saves_merged_weights(eight_data, tiny_model, tmp_path):
    """LoRA trains only the adapters (through checkpointed layers); best_model is a plain Whisper with
    the adapters merged into q/v projections, loadable without peft."""
    from transformers import WhisperForConditionalGeneration

    out = tmp_path / "lora"
    info = train_whisper.main(tiny_train_args(eight_data, tiny_model, out, "--epochs", "2", "--lora",
                                              "--lora-r", "4", "--lr", "1e-2", "--warmup-ratio", "0",
                                              "--gradient-checkpointing", "--spec-augment", "--mask-time-prob",
                                              "0.1", "--dropout", "0.1", "--weight-decay", "0.01", "--scheduler",
                                              "cosine", *QUICK))
    assert info["lora"] == {"r": 4, "alpha": 64, "dropout": 0.05, "targets": ["q_proj", "v_proj"]}
    assert info["architecture"]["spec_augment"] == {"time_prob": 0.1, "feature_prob": 0.0}
    assert info["architecture"]["dropout"] == 0.1 and info["scheduler"] == "cosine"
    assert 0 < info["params_trainable"] < info["params_total"] / 10
    assert (out / "checkpoint-2" / "adapter_model.safetensors").is_file()
    assert not (out / "best_model" / "adapter_config.json").exists()
    base = WhisperForConditionalGeneration.from_pretrained(tiny_model).state_dict()
    merged = WhisperForConditionalGeneration.from_pretrained(out / "best_model").state_dict()
    layer = "model.decoder.layers.0.self_attn"
    assert not torch.equal(base[f"{layer}.q_proj.weight"], merged[f"{layer}.q_proj.weight"])
    assert torch.equal(base[f"{layer}.k_proj.weight"], merged[f"{layer}.k_proj.weight"])


@pytest.mark.slow
def test_torchrun_two_cpu_processes_share_the_epoch(eight_data, tiny_model, tmp_path):
    """`torchrun --nproc_per_node 2` trains with DDP (gloo on CPU): each process takes half of every epoch,
    so 8 utterances at 2 per process and 2 accumulated are 1 step an epoch; one run folder, written once."""
    out = tmp_path / "hai tiến trình"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "train_whisper.py", *tiny_train_args(eight_data, tiny_model, out, "--epochs", "2", "--batch-size", "2",
                                                    "--grad-accum", "2", "--freeze-encoder", *QUICK)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    info = read_json(out / "run_info.json")
    assert info["device"] == "cpu x2 processes" and info["effective_batch_size"] == 8
    assert read_json(out / "trainer_state.json")["global_step"] == 2
    first = read_csv(out / "history.csv")[0]
    assert float(first["train_loss"]) < 1.5 * float(first["val_loss"])  # the loss, not the loss x processes
    from transformers import WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration.from_pretrained(tiny_model)
    decoder = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("model.encoder."))
    assert info["params_trainable"] == decoder < info["params_total"]  # --freeze-encoder
    assert len(read_csv(out / "test_predictions.csv")) == 8
    assert done.stdout.count("Run folder:") == 1


def test_a_model_with_other_mel_bins_gets_the_command_for_matching_features(whisper_data, vivos_dir, tmp_path):
    big = make_tiny_whisper(tmp_path / "128 mels", num_mel_bins=128)
    with pytest.raises(SystemExit, match=r"expects 128 mel bins but --data .* has 80.*--features whisper --n-mels 128"):
        train_whisper.main(["--data", str(whisper_data), "--model", str(big), "--output-dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_a_model_of_another_family_is_refused_naming_its_trainer(whisper_data, tmp_path):
    other = tmp_path / "wav2vec2"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "wav2vec2"}))
    save_file({"weight": torch.zeros(1)}, str(other / "model.safetensors"))
    with pytest.raises(SystemExit, match="is a 'wav2vec2' model; train_whisper.py needs a Whisper checkpoint"):
        train_whisper.main(["--data", str(whisper_data), "--model", str(other), "--output-dir", str(tmp_path / "out")])


def test_out_of_memory_keeps_checkpoints_and_names_the_next_setting(tmp_path):
    (tmp_path / "checkpoint-50").mkdir()
    (tmp_path / "checkpoint-50" / "trainer_state.json").write_text("{}")

    class OutOfMemoryTrainer:
        model = torch.nn.Linear(2, 2)
        args = SimpleNamespace(world_size=1, num_train_epochs=5)

        def train(self, resume_from_checkpoint=None):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")

    args = train_whisper.parse_args(["--data", "d", "--output-dir", str(tmp_path), "--batch-size", "4"])
    with pytest.raises(SystemExit, match=r"Kept .*checkpoint-50; re-run the same command with --batch-size 2 "
                                         r"--grad-accum 4 .*or with --preset low-vram"):
        train_whisper.run_training(OutOfMemoryTrainer(), args, None)
    assert (tmp_path / "checkpoint-50").is_dir()
    args = train_whisper.parse_args(["--data", "d", "--output-dir", str(tmp_path), "--preset", "low-vram",
                                     "--batch-size", "1"])
    assert train_whisper.next_setting_after_oom(args) == "--lora (or --freeze-encoder)"


def test_a_preset_sets_its_bundle_and_a_flag_given_wins():
    args = train_whisper.parse_args(["--data", "d", "--output-dir", "o", "--preset", "low-vram", "--batch-size", "2"])
    assert (args.batch_size, args.grad_accum, args.gradient_checkpointing, args.optim) == (2, 4, True, "adamw_bnb_8bit")


def test_lora_takes_a_larger_default_learning_rate_than_full_fine_tuning():
    def lr(*flags: str) -> float:
        return train_whisper.learning_rate(train_whisper.parse_args(["--data", "d", "--output-dir", "o", *flags]))

    assert (lr(), lr("--lora"), lr("--lora", "--lr", "5e-4")) == (1e-5, 1e-3, 5e-4)


@pytest.mark.parametrize("step, planned, reason", [(3, 3, "max_steps"), (2, 10, "early_stopping")])
def test_stop_reason_tells_max_steps_from_early_stopping(step, planned, reason):
    capped = train_whisper.parse_args(["--data", "d", "--output-dir", "o", "--max-steps", "3"])
    assert train_whisper.stop_reason(capped, SimpleNamespace(global_step=step, max_steps=planned)) == reason


def test_stop_reason_of_a_run_that_ran_all_its_epochs_is_completed():
    args = train_whisper.parse_args(["--data", "d", "--output-dir", "o"])
    assert train_whisper.stop_reason(args, SimpleNamespace(global_step=10, max_steps=10)) == "completed"


def test_memory_benchmark_without_a_gpu_says_so(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: run bench/bench_whisper_memory.py itself")
    spec = importlib.util.spec_from_file_location("bench_whisper_memory", REPO / "bench" / "bench_whisper_memory.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main([]) == 0
    assert "no GPU" in capsys.readouterr().out
