"""Streaming speech codec: causal STFT + conv encoder, residual FSQ (no learned codebook), causal conv
decoder with an inverse-STFT head.

    wav [B, 1, samples] --STFT log magnitude--> [B, bins, samples/stft_hop] --strided convs-->
        latents [B, D, frames] --residual FSQ--> codes [B, K, frames]
    codes --sum of the levels' projected values--> [B, D, frames] --upsampling convs-->
        (log magnitude, phase) [B, 2*bins, samples/stft_hop] --inverse STFT--> wav [B, 1, frames * hop]

Every learned layer runs at the STFT frame rate (100 Hz) or below, wide. A first version read and
wrote the waveform through narrow convs at 16 kHz (SEANet style); at the same 400 CPU steps it gave
real-speech mel distance 1.48-1.56 against 1.41 for this one (docs/tokenizers.md).

Every convolution is causal: it pads on the left only, so output t depends on inputs <= t. In
streaming mode (``with codec.streaming(B):``) each conv keeps the last ``(kernel-1)*dilation + 1 -
stride`` inputs of the previous call as its state instead of zeros; the convolution of
``[state, new input]`` is then the same arithmetic on the same numbers as the offline convolution,
so chunked encode/decode equals offline bit for bit (tests/test_codec.py checks it).

Upsampling in the decoder is a causal conv that emits ``stride`` times more channels, reshaped into
time ("sub-pixel" upsampling). It is as expressive as a transposed conv of kernel ``k*stride`` but
needs no overlap-add state, which keeps streaming exactness a property of one primitive. The STFT
is a strided CausalConv with fixed DFT weights and the inverse STFT's overlap-add a CausalUpsample
with fixed weights, so they stream exactly for the same reason.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from omni.config import ConfigError, register_section
from omni.nn.causal import CausalConv, CausalUpsample
from omni.nn.fsq import ResidualFSQ, fsq_levels
from omni.streaming import StreamingModule, StreamingState
from omni.tokenizers.base import Tokenizer, load_weights_and_config, register_tokenizer, save_weights_and_config

Tensor = torch.Tensor

# A trained codec produces subnormal floats, which take a slow path in CPU kernels (its training step
# was 4.7x slower with them); flushing them to zero changes nothing above 1e-38. Set here too, not only
# in the Trainer, so inference (sessions, chat, eval) gets it.
torch.set_flush_denormal(True)


@register_section("codec")
@dataclass
class CodecConfig:
    """Shape of the speech codec and how it is trained (configs/codec*.yaml)."""

    sample_rate: int = 16_000
    # STFT frames of this hop (window 4 * stft_hop): the encoder reads their log magnitudes, the
    # decoder predicts log magnitude and phase and a fixed inverse STFT makes the waveform (Vocos's
    # head). 160 samples = 10 ms at 16 kHz.
    stft_hop: int = 160
    strides: list[int] = field(default_factory=lambda: [2, 2, 2])  # frame hop = stft_hop * product -> 12.5 Hz
    channels: int = 128  # width at the STFT frame rate; doubles at every downsampling step
    max_channels: int = 512
    dim: int = 256  # latent dimension fed to the quantiser
    num_codebooks: int = 8
    codebook_size: int = 1024  # codes per level; residual FSQ levels derived by fsq_levels()
    # Probability that a training example uses only the first n ~ U{1..K} codebooks, so that
    # decoding with fewer codebooks (lower bitrate) still works.
    quantizer_dropout: float = 0.5
    # Training data: a folder written by data/build_speech.py; crops of segment_seconds.
    data_path: str = ".cache/data/speech"
    segment_seconds: float = 1.0
    mel_n_ffts: list[int] = field(default_factory=lambda: [256, 512, 1024, 2048])
    mel_bins: int = 64
    waveform_weight: float = 0.1
    # L1 between the decoder's log magnitudes and the input's STFT, frame for frame.
    spectral_weight: float = 1.0
    # White noise added to every training crop (input and target) at an RMS level drawn uniformly
    # from this range in dBFS; [] turns it off. espeak-ng's pauses are exact zeros whose log-mel
    # (log 1e-5) the loss would otherwise chase with a third of its weight, and real recordings,
    # which the codec is evaluated on, always have a noise floor.
    noise_db: list[float] = field(default_factory=lambda: [-70.0, -45.0])

    @property
    def hop_length(self) -> int:
        return self.stft_hop * math.prod(self.strides)

    def validate(self) -> None:
        if self.stft_hop < 1:
            raise ConfigError(f"codec.stft_hop must be >= 1 sample, got {self.stft_hop}")
        if self.sample_rate / self.hop_length > 25:
            raise ConfigError(f"codec frame rate {self.sample_rate / self.hop_length} Hz exceeds 25 Hz; use larger strides")
        if self.num_codebooks < 1 or self.codebook_size < 2:
            raise ConfigError("codec.num_codebooks must be >= 1 and codec.codebook_size >= 2")
        fsq_levels(self.codebook_size)  # raises if it does not factor into small levels
        if self.noise_db and (len(self.noise_db) != 2 or self.noise_db[0] > self.noise_db[1]):
            raise ConfigError(f"codec.noise_db must be [low, high] in dBFS (or []), got {self.noise_db}")
        if not 0 <= self.quantizer_dropout <= 1:
            raise ConfigError(f"codec.quantizer_dropout must be in [0, 1], got {self.quantizer_dropout}")


class ResidualUnit(nn.Module):
    """x + conv1x1(elu(dilated causal conv(elu(x)))): [B, C, T] -> [B, C, T]."""

    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.conv1 = CausalConv(channels, channels // 2, 3, dilation=dilation)
        self.conv2 = CausalConv(channels // 2, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.elu(self.conv1(F.elu(x))))


def _init_signal_preserving(module: nn.Module) -> None:
    """He-normal conv weights, zero biases, zero-initialised residual branches.

    PyTorch's default conv init shrinks the variance about 3x per layer while its biases do not
    shrink, so after the encoder's ~40 convs the latent was a per-channel constant (the biases) with
    a speech-dependent part ~100x smaller, plus a large transient on the first frame of every clip
    (zero padding). Every frame then quantised to the same code and the decoder learnt the average
    spectrum. With this init the main path keeps the signal's scale (unit-gain fan-in init) and
    each residual unit starts as the identity.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv1d) and m.weight.requires_grad:  # not the fixed (i)STFT bases
            nn.init.kaiming_normal_(m.weight, nonlinearity="linear")
            nn.init.zeros_(m.bias)
        if isinstance(m, ResidualUnit):
            nn.init.zeros_(m.conv2.conv.weight)


