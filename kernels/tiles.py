"""What the flash kernels (flash.py) and the decode kernel (decode.py) share: the mask rule and tile
loads on the device, one online-softmax step over a key tile, and the mask arguments on the host."""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from omni.kernels.masks import q_offset_tensor
from omni.nn.mask import AttentionMask

Tensor = torch.Tensor
LOG2E = 1.4426950408889634


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU through its interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on")


# ---- device code ---------------------------------------------------------------------------------
@triton.jit
def pair_visible(qp, kp, q_doc, k_doc, q_span, k_span, kv_len, window,
             CAUSAL: tl.constexpr, HAS_DOC: tl.constexpr, HAS_SPAN: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """The AttentionMask rule, bool, broadcast from its operands: query positions and ids shaped [M, 1]
    against keys [1, N] give [M, N] (query-major tiles); [1, M] against [N, 1] give [N, M] (key-major)."""
    vis = kp < kv_len
    if CAUSAL:
        ok = kp <= qp
    else:
        ok = kp >= 0
    same_span = kp < 0
    if HAS_SPAN:
        same_span = (q_span == k_span) & (q_span > 0)
        ok = ok | same_span
    if HAS_WINDOW:
        ok = ok & ((qp - kp < window) | same_span)
    if HAS_DOC:
        ok = ok & (q_doc == k_doc)
    return vis & ok


@triton.jit
def load_ids(ID, pos, kv_len, HAS: tl.constexpr):
    """ids [S] at positions pos >= 0, 0 past the last key (keys there are never visible), or zeros when
    the mask has no such ids. A masked load, not clamped addresses: a key tile's contiguous positions
    then load as vectors (clamped, they were one 4-byte copy per id, and the sm_90 forward needed up to
    50 more registers)."""
    if HAS:
        return tl.load(ID + pos, mask=pos < kv_len, other=0)
    else:
        return tl.zeros(pos.shape, tl.int32)


@triton.jit
def query_id_pos(q_pos, kv_len):
    """Where a query's ids are read: its position clamped into the keys, as AttentionMask.dense does."""
    return tl.minimum(tl.maximum(q_pos, 0), kv_len - 1)


@triton.jit
def key_tile_visible(q_pos, q_doc, q_span, DOC, SPAN, offs_n, kv_len, window,
                      CAUSAL: tl.constexpr, HAS_DOC: tl.constexpr, HAS_SPAN: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """[M, N] bool for a query-major tile (forward, dq): queries [M] (positions, ids) against the keys at
    offs_n [N], whose ids are loaded here."""
    k_doc = load_ids(DOC, offs_n, kv_len, HAS_DOC)
    k_span = load_ids(SPAN, offs_n, kv_len, HAS_SPAN)
    return pair_visible(q_pos[:, None], offs_n[None, :], q_doc[:, None], k_doc[None, :], q_span[:, None],
                    k_span[None, :], kv_len, window, CAUSAL, HAS_DOC, HAS_SPAN, HAS_WINDOW)


@triton.jit
def rows_source(PTR, n_heads, head_stride, n_rows, stride, BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr,
                 USE_TMA: tl.constexpr):
    """What load_rows reads one batch row's [n_heads, n_rows, HEAD_DIM] tensor through: its pointer,
    or (USE_TMA) a tensor descriptor over it, made once per program, whose TMA loads zero-fill rows
    past n_rows."""
    if USE_TMA:
        return tl.make_tensor_descriptor(PTR, shape=[n_heads, n_rows, HEAD_DIM], strides=[head_stride, stride, 1],
                                         block_shape=[1, BLOCK, HEAD_DIM])
    else:
        return PTR


@triton.jit
def load_rows(SRC, head, start, rows, cols, head_stride, stride, n_rows, MASKED: tl.constexpr,
               USE_TMA: tl.constexpr):
    """Tile [len(rows), len(cols)] (rows = start + arange) of head ``head`` behind SRC (rows_source);
    rows past n_rows read as 0 in partial tiles. Fully visible tiles never reach past the last key
    (masks.py), so their pointer loads skip the check."""
    if USE_TMA:
        return SRC.load([head, start, 0]).reshape(rows.shape[0], cols.shape[0])
    else:
        ptrs = SRC + head * head_stride + rows[:, None] * stride + cols[None, :]
        if MASKED:
            return tl.load(ptrs, mask=rows[:, None] < n_rows, other=0.0)
        else:
            return tl.load(ptrs)


@triton.jit
def row_ids(QOFF, DOC, SPAN, b, offs, kv_len, HAS_DOC: tl.constexpr, HAS_SPAN: tl.constexpr):
    """Row b's query positions q_offset[b] + offs, its id rows, and the queries' ids."""
    q_pos = tl.load(QOFF + b) + offs
    DOC = DOC + b * kv_len
    SPAN = SPAN + b * kv_len
    at = query_id_pos(q_pos, kv_len)
    return q_pos, DOC, SPAN, load_ids(DOC, at, kv_len, HAS_DOC), load_ids(SPAN, at, kv_len, HAS_SPAN)


@triton.jit
def fwd_tile(acc, l_i, m_i, q, q_pos, q_doc, q_span, K, V, DOC, SPAN, start_n,
              hk, stride_kh, stride_vh, stride_ks, stride_vs, kv_len, qk_scale, window,
              HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
              CAUSAL: tl.constexpr, HAS_DOC: tl.constexpr, HAS_SPAN: tl.constexpr, HAS_WINDOW: tl.constexpr,
              USE_TMA: tl.constexpr):
    """One online-softmax step over keys [start_n, start_n + BLOCK_N) (base-2 exponentials)."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    k = load_rows(K, hk, start_n, offs_n, offs_d, stride_kh, stride_ks, kv_len, MASKED, USE_TMA)
    s = tl.dot(q, tl.trans(k))
    if MASKED:
        vis = key_tile_visible(q_pos, q_doc, q_span, DOC, SPAN, offs_n, kv_len, window,
                                CAUSAL, HAS_DOC, HAS_SPAN, HAS_WINDOW)
        s = tl.where(vis, s, float("-inf"))
    # The row max of the raw scores, scaled (qk_scale > 0), so that each score costs one FMA below
    # (spelled out: Triton's FP fusion default may change, TRITON_DEFAULT_FP_FUSION).
    m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet
    p = tl.math.exp2(tl.fma(s, qk_scale, -m_safe[:, None]))
    alpha = tl.math.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    v = load_rows(V, hk, start_n, offs_n, offs_d, stride_vh, stride_vs, kv_len, MASKED, USE_TMA)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
    return acc, l_i, m_new


# ---- host side -----------------------------------------------------------------------------------
class MaskArgs:
    """What the kernels read of an AttentionMask: ids as int32 [B, Skv] (dummies when absent), offsets."""

    def __init__(self, mask: AttentionMask, batch: int, kv_len: int, device: torch.device) -> None:
        self.qoff = q_offset_tensor(mask, batch, device)
        # Absent ids are never read (HAS_DOC / HAS_SPAN are compile-time flags): any pointer will do,
        # and reusing one saves a launch per call (it matters for decode steps).
        self.doc = self.qoff if mask.document_ids is None else kv_ids(mask.document_ids, batch, kv_len, device)
        self.span = self.qoff if mask.span_ids is None else kv_ids(mask.span_ids, batch, kv_len, device)
        self.window = mask.sliding_window or 0
        self.flags = dict(CAUSAL=mask.causal, HAS_DOC=mask.document_ids is not None,
                          HAS_SPAN=mask.span_ids is not None, HAS_WINDOW=mask.sliding_window is not None)


def kv_ids(ids: Tensor, batch: int, kv_len: int, device: torch.device) -> Tensor:
    if ids.shape[1] < kv_len:
        raise ValueError(f"mask ids cover {ids.shape[1]} positions but the keys have {kv_len}")
    return ids[:, :kv_len].to(device=device, dtype=torch.int32).expand(batch, kv_len).contiguous()


def lastdim_contiguous(x: Tensor) -> Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def check_head_dim(d: int) -> None:
    if d < 16 or d > 256 or d & (d - 1):
        raise ValueError(f"triton attention needs a power-of-two head_dim in [16, 256], got {d}; use 'sdpa'")
