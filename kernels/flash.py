"""Triton flash attention (FlashAttention-2 style) for the described mask family, forward + backward.

Forward: one program per (query block, batch x head) runs an online softmax (base 2, log2(e) folded
into the scale, fp32 accumulation) over the key tiles that :mod:`omni.kernels.masks` lists for its
query block: partially visible tiles evaluate the visibility rule element-wise, fully visible ones
skip it, hidden ones are never touched. It saves the log-sum-exp (base 2) per query.

Backward (recomputation, no atomics): ``dk, dv`` with one program per (key block, batch x kv-head)
that loops over the query heads of its GQA group and the query tiles of the transposed tile list,
computing key-major (transposed) probabilities so the key block is every product's M dimension;
``dq`` with one program per (query block, batch x head) over the key tiles; delta = rowsum(dO * O)
by a small kernel that reads the half-precision tensors once.

Queries sit at absolute positions ``q_offset[b] + arange(Sq)`` (a [B] tensor), so the same kernels
serve training, prefill into a KV cache and scoring. Rows with no visible key output 0.

The tiles a program streams (K/V in the forward and dq kernels, Q/dO in dk/dv) arrive by pointer
loads (``cp.async`` once pipelined) or, on sm_90+, through TMA descriptors (``USE_TMA``:
OMNI_ATTENTION_TMA=1 or ``flash_attention(tma=True)``).
"""
from __future__ import annotations

import math
import os
from typing import Optional

import torch
import triton
import triton.language as tl

from omni.kernels.masks import block_sparse
from omni.kernels.tiles import (LOG2E, MaskArgs, check_head_dim, fwd_tile, interpreting, key_tile_visible,
                                 lastdim_contiguous, load_ids, load_rows, pair_visible, query_id_pos, row_ids,
                                 rows_source)
from omni.nn.mask import AttentionMask

Tensor = torch.Tensor


# (num_warps, num_stages) the autotuner tries on Hopper, default first. With the block sizes below and
# head dims up to 128, none spills a register on sm_90 under Triton 3.9; under 3.6, dk/dv at D=128
# spills 16-24 B at 3 and 4 stages, and 24-136 B with TMA loads (`python -m omni.kernels.aot [--tma]`
# builds and lists them). 4 warps spill at these blocks, so they are not offered.
HOPPER_CONFIGS = {
    "fwd": [(8, 3), (8, 4), (8, 2)],
    "dkdv": [(8, 2), (8, 3), (8, 4)],
    "dq": [(8, 3), (8, 2), (8, 4)],
}


def tuning_choices(kernel: str, capability_major: int) -> list[tuple[int, int]]:
    """(num_warps, num_stages) the autotuner tries for ``kernel`` on a GPU of this compute capability:
    the Hopper list on sm_9x, one sane default elsewhere (its first warps, 2 stages)."""
    options = HOPPER_CONFIGS[kernel]
    return options if capability_major == 9 else [(options[0][0], 2)]


def _configs(kernel: str) -> list[triton.Config]:
    """The autotuner's configs for this machine; one in the interpreter.

    OMNI_ATTENTION_AUTOTUNE=0 keeps only the first choice (tests: compile once per variant)."""
    if interpreting():
        return [triton.Config({}, num_warps=4, num_stages=1)]
    major = torch.cuda.get_device_capability()[0] if torch.cuda.is_available() else 0
    choices = tuning_choices(kernel, major)
    if os.environ.get("OMNI_ATTENTION_AUTOTUNE", "1") == "0":
        choices = choices[:1]
    return [triton.Config({}, num_warps=w, num_stages=s) for w, s in choices]


# Re-tune per power-of-two length bucket and per mask kind (which parts of the visibility rule are
# compiled in). Exact lengths would re-tune (a few hundred ms) for every new prompt length at serving.
# The buckets are kernel arguments that only the autotuner reads, not specialised on by the JIT.
TUNE_KEY = ["tune_q_len", "tune_kv_len", "HEAD_DIM", "CAUSAL", "HAS_DOC", "HAS_SPAN", "HAS_WINDOW"]
TUNED = dict(do_not_specialize=["tune_q_len", "tune_kv_len"])


