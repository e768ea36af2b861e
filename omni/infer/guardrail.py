"""Voice guardrail: a streaming check that the assistant speaks only in its preset voice.

GPT-4o's system card ("Unauthorized voice generation", OpenAI 2024) describes the mitigation this
follows: the model speaks in preset voices only, and "a standalone output classifier" stops the
output when its voice deviates from the preset one. Here the classifier is a speaker-embedding
check: every ``every_ms`` of reply audio emitted to a row, the latest ``window_ms`` of it is
embedded with Resemblyzer's GE2E encoder (omni/io/speaker.py; Wan et al., "Generalized End-to-End
Loss for Speaker Verification", 2018) and compared (cosine) with the preset voice's reference
embedding; below ``threshold`` the row's spoken reply is stopped. The first check waits for
``first_ms`` of reply audio: on less speech every voice's embedding is vague, the preset voice's
scores spread down to the other voices' (docs/benchmarks.md, "Voice guardrail"). A check whose
window holds no speech (webrtcvad) judges nothing: silence is nobody's voice.

The reference embedding of the preset voice (Piper ``en_US-joe-medium``, data/voices.py) is of
its speech as the guardrail hears it when serving: resynthesised through the served speech codec,
whose reconstruction moves every voice's embedding (docs/benchmarks.md, "Voice guardrail"). A codec
folder holds it as ``preset_voice.safetensors`` (one [256] tensor; metadata naming its source and the
sha256 of the codec weights it was made with), written by ``python eval/voice_guardrail.py
--write-reference --codec FOLDER``; the shipped codec-tiny's ships in ``omni/assets/codec-tiny`` and is
used for any codec folder holding those weights. The reference of clean speech,
``omni/assets/preset_voice.safetensors`` (``--write-reference``), serves a codec that has none, with a
warning. Shipped references are checked against their sha256 when loaded: nothing is synthesised or
downloaded at serving time. The threshold is chosen on a validation set by eval/voice_guardrail.py
and stated in docs/benchmarks.md ("Voice guardrail").

:class:`VoiceGuardrail` is a :class:`~omni.streaming.StreamingModule` with per-row state (the
reply audio kept for the next check, samples since the last check, stopped flags, last score), so a
:class:`omni.infer.session.SpeechSession` carries it with its other streaming state and resets a
row's with ``reset_streaming(rows)`` when that row's reply starts.
"""
from __future__ import annotations

import logging
import math
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from omni.config import ServingConfig
from omni.io.speaker import SpeakerEncoder, cosine
from omni.io.tensors import check_sha256, file_sha256
from omni.streaming import StreamingModule, StreamingState
from omni.tokenizers.codec import SHIPPED_CODEC, SHIPPED_CODEC_SHA256

Tensor = torch.Tensor
log = logging.getLogger(__name__)

REFERENCE_NAME = "preset_voice.safetensors"
PRESET_REFERENCE = Path(__file__).resolve().parent.parent / "assets" / REFERENCE_NAME  # of clean speech
PRESET_REFERENCE_SHA256 = "9ee77d07f7fcbedbd6f3c3de69900bf5e91ca5e47a86602447ddd2fcdae86c41"
# Of the preset voice through the shipped codec-tiny (SHIPPED_CODEC / REFERENCE_NAME).
CODEC_REFERENCE_SHA256 = "3335ce4011796194c3c30aaa379bd9e43411f090f502d3f80c10c22718f45094"


def reference_path(codec_folder: Optional[str | Path] = None) -> tuple[Path, Optional[str]]:
    """Where the preset voice's reference for ``codec_folder`` is, and its sha256 when it ships.

    ``codec_folder``: a speech-codec tokenizer folder (``model.safetensors``, ``tokenizer.json``),
    or None for clean speech. A folder holding the shipped codec-tiny's weights maps to the shipped
    codec reference; another to its own ``preset_voice.safetensors``, which may be missing."""
    if codec_folder is None:
        return PRESET_REFERENCE, PRESET_REFERENCE_SHA256
    folder = Path(codec_folder)
    weights = folder / "model.safetensors"
    if weights.is_file() and file_sha256(weights) == SHIPPED_CODEC_SHA256:
        return SHIPPED_CODEC / REFERENCE_NAME, CODEC_REFERENCE_SHA256
    return folder / REFERENCE_NAME, None


