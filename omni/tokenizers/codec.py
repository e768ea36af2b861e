"""Streaming speech codec: causal conv encoder, residual FSQ (no learned codebook), causal conv decoder.

    wav [B, 1, samples] --encoder--> latents [B, D, frames] --residual FSQ--> codes [B, K, frames]
    codes --sum of the levels' projected values--> [B, D, frames] --decoder--> wav [B, 1, frames * hop]

Every convolution is causal: it pads on the left only, so output t depends on inputs <= t. In
streaming mode (``with codec.streaming(B):``) each conv keeps the last ``(kernel-1)*dilation + 1 -
stride`` inputs of the previous call as its state instead of zeros; the convolution of
``[state, new input]`` is then the same arithmetic on the same numbers as the offline convolution,
so chunked encode/decode equals offline bit for bit (tests/test_codec.py checks it).

Upsampling in the decoder is a causal conv that emits ``stride`` times more channels, reshaped into
time ("sub-pixel" upsampling). It is as expressive as a transposed conv of kernel ``k*stride`` but
needs no overlap-add state, which keeps streaming exactness a property of one primitive.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from omni.config import ConfigError, _coerce, _to_plain, register_section
from omni.streaming import StreamingModule, StreamingState
from omni.tokenizers.base import Tokenizer, register_tokenizer

Tensor = torch.Tensor


@register_section("codec")
@dataclass
class CodecConfig:
    """Shape of the speech codec and how it is trained (configs/codec*.yaml)."""

    sample_rate: int = 16_000
    strides: list[int] = field(default_factory=lambda: [4, 5, 8, 8])  # hop = product = 1280 -> 12.5 Hz
    channels: int = 32  # width of the first conv; doubles at every downsampling step
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

    @property
    def hop_length(self) -> int:
        return math.prod(self.strides)

    def validate(self) -> None:
        if self.sample_rate / self.hop_length > 25:
            raise ConfigError(f"codec frame rate {self.sample_rate / self.hop_length} Hz exceeds 25 Hz; use larger strides")
        if self.num_codebooks < 1 or self.codebook_size < 2:
            raise ConfigError("codec.num_codebooks must be >= 1 and codec.codebook_size >= 2")
        fsq_levels(self.codebook_size)  # raises if it does not factor into small levels
        if not 0 <= self.quantizer_dropout <= 1:
            raise ConfigError(f"codec.quantizer_dropout must be in [0, 1], got {self.quantizer_dropout}")


class _ConvState(StreamingState):
    """The trailing inputs of the previous call, ``[B, C, pad, ...]`` (time is dim 2)."""

    def __init__(self, previous: Tensor) -> None:
        self.previous = previous
        self.initial_len = previous.shape[2]

    def reset(self, mask: Optional[Tensor] = None) -> None:
        if mask is None:
            self.previous = self.previous.new_zeros(*self.previous.shape[:2], self.initial_len, *self.previous.shape[3:])
            return
        if self.previous.shape[2] != self.initial_len:
            raise RuntimeError(
                "cannot reset some streams while others are mid-way through a stride; "
                "reset all streams (mask=None) or feed whole strides"
            )
        self.previous[mask.to(self.previous.device)] = 0


class CausalConv(StreamingModule):
    """Causal convolution along dim 2 (time) of ``[B, C, T]`` (1-D) or ``[B, C, T, H, W]`` (3-D).

    Pads ``pad`` zeros on the left of time (default ``(kernel-1)*dilation + 1 - stride`` so that T
    inputs give T/stride outputs, output t seeing inputs up to (t+1)*stride-1) and ``spatial//2``
    on both sides of the spatial dims. Offline, T must be a multiple of ``stride`` (after ``pad``
    is accounted for). Streaming calls continue from the stored trailing inputs.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        stride: int = 1,
        dilation: int = 1,
        spatial: int = 0,
        pad: Optional[int] = None,
    ) -> None:
        super().__init__()
        self.stride = stride
        self.span = (kernel - 1) * dilation + 1  # inputs one output sees
        self.pad = self.span - stride if pad is None else pad
        if self.pad < 0:
            raise ValueError(f"CausalConv: kernel span {self.span} < stride {stride}")
        if spatial:
            self.conv: nn.Module = nn.Conv3d(
                in_channels, out_channels, (kernel, spatial, spatial), (stride, 1, 1),
                padding=(0, spatial // 2, spatial // 2), dilation=(dilation, 1, 1),
            )
        else:
            self.conv = nn.Conv1d(in_channels, out_channels, kernel, stride, dilation=dilation)

    def _init_streaming_state(self, batch_size: int, **options: Any) -> _ConvState:
        w = self.conv.weight
        return _ConvState(w.new_zeros(batch_size, w.shape[1], self.pad))

    def forward(self, x: Tensor) -> Tensor:
        state = self._streaming_state
        if state is None:
            if (x.shape[2] + self.pad - self.span) % self.stride:
                raise ValueError(f"CausalConv: {x.shape[2]} time steps do not fill whole strides of {self.stride}")
            return self.conv(F.pad(x, (0, 0) * (x.dim() - 3) + (self.pad, 0)))
        if state.previous.shape[3:] != x.shape[3:]:  # 3-D: spatial size known only at the first call
            state.previous = x.new_zeros(*x.shape[:2], state.previous.shape[2], *x.shape[3:])
        buf = torch.cat([state.previous, x], dim=2)
        n = (buf.shape[2] - self.span) // self.stride + 1 if buf.shape[2] >= self.span else 0
        state.previous = buf[:, :, n * self.stride:]
        if n == 0:
            return x.new_zeros(x.shape[0], self.conv.out_channels, 0, *x.shape[3:])
        return self.conv(buf[:, :, : (n - 1) * self.stride + self.span])


class CausalUpsample(nn.Module):
    """Sub-pixel upsampling in time: causal conv to ``out*stride`` channels, then fold into time.

    ``[B, C, T, ...] -> [B, out, T*stride, ...]``; output frame ``t*stride + j`` reads conv channel
    ``c*stride + j`` at step t, so it sees only inputs <= t.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, kernel: int = 3, spatial: int = 0) -> None:
        super().__init__()
        self.stride = stride
        self.out_channels = out_channels
        self.conv = CausalConv(in_channels, out_channels * stride, kernel, spatial=spatial)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)  # [B, out*s, T, ...]
        b, _, t, *rest = y.shape
        y = y.reshape(b, self.out_channels, self.stride, t, *rest).transpose(2, 3)
        return y.reshape(b, self.out_channels, t * self.stride, *rest)


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
        if isinstance(m, nn.Conv1d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="linear")
            nn.init.zeros_(m.bias)
        if isinstance(m, ResidualUnit):
            nn.init.zeros_(m.conv2.conv.weight)


def _widths(cfg: CodecConfig) -> list[int]:
    return [min(cfg.channels * 2**i, cfg.max_channels) for i in range(len(cfg.strides) + 1)]


class Encoder(nn.Module):
    """wav [B, 1, T] -> latents [B, dim, T / hop]."""

    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        w = _widths(cfg)
        layers: list[nn.Module] = [CausalConv(1, w[0], 7)]
        for i, s in enumerate(cfg.strides):
            layers += [ResidualUnit(w[i], 1), ResidualUnit(w[i], 3), ResidualUnit(w[i], 9), nn.ELU()]
            layers += [CausalConv(w[i], w[i + 1], 2 * s, stride=s)]
        layers += [nn.ELU(), CausalConv(w[-1], cfg.dim, 3)]
        self.net = nn.Sequential(*layers)

    def forward(self, wav: Tensor) -> Tensor:
        return self.net(wav)


class Decoder(nn.Module):
    """latents [B, dim, frames] -> wav [B, 1, frames * hop]."""

    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        w = _widths(cfg)
        layers: list[nn.Module] = [CausalConv(cfg.dim, w[-1], 7)]
        for i, s in reversed(list(enumerate(cfg.strides))):
            layers += [nn.ELU(), CausalUpsample(w[i + 1], w[i], s)]
            layers += [ResidualUnit(w[i], 1), ResidualUnit(w[i], 3), ResidualUnit(w[i], 9)]
        layers += [nn.ELU(), CausalConv(w[0], 1, 7)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


def fsq_levels(codebook_size: int) -> list[int]:
    """Split ``codebook_size`` into FSQ levels of ~4-8 values each (1024 -> [8, 8, 4, 4], 2048 ->
    [8, 8, 8, 4], 1000 -> [8, 5, 5, 5]): prime factors, largest first, each multiplied into the
    smallest group so far; about one dimension per log2(6) bits."""
    primes, n, p = [], codebook_size, 2
    while n > 1:
        while n % p == 0:
            primes.append(p)
            n //= p
        p += 1
    if not primes or max(primes) > 16:
        raise ConfigError(f"codec.codebook_size={codebook_size} must factor into primes <= 16 (FSQ levels); use e.g. 1024 or 1000")
    groups = [1] * max(1, round(math.log(codebook_size) / math.log(6)))
    for p in sorted(primes, reverse=True):
        groups[groups.index(min(groups))] *= p
    return sorted(groups, reverse=True)


class ResidualFSQ(nn.Module):
    """K finite-scalar-quantiser levels, each quantising the residual the previous ones left.

    Level i projects the residual ``[B, dim, T]`` to ``len(levels)`` scalars (1x1 conv), standardises
    them (batch statistics in training, running ones in eval), rounds each to one of ``levels[j]``
    values (omni.tokenizers.image.FSQ: sigmoid-bounded, straight-through gradient) and projects back.
    There is no learned codebook, so nothing can go dead whatever the batch size. The standardisation
    keeps the codes alive whatever the encoder's output scale (unnormalised, at lr 3e-3, it grew
    from 0.07 to 450 in 200 steps and every sigmoid saturated: one code per level).
    ``sigmoid(1.7 x)`` is close to the normal CDF, so standardised inputs fill the levels about
    uniformly. In eval the statistics are constants, so a frame's code never depends on the other
    frames of its batch or chunk (streaming stays exact).
    """

    def __init__(self, cfg: CodecConfig, momentum: float = 0.05) -> None:
        super().__init__()
        from omni.tokenizers.image import FSQ  # the one FSQ of the repo (lazy: image.py imports this module)

        self.fsq = FSQ(fsq_levels(cfg.codebook_size))
        self.momentum = momentum
        d, k = len(self.fsq.levels), cfg.num_codebooks
        self.proj_in = nn.ModuleList(nn.Conv1d(cfg.dim, d, 1) for _ in range(k))
        self.proj_out = nn.ModuleList(nn.Conv1d(d, cfg.dim, 1) for _ in range(k))
        self.register_buffer("mean", torch.zeros(k, d, 1))
        self.register_buffer("std", torch.ones(k, d, 1))
        self.register_buffer("initialized", torch.tensor(False))

    def _standardise(self, i: int, u: Tensor) -> Tensor:
        """u [B, d, T] of level i -> ``1.7 (u - mean) / std``: the batch's statistics in training, with
        their gradient (as in batch norm, so the encoder gains nothing by growing its scale: with
        detached statistics its output grew to std 1e7 in 200 steps), the running ones in eval."""
        if self.training:
            mean, std = u.mean((0, 2))[:, None], u.std((0, 2), correction=0)[:, None].clamp(min=1e-5)
            with torch.no_grad():
                m = 1.0 if not bool(self.initialized) else self.momentum  # first batch sets them
                self.mean[i].lerp_(mean, m)
                self.std[i].lerp_(std, m)
        else:
            mean, std = self.mean[i], self.std[i]
        return (u - mean) / std * 1.7

    def forward(self, x: Tensor, n_q: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """x [B, dim, T] -> (quantised [B, dim, T] with straight-through gradient, codes [B, K, T]).

        ``n_q`` [B] (training): example b's output sums only its first n_q[b] levels (quantiser
        dropout); the residual chain runs through every level, so later levels keep training.
        """
        residual, out, codes = x, torch.zeros_like(x), []
        for i, (p_in, p_out) in enumerate(zip(self.proj_in, self.proj_out)):
            values, c = self.fsq.quantize(self._standardise(i, p_in(residual)))
            q = p_out(values)
            residual = residual - q.detach()
            out = out + (q if n_q is None else q * (i < n_q).to(q.dtype)[:, None, None])
            codes.append(c)
        if self.training:
            self.initialized.fill_(True)
        return out, torch.stack(codes, 1)

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """x [B, dim, T] -> codes [B, K, T]. The residual subtracts the exact decoded value of each
        level (not the straight-through sum, which can differ in the last bit)."""
        residual, codes = x, []
        for i, p_in in enumerate(self.proj_in):
            c = self.fsq.quantize(self._standardise(i, p_in(residual)))[1]
            residual = residual - self._level(i, c)
            codes.append(c)
        return torch.stack(codes, 1)

    def _level(self, i: int, codes: Tensor) -> Tensor:
        """codes [B, T] of level i -> its contribution [B, dim, T]."""
        v = self.fsq.values(codes)
        # Dense row-major strides even when T == 1 (a [B, d, 1] tensor with odd strides counts as
        # "contiguous", and oneDNN then picks another conv kernel: different rounding, not exact).
        return self.proj_out[i](torch.empty(v.shape, dtype=v.dtype, device=v.device).copy_(v))

    def decode(self, codes: Tensor) -> Tensor:
        """codes [B, k <= K, T] -> [B, dim, T] (fewer codebooks = lower bitrate)."""
        return sum(self._level(i, codes[:, i]) for i in range(codes.shape[1]))


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
        self.encoder = Encoder(cfg)
        self.quantizer = ResidualFSQ(cfg)
        self.decoder = Decoder(cfg)
        for module in (self.encoder, self.decoder):
            _init_signal_preserving(module)
        with torch.no_grad():  # start the output near speech level (~0.1), not ~100x louder
            self.decoder.net[-1].conv.weight.mul_(0.01)

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

    def forward(self, wav: Tensor, n_q: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """Training pass: wav [B, 1, S] -> (reconstruction [B, 1, S], codes [B, K, S/hop])."""
        q, codes = self.quantizer(self.encoder(wav), n_q)
        return self.decoder(q), codes

    # ---- save / load -----------------------------------------------------------------------
    def _save(self, folder: Path) -> dict[str, Any]:
        return save_weights_and_config(self, self.cfg, folder)

    @classmethod
    def _load(cls, folder: Path, state: dict[str, Any]) -> "SpeechCodec":
        return load_weights_and_config(cls, CodecConfig, "codec", folder, state)


def save_weights_and_config(module: nn.Module, cfg: Any, folder: Path) -> dict[str, Any]:
    """Weights to ``folder/model.safetensors``; returns the config as JSON-able tokenizer state.
    Shared by every neural tokenizer (codec, image, video)."""
    save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, str(folder / "model.safetensors"))
    return {"config": _to_plain(cfg)}


def load_weights_and_config(cls: type, cfg_cls: type, section: str, folder: Path, state: dict[str, Any]) -> Any:
    """Inverse of :func:`save_weights_and_config`: ``cls(cfg)`` with its weights, in eval mode."""
    weights = folder / "model.safetensors"
    if not weights.exists():
        raise FileNotFoundError(f"{folder} has no model.safetensors; was it written by Tokenizer.save()?")
    model = cls(_coerce(state["config"], cfg_cls, section))
    model.load_state_dict(load_file(str(weights)))
    return model.eval()
