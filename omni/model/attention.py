"""The one attention entry point. The model calls :func:`attention`; backends are switches.

Masks are *described*, never materialised by the caller (:class:`AttentionMask`):

* ``causal``: key position j is visible to query position i only if j <= i;
* ``document_ids`` (packing): no attention across documents;
* ``span_ids`` (images / video frames): tokens of one span (id > 0) see each other in both
  directions, while everything else stays causal;
* ``sliding_window``: only keys with i - j < window are visible (spans are exempt inside themselves);
* ``q_offset``: queries sit at absolute positions ``q_offset + arange(Sq)`` of the key sequence, which
  is how a KV cache is read (keys at 0..Skv-1). An int, or a LongTensor [batch] for per-row offsets.

The rule, for query at absolute position i and key at position j (both in the same row b)::

    visible(i, j) = same_doc(i, j) and (j <= i or same_span(i, j)) and in_window(i, j)
    same_doc(i, j)  = document_ids[b, i] == document_ids[b, j]          (True if no ids)
    same_span(i, j) = span_ids[b, i] == span_ids[b, j] > 0              (False if no ids)
    in_window(i, j) = same_span(i, j) or i - j < sliding_window          (True if no window)

``document_ids`` and ``span_ids`` are indexed by absolute key position, shape [batch, Skv].
A non-causal mask (``causal=False``) drops the ``j <= i`` term (encoders).

Backends (``register_backend``): ``reference`` (plain math over a dense mask: the ground truth),
``sdpa`` (torch scaled_dot_product_attention; ``is_causal`` fast path for plain causal masks, a dense
boolean mask otherwise), and the kernels' ``flex`` and ``triton`` (omni/kernels). :class:`AttentionMask`
itself lives in omni/nn/mask.py, a leaf that the kernels import too.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from omni.kernels import KERNEL_BACKENDS
from omni.nn.mask import AttentionMask

Tensor = torch.Tensor


Backend = Callable[[Tensor, Tensor, Tensor, AttentionMask, float], Tensor]
_BACKENDS: dict[str, Backend] = {}
_AVAILABLE: dict[str, Callable[[Tensor], bool]] = {}
# Order in which "auto" tries backends on CUDA; CPU always uses sdpa.
AUTO_ORDER_CUDA = ["triton", "flex", "sdpa"]


def register_backend(name: str, fn: Backend, available: Optional[Callable[[Tensor], bool]] = None) -> None:
    """Add an attention backend ``fn(q, k, v, mask, scale) -> out``; ``available(q)`` says if it can run."""
    _BACKENDS[name] = fn
    _AVAILABLE[name] = available or (lambda q: True)


def backends() -> list[str]:
    """Names of the registered backends."""
    return sorted(_BACKENDS)


def resolve_backend(name: str, q: Tensor) -> str:
    """Turn ``"auto"`` into a concrete backend for ``q``'s device; check that a named one exists."""
    if name == "auto":
        if q.is_cuda:
            for cand in AUTO_ORDER_CUDA:
                if cand in _BACKENDS and _AVAILABLE[cand](q):
                    return cand
        return "sdpa"
    if name not in _BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; available: {sorted(_BACKENDS)}")
    if not _AVAILABLE[name](q):
        raise ValueError(f"attention backend {name!r} cannot run on {q.device} / {q.dtype}; try 'sdpa'")
    return name


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Optional[AttentionMask] = None,
    backend: str = "auto",
    scale: Optional[float] = None,
) -> Tensor:
    """Multi-head attention with grouped KV heads.

    Args:
        q: [batch, n_heads, Sq, head_dim]
        k, v: [batch, n_kv_heads, Skv, head_dim]; n_heads must be a multiple of n_kv_heads.
        mask: description of visibility (default: plain causal).
        backend: "auto" or a registered backend name.
        scale: softmax scale (default 1/sqrt(head_dim)).
    Returns:
        [batch, n_heads, Sq, head_dim]
    """
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"n_heads={q.shape[1]} is not a multiple of n_kv_heads={k.shape[1]}")
    mask = mask if mask is not None else AttentionMask()
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    return _BACKENDS[resolve_backend(backend, q)](q, k, v, mask, scale)


def _repeat_kv(x: Tensor, groups: int) -> Tensor:
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def reference_attention(q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask, scale: float) -> Tensor:
    """Plain math in float32: softmax(q k^T * scale + mask) v. Rows with no visible key give 0."""
    groups = q.shape[1] // k.shape[1]
    k, v = _repeat_kv(k, groups), _repeat_kv(v, groups)
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    visible = mask.dense(q.shape[0], q.shape[2], k.shape[2], q.device)
    scores = scores.masked_fill(~visible, float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return torch.matmul(probs, v.float()).to(q.dtype)


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask, scale: float) -> Tensor:
    """torch SDPA; plain causal uses is_causal (flash/cuDNN kernels), other masks a dense bool mask."""
    gqa = q.shape[1] != k.shape[1]
    if mask.is_plain_causal and q.shape[2] == k.shape[2]:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
    if not mask.causal and mask.document_ids is None and mask.span_ids is None and mask.sliding_window is None:
        return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=gqa)
    visible = mask.dense(q.shape[0], q.shape[2], k.shape[2], q.device)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=visible, scale=scale, enable_gqa=gqa)
    # Fully masked query rows (padding) come back as NaN from some kernels: define them as 0.
    return out.masked_fill(~visible.any(-1, keepdim=True), 0.0)


register_backend("reference", reference_attention)
register_backend("sdpa", sdpa_attention)
# The kernels' backends (flex, triton: those this machine can import, see omni/kernels/__init__.py).
for _name, (_fn, _available) in KERNEL_BACKENDS.items():
    register_backend(_name, _fn, _available)
