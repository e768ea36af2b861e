"""The attention mask *description* (:class:`AttentionMask`): which keys each query may see, as ids and
flags, never a dense matrix. The rule is documented in omni/model/attention.py; the model and the kernels
(omni/kernels) both read it, so it sits in this leaf."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch

Tensor = torch.Tensor


@dataclass
class AttentionMask:
    """Description of which keys each query may see (see module docstring for the exact rule)."""

    causal: bool = True
    document_ids: Optional[Tensor] = None  # [batch, Skv] int
    span_ids: Optional[Tensor] = None  # [batch, Skv] int, 0 = not in a span
    sliding_window: Optional[int] = None
    q_offset: Union[int, Tensor] = 0  # int or [batch] long

    @property
    def is_plain_causal(self) -> bool:
        """Causal with nothing else and queries aligned with keys: the fast path everywhere."""
        return (
            self.causal
            and self.document_ids is None
            and self.span_ids is None
            and self.sliding_window is None
            and isinstance(self.q_offset, int)
            and self.q_offset == 0
        )

    def dense(self, batch: int, q_len: int, kv_len: int, device: torch.device) -> Tensor:
        """Materialise the mask as bool [batch, 1, Sq, Skv] (True = visible). For reference use only."""
        kv_pos = torch.arange(kv_len, device=device)
        offset = self.q_offset
        if isinstance(offset, Tensor):
            q_pos = offset.to(device).view(-1, 1) + torch.arange(q_len, device=device).view(1, -1)
        else:
            q_pos = (offset + torch.arange(q_len, device=device)).view(1, -1).expand(batch, -1)
        q_pos = q_pos.expand(batch, -1)  # [B, Sq]
        qi = q_pos[:, :, None]
        kj = kv_pos[None, None, :]
        visible = torch.ones(batch, q_len, kv_len, dtype=torch.bool, device=device)
        if self.causal:
            visible = kj <= qi
        same_span = torch.zeros_like(visible)
        if self.span_ids is not None:
            span_q = _gather_ids(self.span_ids, q_pos)
            same_span = (span_q[:, :, None] == self.span_ids[:, None, :kv_len]) & (span_q[:, :, None] > 0)
            visible = visible | same_span
        if self.sliding_window is not None:
            visible = visible & ((qi - kj < self.sliding_window) | same_span)
        if self.document_ids is not None:
            doc_q = _gather_ids(self.document_ids, q_pos)
            visible = visible & (doc_q[:, :, None] == self.document_ids[:, None, :kv_len])
        return visible[:, None]


def _gather_ids(ids: Tensor, q_pos: Tensor) -> Tensor:
    """ids [B, S] at positions q_pos [B, Sq] (clamped so that padding queries stay valid)."""
    return torch.gather(ids, 1, q_pos.clamp(max=ids.shape[1] - 1).to(ids.device))
