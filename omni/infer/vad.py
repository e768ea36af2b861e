"""Voice activity per codec frame with Silero VAD (PyPI ``silero-vad``, model bundled, CPU torch).

Silero scores 512-sample windows at 16 kHz (256 at 8 kHz) with an LSTM whose state it keeps
per batch row; audio at other rates (the codec's 22.05 kHz) is resampled to 16 kHz chunk by chunk
(each chunk on its own: the filter's edges blur a few samples, which a speech probability ignores). :class:`VoiceActivity` buffers each row's samples to whole windows and returns, per
call, the highest speech probability of the windows that call completed — one number per row
per codec frame. It is a :class:`StreamingModule`: its buffers and Silero's LSTM state live inside
``with vad.streaming(B):`` and ``reset_streaming(mask)`` clears chosen rows.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

# silero-vad (installed --no-deps, requirements-assets.txt): without it, load_silero raises ImportError.
_threads = torch.get_num_threads()
try:
    from silero_vad import load_silero_vad
except ImportError:
    load_silero_vad = None
finally:
    torch.set_num_threads(_threads)  # importing silero_vad sets torch to one thread
del _threads

from omni.io.audio import check_finite, resample
from omni.streaming import StreamingModule, StreamingState

Tensor = torch.Tensor


def load_silero() -> torch.jit.ScriptModule:
    """The bundled Silero VAD TorchScript model (clear error if the package is missing)."""
    if load_silero_vad is None:
        raise ImportError("voice activity detection needs PyPI silero-vad: "
                          "`pip install --no-deps silero-vad` (its core needs only torch + packaging)")
    return load_silero_vad()


class _VADState(StreamingState):
    def __init__(self, batch: int, model: torch.jit.ScriptModule) -> None:
        self.model = model
        self.pending = torch.zeros(batch, 0)
        self.prob = torch.zeros(batch)  # last window's probability, carried when a call completes none
        model.reset_states()

    def reset(self, mask: Optional[Tensor] = None) -> None:
        mask = torch.ones_like(self.prob, dtype=torch.bool) if mask is None else mask.cpu()
        self.pending[mask] = 0.0
        self.prob[mask] = 0.0
        # Silero keeps its LSTM state and 64-sample context as [2, B, 128] and [B, 64] tensors.
        state, context = getattr(self.model, "_state", None), getattr(self.model, "_context", None)
        if isinstance(state, Tensor) and state.dim() == 3 and state.shape[1] == mask.shape[0]:
            state[:, mask] = 0.0
        if isinstance(context, Tensor) and context.dim() == 2 and context.shape[0] == mask.shape[0]:
            context[mask] = 0.0


class VoiceActivity(StreamingModule):
    """Per-row speech probability of each incoming chunk (Silero VAD)."""

    def __init__(self, sample_rate: int) -> None:
        super().__init__()
        if sample_rate <= 0:
            raise ValueError(f"sample rate must be positive, got {sample_rate}")
        self.input_rate = sample_rate
        self.sample_rate = 8000 if sample_rate == 8000 else 16000  # Silero's rates; others are resampled
        self.window = 512 if self.sample_rate == 16000 else 256
        self.silero = load_silero()

    def _init_streaming_state(self, batch_size: int, **_: Any) -> _VADState:
        return _VADState(batch_size, self.silero)

    @torch.no_grad()
    def forward(self, wav: Tensor) -> Tensor:
        """wav [B, 1, n] (streaming mode) -> speech probability [B] of the windows it completes.

        Raises ``AudioError`` for a NaN or infinite sample, before the state moves (Silero's LSTM
        would carry the NaN into every later window)."""
        st: _VADState = self.require_streaming_state("call it inside `with vad.streaming(batch):`")
        check_finite(wav, "the VAD's input")
        x = wav[:, 0].float().cpu()
        if self.input_rate != self.sample_rate:
            x = resample(x, self.input_rate, self.sample_rate)
        buf = torch.cat([st.pending, x], 1)
        n = buf.shape[1] // self.window * self.window
        probs = [self.silero(buf[:, i : i + self.window], self.sample_rate)[:, 0] for i in range(0, n, self.window)]
        st.pending = buf[:, n:]
        if probs:
            st.prob = torch.stack(probs, 1).amax(1)
        return st.prob.clone()
