"""Speaker embeddings: who is speaking, as a unit vector [256] (Resemblyzer's GE2E voice encoder).

The network and its weights come from PyPI ``resemblyzer`` (``pretrained.pt`` ships in the wheel;
install it ``--no-deps`` plus ``librosa`` and ``webrtcvad-wheels``, as requirements-assets.txt and
setup.py do). Method: Wan et al., "Generalized End-to-End Loss for Speaker Verification" (2018): a
3-layer LSTM over 40-band mel frames (25 ms windows, 10 ms hop, 16 kHz) embeds 1.6 s windows, and an
utterance's embedding is the L2-normalised mean of its windows' embeddings.

Windows here are independent of each other, so that an embedding can be kept up to date while audio
streams in (:class:`SpeakerTrack`) and equals the offline one (:meth:`SpeakerEncoder.embed`) on the
same samples:

- windows of 1.6 s start every ``hop_s`` (0.5 s) on the input's own time line; each is resampled to
  16 kHz, raised to -30 dBFS if quieter (Resemblyzer's volume rule, applied per window), and kept
  only if webrtcvad hears speech in at least ``min_voiced`` of its 30 ms frames (silence would pull
  the mean towards no one);
- the embedding is the normalised mean of the kept complete windows; audio shorter than one window
  is embedded as one zero-padded window; with no speech at all the embedding is zeros (cosine 0
  with everything).

Resemblyzer's own ``embed_utterance`` instead normalises and trims silence over the whole utterance
first; on the voices of data/voices.py both agree closely (docs/benchmarks.md, "Voices").
"""
from __future__ import annotations

import math
from typing import Optional

import librosa
import numpy as np
import torch
import webrtcvad

# resemblyzer (installed --no-deps, requirements-assets.txt): without it, SpeakerEncoder raises RuntimeError.
try:
    from resemblyzer import VoiceEncoder, audio
except ImportError:
    VoiceEncoder = audio = None

Tensor = torch.Tensor

EMBED_RATE = 16_000  # Hz, the encoder's input
WINDOW_S = 1.6  # Resemblyzer's partial utterance: 160 mel frames
VAD_FRAME_S = 0.03


class SpeakerEncoder:
    """Resemblyzer's voice encoder on CPU.

    ``hop_s``: seconds between window starts; ``min_voiced``: share of a window's 30 ms frames that
    must be speech for the window to count. Raises RuntimeError naming the package to install if
    resemblyzer is missing."""

    def __init__(self, hop_s: float = 0.5, min_voiced: float = 0.3) -> None:
        if VoiceEncoder is None:
            raise RuntimeError("speaker embeddings need `pip install --no-deps resemblyzer` "
                               "(requirements-assets.txt; `make venv` installs it)")
        self.net = VoiceEncoder("cpu", verbose=False).eval()
        self._vad = webrtcvad.Vad(3)
        self.hop_s, self.min_voiced = hop_s, min_voiced

    def _window_len(self, sample_rate: int) -> tuple[int, int]:
        """(window, hop) in samples at ``sample_rate``."""
        return int(round(WINDOW_S * sample_rate)), int(round(self.hop_s * sample_rate))

    def _voiced_share(self, wave16: np.ndarray, samples: int) -> float:
        """Share of the first ``samples`` of ``wave16`` (16 kHz) in 30 ms frames webrtcvad calls speech."""
        step = int(VAD_FRAME_S * EMBED_RATE)
        pcm = (np.clip(wave16[: samples - samples % step], -1, 1) * 32767).astype(np.int16).tobytes()
        frames = [pcm[i : i + 2 * step] for i in range(0, len(pcm), 2 * step)]
        return sum(self._vad.is_speech(f, EMBED_RATE) for f in frames) / max(1, len(frames))

    def window_embeddings(self, windows: list[np.ndarray], sample_rate: int,
                          lengths: Optional[list[int]] = None) -> tuple[Tensor, Tensor]:
        """Embeddings of ``windows`` (each ``round(1.6 * sample_rate)`` samples, float in [-1, 1];
        ``lengths``: how many samples of each are real audio rather than padding).

        Returns (embeddings [n, 256], speech [n] bool)."""
        n16 = int(WINDOW_S * EMBED_RATE)
        mels, speech = [], []
        for i, w in enumerate(windows):
            w16 = librosa.resample(np.asarray(w, np.float32), orig_sr=sample_rate, target_sr=EMBED_RATE)[:n16]
            w16 = np.pad(w16, (0, n16 - len(w16)))
            real = n16 if lengths is None else min(n16, math.ceil(lengths[i] * EMBED_RATE / sample_rate))
            rms = float(np.sqrt(np.mean(w16[:real] ** 2))) if real else 0.0
            speech.append(rms > 0 and self._voiced_share(w16, real) >= self.min_voiced)
            if rms > 0:  # Resemblyzer's rule: raise quiet audio to -30 dBFS, never lower loud audio
                w16 = w16 * max(1.0, 10 ** (audio.audio_norm_target_dBFS / 20) / rms)
            mels.append(audio.wav_to_mel_spectrogram(w16)[:160])
        if not mels:
            return torch.zeros(0, 256), torch.zeros(0, dtype=torch.bool)
        with torch.no_grad():
            emb = self.net(torch.from_numpy(np.stack(mels)))
        return emb, torch.tensor(speech)

    def embed(self, wave: Tensor | np.ndarray, sample_rate: int) -> Tensor:
        """Embedding [256] (unit length, or zeros if no speech) of ``wave`` [samples] or [1, samples]
        at ``sample_rate`` Hz."""
        track = SpeakerTrack(self, sample_rate)
        track.feed(wave)
        return track.embedding()


