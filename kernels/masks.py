"""Block-sparse structure of an :class:`~omni.nn.mask.AttentionMask`, computed from its ids.

The Triton kernels never see a dense mask. For tiles of ``block_m`` queries x ``block_n`` keys they get
two lists per query block (and, transposed, per key block): tiles that are *partially* visible (the
kernel evaluates the visibility rule element-wise) and tiles that are *fully* visible (no mask work at
all). Every other tile is skipped, so the cost follows the unmasked area.

A tile is classified from per-block summaries only (min/max of positions, document ids and positive
span ids), which is conservative: a tile marked empty has no visible pair, a tile marked full has only
visible pairs; anything undecided is partial. With i in [a, b] (query positions) and j in [c, d] (key
positions) of one tile:

* no shared document  if the document-id ranges of the two blocks do not overlap;
* no shared span      if the ranges of positive span ids do not overlap (or either block has none);
* some causal/window pair exists iff the interval i - j in [a - d, b - c] meets [0, W - 1]
  (without ``causal`` the lower bound is dropped, without a window the upper one);
* full iff one document on both sides and (all pairs causal and in-window: d <= a and b - c < W,
  or one span on both sides), and no key of the tile lies past the end of the sequence.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from omni.nn.mask import AttentionMask

Tensor = torch.Tensor

_BIG = 2**62


@dataclass
class BlockSparse:
    """Tile lists for one (mask, block_m, block_n): int32 tensors, shared by all heads.

    Row-major (for forward and dq: iterate keys of one query block):
        kv_cnt [B, nQ], kv_idx [B, nQ, nK] partial tiles; full_kv_cnt, full_kv_idx fully visible ones.
    Column-major (for dk/dv: iterate queries of one key block):
        q_cnt [B, nK], q_idx [B, nK, nQ]; full_q_cnt, full_q_idx.
    """

    block_m: int
    block_n: int
    kv_cnt: Tensor
    kv_idx: Tensor
    full_kv_cnt: Tensor
    full_kv_idx: Tensor
    q_cnt: Tensor
    q_idx: Tensor
    full_q_cnt: Tensor
    full_q_idx: Tensor

    def density(self) -> float:
        """Fraction of tiles the kernels visit (partial + full), for reports."""
        n_tiles = self.kv_idx.numel()
        return float((self.kv_cnt.sum() + self.full_kv_cnt.sum()) / max(n_tiles, 1))


def q_positions(mask: AttentionMask, batch: int, q_len: int, device: torch.device) -> Tensor:
    """Absolute query positions [batch, q_len] (long)."""
    ar = torch.arange(q_len, device=device)
    off = mask.q_offset
    if isinstance(off, Tensor):
        return off.to(device=device, dtype=torch.long).view(-1, 1).expand(batch, 1) + ar
    return (off + ar).view(1, -1).expand(batch, -1)


def q_offset_tensor(mask: AttentionMask, batch: int, device: torch.device) -> Tensor:
    """``mask.q_offset`` as a [batch] long tensor (what the kernels read)."""
    off = mask.q_offset
    if isinstance(off, Tensor):
        return off.to(device=device, dtype=torch.long).expand(batch).contiguous()
    return torch.full((batch,), int(off), dtype=torch.long, device=device)


def _block_range(x: Tensor, valid: Tensor, block: int) -> tuple[Tensor, Tensor]:
    """Per-block (min, max) of x [B, S] over entries where ``valid``; empty blocks give (BIG, -BIG)."""
    b, s = x.shape
    nb = -(-s // block)
    pad = nb * block - s
    x = torch.nn.functional.pad(x, (0, pad))
    valid = torch.nn.functional.pad(valid, (0, pad), value=False)
    x, valid = x.view(b, nb, block), valid.view(b, nb, block)
    lo = torch.where(valid, x, _BIG).amin(-1)
    hi = torch.where(valid, x, -_BIG).amax(-1)
    return lo, hi


def _overlap(alo: Tensor, ahi: Tensor, blo: Tensor, bhi: Tensor) -> Tensor:
    """[B, nQ, nK]: do the ranges [alo, ahi] (query blocks) and [blo, bhi] (key blocks) intersect."""
    return (alo[:, :, None] <= bhi[:, None, :]) & (blo[:, None, :] <= ahi[:, :, None])


def _lists(sel: Tensor) -> tuple[Tensor, Tensor]:
    """Compact a boolean [B, R, C] into (count [B, R], column indices [B, R, C]; selected first)."""
    cnt = sel.sum(-1, dtype=torch.int32)
    idx = (~sel).to(torch.int8).argsort(dim=-1, stable=True).to(torch.int32)
    return cnt.contiguous(), idx.contiguous()


def classify_tiles(
    mask: AttentionMask, batch: int, q_len: int, kv_len: int, block_m: int, block_n: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    """(any_visible, all_visible), both bool [B, nQ, nK], conservative as the module docstring says."""
    qpos = q_positions(mask, batch, q_len, device)
    kpos = torch.arange(kv_len, device=device).view(1, -1).expand(batch, -1)
    qvalid = torch.ones(batch, q_len, dtype=torch.bool, device=device)
    kvalid = torch.ones(batch, kv_len, dtype=torch.bool, device=device)
    a, b = _block_range(qpos, qvalid, block_m)  # query positions of each query block
    c, d = _block_range(kpos, kvalid, block_n)
    n_k = c.shape[1]
    lo_diff = a[:, :, None] - d[:, None, :]  # smallest i - j in the tile
    hi_diff = b[:, :, None] - c[:, None, :]  # largest i - j
    window = mask.sliding_window
    some = torch.ones_like(lo_diff, dtype=torch.bool)
    every = torch.ones_like(some)
    if mask.causal:
        some &= hi_diff >= 0
        every &= lo_diff >= 0
    if window is not None:
        some &= lo_diff < window
        every &= hi_diff < window
    qi = qpos.clamp(max=kv_len - 1)  # ids of a query are read at its (clamped) absolute position
    if mask.span_ids is not None:
        span = mask.span_ids[:, :kv_len].to(device=device, dtype=torch.long)
        sq = torch.gather(span, 1, qi)
        slo_q, shi_q = _block_range(sq, sq > 0, block_m)
        slo_k, shi_k = _block_range(span, span > 0, block_n)
        some |= _overlap(slo_q, shi_q, slo_k, shi_k)
        # One span on both sides: every pair is visible whatever causal/window say.
        one_q = (slo_q == shi_q)[:, :, None] & _block_range(sq, sq <= 0, block_m)[1].eq(-_BIG)[:, :, None]
        one_k = (slo_k == shi_k)[:, None, :] & _block_range(span, span <= 0, block_n)[1].eq(-_BIG)[:, None, :]
        every |= one_q & one_k & (slo_q[:, :, None] == slo_k[:, None, :])
    if mask.document_ids is not None:
        doc = mask.document_ids[:, :kv_len].to(device=device, dtype=torch.long)
        dq = torch.gather(doc, 1, qi)
        dlo_q, dhi_q = _block_range(dq, qvalid, block_m)
        dlo_k, dhi_k = _block_range(doc, kvalid, block_n)
        some &= _overlap(dlo_q, dhi_q, dlo_k, dhi_k)
        every &= ((dlo_q == dhi_q)[:, :, None] & (dlo_k == dhi_k)[:, None, :]
                  & (dlo_q[:, :, None] == dlo_k[:, None, :]))
    if kv_len % block_n:  # the last key block has padding keys: never "full"
        tail = torch.zeros(n_k, dtype=torch.bool, device=device)
        tail[-1] = True
        every &= ~tail
    every &= some
    return some, every


def block_sparse(
    mask: AttentionMask, batch: int, q_len: int, kv_len: int, block_m: int, block_n: int, device: torch.device
) -> BlockSparse:
    """Tile lists for the kernels (see :class:`BlockSparse`); cached while the mask's ids are unchanged."""
    key = ("bs", batch, q_len, kv_len, block_m, block_n, str(device))

    def build() -> BlockSparse:
        some, every = classify_tiles(mask, batch, q_len, kv_len, block_m, block_n, device)
        partial = some & ~every
        kv_cnt, kv_idx = _lists(partial)
        fkv_cnt, fkv_idx = _lists(every)
        q_cnt, q_idx = _lists(partial.transpose(1, 2))
        fq_cnt, fq_idx = _lists(every.transpose(1, 2))
        return BlockSparse(block_m, block_n, kv_cnt, kv_idx, fkv_cnt, fkv_idx, q_cnt, q_idx, fq_cnt, fq_idx)

    return cached(mask, key, build)


