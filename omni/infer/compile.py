"""The fast decode path: one new position through a streaming decoder's static KV cache.

Every generation loop in omni (text ``generate``, the omni model's replies, the speech session, the
depth decoder's K steps per audio frame) spends its time appending one position at a time to a
preallocated cache. :class:`DecodeStep` is that call, eager or compiled (gpt-fast's recipe):

* ``compile=False``: the module's own forward, nothing else.
* ``compile=True``: ``torch.compile`` of the same forward with static shapes. The decoder then reads
  its whole cache (no host sync to trim it), so one graph serves every step. On CUDA the mode is
  ``reduce-overhead``: the step is captured as a CUDA graph and replayed, which removes the
  per-kernel launch cost that dominates small-batch decoding. The cache tensors and offsets live in
  the streaming state (omni/streaming.py) and are updated in place, so they are marked as static
  addresses for the graph; graph outputs are overwritten by the next replay, so they are cloned.
  On CPU inductor generates fused C++ kernels, without graphs.

Multi-position calls (prefills, a tick that feeds several positions) stay eager: their lengths vary
and they are not where the time per generated frame goes.

:func:`decode_step` keeps one step per module, so every generation call and session over a model
reuses its compiled graph. A new streaming block allocates a new cache: under CUDA graphs the
first step of each block records the graph again for the new addresses (once per conversation or
``generate`` call, not per token).
"""
from __future__ import annotations

import weakref
from typing import Any, Callable, Iterator, Optional

import torch

from omni.streaming import StreamingModule, StreamingState

Tensor = torch.Tensor


def _states(module: StreamingModule) -> Iterator[StreamingState]:
    """The current streaming states of ``module`` and its streaming submodules."""
    for m in module.modules():
        if isinstance(m, StreamingModule) and m._streaming_state is not None:
            yield m._streaming_state


class DecodeStep:
    """``step(*args, **kwargs)`` = ``module(*args, **kwargs)`` for one new position per row, inside
    ``with module.streaming(...)``; compiled when ``compile`` is True (see the module docstring).

    ``module`` is a streaming decoder (``omni.model.decoder.Decoder`` or ``OmniModel``); the first
    positional argument has shape [B, 1, ...]. Outputs are the module's ([B, 1, ...]).
    """

    def __init__(self, module: StreamingModule, compile: bool = False) -> None:
        self.module, self.compiled = module, compile
        self._fn: Optional[Callable[..., Tensor]] = None  # compiled at the first call, on the module's device
        self._graphs = False
        self._state: Optional[weakref.ref[StreamingState]] = None  # the streaming state marked static

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        if not self.compiled:
            return self.module(*args, **kwargs)
        if not self.module.is_streaming:
            raise RuntimeError("a compiled decode step runs inside `with module.streaming(batch):` (its KV cache)")
        if self._fn is None:
            self._graphs = next(self.module.parameters()).is_cuda
            self._fn = torch.compile(self.module, mode="reduce-overhead" if self._graphs else None, dynamic=False)
        if not self._graphs:
            return self._fn(*args, **kwargs)
        # CUDA graphs replay fixed addresses: the cache tensors, updated in place, must be static inputs.
        first = next(_states(self.module))
        if self._state is None or self._state() is not first:  # a new streaming block: new cache tensors
            for state in _states(self.module):
                for t in vars(state).values():
                    if isinstance(t, Tensor):
                        torch._dynamo.mark_static_address(t)
            self._state = weakref.ref(first)
        torch.compiler.cudagraph_mark_step_begin()
        return self._fn(*args, **kwargs).clone()  # the next replay overwrites the graph's output


def decode_step(module: StreamingModule, compile: bool = False) -> DecodeStep:
    """The :class:`DecodeStep` of ``module``: eager, or compiled once per module and then shared."""
    if not compile:
        return DecodeStep(module)
    step = module.__dict__.get("_compiled_step")  # a plain attribute (not a submodule): dies with the module
    if step is None:
        step = module.__dict__["_compiled_step"] = DecodeStep(module, compile=True)
    return step
