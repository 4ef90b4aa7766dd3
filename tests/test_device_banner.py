"""The start-up banner's device line: a GPU that nvidia-smi lists but this torch (a CPU-only build) cannot use
is named with the command that installs the matching CUDA build; no GPU, no warning. And bitsandbytes, whose
import prints an error line offline, is not imported unless the 8-bit optimizer is asked for."""
from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata

import pytest

import train_deepspeech
import train_wav2vec2
import train_whisper
from conftest import REPO

# Shell built-ins only: PATH holds nothing but this script.
NVIDIA_SMI = """#!/bin/sh
if [ "$1" = "-L" ]; then
  echo "GPU 0: NVIDIA GeForce RTX 3050 Ti Laptop GPU (UUID: GPU-5c1f5a3e-2b7d-4f0e-9a61-0d6f2b9e8c11)"
  exit 0
fi
echo "+-----------------------------------------------------------------------------------------+"
echo "| NVIDIA-SMI 552.22                 Driver Version: 552.22         CUDA Version: {cuda}     |"
echo "|-----------------------------------------+------------------------+----------------------+"
"""


def fake_nvidia_smi(tmp_path, monkeypatch, cuda: str) -> None:
    script = tmp_path / "nvidia-smi"
    script.write_text(NVIDIA_SMI.replace("{cuda}", cuda), encoding="utf-8")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))


@pytest.mark.skipif(os.name == "nt", reason="the fake nvidia-smi is a shell script")
@pytest.mark.parametrize("cuda, index", [("12.4", "cu124"), ("12.5", "cu124"), ("12.9", "cu128"), ("11.8", "cu118")])
def test_a_gpu_this_torch_cannot_use_is_named_with_the_install_command(tmp_path, monkeypatch, cuda, index):
    fake_nvidia_smi(tmp_path, monkeypatch, cuda)
    line = train_whisper.describe_device()
    assert "NVIDIA GeForce RTX 3050 Ti Laptop GPU" in line and "runs on the CPU" in line
    assert line.endswith(f"pip install --force-reinstall torch --index-url https://download.pytorch.org/whl/{index}")


@pytest.mark.skipif(os.name == "nt", reason="the fake nvidia-smi is a shell script")
def test_a_driver_older_than_every_cuda_build_asks_for_a_driver_update(tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path, monkeypatch, "11.4")
    assert "update the NVIDIA driver" in train_whisper.describe_device()


def test_without_nvidia_smi_there_is_no_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert train_whisper.describe_device() == f"CPU, {os.cpu_count()} cores"


@pytest.mark.parametrize("module", [train_whisper, train_wav2vec2, train_deepspeech])
def test_the_banner_says_device_torch_build_settings_and_data(module, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    args = module.parse_args(["--data", "d", "--output-dir", "o", "--batch-size", "4", "--grad-accum", "4"])
    banner = module.run_banner(args, "fp32", "adafactor", {"train": 9000, "validation": 1500, "test": 760})
    assert "CPU, " in banner and "(CPU-only build)" in banner and "fp32" in banner
    assert "4 x 4 accumulation = 16 utterances per optimizer step" in banner
    assert "train 9000 utterances, validation 1500 utterances, test 760 utterances" in banner
    assert f"adafactor (instead of {args.optim})" in banner


@pytest.mark.parametrize("script", ["train_whisper.py", "train_wav2vec2.py", "train_deepspeech.py"])
def test_bitsandbytes_is_not_imported_unless_asked_for(script):
    """Installed bitsandbytes prints "Failed to load CPU gemm_4bit_forward" when imported offline; a trainer
    that does not use the 8-bit optimizer must not import it (transformers imports peft, which would)."""
    try:
        metadata.version("bitsandbytes")
    except metadata.PackageNotFoundError:
        pytest.skip("bitsandbytes is not installed")
    check = (f"import sys; sys.argv = ['{script}', '--help']; import runpy\n"
             f"try:\n    runpy.run_path('{script}', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "print('imported' if sys.modules.get('bitsandbytes') else 'not imported')")
    done = subprocess.run([sys.executable, "-c", check], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.stdout.strip().endswith("not imported"), done.stdout[-300:] + done.stderr[-300:]
    assert "bitsandbytes" not in done.stderr and "gemm_4bit" not in done.stdout + done.stderr


@pytest.mark.skipif(os.name == "nt", reason="the fake nvidia-smi is a shell script")
def test_transcribe_prints_the_device_and_the_cuda_build_warning(tmp_path, monkeypatch, capsys):
    import transcribe
    from length_model import make_length_model

    model = make_length_model(tmp_path / "model")
    clip = sorted((REPO / "sample_data" / "vivos_sample" / "test" / "waves").rglob("*.flac"))[0]
    (tmp_path / "bin").mkdir()
    fake_nvidia_smi(tmp_path / "bin", monkeypatch, "12.6")
    transcribe.main(["--model", str(model), str(clip), "--output-dir", str(tmp_path / "out"), "--device", "cpu",
                     "--trust-remote-code"])
    out = capsys.readouterr().out
    assert "device:     CPU" in out and "torch:      " in out and "audio:      1 file" in out
    assert "nvidia-smi lists NVIDIA GeForce RTX 3050 Ti Laptop GPU" in out
    assert "https://download.pytorch.org/whl/cu126" in out
