"""Residual vector quantiser whose codebooks are fitted by residual k-means.

Level 1 clusters the vectors with k-means (Lloyd's algorithm); level i clusters what levels < i
left (the residuals). A vector's code at each level is its nearest codeword (squared Euclidean
distance), and its reconstruction from the first k levels is the sum of their codewords, so any
prefix of the K codes decodes on its own (coarser, at k/K of the bitrate). This is the residual
quantiser of Juang and Gray, "Multiple stage vector quantization for speech coding" (ICASSP 1982),
which SoundStream and EnCodec train by gradient; here the codebooks are fitted once and then fixed.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from tqdm import tqdm

Tensor = torch.Tensor


def _nearest(x: Tensor, codebook: Tensor) -> Tensor:
    """Index of the nearest row of ``codebook`` [C, D] for each row of ``x`` [N, D] -> [N] long."""
    return ((codebook * codebook).sum(1)[None] - 2 * x @ codebook.T).argmin(1)


def kmeans(x: Tensor, k: int, iters: int, generator: torch.Generator) -> Tensor:
    """Lloyd's k-means of ``x`` [N, D] into ``k`` centroids [k, D], initialised with k distinct random
    rows; a centroid left without members is moved onto the point its cluster model fits worst."""
    if x.shape[0] < k:
        raise ValueError(f"k-means needs at least k={k} vectors, got {x.shape[0]}; use more training audio")
    centroids = x[torch.randperm(x.shape[0], generator=generator)[:k]].clone()
    for _ in range(iters):
        assign = _nearest(x, centroids)
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        dead = counts == 0
        centroids = torch.where(dead[:, None], centroids, sums / counts.clamp(min=1)[:, None].to(x.dtype))
        if dead.any():
            error = (x - centroids[assign]).pow(2).sum(1)
            centroids[dead] = x[error.topk(int(dead.sum())).indices]
    return centroids


class ResidualVQ(nn.Module):
    """K levels of ``codebook_size`` codewords of ``dim`` values (buffer ``codebooks`` [K, C, dim]).

    ``encode`` picks codes in float64, so a frame's codes do not depend on how many frames share the
    call (float32 matmuls round differently with their size, which could flip a near tie between a
    streamed and an offline encoding).
    """

    def __init__(self, dim: int, num_codebooks: int, codebook_size: int) -> None:
        super().__init__()
        # Random (unit-variance level 1, halving per level) until fit(): an unfitted quantiser still
        # spreads vectors over its codes, as an untrained network would.
        scale = 0.5 ** torch.arange(num_codebooks, dtype=torch.float32)[:, None, None]
        self.register_buffer("codebooks", torch.randn(num_codebooks, codebook_size, dim) * scale)

    @property
    def num_codebooks(self) -> int:
        return self.codebooks.shape[0]

    @torch.no_grad()
    def fit(self, x: Tensor, iters: int = 12, seed: int = 0, progress: bool = True) -> list[float]:
        """Residual k-means on ``x`` [N, dim]: fills every level's codebook; returns the mean squared
        residual left after each level (a falling list)."""
        generator = torch.Generator().manual_seed(seed)
        residual, errors = x.float().clone(), []
        for level in tqdm(range(self.num_codebooks), desc="residual k-means", unit="level", disable=not progress):
            book = kmeans(residual, self.codebooks.shape[1], iters, generator)
            residual -= book[_nearest(residual, book)]
            self.codebooks[level] = book.to(self.codebooks)
            errors.append(residual.pow(2).mean().item())
        return errors

    @torch.no_grad()
    def encode(self, z: Tensor) -> Tensor:
        """z [B, dim, T] -> codes [B, K, T] long."""
        b, d, t = z.shape
        residual = z.double().transpose(1, 2).reshape(b * t, d)
        codes = []
        for book in self.codebooks.double():
            c = _nearest(residual, book)
            residual = residual - book[c]
            codes.append(c)
        return torch.stack(codes, 1).reshape(b, t, -1).transpose(1, 2)

    def decode(self, codes: Tensor) -> Tensor:
        """codes [B, k, T] (the first k <= K levels) -> the sum of their codewords [B, dim, T]."""
        k = codes.shape[1]
        books = self.codebooks[:k]  # [k, C, dim]
        levels = torch.arange(k, device=codes.device)[None, :, None]
        return books[levels, codes].sum(1).transpose(1, 2)

    def forward(self, z: Tensor, n_q: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """z [B, dim, T] -> (reconstruction [B, dim, T], codes [B, K, T]). ``n_q`` [B] (training):
        example b is reconstructed from its first n_q[b] levels only (quantiser dropout, so that
        prefixes of the codes decode well). No gradient flows to ``z`` or the fixed codebooks."""
        codes = self.encode(z)
        values = self.codebooks[torch.arange(self.num_codebooks, device=z.device)[None, :, None], codes]  # [B, K, T, dim]
        if n_q is not None:
            values = values * (torch.arange(self.num_codebooks, device=z.device)[None, :] < n_q[:, None]).to(values.dtype)[:, :, None, None]
        return values.sum(1).transpose(1, 2).to(z.dtype), codes
