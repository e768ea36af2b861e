"""FlexAttention backend: torch's flex_attention with a ``mask_mod`` built from the same description.

The block mask (torch's own block-sparse structure) is cached while the mask's id tensors are
unchanged, so the layers of one forward pass build it once. On CUDA flex_attention is compiled (its
eager form is a slow reference); on CPU it runs eagerly (tests, small sizes).
"""
from __future__ import annotations

import functools

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from omni.kernels.masks import cached, q_offset_tensor
from omni.nn.mask import AttentionMask

Tensor = torch.Tensor


def mask_mod_for(mask: AttentionMask, batch: int, kv_len: int, device: torch.device):
    """``mask_mod(b, h, q_idx, kv_idx) -> bool``: the AttentionMask rule, reading ids by index."""
    qoff = q_offset_tensor(mask, batch, device)
    doc = None if mask.document_ids is None else mask.document_ids[:, :kv_len].to(device).expand(batch, -1)
    span = None if mask.span_ids is None else mask.span_ids[:, :kv_len].to(device).expand(batch, -1)
    window, causal = mask.sliding_window, mask.causal

    def mask_mod(b, h, q_idx, kv_idx):
        q_pos = q_idx + qoff[b]
        qi = q_pos.clamp(max=kv_len - 1)
        visible = kv_idx <= q_pos if causal else kv_idx >= 0
        same_span = kv_idx < 0
        if span is not None:
            same_span = (span[b, qi] == span[b, kv_idx]) & (span[b, qi] > 0)
            visible = visible | same_span
        if window is not None:
            visible = visible & ((q_pos - kv_idx < window) | same_span)
        if doc is not None:
            visible = visible & (doc[b, qi] == doc[b, kv_idx])
        return visible

    return mask_mod


def flex_block_mask(mask: AttentionMask, batch: int, q_len: int, kv_len: int, device: torch.device) -> BlockMask:
    """torch BlockMask for the description (cached by its id tensors)."""

    def build() -> BlockMask:
        mod = mask_mod_for(mask, batch, kv_len, device)
        return create_block_mask(mod, batch, None, q_len, kv_len, device=device)

    return cached(mask, ("flex", batch, q_len, kv_len, str(device)), build)


@functools.lru_cache(maxsize=None)
def _compiled_flex():
    return torch.compile(flex_attention, dynamic=False)


def flex_backend(q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask, scale: float) -> Tensor:
    """The "flex" backend: q [B, H, Sq, D], k/v [B, Hkv, Skv, D] -> [B, H, Sq, D]."""
    block_mask = flex_block_mask(mask, q.shape[0], q.shape[2], k.shape[2], q.device)
    fn = _compiled_flex() if q.is_cuda else flex_attention
    return fn(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1])
