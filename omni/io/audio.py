"""Audio I/O and features in plain torch.

PyPI torchaudio does not import on CPU torch (DESIGN.md §8), so files are read and written with
soundfile and resampling / mel spectrograms are computed here with torch ops.

Input rules (documented in docs/tokenizers.md):
- any format libsndfile reads (WAV, FLAC, OGG, raw-less containers); 8/16/24/32-bit integer and
  float samples are all converted to float32 in [-1, 1];
- multi-channel audio is mixed down to mono by averaging the channels;
- any sample rate is resampled to the requested one with a windowed-sinc polyphase filter;
- empty, unreadable or non-audio files and over-long files raise :class:`AudioError`.
"""
from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F

Tensor = torch.Tensor

# One hour at most per file: longer inputs are almost certainly a mistake (and would not fit memory
# comfortably as float32 at 24 kHz on small machines); split them first.
MAX_SECONDS = 3600.0


class AudioError(ValueError):
    """The file cannot be used as audio; the message says why and what to do."""


def load_audio(path: str | Path, sample_rate: int, max_seconds: float = MAX_SECONDS) -> Tensor:
    """Read an audio file as mono float32 at ``sample_rate``.

    Returns ``[1, samples]``. Stereo/multi-channel files are averaged to mono, integer formats are
    scaled to [-1, 1], other sample rates are resampled. Raises :class:`AudioError` for missing,
    empty, corrupt or non-audio files and for files longer than ``max_seconds``.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such audio file")
    try:
        info = sf.info(str(path))
    except Exception as e:  # libsndfile raises its own error types for every unreadable case
        raise AudioError(f"{path}: not a readable audio file ({e}); convert it to WAV or FLAC") from e
    if info.frames == 0:
        raise AudioError(f"{path}: the file holds no samples")
    if info.frames / info.samplerate > max_seconds:
        raise AudioError(
            f"{path}: {info.frames / info.samplerate:.0f} s is longer than the {max_seconds:.0f} s limit; split it first"
        )
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # [samples, channels]
    except Exception as e:
        raise AudioError(f"{path}: corrupt audio data ({e})") from e
    wav = torch.from_numpy(np.ascontiguousarray(data.T)).mean(0, keepdim=True)
    check_finite(wav, str(path))
    return resample(wav, sr, sample_rate)


def check_finite(wav: Tensor, what: str = "the audio") -> None:
    """Raise :class:`AudioError` if ``wav`` holds a NaN or infinite sample (one such sample turns
    every frame a causal codec or VAD computes after it into NaN); ``what`` names the input."""
    if not bool(torch.isfinite(wav).all()):
        raise AudioError(f"{what}: holds NaN or infinite samples; audio must be finite numbers (repair or drop it)")


def save_audio(path: str | Path, wav: Tensor, sample_rate: int) -> None:
    """Write ``wav`` [1, samples] or [samples] (float in [-1, 1]) as 16-bit PCM WAV."""
    wav = wav.detach().float().cpu()
    if wav.dim() == 2:
        if wav.shape[0] != 1:
            raise AudioError(f"save_audio writes mono audio: expected [1, samples], got {list(wav.shape)}")
        wav = wav[0]
    elif wav.dim() != 1:
        raise AudioError(f"save_audio expects [1, samples] or [samples], got {list(wav.shape)}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wav.clamp(-1, 1).numpy(), sample_rate, subtype="PCM_16")


@lru_cache(maxsize=16)
def _resample_kernel(orig: int, new: int, zeros: int = 24, rolloff: float = 0.945) -> tuple[Tensor, int]:
    """Polyphase windowed-sinc filters: ``[new, 1, width]`` and the left padding they need.

    ``orig``/``new`` are the rates divided by their gcd. Phase j of output block q sits at input
    position ``q*orig + j*orig/new``; its taps cover ``zeros`` zero crossings of the low-pass on
    each side (cut-off ``rolloff`` x the lower Nyquist frequency), weighted by a Hann window.
    """
    cutoff = min(orig, new) * rolloff  # in units of the orig grid, per orig sample: cutoff / orig
    half = math.ceil(zeros * orig / cutoff)
    idx = torch.arange(-half, half + orig, dtype=torch.float64)  # input offsets relative to q*orig
    phase = torch.arange(new, dtype=torch.float64)[:, None] * orig / new
    t = (idx[None, :] - phase) * cutoff / orig  # in units of the low-pass period
    window = torch.cos(t / zeros * math.pi / 2).clamp(min=0) ** 2
    window = torch.where(t.abs() <= zeros, window, torch.zeros_like(window))
    kernel = torch.special.sinc(t) * window * cutoff / orig
    return kernel.float()[:, None, :], half


def resample(wav: Tensor, orig_sr: int, new_sr: int) -> Tensor:
    """Resample ``wav`` [..., samples] from ``orig_sr`` to ``new_sr`` Hz (band-limited sinc).

    Output length is ``ceil(samples * new_sr / orig_sr)``.
    """
    if orig_sr <= 0 or new_sr <= 0:
        raise AudioError(f"sample rates must be positive, got {orig_sr} -> {new_sr}")
    if orig_sr == new_sr:
        return wav
    g = math.gcd(orig_sr, new_sr)
    orig, new = orig_sr // g, new_sr // g
    kernel, half = _resample_kernel(orig, new)
    shape = wav.shape
    x = wav.reshape(-1, 1, shape[-1]).float()
    n = shape[-1]
    out_len = math.ceil(n * new / orig)
    blocks = math.ceil(out_len / new)
    width = kernel.shape[-1]
    right = max(0, (blocks - 1) * orig + width - half - n)
    x = F.pad(x, (half, right))
    y = F.conv1d(x, kernel.to(x.device), stride=orig)  # [N, new, blocks]
    y = y[..., :blocks].transpose(1, 2).reshape(x.shape[0], -1)[:, :out_len]
    return y.reshape(*shape[:-1], out_len)


@lru_cache(maxsize=32)
def mel_filterbank(n_fft: int, n_mels: int, sample_rate: int, f_min: float = 0.0, f_max: float | None = None) -> Tensor:
    """Triangular HTK-mel filters ``[n_mels, n_fft // 2 + 1]`` (area not normalised)."""
    f_max = f_max or sample_rate / 2

    def hz_to_mel(f: Tensor) -> Tensor:
        return 2595.0 * torch.log10(1.0 + f / 700.0)

    def mel_to_hz(m: Tensor) -> Tensor:
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    mels = torch.linspace(hz_to_mel(torch.tensor(f_min)), hz_to_mel(torch.tensor(f_max)), n_mels + 2, dtype=torch.float64)
    hz = mel_to_hz(mels)
    lower, centre, upper = hz[:-2, None], hz[1:-1, None], hz[2:, None]
    up = (freqs[None] - lower) / (centre - lower)
    down = (upper - freqs[None]) / (upper - centre)
    return torch.clamp(torch.minimum(up, down), min=0).float()


def mel_spectrogram(
    wav: Tensor,
    sample_rate: int,
    n_fft: int = 1024,
    hop_length: int | None = None,
    n_mels: int = 80,
    log: bool = True,
    eps: float = 1e-5,
) -> Tensor:
    """Magnitude mel spectrogram of ``wav`` [..., samples] -> ``[..., n_mels, frames]``.

    Hann window, centred frames, ``hop_length`` defaults to ``n_fft // 4``; ``log`` gives
    ``log(max(mel, eps))``.
    """
    hop_length = hop_length or n_fft // 4
    shape = wav.shape
    x = wav.reshape(-1, shape[-1])
    window = torch.hann_window(n_fft, device=wav.device, dtype=x.dtype)
    spec = torch.stft(x, n_fft, hop_length, window=window, center=True, pad_mode="reflect" if shape[-1] > n_fft // 2 else "constant", return_complex=True).abs()
    fb = mel_filterbank(n_fft, n_mels, sample_rate).to(device=wav.device, dtype=spec.dtype)
    mel = fb @ spec
    if log:
        mel = torch.log(mel + eps)
    return mel.reshape(*shape[:-1], n_mels, mel.shape[-1])
