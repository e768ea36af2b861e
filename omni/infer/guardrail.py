"""Voice guardrail: a streaming check that the assistant speaks only in its preset voice.

GPT-4o's system card ("Unauthorized voice generation", OpenAI 2024) describes the mitigation this
follows: the model speaks in preset voices only, and "a standalone output classifier" stops the
output when its voice deviates from the preset one. Here the classifier is a speaker-embedding
check: every ``every_ms`` of reply audio emitted to a row, the latest ``window_ms`` of it is
embedded with Resemblyzer's GE2E encoder (omni/io/speaker.py; Wan et al., "Generalized End-to-End
Loss for Speaker Verification", 2018) and compared (cosine) with the preset voice's reference
embedding; below ``threshold`` the row's spoken reply is stopped. A check whose window holds no
speech (webrtcvad) judges nothing: silence is nobody's voice.

The reference embedding of the preset voice (Piper ``en_US-joe-medium``, data/voices.py) ships as
``omni/assets/preset_voice.safetensors`` (one [256] tensor, metadata naming its source), written by
``python eval/voice_guardrail.py --write-reference`` and checked against
:data:`PRESET_REFERENCE_SHA256` when loaded: nothing is synthesised or downloaded at serving time.
The threshold is chosen on a validation set by eval/voice_guardrail.py and stated in
docs/benchmarks.md ("Voice guardrail").

:class:`VoiceGuardrail` is a :class:`~omni.streaming.StreamingModule` with per-row state (the
reply audio kept for the next check, samples since the last check, stopped flags, last score), so a
:class:`omni.infer.session.SpeechSession` carries it with its other streaming state and resets a
row's with ``reset_streaming(rows)`` when that row's reply starts.
"""
from __future__ import annotations

import hashlib
import logging
import math
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import load_file

from omni.config import ServingConfig
from omni.io.speaker import SpeakerEncoder, cosine
from omni.streaming import StreamingModule, StreamingState

Tensor = torch.Tensor
log = logging.getLogger(__name__)

PRESET_REFERENCE = Path(__file__).resolve().parent.parent / "assets" / "preset_voice.safetensors"
PRESET_REFERENCE_SHA256 = "9ee77d07f7fcbedbd6f3c3de69900bf5e91ca5e47a86602447ddd2fcdae86c41"


