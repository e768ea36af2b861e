"""Finite scalar quantisation (Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made
Simple"): :class:`FSQ` rounds each latent channel to one of a few levels (image and video
tokenizers). No learned codebook."""
from __future__ import annotations

import math

import torch
from torch import nn

Tensor = torch.Tensor


class FSQ(nn.Module):
    """Finite scalar quantiser: ``[B, d, ...]`` latents -> ids ``[B, ...]`` in ``[0, prod(levels))``."""

    def __init__(self, levels: list[int]) -> None:
        super().__init__()
        self.levels = list(levels)
        self.register_buffer("_levels", torch.tensor(levels, dtype=torch.float32), persistent=False)
        radix = [math.prod(levels[:i]) for i in range(len(levels))]
        self.register_buffer("_radix", torch.tensor(radix, dtype=torch.long), persistent=False)

    @property
    def size(self) -> int:
        return math.prod(self.levels)

    def _shape(self, t: Tensor, z: Tensor) -> Tensor:
        return t.view(1, -1, *([1] * (z.dim() - 2)))

    def quantize(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """z [B, d, ...] -> (values in [-1, 1] with straight-through gradient [B, d, ...], ids [B, ...])."""
        top = self._shape(self._levels, z) - 1
        bounded = torch.sigmoid(z) * top  # in [0, L-1]
        digits = torch.round(bounded)
        ids = (digits.long() * self._shape(self._radix, z)).sum(1)
        digits = bounded + (digits - bounded).detach()
        return digits / top * 2 - 1, ids

    def values(self, ids: Tensor) -> Tensor:
        """ids [B, ...] -> values [B, d, ...] in [-1, 1] (what the decoder consumes)."""
        if ids.numel() and (ids.min() < 0 or ids.max() >= self.size):
            raise ValueError(f"token ids must lie in [0, {self.size})")
        ids = ids.unsqueeze(1)  # [B, 1, ...]
        levels = self._shape(self._levels, ids)
        digits = (ids // self._shape(self._radix, ids)) % levels.long()
        return digits.float() / (levels - 1) * 2 - 1