# ---- a small cache keyed by the mask's tensors -------------------------------------------------
# Every layer of a model calls attention with the same mask object, so block structure is built once
# per step. Tensors are held by weak reference and checked with their version counter, so an id
# tensor that is freed or modified in place never returns a stale entry.
_CACHE: dict[Any, tuple[list, Any]] = {}
_CACHE_SIZE = 8


def _tensor_key(t: Optional[Tensor]) -> Any:
    return None if t is None else (id(t), t._version, tuple(t.shape), str(t.device))


def cached(mask: AttentionMask, key: tuple, build: Callable[[], Any]) -> Any:
    """``build()``'s result, reused while the mask's fields (and ``key``) are unchanged."""
    tensors = [t for t in (mask.document_ids, mask.span_ids, mask.q_offset) if isinstance(t, Tensor)]
    full_key = key + (
        mask.causal, mask.sliding_window, _tensor_key(mask.document_ids), _tensor_key(mask.span_ids),
        _tensor_key(mask.q_offset) if isinstance(mask.q_offset, Tensor) else mask.q_offset,
    )
    hit = _CACHE.get(full_key)
    if hit is not None and all(r() is t for r, t in zip(hit[0], tensors)):
        return hit[1]
    value = build()
    if len(_CACHE) >= _CACHE_SIZE:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[full_key] = ([weakref.ref(t) for t in tensors], value)
    return value


def packed_multimodal_mask(
    batch: int, seq: int, n_docs: int, span_len: int, device: torch.device | str = "cpu",
    generator: Optional[torch.Generator] = None,
) -> AttentionMask:
    """A packed training row: ``n_docs`` documents per row, one bidirectional span of ``span_len``
    tokens (an image) inside each. Equal documents and centred spans by default; with a generator
    the document boundaries and span places are random per row (ragged packing).

    Returns an AttentionMask with document_ids and span_ids [batch, seq] (span ids unique per row).
    """
    doc = torch.empty(batch, seq, dtype=torch.long)
    span = torch.zeros(batch, seq, dtype=torch.long)
    for b in range(batch):
        if generator is None:
            cuts = [seq * i // n_docs for i in range(n_docs + 1)]
        else:
            inner = torch.randperm(seq - 1, generator=generator)[: n_docs - 1] + 1
            cuts = [0] + sorted(inner.tolist()) + [seq]
        for d in range(n_docs):
            lo, hi = cuts[d], cuts[d + 1]
            doc[b, lo:hi] = d
            n = min(span_len, hi - lo)
            if generator is None:
                start = lo + (hi - lo - n) // 2
            else:
                start = lo + int(torch.randint(0, hi - lo - n + 1, (1,), generator=generator))
            span[b, start:start + n] = d + 1
    return AttentionMask(document_ids=doc.to(device), span_ids=span.to(device))