def load_reference(path: Optional[str | Path] = None) -> Tensor:
    """The preset voice's reference embedding [256] (unit length).

    ``path``: a .safetensors file holding ``embedding`` [256]; default the shipped
    ``omni/assets/preset_voice.safetensors``, whose sha256 must equal :data:`PRESET_REFERENCE_SHA256`.
    Raises FileNotFoundError / ValueError saying how to rewrite the file."""
    shipped = path is None
    path = Path(PRESET_REFERENCE if shipped else path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: write it with `python eval/voice_guardrail.py --write-reference`")
    if shipped and hashlib.sha256(path.read_bytes()).hexdigest() != PRESET_REFERENCE_SHA256:
        raise ValueError(f"{path} does not match PRESET_REFERENCE_SHA256 in omni/infer/guardrail.py: restore it "
                         "from git, or rewrite it with `python eval/voice_guardrail.py --write-reference` and "
                         "update the constant")
    emb = load_file(str(path))["embedding"].float().reshape(-1)
    if emb.shape != (256,) or not math.isclose(float(emb.norm()), 1.0, rel_tol=1e-3):
        raise ValueError(f"{path}: `embedding` must be a unit vector [256], got shape {list(emb.shape)}")
    return emb


@lru_cache(maxsize=1)
def shared_encoder() -> SpeakerEncoder:
    """One speaker encoder per process (it holds no per-stream state), shared by every guardrail."""
    return SpeakerEncoder()


class _Guard(StreamingState):
    """Per row: the latest ``window`` samples of reply audio (newest last), samples emitted in the
    reply and since the last check, stopped flag, last similarity (NaN before any judged check),
    whether the last call judged the row."""

    def __init__(self, batch: int, window: int) -> None:
        self.audio = torch.zeros(batch, window)
        self.emitted = torch.zeros(batch, dtype=torch.long)
        self.due = torch.zeros(batch, dtype=torch.long)
        self.stopped = torch.zeros(batch, dtype=torch.bool)
        self.score = torch.full((batch,), float("nan"))
        self.checked = torch.zeros(batch, dtype=torch.bool)

    def reset(self, mask: Optional[Tensor] = None) -> None:
        rows = torch.ones_like(self.stopped) if mask is None else mask.cpu()
        self.audio[rows] = 0.0
        self.emitted[rows] = 0
        self.due[rows] = 0
        self.stopped[rows] = False
        self.score[rows] = float("nan")
        self.checked[rows] = False


class VoiceGuardrail(StreamingModule):
    """Streaming output-voice classifier over B rows of reply audio at ``sample_rate`` Hz.

    ``threshold``: cosine to ``reference`` [256] below which a reply is stopped; ``window_ms``: the
    latest reply audio embedded at each check (Resemblyzer windows are 1.6 s; shorter audio is one
    zero-padded window, longer audio the mean of 1.6 s windows every 0.5 s); ``every_ms``: reply audio
    between checks (a check runs on the first call at or after it). ``encoder``: default
    :func:`shared_encoder`. Raises ValueError for a non-positive window or period.

    Use inside ``with guard.streaming(B):``; :meth:`forward` per output frame."""

    def __init__(self, sample_rate: int, reference: Optional[Tensor] = None,
                 threshold: float = ServingConfig.guardrail_threshold, window_ms: int = ServingConfig.guardrail_window_ms,
                 every_ms: int = ServingConfig.guardrail_every_ms, encoder: Optional[SpeakerEncoder] = None) -> None:
        super().__init__()
        if window_ms <= 0 or every_ms <= 0 or sample_rate <= 0:
            raise ValueError(f"window_ms, every_ms and sample_rate must be positive, got {window_ms}, {every_ms}, {sample_rate}")
        self.sample_rate, self.threshold = sample_rate, threshold
        self.window = round(window_ms * sample_rate / 1000)
        self.every = round(every_ms * sample_rate / 1000)
        self.reference = load_reference() if reference is None else reference.float().reshape(256)
        self.encoder = encoder or shared_encoder()

    @classmethod
    def from_serving(cls, serving: ServingConfig, sample_rate: int,
                     reference: Optional[Tensor] = None) -> Optional["VoiceGuardrail"]:
        """The guardrail the ``serving`` section asks for (None when ``voice_guardrail`` is off)."""
        if not serving.voice_guardrail:
            return None
        return cls(sample_rate, reference, serving.guardrail_threshold, serving.guardrail_window_ms,
                   serving.guardrail_every_ms)

    def _init_streaming_state(self, batch_size: int, **_: Any) -> _Guard:
        return _Guard(batch_size, self.window)

    @property
    def state(self) -> _Guard:
        return self.require_streaming_state("call it inside `with guard.streaming(batch):`")

    @property
    def stopped(self) -> Tensor:
        """[B] bool: rows whose current reply was stopped."""
        return self.state.stopped

    def similarity(self, wave: Tensor) -> Optional[float]:
        """Cosine of ``wave`` [samples] (at ``sample_rate``) to the reference; None without speech."""
        emb = self.encoder.embed(wave, self.sample_rate)
        return cosine(emb, self.reference) if bool(emb.any()) else None

    @torch.no_grad()
    def forward(self, audio: Tensor, speaking: Tensor) -> Tensor:
        """One output frame per row: audio [B, 1, n] (or [B, n]) float in [-1, 1]; speaking [B] bool,
        rows whose frame is reply audio about to be played.

        Returns [B] bool: rows stopped by this frame (it must not be played). Stopped rows stay
        stopped, and their later frames are ignored, until ``reset_streaming`` of the row."""
        st = self.state
        x = audio.reshape(audio.shape[0], -1).float().cpu()
        live = speaking.cpu() & ~st.stopped
        n = min(x.shape[1], self.window)
        st.audio[live] = torch.cat([st.audio[live, n:], x[live, -n:]], 1)
        st.emitted += live.long() * x.shape[1]
        st.due += live.long() * x.shape[1]
        stop = torch.zeros_like(live)
        st.checked = torch.zeros_like(live)
        for b in (live & (st.due >= self.every)).nonzero()[:, 0].tolist():
            st.due[b] = 0
            score = self.similarity(st.audio[b, -min(int(st.emitted[b]), self.window):])
            if score is None:
                continue
            st.score[b], st.checked[b] = score, True
            if score < self.threshold:
                stop[b] = True
                log.warning("voice guardrail stopped row %d after %.2f s of reply audio (similarity %.3f < %.3f)",
                            b, (int(st.emitted[b]) - x.shape[1]) / self.sample_rate, score, self.threshold)
        st.stopped |= stop
        return stop

    def first_stop(self, wave: Tensor, frame: int) -> Optional[int]:
        """Run over one reply ``wave`` [samples] in frames of ``frame`` samples, as a session would:
        the number of samples played before the stop (None: never stopped). Not while streaming."""
        with self.streaming(1):
            for start in range(0, wave.shape[-1], frame):
                if bool(self(wave[None, start : start + frame], torch.ones(1, dtype=torch.bool))[0]):
                    return start
        return None