def load_reference(codec_folder: Optional[str | Path] = None) -> Tensor:
    """The preset voice's reference embedding [256] (unit length) for speech served through the codec
    in ``codec_folder`` (None: clean speech); see :func:`reference_path`.

    A shipped reference must match its recorded sha256 (:func:`omni.io.tensors.check_sha256`), a
    codec folder's own must name that folder's weights (metadata ``codec_sha256``): ValueError
    otherwise, saying how to rewrite it. A codec folder without one gets the clean-speech reference
    and a warning naming the command that writes one."""
    path, digest = reference_path(codec_folder)
    write = "python eval/voice_guardrail.py --write-reference" + (f" --codec {codec_folder}" if codec_folder else "")
    if digest is not None:
        check_sha256(path.parent, {path.name: digest},
                     f"Restore it from git, or rewrite it with `{write}` and update the constant in omni/infer/guardrail.py.")
    elif not path.is_file():
        log.warning("%s holds no reference of the preset voice through this codec: the voice guardrail uses the "
                    "clean-speech one, which the codec's reconstruction may not match (false stops); write one "
                    "with `%s`", codec_folder, write)
        return load_reference()
    else:
        with safe_open(str(path), "pt") as f:
            made_for = (f.metadata() or {}).get("codec_sha256")
        if made_for != file_sha256(Path(codec_folder) / "model.safetensors"):
            raise ValueError(f"{path} was written for other codec weights than {codec_folder}/model.safetensors: "
                             f"rewrite it with `{write}`")
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
    between checks (a check runs on the first call at or after it); ``first_ms``: reply audio before
    the first check. ``encoder``: default :func:`shared_encoder`. Raises ValueError for a
    non-positive window or period, or a negative ``first_ms``.

    Use inside ``with guard.streaming(B):``; :meth:`forward` per output frame."""

    def __init__(self, sample_rate: int, reference: Optional[Tensor] = None,
                 threshold: float = ServingConfig.guardrail_threshold, window_ms: int = ServingConfig.guardrail_window_ms,
                 every_ms: int = ServingConfig.guardrail_every_ms, first_ms: int = ServingConfig.guardrail_first_ms,
                 encoder: Optional[SpeakerEncoder] = None) -> None:
        super().__init__()
        if window_ms <= 0 or every_ms <= 0 or sample_rate <= 0 or first_ms < 0:
            raise ValueError(f"window_ms, every_ms and sample_rate must be positive and first_ms >= 0, got "
                             f"{window_ms}, {every_ms}, {sample_rate}, {first_ms}")
        self.sample_rate, self.threshold = sample_rate, threshold
        self.window = round(window_ms * sample_rate / 1000)
        self.every = round(every_ms * sample_rate / 1000)
        self.first = round(first_ms * sample_rate / 1000)
        self.reference = load_reference() if reference is None else reference.float().reshape(256)
        self.encoder = encoder or shared_encoder()

    @classmethod
    def from_serving(cls, serving: ServingConfig, sample_rate: int,
                     reference: Optional[Tensor] = None) -> Optional["VoiceGuardrail"]:
        """The guardrail the ``serving`` section asks for (None when ``voice_guardrail`` is off)."""
        if not serving.voice_guardrail:
            return None
        return cls(sample_rate, reference, serving.guardrail_threshold, serving.guardrail_window_ms,
                   serving.guardrail_every_ms, serving.guardrail_first_ms)

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
        for b in (live & (st.due >= self.every) & (st.emitted >= self.first)).nonzero()[:, 0].tolist():
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
