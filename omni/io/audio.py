"""Audio I/O and features.

PyPI torchaudio does not import on CPU torch (DESIGN.md §8), so files are read and written with
soundfile (libsndfile), resampled with soxr (libsoxr's bounded-memory polyphase resampler) and mel
spectrograms are computed here with torch ops.

Input rules (docs/data.md):
- any container libsndfile reads: WAV/AIFF/CAF, FLAC, OGG Vorbis/Opus, MP3; 8/16/24/32-bit integer
  (signed or unsigned), 32/64-bit float, mu-law/A-law samples all become float32 in [-1, 1];
- multi-channel audio is mixed down to mono by averaging the channels (what one speaker plays);
- any sample rate from :data:`MIN_RATE` to :data:`MAX_RATE` Hz is resampled to the requested one;
- memory follows the samples really decoded, never the header: the file is read in bounded blocks,
  mixed to mono block by block, and reading stops at ``max_seconds``;
- missing, empty, unreadable, non-audio, non-finite or over-long files raise :class:`AudioError`.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

Tensor = torch.Tensor

# One hour at most per file: longer inputs are almost certainly a mistake (and would not fit memory
# comfortably as float32 at 24 kHz on small machines); split them first.
MAX_SECONDS = 3600.0
# Sample rates real recordings use lie well inside this range (telephony 8 kHz .. studio 384 kHz).
MIN_RATE, MAX_RATE = 1_000, 1_000_000
# Samples (all channels) decoded per block: 4 MiB of float32, whatever the header claims.
BLOCK_SAMPLES = 1 << 20


class AudioError(ValueError):
    """The file cannot be used as audio; the message says why and what to do."""


def load_audio(path: str | Path, sample_rate: int, max_seconds: float = MAX_SECONDS) -> Tensor:
    """Read an audio file as mono float32 at ``sample_rate`` Hz.

    Returns ``[1, samples]``. Stereo/multi-channel files are averaged to mono, integer formats are
    scaled to [-1, 1], other sample rates are resampled (:func:`resample`). Raises
    :class:`AudioError` for missing, empty, corrupt or non-audio files, rates outside
    [``MIN_RATE``, ``MAX_RATE``], NaN/inf samples and files longer than ``max_seconds``.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such audio file")
    try:
        f = sf.SoundFile(str(path))
    except Exception as e:  # libsndfile raises its own error types for every unreadable case
        raise AudioError(f"{path}: not a readable audio file ({e}); convert it to WAV or FLAC") from e
    with f:
        sr, channels = int(f.samplerate), int(f.channels)
        if not MIN_RATE <= sr <= MAX_RATE:
            raise AudioError(f"{path}: the header's sample rate {sr} Hz is outside [{MIN_RATE}, {MAX_RATE}] Hz; "
                             "the file is corrupt or not a recording")
        if f.frames > max_seconds * sr:  # frames as the header says; the loop below checks what is real
            raise AudioError(f"{path}: {f.frames / sr:.0f} s is longer than the {max_seconds:.0f} s limit; split it first")
        limit, blocks, n = int(max_seconds * sr), [], 0
        while True:
            try:
                block = f.read(max(1, BLOCK_SAMPLES // channels), dtype="float32", always_2d=True)  # [frames, ch]
            except Exception as e:
                raise AudioError(f"{path}: corrupt audio data ({e})") from e
            if not len(block):
                break
            n += len(block)
            if n > limit:
                raise AudioError(f"{path}: longer than the {max_seconds:.0f} s limit; split it first")
            blocks.append(block.mean(1))
    if n == 0:
        raise AudioError(f"{path}: the file holds no samples")
    wav = torch.from_numpy(np.concatenate(blocks))[None]
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


def resample(wav: Tensor, orig_sr: int, new_sr: int) -> Tensor:
    """Resample ``wav`` [..., samples] from ``orig_sr`` to ``new_sr`` Hz with soxr (high quality).

    Any pair of rates works in memory proportional to the signal (libsoxr is a multi-stage polyphase
    resampler; unlike a single rational filter, 16001 -> 16000 Hz costs no more than 48000 -> 16000).
    Output length is ``ceil(samples * new_sr / orig_sr)``, on the input's device and dtype float32.
    Raises :class:`AudioError` for non-positive rates.
    """
    if orig_sr <= 0 or new_sr <= 0:
        raise AudioError(f"sample rates must be positive, got {orig_sr} -> {new_sr}")
    if orig_sr == new_sr:
        return wav
    shape, n = wav.shape, wav.shape[-1]
    out_len = -(-n * new_sr // orig_sr)
    x = wav.detach().reshape(-1, n).float().cpu().numpy().T  # [samples, channels]: soxr's layout
    try:
        y = soxr.resample(np.ascontiguousarray(x), orig_sr, new_sr, quality="HQ")
    except (ValueError, RuntimeError) as e:
        raise AudioError(f"cannot resample {orig_sr} -> {new_sr} Hz ({e})") from e
    y = torch.from_numpy(np.ascontiguousarray(y.reshape(-1, x.shape[1]).T))[:, :out_len]
    y = torch.nn.functional.pad(y, (0, out_len - y.shape[-1]))
    return y.reshape(*shape[:-1], out_len).to(wav.device)


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