def _widths(cfg: CodecConfig) -> list[int]:
    return [min(cfg.channels * 2**i, cfg.max_channels) for i in range(len(cfg.strides) + 1)]


def _hann(n: int) -> Tensor:
    return torch.hann_window(n, periodic=True, dtype=torch.float64)


def stft_bins(hop: int) -> int:
    """Frequency bins of the codec's STFT: its window is 4 hops, so 2 * hop + 1 bins."""
    return 4 * hop // 2 + 1


class STFTLogMagnitude(nn.Module):
    """wav [B, 1, T] -> log magnitude [B, n_fft/2 + 1, T / hop] of causal Hann-windowed frames.

    Frame t covers samples ``[(t+1)*hop - n_fft, (t+1)*hop)``: a strided causal conv whose fixed
    weights are the windowed DFT basis (so streaming exactness is CausalConv's).
    """

    def __init__(self, hop: int) -> None:
        super().__init__()
        n = 4 * hop
        f = torch.arange(stft_bins(hop), dtype=torch.float64)[:, None]
        angle = 2 * math.pi * f * torch.arange(n, dtype=torch.float64) / n
        basis = torch.cat([torch.cos(angle), -torch.sin(angle)]) * _hann(n)  # [2 * bins, n]
        self.dft = CausalConv(1, basis.shape[0], n, stride=hop)
        self.dft.conv.weight.data.copy_(basis[:, None])
        self.dft.conv.bias.data.zero_()
        self.dft.requires_grad_(False)

    def forward(self, wav: Tensor) -> Tensor:
        re, im = self.dft(wav).chunk(2, dim=1)
        return 0.5 * torch.log(re.square() + im.square() + 1e-6)


