"""DeepSpeech2 (Amodei et al., 2016) for 16 kHz speech: log-Mel and pitch features computed inside the model,
2-D convolutions, bidirectional LSTM/GRU layers and a CTC head over characters, decoded greedily or, when the
model folder holds a word language model (alphabet.json and language_model/, pyctcdecode's layout), by
pyctcdecode's beam search with that model. train_deepspeech.py trains it and copies this file into
best_model/; transcribe.py and demo.py load saved models with it. Needs torch, numpy and safetensors;
decoding with the language model also needs pyctcdecode and kenlm (pip install --no-deps -r requirements-lm.txt).

    import modeling_deepspeech2 as ds2
    model = ds2.load_model("runs/deepspeech2/best_model")      # eval mode; model.lm_decoder or model.lm_note
    print(ds2.transcribe(model, [waveform]))                    # float32 numpy arrays, 16 kHz mono
"""
from __future__ import annotations

import importlib.util
import json
import math
import unicodedata
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

BLANK_FAVOUR = 1e4  # logit gap that makes padded frames decode as blank (fits in fp16)
PITCH_PROJECTION = 32  # learnt inputs the 3 pitch features become


def mel_filterbank(n_mels: int, n_fft: int, sampling_rate: int) -> torch.Tensor:
    """Triangular filters on the HTK Mel scale from 0 Hz to Nyquist, shape (n_fft // 2 + 1, n_mels)."""
    def hz_to_mel(hz):
        return 2595.0 * torch.log10(1.0 + hz / 700.0)

    freqs = torch.linspace(0.0, sampling_rate / 2, n_fft // 2 + 1)
    mels = torch.linspace(0.0, float(hz_to_mel(torch.tensor(sampling_rate / 2))), n_mels + 2)
    edges = 700.0 * (10.0 ** (mels / 2595.0) - 1.0)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (freqs[:, None] - lower) / (center - lower)
    falling = (upper - freqs[:, None]) / (upper - center)
    return torch.clamp(torch.minimum(rising, falling), min=0.0)


class LogMelSpectrogram(nn.Module):
    """Waveforms (batch, samples) -> normalised log-Mel (batch, n_mels, frames) and each one's frame count.

    The mean and std per Mel bin come from the train split and are buffers, so they travel with the
    weights. Frames past an utterance's end are zero, and the waveform is zero-padded by hand rather than
    reflected, so a clip gets the same features alone as inside a padded batch.
    """

    def __init__(self, config: dict):
        super().__init__()
        self.n_fft, self.hop_length = config["n_fft"], config["hop_length"]
        self.register_buffer("window", torch.hann_window(config["win_length"]), persistent=False)
        self.register_buffer("filters", mel_filterbank(config["n_mels"], config["n_fft"], config["sampling_rate"]),
                             persistent=False)
        self.register_buffer("mean", torch.tensor(config["feature_mean"], dtype=torch.float32))
        self.register_buffer("std", torch.tensor(config["feature_std"], dtype=torch.float32))

    def log_mel(self, waveforms: torch.Tensor) -> torch.Tensor:
        """Un-normalised log-Mel, float32 even under autocast (stft and log need the range)."""
        with torch.autocast(device_type=waveforms.device.type, enabled=False):
            padded = F.pad(waveforms.float(), (self.n_fft // 2, self.n_fft // 2))
            spec = torch.stft(padded, self.n_fft, self.hop_length, win_length=self.window.shape[0],
                              window=self.window, center=False, return_complex=True)
            return torch.log(torch.matmul(self.filters.T, spec.abs() ** 2) + 1e-6)

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = (self.log_mel(waveforms) - self.mean[:, None]) / self.std[:, None]
        frames = lengths // self.hop_length + 1
        padding = torch.arange(features.shape[-1], device=features.device)[None, :] >= frames[:, None]
        return features.masked_fill(padding[:, None, :], 0.0), frames


class PitchFeatures(nn.Module):
    """Waveforms (batch, samples) -> (batch, 3, frames) tone features on the log-Mel's frame grid:
    log2 F0 relative to the utterance's median (x3, so 4 semitones is 1; within +-2), its slope, and voicing.

    Vietnamese tones are pitch contours, and a 25 ms log-Mel barely resolves the harmonics of a low
    voice; Kaldi's pitch features for tonal languages do the same job. F0 is the lag of the normalised
    cross-correlation's first peak within 85 % of its best (which avoids octave-down errors) between
    50 and 500 Hz over 50 ms frames; subtracting each utterance's median log F0 removes the speaker's
    register, so only the contour is left, and a frame still about an octave from the median is an
    octave error, folded back. Deterministic and per utterance, like the log-Mel.
    """

    FRAME, MIN_HZ, MAX_HZ, PEAK_SHARE, VOICED = 800, 50.0, 500.0, 0.85, 0.5

    def __init__(self, config: dict):
        super().__init__()
        self.hop_length, self.sampling_rate = config["hop_length"], config["sampling_rate"]
        self.min_lag = int(self.sampling_rate / self.MAX_HZ)
        self.max_lag = int(self.sampling_rate / self.MIN_HZ)

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=waveforms.device.type, enabled=False):
            size = self.FRAME
            padded = F.pad(waveforms.float(), (size // 2, size // 2))
            frames = padded.unfold(-1, size, self.hop_length)  # (batch, frames, size), the log-Mel's centres
            frames = frames - frames.mean(dim=-1, keepdim=True)
            spectrum = torch.fft.rfft(frames, n=2 * size)
            correlation = torch.fft.irfft(spectrum.real ** 2 + spectrum.imag ** 2, n=2 * size)
            lags = torch.arange(self.min_lag, self.max_lag + 1, device=frames.device)
            energy = F.pad(torch.cumsum(frames ** 2, dim=-1), (1, 0))  # energy[k] = sum of the first k squares
            head = energy[..., size - lags]  # the first size - lag samples
            tail = energy[..., -1:] - energy[..., lags]  # the last size - lag samples
            nccf = correlation[..., lags] / torch.sqrt(head * tail + 1e-8)
            is_peak = F.pad((nccf[..., 1:-1] >= nccf[..., :-2]) & (nccf[..., 1:-1] >= nccf[..., 2:]), (1, 1))
            best = nccf.max(dim=-1, keepdim=True).values
            first = (is_peak & (nccf >= self.PEAK_SHARE * best)).float().argmax(dim=-1)
            log_f0 = torch.log2(self.sampling_rate / lags[first].float())
            # A 5-frame median removes the single-frame octave jumps at consonant edges.
            log_f0 = F.pad(log_f0[:, None], (2, 2), mode="replicate")[:, 0].unfold(-1, 5, 1).median(dim=-1).values
            count = lengths // self.hop_length + 1
            inside = torch.arange(frames.shape[1], device=frames.device)[None, :] < count[:, None]
            loud = energy[..., -1] > 1e-3 * energy[..., -1].amax(dim=1, keepdim=True)
            voiced = (best[..., 0] > self.VOICED) & loud & inside
            # The median, not the mean, so octave errors do not shift everyone else's contour; frames
            # still over 0.7 octave from it are folded back (a tone moves well under an octave).
            centre = torch.where(voiced, log_f0, torch.nan).nanmedian(dim=1, keepdim=True).values.nan_to_num(0.0)
            away = log_f0 - centre
            log_f0 = log_f0 - (away > 0.7).float() + (away < -0.7).float()
            relative = torch.where(voiced, ((log_f0 - centre) * 3.0).clamp(-2.0, 2.0), 0.0)
            around = F.pad(relative, (2, 2))
            both = F.pad(voiced, (2, 2))
            rise = (around[:, 4:] - around[:, :-4]).clamp(-1.0, 1.0) * 2.0  # over 40 ms
            slope = torch.where(both[:, 4:] & both[:, :-4], rise, 0.0)
            voicing = torch.where(inside & loud, best[..., 0].clamp(0.0, 1.0), 0.0)
            return torch.stack([relative, slope, voicing], dim=1)


def perturb_speed(waveforms: torch.Tensor, lengths: torch.Tensor, spread: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Each clip resampled by its own random factor in [1 - spread, 1 + spread] and played at 16 kHz
    (speed perturbation, Ko et al. 2015): tempo, pitch and formants move together, as with another speaker."""
    factors = 1.0 + (torch.rand(len(lengths), device=lengths.device) * 2.0 - 1.0) * spread
    new_lengths = (lengths.float() / factors).round().long().clamp(min=1)
    resampled = waveforms.new_zeros(len(lengths), int(new_lengths.max()))
    for row, (old, new) in enumerate(zip(lengths.tolist(), new_lengths.tolist())):
        clip = waveforms[row, :old].float()[None, None]
        resampled[row, :new] = F.interpolate(clip, size=new, mode="linear", align_corners=False)[0, 0]
    return resampled, new_lengths


def span_mask(sizes: torch.Tensor, axis_len: int, prob: float, span: int) -> torch.Tensor:
    """(batch, axis_len) bool: spans of `span` positions at random starts covering about `prob` of each
    row's first `sizes[i]` positions (SpecAugment's masks, counted like Hugging Face's mask_*_prob)."""
    counts = torch.round(prob * sizes.float() / span).long()
    most = int(counts.max()) if counts.numel() else 0
    if most == 0 or span <= 0:
        return torch.zeros(len(sizes), axis_len, dtype=torch.bool, device=sizes.device)
    room = (sizes - span).clamp(min=1).float()
    starts = (torch.rand(len(sizes), most, device=sizes.device) * room[:, None]).long()
    used = torch.arange(most, device=sizes.device)[None, :] < counts[:, None]
    positions = torch.arange(axis_len, device=sizes.device)[None, None, :]
    inside = (positions >= starts[..., None]) & (positions < starts[..., None] + span) & used[..., None]
    return inside.any(dim=1)


class MaskConv(nn.Module):
    """2-D convolutions over (Mel, time), each with batch norm and a ReLU clipped at 20 (DS2's Hardtanh).

    After every layer the frames past each utterance's end are zeroed, so padding never leaks into real
    frames and a padded batch gives the same output as one utterance at a time.
    """

    # (kernel, stride, padding) as (Mel, time): DS2's 41x11 and 21x11 kernels scaled from 161 linear bins
    # to 80 Mel bins (and 2.5x cheaper on a CPU); only the first layer strides in time: 50 frames/s out.
    LAYERS = [((21, 11), (2, 2), (10, 5)), ((11, 11), (2, 1), (5, 5)), ((11, 11), (2, 1), (5, 5))]

    def __init__(self, n_mels: int, channels: int, layers: int):
        super().__init__()
        self.specs = self.LAYERS[:layers]
        self.blocks = nn.ModuleList()
        height, in_channels = n_mels, 1
        for kernel, stride, padding in self.specs:
            self.blocks.append(nn.Sequential(
                nn.Conv2d(in_channels, channels, kernel, stride, padding, bias=False),
                nn.BatchNorm2d(channels),
                nn.Hardtanh(0.0, 20.0, inplace=True),
            ))
            height = (height + 2 * padding[0] - kernel[0]) // stride[0] + 1
            in_channels = channels
        self.output_size = channels * height

    def output_lengths(self, frames: torch.Tensor) -> torch.Tensor:
        for kernel, stride, padding in self.specs:
            frames = (frames + 2 * padding[1] - kernel[1]) // stride[1] + 1
        return frames

    def forward(self, features: torch.Tensor, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = features.unsqueeze(1)
        for block, (kernel, stride, padding) in zip(self.blocks, self.specs):
            x = block(x)
            frames = (frames + 2 * padding[1] - kernel[1]) // stride[1] + 1
            outside = torch.arange(x.shape[-1], device=x.device)[None, :] >= frames[:, None]
            x = x.masked_fill(outside[:, None, None, :], 0.0)
        batch, channels, height, time_steps = x.shape
        return x.reshape(batch, channels * height, time_steps).transpose(1, 2), frames


def reverse_within_lengths(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Each sequence's first lengths[i] steps in reverse order, its padding left at the end."""
    steps = torch.arange(x.shape[1], device=x.device)[None, :]
    index = torch.where(steps < lengths[:, None], lengths[:, None] - 1 - steps, steps)
    return x.gather(1, index[..., None].expand_as(x))


class BatchRNN(nn.Module):
    """One bidirectional GRU/LSTM layer with layer norm on its input and dropout on its output.

    The backward direction reads each utterance reversed within its own length, so it starts at the
    utterance's real end, not in padding. That is what packing does, at a third of packing's backward
    cost on a CPU.
    """

    def __init__(self, input_size: int, hidden: int, rnn_type: str, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(input_size)
        rnn_class = nn.LSTM if rnn_type == "lstm" else nn.GRU
        self.forward_rnn = rnn_class(input_size, hidden, batch_first=True)
        self.backward_rnn = rnn_class(input_size, hidden, batch_first=True)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        ahead, _ = self.forward_rnn(x)
        behind, _ = self.backward_rnn(reverse_within_lengths(x, lengths))
        return self.dropout(torch.cat([ahead, reverse_within_lengths(behind, lengths)], dim=-1))


class DeepSpeech2(nn.Module):
    """Waveforms -> log-Mel -> MaskConv -> BatchRNN x N -> linear CTC head over characters.

    forward() returns {"logits", "loss"} (loss only with labels), the dict the Hugging Face Trainer reads.
    Logits at frames past each output length strongly favour the blank, so greedy decoding of a padded
    batch (or of the Trainer's concatenated batches) is exact.
    """

    def __init__(self, config: dict, vocab: dict[str, int]):
        super().__init__()
        # `settings`, not `config`: the Trainer treats a `config` attribute as a PretrainedConfig.
        self.settings, self.vocab = dict(config), dict(vocab)
        self.tokens = {index: token for token, index in vocab.items()}
        # pyctcdecode's decoder with the folder's word language model (load_model attaches it), or None and
        # the one line that says why decoding is greedy.
        self.lm_decoder, self.lm_note = None, "the model was saved without a language model"
        self.gradient_checkpointing = False
        self.augment = True  # speed perturbation and SpecAugment in train mode; AugmentAfterWarmup switches it
        self.features = LogMelSpectrogram(config)
        self.conv = MaskConv(config["n_mels"], config["conv_channels"], config["conv_layers"])
        # Pitch joins after the convolutions: its 3 rows are not a spectrum for 2-D kernels to slide over.
        self.pitch = PitchFeatures(config) if config.get("pitch", False) else None
        # The 3 pitch rows widened to PITCH_PROJECTION learnt inputs: raw, they were 3 of ~640 layer-normed
        # inputs, and training kept growing their weights beyond every other input's.
        self.pitch_projection = nn.Linear(3, PITCH_PROJECTION) if self.pitch is not None else None
        first_size = self.conv.output_size + (PITCH_PROJECTION if self.pitch is not None else 0)
        sizes = [first_size] + [2 * config["rnn_hidden"]] * config["rnn_layers"]
        self.rnns = nn.ModuleList(BatchRNN(size, config["rnn_hidden"], config["rnn_type"], config["dropout"])
                                  for size in sizes[:-1])
        self.head = nn.Sequential(nn.LayerNorm(sizes[-1]), nn.Linear(sizes[-1], config["vocab_size"]))

    def output_lengths(self, input_lengths: torch.Tensor) -> torch.Tensor:
        return self.conv.output_lengths(input_lengths // self.settings["hop_length"] + 1)

    def spec_augment(self, features: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """SpecAugment while training: random Mel bands and time spans set to the train mean (zero)."""
        c = self.settings
        _, n_mels, total = features.shape
        time_mask = span_mask(frames, total, c["mask_time_prob"], c["mask_time_length"])
        mel_mask = span_mask(torch.full_like(frames, n_mels), n_mels, c["mask_feature_prob"],
                             c["mask_feature_length"])
        return features.masked_fill(time_mask[:, None, :] | mel_mask[:, :, None], 0.0)

    def forward(self, input_values: torch.Tensor, input_lengths: torch.Tensor,
                labels: torch.Tensor | None = None) -> dict:
        augment = self.training and self.augment
        if augment and self.settings.get("speed_perturb", 0.0) > 0:
            input_values, input_lengths = perturb_speed(input_values, input_lengths, self.settings["speed_perturb"])
        features, frames = self.features(input_values, input_lengths)
        if augment and self.settings["spec_augment"]:
            features = self.spec_augment(features, frames)
        x, lengths = self.conv(features, frames)
        if self.pitch is not None:
            stride = math.prod(stride[1] for _, stride, _ in self.conv.specs)
            pitch = self.pitch(input_values, input_lengths)[..., ::stride][..., : x.shape[1]]
            pitch = pitch.transpose(1, 2).to(x.dtype)
            x = torch.cat([x, self.pitch_projection(pitch)], dim=-1)
        for rnn in self.rnns:
            if self.gradient_checkpointing and self.training:
                # Non-reentrant: works with frozen inputs and never backpropagates through a graph twice.
                x = checkpoint(rnn, x, lengths, use_reentrant=False)
            else:
                x = rnn(x, lengths)
        logits = self.head(x)
        padding = torch.arange(logits.shape[1], device=logits.device)[None, :] >= lengths[:, None]
        blank_row = torch.full((logits.shape[-1],), -BLANK_FAVOUR, device=logits.device, dtype=logits.dtype)
        blank_row[self.settings["blank_id"]] = 0.0
        logits = torch.where(padding[..., None], blank_row, logits)
        output = {"logits": logits}
        if labels is not None:
            output["loss"] = self.ctc_loss(logits, lengths, labels)
        return output

    def ctc_loss(self, logits: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean CTC loss in float32 (fp16 CTC overflows); impossible alignments count zero, not inf."""
        log_probs = logits.float().log_softmax(dim=-1).transpose(0, 1)
        keep = labels != -100  # the collator's label padding
        return F.ctc_loss(log_probs, labels[keep], lengths, keep.sum(dim=1), blank=self.settings["blank_id"],
                          reduction="mean", zero_infinity=True)


def pad_waveforms(waveforms: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch, longest) float32 zero-padded samples and each clip's length in samples."""
    lengths = torch.tensor([len(w) for w in waveforms], dtype=torch.long)
    batch = torch.zeros(len(waveforms), int(lengths.max()), dtype=torch.float32)
    for row, wave in enumerate(waveforms):
        batch[row, : len(wave)] = torch.tensor(np.asarray(wave), dtype=torch.float32)
    return batch, lengths


def ctc_greedy_text(ids: np.ndarray, tokens: dict[int, str], blank_id: int) -> str:
    """Best path: merge repeats, drop blanks (and negative ids, the Trainer's padding); `|` is a space."""
    ids = np.asarray(ids)
    ids = np.where(ids < 0, blank_id, ids)
    keep = np.ones(len(ids), dtype=bool)
    keep[1:] = ids[1:] != ids[:-1]
    chars = [tokens[int(i)] for i in ids[keep] if i != blank_id]
    text = "".join("\ufffd" if c == "[UNK]" else " " if c == "|" else c for c in chars)
    return unicodedata.normalize("NFC", " ".join(text.split()))


# Copied from train_wav2vec2.lm_packages_missing
def lm_packages_missing() -> str | None:
    """None when pyctcdecode and kenlm import; else what to install, for the one line that says why
    decoding is greedy."""
    missing = [name for name in ("pyctcdecode", "kenlm") if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    return (f"{' and '.join(missing)} not installed, so decoding is greedy (no language model); "
            "to decode with it: pip install --no-deps -r requirements-lm.txt (kenlm needs a C++ compiler: "
            "see the README)")


def load_lm_decoder(folder: Path) -> tuple:
    """(pyctcdecode decoder of the folder's alphabet.json and language_model/, None) or (None, the reason
    there is none). Imported here, not at the top: the model and greedy decoding need neither package."""
    if not ((folder / "alphabet.json").is_file() and (folder / "language_model").is_dir()):
        return None, "the model was saved without a language model (no alphabet.json and language_model/)"
    missing = lm_packages_missing()
    if missing:
        return None, missing
    from pyctcdecode import BeamSearchDecoderCTC

    return BeamSearchDecoderCTC.load_from_dir(str(folder)), None


def load_model(folder) -> nn.Module:
    """The DeepSpeech2 saved in `folder` (config.json, vocab.json, model.safetensors), in eval mode, with
    model.lm_decoder when the folder holds a language model that can be loaded (else model.lm_note says
    why not). A folder saved with a lexicon.json (an older decoder) loads too; it decodes greedily."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    model = DeepSpeech2(config, vocab)
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    model.lm_decoder, model.lm_note = load_lm_decoder(folder)
    return model.eval()


@torch.no_grad()
def log_probs(model: nn.Module, waveforms: list, batch_size: int = 16) -> list[np.ndarray]:
    """Each clip's (output frames x vocabulary) float32 log-probabilities, in the given order; clips go in
    batches of similar length, and each is trimmed to its own frames."""
    device = next(model.parameters()).device
    order = sorted(range(len(waveforms)), key=lambda i: len(waveforms[i]))
    scores: list = [None] * len(waveforms)
    for start in range(0, len(order), batch_size):
        chosen = order[start: start + batch_size]
        values, lengths = pad_waveforms([waveforms[i] for i in chosen])
        logits = model(values.to(device), lengths.to(device))["logits"].float()
        frames = model.output_lengths(lengths).tolist()
        for i, row, n in zip(chosen, logits.log_softmax(dim=-1).cpu().numpy(), frames):
            scores[i] = row[:n]
    return scores


def transcribe(model: nn.Module, waveforms: list, batch_size: int = 16, decoder: str | None = None,
               beam_width: int | None = None) -> list[str]:
    """Transcripts of 16 kHz mono float32 clips; order kept. decoder: "lm" (pyctcdecode beam search with the
    model's word language model, `beam_width` beams: by default as many as its trainer scored the test split
    with, config.json "lm_beam_width", else 64) or "greedy" (best path); default: lm when the model has one,
    else greedy."""
    if decoder is None:
        decoder = "lm" if model.lm_decoder is not None else "greedy"
    elif decoder == "lm" and model.lm_decoder is None:
        raise ValueError(f"decoder 'lm' needs the model's language model: {model.lm_note}")
    elif decoder not in ("lm", "greedy"):
        raise ValueError(f"decoder {decoder!r}: give 'lm' or 'greedy'")
    scores = log_probs(model, waveforms, batch_size)
    if decoder == "greedy":
        return [ctc_greedy_text(frames.argmax(axis=-1), model.tokens, model.settings["blank_id"]) for frames in scores]
    beams = beam_width or model.settings.get("lm_beam_width", 64)
    return [unicodedata.normalize("NFC", model.lm_decoder.decode(frames, beam_width=beams)) for frames in scores]