def tune_buckets(q_len: int, kv_len: int) -> dict[str, int]:
    """The autotuner's length key: each length rounded up to a power of two."""
    return dict(tune_q_len=triton.next_power_of_2(q_len), tune_kv_len=triton.next_power_of_2(kv_len))


def block_sizes(head_dim: int, kind: str) -> tuple[int, int]:
    """(block_m, block_n) for "fwd" (also dq) and "dkdv"; small in the interpreter so tests cross tiles."""
    if interpreting():
        return (32, 16) if kind == "fwd" else (16, 32)
    # Chosen with the sm_90 builds of python -m omni.kernels.aot (Triton 3.6, the GPU machines', and 3.9):
    # every product a wgmma, shared memory within sm_90's limit, no spill at the default stages for
    # head dims up to 128. dk/dv's 128 keys are the M dimension of all its products (key-major).
    if kind == "fwd":
        return (128, 64) if head_dim <= 128 else (64, 32)
    return (32, 128) if head_dim <= 128 else (16, 64)


# ---- forward -------------------------------------------------------------------------------------
@triton.autotune(configs=_configs("fwd"), key=TUNE_KEY + ["USE_TMA"])
@triton.jit(**TUNED)
def _fwd_kernel(Q, K, V, O, LSE, QOFF, DOC, SPAN,
                KV_CNT, KV_IDX, FKV_CNT, FKV_IDX,
                qk_scale, window, q_len, kv_len, n_heads, groups, n_qb, n_kb,
                stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_ks,
                stride_vb, stride_vh, stride_vs, stride_ob, stride_oh, stride_os,
                tune_q_len, tune_kv_len,
                HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                CAUSAL: tl.constexpr, HAS_DOC: tl.constexpr, HAS_SPAN: tl.constexpr, HAS_WINDOW: tl.constexpr,
                USE_TMA: tl.constexpr):
    # Last query blocks first: under a causal mask they see the most keys, so the grid ends on light ones.
    pid_m = n_qb - 1 - tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // n_heads
    h = pid_bh % n_heads
    hk = h // groups
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qs + offs_d[None, :],
                mask=offs_m[:, None] < q_len, other=0.0)
    q_pos, DOC, SPAN, q_doc, q_span = row_ids(QOFF, DOC, SPAN, b, offs_m, kv_len, HAS_DOC, HAS_SPAN)
    K = rows_source(K + b * stride_kb, n_heads // groups, stride_kh, kv_len, stride_ks, BLOCK_N, HEAD_DIM, USE_TMA)
    V = rows_source(V + b * stride_vb, n_heads // groups, stride_vh, kv_len, stride_vs, BLOCK_N, HEAD_DIM, USE_TMA)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    row = b * n_qb + pid_m
    for t in range(0, tl.load(KV_CNT + row)):
        start_n = tl.load(KV_IDX + row * n_kb + t) * BLOCK_N
        acc, l_i, m_i = fwd_tile(acc, l_i, m_i, q, q_pos, q_doc, q_span, K, V, DOC, SPAN, start_n,
                                  hk, stride_kh, stride_vh, stride_ks, stride_vs, kv_len, qk_scale, window,
                                  HEAD_DIM, BLOCK_N, True, CAUSAL, HAS_DOC, HAS_SPAN, HAS_WINDOW, USE_TMA)
    for t in range(0, tl.load(FKV_CNT + row)):
        start_n = tl.load(FKV_IDX + row * n_kb + t) * BLOCK_N
        acc, l_i, m_i = fwd_tile(acc, l_i, m_i, q, q_pos, q_doc, q_span, K, V, DOC, SPAN, start_n,
                                  hk, stride_kh, stride_vh, stride_ks, stride_vs, kv_len, qk_scale, window,
                                  HEAD_DIM, BLOCK_N, False, CAUSAL, HAS_DOC, HAS_SPAN, HAS_WINDOW, USE_TMA)
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    # Empty rows store +inf so that the backward's exp2(s - lse) is 0 for them.
    lse = tl.where(l_i == 0.0, float("inf"), m_i + tl.math.log2(l_safe))
    tl.store(O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_os + offs_d[None, :],
             out.to(O.dtype.element_ty), mask=offs_m[:, None] < q_len)
    tl.store(LSE + pid_bh * q_len + offs_m, lse, mask=offs_m < q_len)


# ---- backward ------------------------------------------------------------------------------------
DELTA_BLOCK_M = 64  # rows per program of the delta kernel (launched with Triton's default warps and stages)


@triton.jit
def _delta_kernel(O, DO, DELTA, q_len, n_heads, stride_ob, stride_oh, stride_os, stride_dob, stride_doh, stride_dos,
                  HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    """delta[b, h, i] = sum_d dO * O in fp32, read straight from the bf16/fp16 tensors."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // n_heads
    h = pid_bh % n_heads
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m[:, None] < q_len
    o = tl.load(O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_os + offs_d[None, :], mask=row_ok, other=0.0)
    do = tl.load(DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dos + offs_d[None, :],
                 mask=row_ok, other=0.0)
    tl.store(DELTA + pid_bh * q_len + offs_m, tl.sum(o.to(tl.float32) * do.to(tl.float32), 1), mask=offs_m < q_len)


@triton.jit
def _dkdv_tile(dk, dv, k, v, k_pos, k_doc, k_span, Q, DO, LSE, DELTA, DOC, SPAN, qoff, start_m,
               h, stride_qh, stride_doh, stride_qs, stride_dos, q_len, kv_len, qk_scale, window,
               HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
               HAS_DOC: tl.constexpr, HAS_SPAN: tl.constexpr, HAS_WINDOW: tl.constexpr, USE_TMA: tl.constexpr):
    """dk, dv [BLOCK_N, D] += one query tile's share. Key-major: probabilities are recomputed
    transposed, [BLOCK_N, BLOCK_M], so every product has the key block as its M dimension (Hopper's
    warp-group MMA needs M >= 64) and no register tile is transposed."""
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < q_len
    # Bounds-checked even in fully visible tiles: the last query block may hold padding rows (masks.py).
    q = load_rows(Q, h, start_m, offs_m, offs_d, stride_qh, stride_qs, q_len, True, USE_TMA)
    do = load_rows(DO, h, start_m, offs_m, offs_d, stride_doh, stride_dos, q_len, True, USE_TMA)
    lse = tl.load(LSE + offs_m, mask=row_ok, other=float("inf"))
    delta = tl.load(DELTA + offs_m, mask=row_ok, other=0.0)
    p_t = tl.math.exp2(tl.fma(tl.dot(k, tl.trans(q)), qk_scale, -lse[None, :]))
    if MASKED:
        q_pos = qoff + offs_m
        at = query_id_pos(q_pos, kv_len)
        q_doc = load_ids(DOC, at, kv_len, HAS_DOC)
        q_span = load_ids(SPAN, at, kv_len, HAS_SPAN)
        vis = pair_visible(q_pos[None, :], k_pos[:, None], q_doc[None, :], k_doc[:, None], q_span[None, :],
                       k_span[:, None], kv_len, window, CAUSAL, HAS_DOC, HAS_SPAN, HAS_WINDOW)
        p_t = tl.where(vis, p_t, 0.0)
    dv = tl.dot(p_t.to(do.dtype), do, dv)
    dp_t = tl.dot(v, tl.trans(do))
    ds_t = p_t * (dp_t - delta[None, :])
    return tl.dot(ds_t.to(q.dtype), q, dk), dv


@triton.autotune(configs=_configs("dkdv"), key=TUNE_KEY + ["USE_TMA"])
@triton.jit(**TUNED)
def _dkdv_kernel(Q, K, V, DO, DK, DV, LSE, DELTA, QOFF, DOC, SPAN,
                 Q_CNT, Q_IDX, FQ_CNT, FQ_IDX,
                 qk_scale, sm_scale, window, q_len, kv_len, n_kv_heads, groups, n_qb, n_kb,
                 stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_ks,
                 stride_vb, stride_vh, stride_vs, stride_dob, stride_doh, stride_dos,
                 stride_dkb, stride_dkh, stride_dks,
                 tune_q_len, tune_kv_len,
                 HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 CAUSAL: tl.constexpr, HAS_DOC: tl.constexpr, HAS_SPAN: tl.constexpr, HAS_WINDOW: tl.constexpr,
                 USE_TMA: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // n_kv_heads
    hk = pid_bh % n_kv_heads
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    col_ok = offs_n[:, None] < kv_len
    k = tl.load(K + b * stride_kb + hk * stride_kh + offs_n[:, None] * stride_ks + offs_d[None, :],
                mask=col_ok, other=0.0)
    v = tl.load(V + b * stride_vb + hk * stride_vh + offs_n[:, None] * stride_vs + offs_d[None, :],
                mask=col_ok, other=0.0)
    DOC = DOC + b * kv_len
    SPAN = SPAN + b * kv_len
    k_doc = load_ids(DOC, offs_n, kv_len, HAS_DOC)
    k_span = load_ids(SPAN, offs_n, kv_len, HAS_SPAN)
    qoff = tl.load(QOFF + b)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    col = b * n_kb + pid_n
    n_part = tl.load(Q_CNT + col)
    n_full = tl.load(FQ_CNT + col)
    Q = rows_source(Q + b * stride_qb, n_kv_heads * groups, stride_qh, q_len, stride_qs, BLOCK_M, HEAD_DIM, USE_TMA)
    DO = rows_source(DO + b * stride_dob, n_kv_heads * groups, stride_doh, q_len, stride_dos, BLOCK_M, HEAD_DIM,
                      USE_TMA)
    for g in range(0, groups):  # the query heads that share this kv head
        h = hk * groups + g
        LSEh = LSE + (b * n_kv_heads * groups + h) * q_len
        DELTAh = DELTA + (b * n_kv_heads * groups + h) * q_len
        for t in range(0, n_part):
            start_m = tl.load(Q_IDX + col * n_qb + t) * BLOCK_M
            dk, dv = _dkdv_tile(dk, dv, k, v, offs_n, k_doc, k_span, Q, DO, LSEh, DELTAh, DOC, SPAN, qoff,
                                start_m, h, stride_qh, stride_doh, stride_qs, stride_dos, q_len, kv_len, qk_scale,
                                window, HEAD_DIM, BLOCK_M, True, CAUSAL, HAS_DOC, HAS_SPAN, HAS_WINDOW, USE_TMA)
        for t in range(0, n_full):
            start_m = tl.load(FQ_IDX + col * n_qb + t) * BLOCK_M
            dk, dv = _dkdv_tile(dk, dv, k, v, offs_n, k_doc, k_span, Q, DO, LSEh, DELTAh, DOC, SPAN, qoff,
                                start_m, h, stride_qh, stride_doh, stride_qs, stride_dos, q_len, kv_len, qk_scale,
                                window, HEAD_DIM, BLOCK_M, False, CAUSAL, HAS_DOC, HAS_SPAN, HAS_WINDOW, USE_TMA)
    out = b * stride_dkb + hk * stride_dkh + offs_n[:, None] * stride_dks + offs_d[None, :]
    tl.store(DK + out, (dk * sm_scale).to(DK.dtype.element_ty), mask=col_ok)
    tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=col_ok)


@triton.jit
def _dq_tile(dq, q, do, lse, delta, q_pos, q_doc, q_span, K, V, DOC, SPAN, start_n,
             hk, stride_kh, stride_vh, stride_ks, stride_vs, kv_len, qk_scale, window,
             HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
             HAS_DOC: tl.constexpr, HAS_SPAN: tl.constexpr, HAS_WINDOW: tl.constexpr, USE_TMA: tl.constexpr):
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    k = load_rows(K, hk, start_n, offs_n, offs_d, stride_kh, stride_ks, kv_len, MASKED, USE_TMA)
    v = load_rows(V, hk, start_n, offs_n, offs_d, stride_vh, stride_vs, kv_len, MASKED, USE_TMA)
    p = tl.math.exp2(tl.fma(tl.dot(q, tl.trans(k)), qk_scale, -lse[:, None]))  # recomputed from the base-2 lse
    if MASKED:
        vis = key_tile_visible(q_pos, q_doc, q_span, DOC, SPAN, offs_n, kv_len, window,
                                CAUSAL, HAS_DOC, HAS_SPAN, HAS_WINDOW)
        p = tl.where(vis, p, 0.0)
    dp = tl.dot(do, tl.trans(v))
    ds = p * (dp - delta[:, None])
    return tl.dot(ds.to(k.dtype), k, dq)


@triton.autotune(configs=_configs("dq"), key=TUNE_KEY + ["USE_TMA"])
@triton.jit(**TUNED)
def _dq_kernel(Q, K, V, DO, DQ, LSE, DELTA, QOFF, DOC, SPAN,
               KV_CNT, KV_IDX, FKV_CNT, FKV_IDX,
               qk_scale, sm_scale, window, q_len, kv_len, n_heads, groups, n_qb, n_kb,
               stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_ks,
               stride_vb, stride_vh, stride_vs, stride_dob, stride_doh, stride_dos,
               stride_dqb, stride_dqh, stride_dqs,
               tune_q_len, tune_kv_len,
               HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               CAUSAL: tl.constexpr, HAS_DOC: tl.constexpr, HAS_SPAN: tl.constexpr, HAS_WINDOW: tl.constexpr,
               USE_TMA: tl.constexpr):
    pid_m = n_qb - 1 - tl.program_id(0)  # last query blocks (the most keys under a causal mask) first
    pid_bh = tl.program_id(1)
    b = pid_bh // n_heads
    h = pid_bh % n_heads
    hk = h // groups
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < q_len
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qs + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dos + offs_d[None, :],
                 mask=row_ok[:, None], other=0.0)
    lse = tl.load(LSE + pid_bh * q_len + offs_m, mask=row_ok, other=float("inf"))
    delta = tl.load(DELTA + pid_bh * q_len + offs_m, mask=row_ok, other=0.0)
    q_pos, DOC, SPAN, q_doc, q_span = row_ids(QOFF, DOC, SPAN, b, offs_m, kv_len, HAS_DOC, HAS_SPAN)
    K = rows_source(K + b * stride_kb, n_heads // groups, stride_kh, kv_len, stride_ks, BLOCK_N, HEAD_DIM, USE_TMA)
    V = rows_source(V + b * stride_vb, n_heads // groups, stride_vh, kv_len, stride_vs, BLOCK_N, HEAD_DIM, USE_TMA)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    row = b * n_qb + pid_m
    for t in range(0, tl.load(KV_CNT + row)):
        start_n = tl.load(KV_IDX + row * n_kb + t) * BLOCK_N
        dq = _dq_tile(dq, q, do, lse, delta, q_pos, q_doc, q_span, K, V, DOC, SPAN, start_n,
                      hk, stride_kh, stride_vh, stride_ks, stride_vs, kv_len, qk_scale, window, HEAD_DIM,
                      BLOCK_N, True, CAUSAL, HAS_DOC, HAS_SPAN, HAS_WINDOW, USE_TMA)
    for t in range(0, tl.load(FKV_CNT + row)):
        start_n = tl.load(FKV_IDX + row * n_kb + t) * BLOCK_N
        dq = _dq_tile(dq, q, do, lse, delta, q_pos, q_doc, q_span, K, V, DOC, SPAN, start_n,
                      hk, stride_kh, stride_vh, stride_ks, stride_vs, kv_len, qk_scale, window, HEAD_DIM,
                      BLOCK_N, False, CAUSAL, HAS_DOC, HAS_SPAN, HAS_WINDOW, USE_TMA)
    tl.store(DQ + b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqs + offs_d[None, :],
             (dq * sm_scale).to(DQ.dtype.element_ty), mask=row_ok[:, None])


# ---- host side -----------------------------------------------------------------------------------
def tma_requested() -> bool:
    """OMNI_ATTENTION_TMA=1: the kernels load the tiles they stream (keys and values in the forward and
    dq kernels, queries and output gradients in dk/dv) through TMA descriptors (Hopper's tensor memory
    accelerator) instead of pointer loads. Off by default: not yet timed on a GPU."""
    return os.environ.get("OMNI_ATTENTION_TMA", "0") == "1"


def tma_supported(*tensors: Tensor) -> bool:
    """Whether TMA descriptors can read these [B, H, S, D] tensors: sm_90 or newer (or the interpreter,
    which emulates them), contiguous rows, and 16-byte aligned base and strides, so that every
    (batch, head) matrix starts aligned."""
    on_gpu = tensors[0].is_cuda and torch.cuda.get_device_capability(tensors[0].device)[0] >= 9
    if not (on_gpu or interpreting()):
        return False
    return all(t.data_ptr() % 16 == 0 and t.stride(-1) == 1
               and all(s * t.element_size() % 16 == 0 for s in t.stride()[:-1]) for t in tensors)


def _tma_scratch(size: int, alignment: int, stream: Optional[int]) -> Tensor:
    """Global memory for the descriptors the kernels make at run time (Triton asks at each launch)."""
    return torch.empty(size, dtype=torch.int8, device="cuda")


def _use_tma(requested: bool, *streamed: Tensor) -> bool:
    """Whether a launch loads its ``streamed`` tensors through TMA descriptors: requested and
    tma_supported. If so, Triton gets the descriptors' scratch allocator, in the launching thread: it
    keeps it in a context variable, and autograd runs the backward in a thread of its own."""
    use = requested and tma_supported(*streamed)
    if use and not interpreting():
        triton.set_allocator(_tma_scratch)
    return use


def flash_forward(q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask, scale: float,
                  tma: bool = False) -> tuple[Tensor, Tensor]:
    """Run the forward kernel. q [B, H, Sq, D], k/v [B, Hkv, Skv, D] -> (out [B, H, Sq, D], lse [B, H, Sq]).
    ``tma``: load K/V through TMA descriptors (where tma_supported(k, v))."""
    b, h, sq, d = q.shape
    hk, skv = k.shape[1], k.shape[2]
    check_head_dim(d)
    bm, bn = block_sizes(d, "fwd")
    bs = block_sparse(mask, b, sq, skv, bm, bn, q.device)
    ma = MaskArgs(mask, b, skv, q.device)
    out = torch.empty_like(q)
    lse = torch.empty(b, h, sq, dtype=torch.float32, device=q.device)
    n_qb, n_kb = bs.kv_idx.shape[1], bs.kv_idx.shape[2]
    _fwd_kernel[(n_qb, b * h)](
        q, k, v, out, lse, ma.qoff, ma.doc, ma.span,
        bs.kv_cnt, bs.kv_idx, bs.full_kv_cnt, bs.full_kv_idx,
        scale * LOG2E, ma.window, sq, skv, h, h // hk, n_qb, n_kb,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3],
        HEAD_DIM=d, BLOCK_M=bm, BLOCK_N=bn, **ma.flags, **tune_buckets(sq, skv), USE_TMA=_use_tma(tma, k, v),
    )
    return out, lse


def flash_backward(do: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                   mask: AttentionMask, scale: float, tma: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients (dq, dk, dv) by recomputation from the saved base-2 log-sum-exp. ``tma``: the dq
    kernel loads K/V through TMA descriptors where tma_supported(k, v), the dk/dv kernel its query and
    output-gradient tiles where tma_supported(q, do)."""
    b, h, sq, d = q.shape
    hk, skv = k.shape[1], k.shape[2]
    do = lastdim_contiguous(do)
    delta = torch.empty(b, h, sq, dtype=torch.float32, device=q.device)
    _delta_kernel[(triton.cdiv(sq, DELTA_BLOCK_M), b * h)](out, do, delta, sq, h, *out.stride()[:3],
                                                            *do.stride()[:3], HEAD_DIM=d, BLOCK_M=DELTA_BLOCK_M)
    ma = MaskArgs(mask, b, skv, q.device)
    dq = torch.empty_like(q)
    # dk and dv share one set of strides in the kernel: allocate both contiguous.
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    bm, bn = block_sizes(d, "dkdv")
    bs = block_sparse(mask, b, sq, skv, bm, bn, q.device)
    n_qb, n_kb = bs.kv_idx.shape[1], bs.kv_idx.shape[2]
    _dkdv_kernel[(n_kb, b * hk)](
        q, k, v, do, dk, dv, lse, delta, ma.qoff, ma.doc, ma.span,
        bs.q_cnt, bs.q_idx, bs.full_q_cnt, bs.full_q_idx,
        scale * LOG2E, scale, ma.window, sq, skv, hk, h // hk, n_qb, n_kb,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3], *dk.stride()[:3],
        HEAD_DIM=d, BLOCK_M=bm, BLOCK_N=bn, **ma.flags, **tune_buckets(sq, skv), USE_TMA=_use_tma(tma, q, do),
    )
    bm, bn = block_sizes(d, "fwd")
    bs = block_sparse(mask, b, sq, skv, bm, bn, q.device)
    n_qb, n_kb = bs.kv_idx.shape[1], bs.kv_idx.shape[2]
    _dq_kernel[(n_qb, b * h)](
        q, k, v, do, dq, lse, delta, ma.qoff, ma.doc, ma.span,
        bs.kv_cnt, bs.kv_idx, bs.full_kv_cnt, bs.full_kv_idx,
        scale * LOG2E, scale, ma.window, sq, skv, h, h // hk, n_qb, n_kb,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3], *dq.stride()[:3],
        HEAD_DIM=d, BLOCK_M=bm, BLOCK_N=bn, **ma.flags, **tune_buckets(sq, skv), USE_TMA=_use_tma(tma, k, v),
    )
    return dq, dk, dv


class FlashAttention(torch.autograd.Function):
    """Differentiable wrapper: forward saves (q, k, v, out, lse); backward recomputes probabilities."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask, scale: float, tma: bool) -> Tensor:
        q, k, v = (lastdim_contiguous(x) for x in (q, k, v))
        out, lse = flash_forward(q, k, v, mask, scale, tma)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.mask, ctx.scale, ctx.tma = mask, scale, tma
        return out

    @staticmethod
    def backward(ctx, do: Tensor) -> tuple[Optional[Tensor], ...]:
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = flash_backward(do, q, k, v, out, lse, ctx.mask, ctx.scale, ctx.tma)
        return dq, dk, dv, None, None, None


def flash_attention(q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask, scale: Optional[float] = None,
                    tma: Optional[bool] = None) -> Tensor:
    """Masked attention through the Triton kernels. q [B, H, Sq, D], k/v [B, Hkv, Skv, D] -> [B, H, Sq, D].

    ``tma``: load the streamed tiles through TMA descriptors where the GPU and layout allow
    (tma_supported); None follows OMNI_ATTENTION_TMA (tma_requested)."""
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    return FlashAttention.apply(q, k, v, mask, scale, tma_requested() if tma is None else tma)