class _FrameCounter(StreamingState):
    """Index of the next STFT frame of each stream, ``[B]`` long."""

    def __init__(self, batch_size: int, device: torch.device) -> None:
        self.next = torch.zeros(batch_size, dtype=torch.long, device=device)

    def reset(self, mask: Optional[Tensor] = None) -> None:
        if mask is None:
            self.next.zero_()
        else:
            self.next[mask.to(self.next.device)] = 0


class InverseSTFT(StreamingModule):
    """[B, 2 * bins, frames] (log magnitude, phase) -> wav [B, 1, frames * hop] by overlap-add.

    Frame t's windowed inverse DFT lands on samples ``[t*hop, t*hop + n_fft)``; the samples of hop t
    are complete once frame t is known (the three earlier frames' tails are a CausalConv's state), so
    the overlap-add is a causal sub-pixel upsampling with fixed weights. Hann synthesis at hop n/4
    sums to 1.5, divided out, so the STFT above followed by this returns the input delayed by
    ``3 * hop`` samples (tests/test_codec.py).

    The predicted phase is taken relative to the phase a steady sinusoid at bin k's centre has in
    frame t, ``pi/2 * (k*t mod 4)`` (hop = n_fft/4): a constant predicted phase then overlap-adds
    coherently, so the decoder starts as a channel vocoder instead of cancelling itself, and has
    only corrections to learn. The offset is a multiple of pi/2, applied exactly as a sign/swap,
    with the frame index carried between streaming calls.
    """

    def __init__(self, hop: int) -> None:
        StreamingModule.__init__(self)
        n = 4 * hop
        bins = stft_bins(hop)
        f = torch.arange(bins, dtype=torch.float64)
        scale = torch.full((bins,), 2.0, dtype=torch.float64)
        scale[0] = scale[-1] = 1.0
        angle = 2 * math.pi * torch.arange(n, dtype=torch.float64)[:, None] * f / n  # [n, bins]
        basis = torch.cat([torch.cos(angle) * scale, -torch.sin(angle) * scale], 1) / n
        basis = basis * (_hann(n) / 1.5)[:, None]  # [n, 2 * bins]: sample n of the frame's segment
        # Sub-pixel layout (CausalUpsample): output sample j of hop t reads channel j at conv tap
        # 3 - m, which sees frame t - m, whose segment contributes its samples m*hop + j.
        weight = basis.reshape(4, hop, 2 * bins).permute(1, 2, 0).flip(-1)  # [hop, 2 * bins, 4]
        self.overlap_add = CausalUpsample(2 * bins, 1, hop, kernel=4)
        self.overlap_add.conv.conv.weight.data.copy_(weight)
        self.overlap_add.conv.conv.bias.data.zero_()
        self.overlap_add.requires_grad_(False)
        self.register_buffer("bin_index", torch.arange(bins)[:, None], persistent=False)

    def _init_streaming_state(self, batch_size: int, **options: Any) -> _FrameCounter:
        return _FrameCounter(batch_size, self.bin_index.device)

    def forward(self, spec: Tensor) -> Tensor:
        log_mag, phase = spec.chunk(2, dim=1)
        frames = torch.arange(spec.shape[2], device=spec.device)[None]  # [1, T]
        state = self._streaming_state
        if state is not None:
            frames = frames + state.next[:, None]
            state.next += spec.shape[2]
        quarter = self.bin_index * frames[:, None, :] % 4  # [B or 1, bins, T]
        mag = torch.exp(log_mag.clamp(max=7.0))  # |X| <= ~1100; full-scale speech stays below ~300
        re, im = mag * torch.cos(phase), mag * torch.sin(phase)
        # rotate by i**quarter: 0 -> (re, im), 1 -> (-im, re), 2 -> (-re, -im), 3 -> (im, -re)
        swap = quarter % 2 == 1
        re, im = torch.where(swap, -im, re), torch.where(swap, re, im)
        flip = (quarter == 2) | (quarter == 3)
        re, im = torch.where(flip, -re, re), torch.where(flip, -im, im)
        return self.overlap_add(torch.cat([re, im], 1))


