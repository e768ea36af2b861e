"""Attention kernels: backends of :func:`omni.model.attention.attention`, listed in KERNEL_BACKENDS.

* ``flex``: torch FlexAttention with a mask_mod built from the AttentionMask description;
* ``triton``: this package's Triton kernels (flash forward/backward with block-sparse tile skipping,
  and a split-KV decode kernel that the backend picks for a few queries against a KV cache).

``omni.model.attention`` imports :data:`KERNEL_BACKENDS` and registers them; without triton the ``triton``
backend is simply not listed. This package imports nothing from omni.model (AttentionMask is in omni.nn).
"""
from __future__ import annotations

import os
from typing import Callable

import torch

from omni.nn.mask import AttentionMask

Tensor = torch.Tensor

# name -> (backend(q, k, v, mask, scale) -> out, available(q) -> bool), for omni.model.attention.
KERNEL_BACKENDS: dict[str, tuple[Callable[..., Tensor], Callable[[Tensor], bool]]] = {}

# At most this many query positions per row go to the decode kernel (a step or a short chunk).
DECODE_MAX_Q = 16


def _flex_available(q: Tensor) -> bool:
    return q.dtype in (torch.float16, torch.bfloat16, torch.float32)


try:
    from omni.kernels.flex import flex_backend

    KERNEL_BACKENDS["flex"] = (flex_backend, _flex_available)
except ImportError:  # torch without FlexAttention
    pass

try:
    from omni.kernels.decode import decode_attention
    from omni.kernels.flash import flash_attention
except ImportError:  # no triton: leave the backend out
    pass
else:

    def triton_available(q: Tensor) -> bool:
        """Triton runs on CUDA, or on CPU through its interpreter (TRITON_INTERPRET=1)."""
        d = q.shape[-1]
        if d < 16 or d > 256 or d & (d - 1):
            return False
        if q.is_cuda:
            return q.dtype in (torch.float16, torch.bfloat16, torch.float32)
        return os.environ.get("TRITON_INTERPRET") == "1"

    def triton_backend(q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask, scale: float) -> Tensor:
        """The "triton" backend: decode kernel for a few cached-position queries, flash kernels otherwise."""
        decode = (
            isinstance(mask.q_offset, Tensor)
            and mask.causal
            and q.shape[2] <= DECODE_MAX_Q
            and not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad))
        )
        if decode:
            return decode_attention(q, k, v, mask, scale)
        return flash_attention(q, k, v, mask, scale)

    KERNEL_BACKENDS["triton"] = (triton_backend, triton_available)
