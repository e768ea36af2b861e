"""Finite scalar quantisation (Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made
Simple"): :class:`FSQ` rounds each latent channel to one of a few levels (image and video tokenizers);
:class:`ResidualFSQ` stacks K of them on the residual (the speech codec). No learned codebook."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from omni.config import ConfigError
from omni.nn.causal import pointwise_conv

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


def fsq_levels(codebook_size: int) -> list[int]:
    """Split ``codebook_size`` into FSQ levels of ~4-8 values each (1024 -> [8, 8, 4, 4], 2048 ->
    [8, 8, 8, 4], 1000 -> [8, 5, 5, 5]): prime factors, largest first, each multiplied into the
    smallest group so far; about one dimension per log2(6) bits."""
    primes, n, p = [], codebook_size, 2
    while n > 1:
        while n % p == 0:
            primes.append(p)
            n //= p
        p += 1
    if not primes or max(primes) > 16:
        raise ConfigError(f"codec.codebook_size={codebook_size} must factor into primes <= 16 (FSQ levels); use e.g. 1024 or 1000")
    groups = [1] * max(1, round(math.log(codebook_size) / math.log(6)))
    for p in sorted(primes, reverse=True):
        groups[groups.index(min(groups))] *= p
    return sorted(groups, reverse=True)


class ResidualFSQ(nn.Module):
    """K finite-scalar-quantiser levels, each quantising the residual the previous ones left.

    Level i projects the residual ``[B, dim, T]`` to ``len(levels)`` scalars (1x1 conv), standardises
    them (batch statistics in training, running ones in eval), rounds each to one of ``levels[j]``
    values (:class:`FSQ`: sigmoid-bounded, straight-through gradient) and projects back.
    There is no learned codebook, so nothing can go dead whatever the batch size. The standardisation
    keeps the codes alive whatever the encoder's output scale (unnormalised, at lr 3e-3, it grew
    from 0.07 to 450 in 200 steps and every sigmoid saturated: one code per level).
    ``sigmoid(1.7 x)`` is close to the normal CDF, so standardised inputs fill the levels about
    uniformly. In eval the statistics are constants, so a frame's code never depends on the other
    frames of its batch or chunk (streaming stays exact).
    """

    def __init__(self, dim: int, num_codebooks: int, codebook_size: int, momentum: float = 0.05) -> None:
        super().__init__()
        self.fsq = FSQ(fsq_levels(codebook_size))
        self.momentum = momentum
        d, k = len(self.fsq.levels), num_codebooks
        self.proj_in = nn.ModuleList(nn.Conv1d(dim, d, 1) for _ in range(k))
        self.proj_out = nn.ModuleList(nn.Conv1d(d, dim, 1) for _ in range(k))
        self.register_buffer("mean", torch.zeros(k, d, 1))
        self.register_buffer("std", torch.ones(k, d, 1))
        self.register_buffer("initialized", torch.tensor(False))

    def _standardise(self, i: int, u: Tensor) -> Tensor:
        """u [B, d, T] of level i -> ``1.7 (u - mean) / std``: the batch's statistics in training, with
        their gradient (as in batch norm, so the encoder gains nothing by growing its scale: with
        detached statistics its output grew to std 1e7 in 200 steps), the running ones in eval."""
        if self.training:
            mean, std = u.mean((0, 2))[:, None], u.std((0, 2), correction=0)[:, None].clamp(min=1e-5)
            with torch.no_grad():
                m = 1.0 if not bool(self.initialized) else self.momentum  # first batch sets them
                self.mean[i].lerp_(mean, m)
                self.std[i].lerp_(std, m)
        else:
            mean, std = self.mean[i], self.std[i]
        return (u - mean) / std * 1.7

    def forward(self, x: Tensor, n_q: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """x [B, dim, T] -> (quantised [B, dim, T] with straight-through gradient, codes [B, K, T]).

        ``n_q`` [B] (training): example b's output sums only its first n_q[b] levels (quantiser
        dropout); the residual chain runs through every level, so later levels keep training.
        """
        residual, out, codes = x, torch.zeros_like(x), []
        for i, (p_in, p_out) in enumerate(zip(self.proj_in, self.proj_out)):
            values, c = self.fsq.quantize(self._standardise(i, p_in(residual)))
            q = p_out(values)
            residual = residual - q.detach()
            out = out + (q if n_q is None else q * (i < n_q).to(q.dtype)[:, None, None])
            codes.append(c)
        if self.training:
            self.initialized.fill_(True)
        return out, torch.stack(codes, 1)

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """x [B, dim, T] -> codes [B, K, T]. The residual subtracts the exact decoded value of each
        level (not the straight-through sum, which can differ in the last bit)."""
        residual, codes = x, []
        for i, p_in in enumerate(self.proj_in):
            c = self.fsq.quantize(self._standardise(i, pointwise_conv(p_in, residual)))[1]
            residual = residual - self._level(i, c)
            codes.append(c)
        return torch.stack(codes, 1)

    def _level(self, i: int, codes: Tensor) -> Tensor:
        """codes [B, T] of level i -> its contribution [B, dim, T]."""
        return pointwise_conv(self.proj_out[i], self.fsq.values(codes))

    def decode(self, codes: Tensor) -> Tensor:
        """codes [B, k <= K, T] -> [B, dim, T] (fewer codebooks = lower bitrate)."""
        return sum(self._level(i, codes[:, i]) for i in range(codes.shape[1]))