class CodecEncoder(nn.Module):
    """wav [B, 1, T] -> latents [B, dim, T / hop]."""

    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        w = _widths(cfg)
        self.stft = STFTLogMagnitude(cfg.stft_hop)
        layers: list[nn.Module] = [CausalConv(stft_bins(cfg.stft_hop), w[0], 3)]
        for i, s in enumerate(cfg.strides):
            layers += [ResidualUnit(w[i], 1), ResidualUnit(w[i], 3), ResidualUnit(w[i], 9), nn.ELU()]
            layers += [CausalConv(w[i], w[i + 1], 2 * s, stride=s)]
        layers += [nn.ELU(), CausalConv(w[-1], cfg.dim, 3)]
        self.net = nn.Sequential(*layers)

    def forward(self, wav: Tensor) -> Tensor:
        return self.net(self.stft(wav))


class CodecDecoder(StreamingModule):
    """latents [B, dim, frames] -> wav [B, 1, frames * hop]. A streaming module (its convs and
    inverse STFT hold the state), so ``decoder.reset_streaming(rows)`` restarts chosen rows."""

    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        w = _widths(cfg)
        layers: list[nn.Module] = [CausalConv(cfg.dim, w[-1], 7)]
        for i, s in reversed(list(enumerate(cfg.strides))):
            layers += [nn.ELU(), CausalUpsample(w[i + 1], w[i], s)]
            layers += [ResidualUnit(w[i], 1), ResidualUnit(w[i], 3), ResidualUnit(w[i], 9)]
        layers += [nn.ELU(), CausalConv(w[0], 2 * stft_bins(cfg.stft_hop), 3)]
        self.net = nn.Sequential(*layers)  # -> (log magnitude, phase) [B, 2 * bins, T * stft_hop-rate]
        self.head = InverseSTFT(cfg.stft_hop)

    def forward(self, z: Tensor) -> Tensor:
        return self.head(self.net(z))


class CodecOutput(NamedTuple):
    """A training pass of :class:`SpeechCodec`; CodecTask.loss reads recon, spectrum and input_log_mag
    (the input STFT is computed once, for the encoder and the spectral target alike)."""

    recon: Tensor  # [B, 1, S]
    codes: Tensor  # [B, K, S / hop]
    # The decoder's (log magnitude, phase) before the inverse STFT, [B, 2 * bins, S / stft_hop];
    # its frame t describes samples [t*stft_hop, t*stft_hop + 4*stft_hop).
    spectrum: Tensor
    # The encoder's causal STFT log magnitudes of the input, [B, bins, S / stft_hop]; frame t covers
    # samples [(t+1)*stft_hop - 4*stft_hop, (t+1)*stft_hop).
    input_log_mag: Tensor


