"""The one streaming-state mechanism (Moshi style).

Every stateful component — the decoder's KV cache, the codec's causal convolutions, the depth
decoder, the VAD — subclasses :class:`StreamingModule`. State exists only inside

    with module.streaming(batch_size):
        ...  # each call continues where the previous one stopped

which creates the state of the module and of every streaming submodule, and drops it on exit.
``module.reset_streaming(mask)`` resets chosen batch elements (e.g. one finished session in a
batch of concurrent ones) without touching the others.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional

import torch
from torch import nn


class StreamingState:
    """Base class for per-module streaming state. Subclasses hold tensors with a batch dimension."""

    def reset(self, mask: Optional[torch.Tensor] = None) -> None:
        """Reset the state of the batch elements where ``mask`` [batch] is True (all if None)."""
        raise NotImplementedError


class StreamingModule(nn.Module):
    """An ``nn.Module`` with state carried between calls while inside :meth:`streaming`."""

    def __init__(self) -> None:
        super().__init__()
        self._streaming_state: Optional[StreamingState] = None

    def _init_streaming_state(self, batch_size: int, **options: Any) -> Optional[StreamingState]:
        """Create this module's fresh state. Modules that only contain streaming children return None."""
        return None

    def require_streaming_state(self, usage: str) -> StreamingState:
        """This module's state; raises RuntimeError("<Class> is stateful: <usage>") outside :meth:`streaming`."""
        if self._streaming_state is None:
            raise RuntimeError(f"{type(self).__name__} is stateful: {usage}")
        return self._streaming_state

    @property
    def is_streaming(self) -> bool:
        return self._streaming_state is not None or getattr(self, "_streaming_active", False)

    def _streaming_modules(self) -> Iterator["StreamingModule"]:
        for m in self.modules():
            if isinstance(m, StreamingModule):
                yield m

    @contextlib.contextmanager
    def streaming(self, batch_size: int, **options: Any) -> Iterator[None]:
        """Enter streaming mode for ``batch_size`` independent streams.

        ``options`` reach every module's ``_init_streaming_state`` (e.g. ``max_len`` for the KV cache).
        Nesting is an error: a module streams for one caller at a time.
        """
        mods = list(self._streaming_modules())
        if any(getattr(m, "_streaming_active", False) for m in mods):
            raise RuntimeError(f"{type(self).__name__} is already streaming; leave the first `with` block first")
        try:
            for m in mods:
                m._streaming_active = True
                m._streaming_state = m._init_streaming_state(batch_size, **options)
            yield
        finally:
            for m in mods:
                m._streaming_active = False
                m._streaming_state = None

    def reset_streaming(self, mask: Optional[torch.Tensor] = None) -> None:
        """Reset the batch elements selected by ``mask`` [batch] (bool) in every streaming submodule."""
        for m in self._streaming_modules():
            if m._streaming_state is not None:
                m._streaming_state.reset(mask)
