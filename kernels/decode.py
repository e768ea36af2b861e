"""Decode attention: a few new queries per row against a long static KV cache (flash-decoding).

The cache is read in place in the decoder's layout (:class:`omni.model.decoder.KVCache`: k, v
[batch, n_kv_heads, max_len, head_dim]). The key axis is split into ``n_splits`` chunks; one program
per (chunk, batch x kv-head) stacks the ``groups x Sq`` queries that share the kv head into one
[rows, D] tile (GQA: the cache is read once per kv head, not once per query head) and runs the same
online softmax as the training kernel. A second small kernel merges the chunks with their
log-sum-exps. Each row stops at its own last written position ``q_offset[b] + Sq - 1``, read on the
device, so no host sync is needed and the launch can be captured in a CUDA graph.
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import torch
import triton
import triton.language as tl

from omni.kernels.tiles import LOG2E, MaskArgs, check_head_dim, fwd_tile, interpreting, lastdim_contiguous, row_ids
from omni.nn.mask import AttentionMask

Tensor = torch.Tensor


@triton.jit
def _decode_split_kernel(Q, K, V, OP, LP, QOFF, DOC, SPAN,
                         qk_scale, window, q_len, kv_len, n_kv_heads, groups, chunk, n_splits,
                         stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_ks,
                         stride_vb, stride_vh, stride_vs,
                         HEAD_DIM: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
                         CAUSAL: tl.constexpr, HAS_DOC: tl.constexpr, HAS_SPAN: tl.constexpr,
                         HAS_WINDOW: tl.constexpr):
    pid_s = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // n_kv_heads
    hk = pid_bh % n_kv_heads
    rows = tl.arange(0, BLOCK_R)  # row r = query head (hk * groups + r // q_len), query r % q_len
    g = rows // q_len
    i = rows % q_len
    row_ok = rows < groups * q_len
    offs_d = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + b * stride_qb + (hk * groups + g)[:, None] * stride_qh + i[:, None] * stride_qs
                + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    q_pos, DOC, SPAN, q_doc, q_span = row_ids(QOFF, DOC, SPAN, b, i, kv_len, HAS_DOC, HAS_SPAN)
    qoff = tl.load(QOFF + b)
    K = K + b * stride_kb
    V = V + b * stride_vb
    lo = pid_s * chunk
    hi = tl.minimum(tl.minimum(lo + chunk, kv_len), qoff + q_len)  # nothing past the last written key
    m_i = tl.full([BLOCK_R], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_R], tl.float32)
    acc = tl.zeros([BLOCK_R, HEAD_DIM], tl.float32)
    for start_n in range(lo, hi, BLOCK_N):
        acc, l_i, m_i = fwd_tile(acc, l_i, m_i, q, q_pos, q_doc, q_span, K, V, DOC, SPAN, start_n,
                                  hk, stride_kh, stride_vh, stride_ks, stride_vs, hi, qk_scale, window,
                                  HEAD_DIM, BLOCK_N, True, CAUSAL, HAS_DOC, HAS_SPAN, HAS_WINDOW, False)
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    # Chunks with nothing visible get lse = -inf: weight 0 in the merge.
    lse = tl.where(l_i == 0.0, float("-inf"), m_i + tl.math.log2(l_safe))
    base = (pid_bh * n_splits + pid_s) * BLOCK_R + rows
    tl.store(OP + base[:, None] * HEAD_DIM + offs_d[None, :], acc / l_safe[:, None])
    tl.store(LP + base, lse)


@triton.jit
def _decode_merge_kernel(OP, LP, O, q_len, n_kv_heads, groups, n_splits,
                         stride_ob, stride_oh, stride_os,
                         HEAD_DIM: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr):
    pid_bh = tl.program_id(0)
    r = tl.program_id(1)
    b = pid_bh // n_kv_heads
    hk = pid_bh % n_kv_heads
    splits = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, HEAD_DIM)
    base = (pid_bh * n_splits + splits) * BLOCK_R + r
    lse = tl.load(LP + base, mask=splits < n_splits, other=float("-inf"))
    m = tl.max(lse, 0)
    w = tl.math.exp2(lse - tl.where(m == float("-inf"), 0.0, m))
    o = tl.load(OP + base[:, None] * HEAD_DIM + offs_d[None, :], mask=(splits < n_splits)[:, None], other=0.0)
    total = tl.sum(w, 0)
    out = tl.sum(o * w[:, None], 0) / tl.where(total == 0.0, 1.0, total)
    h = hk * groups + r // q_len
    tl.store(O + b * stride_ob + h * stride_oh + (r % q_len) * stride_os + offs_d, out.to(O.dtype.element_ty))


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


def _n_splits(work: int, kv_len: int, block_n: int, device: torch.device) -> int:
    """Enough chunks for about two programs per SM, never more than there are key tiles."""
    return max(1, min(-(-2 * _sm_count(device) // work), -(-kv_len // block_n), 128))


# The split kernel's launch on a GPU (omni.kernels.aot builds the same): 64 keys per step, 4 warps,
# 3 pipeline stages.
SPLIT_BLOCK_N, SPLIT_WARPS, SPLIT_STAGES = 64, 4, 3


def merge_warps(head_dim: int) -> int:
    """Warps of the merge kernel: one per 64 columns, so its [splits, head_dim] tile fits in registers."""
    return max(1, head_dim // 64)


def decode_attention(q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask, scale: Optional[float] = None) -> Tensor:
    """Attention of a few queries per row against a KV cache (inference only, no autograd).

    Args:
        q: [batch, n_heads, Sq, head_dim], Sq small (a decode step or a short chunk).
        k, v: [batch, n_kv_heads, max_len, head_dim]: the cache, read in place.
        mask: causal description with ``q_offset`` the [batch] position of each row's first query;
            keys past ``q_offset + Sq - 1`` are never read (they are not written yet).
    Returns:
        [batch, n_heads, Sq, head_dim]
    """
    if not mask.causal:
        raise ValueError("decode_attention reads keys up to each row's position: it needs a causal mask")
    b, h, sq, d = q.shape
    hk, skv = k.shape[1], k.shape[2]
    check_head_dim(d)
    q, k, v = (lastdim_contiguous(x) for x in (q, k, v))
    scale = scale if scale is not None else 1.0 / math.sqrt(d)
    groups = h // hk
    block_r = max(16, triton.next_power_of_2(groups * sq))
    block_n = 16 if interpreting() else SPLIT_BLOCK_N
    n_splits = _n_splits(b * hk, skv, block_n, q.device)
    chunk = -(-(-(-skv // n_splits)) // block_n) * block_n
    n_splits = -(-skv // chunk)
    ma = MaskArgs(mask, b, skv, q.device)
    o_part = torch.empty(b * hk, n_splits, block_r, d, dtype=torch.float32, device=q.device)
    l_part = torch.empty(b * hk, n_splits, block_r, dtype=torch.float32, device=q.device)
    _decode_split_kernel[(n_splits, b * hk)](
        q, k, v, o_part, l_part, ma.qoff, ma.doc, ma.span,
        scale * LOG2E, ma.window, sq, skv, hk, groups, chunk, n_splits,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
        HEAD_DIM=d, BLOCK_R=block_r, BLOCK_N=block_n, **ma.flags,
        num_warps=SPLIT_WARPS, num_stages=1 if interpreting() else SPLIT_STAGES,
    )
    out = torch.empty_like(q)
    _decode_merge_kernel[(b * hk, groups * sq)](
        o_part, l_part, out, sq, hk, groups, n_splits, *out.stride()[:3],
        HEAD_DIM=d, BLOCK_R=block_r, BLOCK_S=max(2, triton.next_power_of_2(n_splits)),
        num_warps=merge_warps(d),
    )
    return out