@register_tokenizer
class SpeechCodec(Tokenizer, StreamingModule):
    """The speech tokenizer: ``encode(wav [B,1,S]) -> codes [B,K,S/hop]``, ``decode`` the inverse.

    Inside ``with codec.streaming(B):`` ``encode`` takes chunks whose length is a multiple of
    ``hop_length`` and returns the codes of the frames they complete; ``decode`` takes ``[B, K, n]``
    and returns ``n * hop`` samples; both equal the offline result exactly.
    """

    modality = "audio"

    def __init__(self, cfg: CodecConfig) -> None:
        StreamingModule.__init__(self)
        cfg.validate()
        self.cfg = cfg
        self.encoder = CodecEncoder(cfg)
        self.quantizer = ResidualFSQ(cfg.dim, cfg.num_codebooks, cfg.codebook_size)
        self.decoder = CodecDecoder(cfg)
        for module in (self.encoder, self.decoder):
            _init_signal_preserving(module)
        with torch.no_grad():  # start quiet (log magnitudes ~ -3), phases near the coherent default
            head = self.decoder.net[-1].conv
            head.weight.mul_(0.1)
            head.bias[: head.out_channels // 2].fill_(-3.0)

    # ---- metadata -------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.cfg.codebook_size

    @property
    def hop_length(self) -> int:
        return self.cfg.hop_length

    @property
    def sample_rate(self) -> int:
        return self.cfg.sample_rate

    @property
    def frame_rate(self) -> float:
        return self.cfg.sample_rate / self.cfg.hop_length

    @property
    def metadata(self) -> dict[str, Any]:
        c = self.cfg
        bitrate = self.frame_rate * c.num_codebooks * math.log2(c.codebook_size)
        return {
            **super().metadata,
            "sample_rate": c.sample_rate,
            "frame_rate": self.frame_rate,
            "hop_length": c.hop_length,
            "num_codebooks": c.num_codebooks,
            "codebook_size": c.codebook_size,
            "bitrate": bitrate,
        }

    # ---- tokenizer interface ---------------------------------------------------------------
    def _check_wav(self, wav: Tensor) -> None:
        if wav.dim() != 3 or wav.shape[1] != 1:
            raise ValueError(f"codec.encode expects mono audio [B, 1, samples], got {list(wav.shape)}")
        if wav.shape[-1] % self.hop_length:
            raise ValueError(
                f"codec.encode needs a multiple of hop_length={self.hop_length} samples, got {wav.shape[-1]}; "
                "pad with codec.pad_to_hop(wav)"
            )

    def pad_to_hop(self, wav: Tensor) -> Tensor:
        """Right-pad ``wav`` [..., samples] with zeros to a whole number of frames."""
        return F.pad(wav, (0, -wav.shape[-1] % self.hop_length))

    @torch.no_grad()
    def encode(self, wav: Tensor, num_codebooks: Optional[int] = None) -> Tensor:
        """wav [B, 1, samples] float32 at ``sample_rate`` -> codes [B, K, samples/hop] long."""
        self._check_wav(wav)
        codes = self.quantizer.encode(self.encoder(wav.float()))
        return codes[:, :num_codebooks] if num_codebooks else codes

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """codes [B, k, frames] (k <= K; fewer = lower bitrate) -> wav [B, 1, frames * hop]."""
        if codes.dim() != 3 or not 1 <= codes.shape[1] <= self.cfg.num_codebooks:
            raise ValueError(f"codec.decode expects codes [B, k<={self.cfg.num_codebooks}, frames], got {list(codes.shape)}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.cfg.codebook_size):
            raise ValueError(f"codec.decode: code ids must lie in [0, {self.cfg.codebook_size})")
        return self.decoder(self.quantizer.decode(codes.long()))

    def forward(self, wav: Tensor, n_q: Optional[Tensor] = None) -> "CodecOutput":
        """Training pass over wav [B, 1, S]; ``n_q`` as in :meth:`ResidualFSQ.forward`."""
        input_log_mag = self.encoder.stft(wav)
        q, codes = self.quantizer(self.encoder.net(input_log_mag), n_q)
        spectrum = self.decoder.net(q)
        return CodecOutput(self.decoder.head(spectrum), codes, spectrum, input_log_mag)

    # ---- save / load -----------------------------------------------------------------------
    def _save(self, folder: Path) -> dict[str, Any]:
        return save_weights_and_config(self, self.cfg, folder)

    @classmethod
    def _load(cls, folder: Path, state: dict[str, Any]) -> "SpeechCodec":
        return load_weights_and_config(cls, CodecConfig, "codec", folder, state)