class SpeakerTrack:
    """The embedding of a growing stream of audio, up to date after every :meth:`feed`; each 1.6 s
    window is embedded once, when complete. ``track.embedding()`` equals
    ``encoder.embed(all audio fed so far)``. Serving keeps one per output stream."""

    def __init__(self, encoder: SpeakerEncoder, sample_rate: int) -> None:
        self.encoder, self.sample_rate = encoder, sample_rate
        self.window, self.hop = encoder._window_len(sample_rate)
        self.buffer = np.zeros(0, np.float32)  # audio from the next window's start on
        self.total = torch.zeros(256)
        self.count = 0  # speech windows summed into total
        self.seen = 0  # samples fed

    def feed(self, chunk: Tensor | np.ndarray) -> None:
        """Append ``chunk`` [samples] (float in [-1, 1] at the track's rate) and embed the windows
        it completes."""
        x = torch.as_tensor(chunk, dtype=torch.float32).reshape(-1).numpy()
        self.buffer = np.concatenate([self.buffer, x])
        self.seen += len(x)
        starts = range(0, len(self.buffer) - self.window + 1, self.hop)
        if len(starts):
            emb, speech = self.encoder.window_embeddings([self.buffer[s : s + self.window] for s in starts],
                                                         self.sample_rate)
            self.total += emb[speech].sum(0)
            self.count += int(speech.sum())
            self.buffer = self.buffer[starts[-1] + self.hop :]

    def embedding(self) -> Tensor:
        """Unit embedding [256] of the audio so far (zeros before any speech)."""
        if self.count:
            return self.total / self.total.norm()
        if self.seen < self.window and self.seen:  # shorter than a window: one zero-padded window
            emb, speech = self.encoder.window_embeddings([np.pad(self.buffer, (0, self.window - len(self.buffer)))],
                                                         self.sample_rate, [len(self.buffer)])
            if speech[0]:
                return emb[0]
        return torch.zeros(256)


def cosine(a: Tensor, b: Tensor) -> float:
    """Cosine similarity of two embeddings [256] (0 when either is zeros)."""
    na, nb = float(a.norm()), float(b.norm())
    return float(a @ b) / (na * nb) if na and nb else 0.0
