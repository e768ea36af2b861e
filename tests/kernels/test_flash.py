"""Triton attention kernels (omni.kernels) against the reference backend: outputs and gradients.

Three ways these tests run:

* plain ``pytest`` on CPU: ``test_interpreter_suite`` re-runs this file in a child process with
  ``TRITON_INTERPRET=1`` (Triton decides interpreter vs compiler when a kernel is defined, i.e. when
  omni.kernels is first imported, so the switch cannot be flipped inside a process that other tests
  already used); the block-sparse classification test runs in the parent (pure torch);
* the child (TRITON_INTERPRET=1): every kernel in the interpreter at small sizes, float32 and float16;
* on a GPU (``-m gpu``): the same checks at real sizes in bf16/fp16.

The sm_90 builds are checked in tests/kernels/test_aot.py, the benchmark's CPU run in
tests/eval/test_bench_attention.py: files of their own, so that ``make test``'s two workers can take
them apart from this file's interpreter run.

Tolerances (max |kernel - reference| / max |reference|, per tensor; the reference is float32 math on
the same inputs): interpreter float32 1e-4; float16 1e-2 (interpreter and GPU); GPU bfloat16 3e-2.
The interpreter cannot run bfloat16 (numpy has no bf16), so bf16 is checked on GPUs only.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from omni.model.attention import AttentionMask, attention, backends, reference_attention
from omni.kernels.masks import classify_tiles, packed_multimodal_mask
from omni.model.decoder import Decoder, ModelConfig

INTERP = os.environ.get("TRITON_INTERPRET") == "1"
HAS_CUDA = torch.cuda.is_available()
try:
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:
    HAS_TRITON = False

interp_only = pytest.mark.skipif(not (INTERP and HAS_TRITON),
                                 reason="runs in the TRITON_INTERPRET=1 child process (test_interpreter_suite)")
gpu_only = [pytest.mark.gpu, pytest.mark.skipif(not (HAS_CUDA and HAS_TRITON) or INTERP, reason="needs CUDA")]

# GPU runs check correctness, not speed: one autotune config, so each kernel variant compiles once.
os.environ.setdefault("OMNI_ATTENTION_AUTOTUNE", "0")

# profile -> device, sizes (batch, heads, kv heads, seq), main dtype and its tolerance
PROFILES = {
    "interp": dict(device="cpu", batch=2, seq=61, heads=2, kv_heads=1, dtype=torch.float32, tol=1e-4),
    "gpu": dict(device="cuda", batch=2, seq=1000, heads=8, kv_heads=2, dtype=torch.bfloat16, tol=3e-2),
}
HALF_TOL = 1e-2  # float16, both profiles
profile_params = [pytest.param("interp", marks=interp_only), pytest.param("gpu", marks=gpu_only)]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-6))


def make_mask(kind: str, batch: int, seq: int, device: str, seed: int = 0) -> AttentionMask:
    """The mask family, with ragged per-row documents/spans so tiles of every class occur."""
    gen = torch.Generator().manual_seed(seed)
    packed = packed_multimodal_mask(batch, seq, n_docs=3, span_len=max(seq // 6, 4), device=device, generator=gen)
    window = max(seq // 7, 5)
    return {
        "causal": AttentionMask(),
        "docs": AttentionMask(document_ids=packed.document_ids),
        "spans": AttentionMask(span_ids=packed.span_ids),
        "window": AttentionMask(sliding_window=window),
        "combined": AttentionMask(document_ids=packed.document_ids, span_ids=packed.span_ids, sliding_window=window),
        "bidirectional_docs": AttentionMask(causal=False, document_ids=packed.document_ids),
    }[kind]


def qkv(batch, heads, kv_heads, q_len, kv_len, head_dim, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda h, s: torch.randn(batch, h, s, head_dim, generator=g).to(device, dtype).requires_grad_()  # noqa: E731
    return mk(heads, q_len), mk(kv_heads, kv_len), mk(kv_heads, kv_len)


def check_fwd_bwd(q, k, v, mask: AttentionMask, tol: float) -> None:
    """triton backend vs reference: output and dq, dk, dv for a random upstream gradient."""
    out = attention(q, k, v, mask, backend="triton")
    ref = attention(q, k, v, mask, backend="reference")
    grad = torch.randn_like(ref)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(ref, (q, k, v), grad)
    assert rel_err(out, ref) < tol, f"out: {rel_err(out, ref):.2e}"
    for name, a, b in zip(("dq", "dk", "dv"), got, want):
        assert rel_err(a, b) < tol, f"{name}: {rel_err(a, b):.2e}"


# ---- parent process ------------------------------------------------------------------------------
@pytest.mark.skipif(INTERP or not HAS_TRITON or HAS_CUDA, reason="the parent CPU run starts the interpreter child")
def test_interpreter_suite():
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-m", "not gpu", "-p", "no:cacheprovider", __file__],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout


@pytest.mark.parametrize("kind", ["causal", "docs", "spans", "window", "combined", "bidirectional_docs"])
@pytest.mark.parametrize("offset", [0, 9])
def test_tile_classification_is_conservative(kind, offset):
    """Skipped tiles hide every pair and "full" tiles show every pair (pure torch, no kernel)."""
    b, s, bm, bn = 3, 150, 32, 16
    mask = make_mask(kind, b, s, "cpu", seed=1)
    mask.q_offset = offset
    q_len = s - offset
    dense = mask.dense(b, q_len, s, torch.device("cpu"))[:, 0]
    some, every = classify_tiles(mask, b, q_len, s, bm, bn, torch.device("cpu"))
    pad = torch.nn.functional.pad(dense, (0, -s % bn, 0, -q_len % bm))
    tiles = pad.view(b, some.shape[1], bm, some.shape[2], bn)
    any_vis = tiles.any(4).any(2)
    assert not (any_vis & ~some).any(), "a tile with visible pairs was skipped"
    valid = torch.nn.functional.pad(torch.ones_like(dense), (0, -s % bn, 0, -q_len % bm))
    valid = valid.view(b, some.shape[1], bm, some.shape[2], bn)
    all_vis = (tiles | ~valid).all(4).all(2)
    assert not (every & ~all_vis).any(), "a tile with hidden pairs was marked full"
    if kind in ("docs", "window", "combined"):
        assert (~some).any(), "this mask should leave tiles to skip"


# ---- kernels: interpreter (small) and GPU (real sizes) -------------------------------------------
@pytest.mark.parametrize("profile", profile_params)
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("kind", ["causal", "docs", "spans", "window", "combined", "bidirectional_docs"])
def test_flash_masks(profile, head_dim, kind):
    if profile == "gpu" and head_dim == 64 and kind not in ("causal", "combined"):
        pytest.skip("GPU: head_dim 64 is checked on the causal and combined masks (compile time)")
    p = PROFILES[profile]
    mask = make_mask(kind, p["batch"], p["seq"], p["device"])
    q, k, v = qkv(p["batch"], p["heads"], p["kv_heads"], p["seq"], p["seq"], head_dim, p["dtype"], p["device"])
    check_fwd_bwd(q, k, v, mask, p["tol"])


@pytest.mark.parametrize("profile", profile_params)
@pytest.mark.parametrize("kv_heads", [1, 4])  # MQA and plain multi-head (GQA is the default above)
def test_flash_head_grouping(profile, kv_heads):
    p = PROFILES[profile]
    mask = make_mask("combined", p["batch"], p["seq"], p["device"])
    dtype, tol = p["dtype"], p["tol"]
    q, k, v = qkv(p["batch"], 4, kv_heads, p["seq"], p["seq"], 64, dtype, p["device"])
    check_fwd_bwd(q, k, v, mask, tol)


@pytest.mark.parametrize("profile", profile_params)
def test_flash_float16(profile):
    p = PROFILES[profile]
    mask = make_mask("combined", p["batch"], p["seq"], p["device"])
    q, k, v = qkv(p["batch"], p["heads"], p["kv_heads"], p["seq"], p["seq"], 64, torch.float16, p["device"])
    check_fwd_bwd(q, k, v, mask, HALF_TOL)


@pytest.mark.parametrize("profile", profile_params)
def test_flash_query_offsets(profile):
    """Queries after a prefix (chunked prefill): int offset, and a ragged per-row offset tensor."""
    p = PROFILES[profile]
    b, s = p["batch"], p["seq"]
    q_len = s // 3 + 1
    mask = make_mask("combined", b, s, p["device"])
    dtype, tol = p["dtype"], p["tol"]
    q, k, v = qkv(b, p["heads"], p["kv_heads"], q_len, s, 64, dtype, p["device"])
    mask.q_offset = s - q_len
    check_fwd_bwd(q, k, v, mask, tol)
    # q_offset + Sq may pass the end of the keys (row 0's last 3 queries): their ids are read at the
    # clamped position, the last key's, as AttentionMask.dense reads them.
    mask.q_offset = torch.tensor([s - q_len + 3, 5] + [0] * (b - 2), device=p["device"])
    check_fwd_bwd(q, k, v, mask, tol)


@pytest.mark.parametrize("profile", profile_params)
@pytest.mark.parametrize("kind", ["causal", "combined", "bidirectional_docs"])
def test_flash_tma_loads(profile, kind, monkeypatch):
    """OMNI_ATTENTION_TMA=1: the kernels load the tiles they stream through TMA descriptors (keys and
    values in the forward and dq kernels; queries and output gradients in dk/dv, whose GQA loop moves
    the descriptor's head coordinate). Same checks as the pointer loads, at lengths that are not multiples of the
    block (a descriptor zero-fills rows past its last row), with and without a query offset."""
    from omni.kernels.flash import tma_supported

    p = PROFILES[profile]
    b, s = p["batch"], p["seq"]
    q, k, v = qkv(b, p["heads"], p["kv_heads"], s, s, 64, p["dtype"], p["device"])
    if not tma_supported(k, v):
        pytest.skip("TMA descriptors need an sm_90 or newer GPU")
    monkeypatch.setenv("OMNI_ATTENTION_TMA", "1")
    mask = make_mask(kind, b, s, p["device"])
    check_fwd_bwd(q, k, v, mask, p["tol"])
    q_len = s // 3 + 1
    q = q[:, :, :q_len].detach().clone().requires_grad_()
    mask.q_offset = s - q_len
    check_fwd_bwd(q, k, v, mask, p["tol"])


@interp_only
def test_tma_falls_back_for_unaligned_rows():
    """Rows whose stride is not a multiple of 16 bytes cannot be read by a TMA descriptor: the kernels
    use pointer loads for them (keys in the forward and dq, queries in dk/dv), with the same result."""
    from omni.kernels.flash import flash_attention, tma_supported

    q, k, v = (x.detach() for x in qkv(2, 2, 2, 40, 40, 16, torch.float32, "cpu"))
    k_odd = torch.zeros(2, 2, 40, 17)[..., :16].copy_(k)  # rows 68 bytes apart
    assert tma_supported(k, v) and not tma_supported(k_odd, v)
    mask = make_mask("combined", 2, 40, "cpu")
    want = reference_attention(q, k, v, mask, 0.25)
    assert rel_err(flash_attention(q, k_odd, v, mask, tma=True), want) < 1e-4
    got = [torch.zeros(2, 2, 40, 17)[..., :16].copy_(q).requires_grad_()] + [x.clone().requires_grad_() for x in (k, v)]
    ref = [x.clone().requires_grad_() for x in (q, k, v)]
    dout = torch.randn_like(q)
    flash_attention(*got, mask, tma=True).backward(dout)
    reference_attention(*ref, mask, 0.25).backward(dout)
    for a, b in zip(got, ref):
        assert rel_err(a.grad, b.grad) < 1e-4


@interp_only
@pytest.mark.parametrize("seed", range(12))
def test_flash_random_shapes(seed):
    """Seeded random problems beyond the fixed cases: head dims 16-64, 1-3 kv heads in groups of 1-3,
    1-90 keys, fewer queries at int or ragged offsets, random documents / spans / windows (window 1
    included), causal or not. Output and gradients against the reference; errors relative to
    max(|ref|, 1e-2), since a window of 1 makes dq and dk exactly 0 in the reference."""
    import random

    rnd, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    b, kv_heads, d = rnd.choice([1, 2, 3]), rnd.choice([1, 2, 3]), rnd.choice([16, 32, 64])
    heads = kv_heads * rnd.choice([1, 2, 3])
    kv_len = rnd.randint(5, 90)
    q_len = rnd.choice([kv_len, rnd.randint(1, kv_len)])
    fields = {}
    if rnd.random() < 0.7:
        packed = packed_multimodal_mask(b, kv_len, n_docs=rnd.randint(1, 4),
                                        span_len=rnd.randint(1, max(1, kv_len // 3)), generator=gen)
        fields = dict(document_ids=packed.document_ids if rnd.random() < 0.7 else None,
                      span_ids=packed.span_ids if rnd.random() < 0.7 else None)
    if rnd.random() < 0.4:
        fields["sliding_window"] = rnd.randint(1, kv_len)
    if q_len < kv_len:
        fields["q_offset"] = (kv_len - q_len if rnd.random() < 0.5
                              else torch.tensor([rnd.randint(0, kv_len - q_len) for _ in range(b)]))
    mask = AttentionMask(causal=rnd.random() < 0.85, **fields)
    q, k, v = qkv(b, heads, kv_heads, q_len, kv_len, d, torch.float32, "cpu", seed=seed)
    with torch.enable_grad():  # the flash kernels (the decode path has its own tests)
        out = attention(q, k, v, mask, backend="triton")
        ref = attention(q, k, v, mask, backend="reference")
        grad = torch.randn_like(ref)
        got = torch.autograd.grad(out, (q, k, v), grad)
        want = torch.autograd.grad(ref, (q, k, v), grad)
    for name, a, w in zip(("out", "dq", "dk", "dv"), (out, *got), (ref, *want)):
        err = float((a - w).abs().max() / w.abs().max().clamp_min(1e-2))
        assert err < 1e-4, f"{name}: {err:.2e} ({mask})"


@pytest.mark.parametrize("profile", profile_params)
@pytest.mark.parametrize("q_len", [1, 3])
@pytest.mark.parametrize("with_spans", [False, True])
def test_decode_ragged_offsets(profile, q_len, with_spans):
    """Split-KV decode kernel against the reference, rows at different cache positions."""
    from omni.kernels.decode import decode_attention

    p = PROFILES[profile]
    b, max_len = 3, (70 if profile == "interp" else 4100)
    heads, kv_heads, d = 8, 2, 64 if profile == "interp" else 128
    with torch.no_grad():
        q, k, v = (x.detach() for x in qkv(b, heads, kv_heads, q_len, max_len, d, p["dtype"], p["device"]))
    offsets = torch.tensor([0, max_len // 3, max_len - q_len], device=p["device"])
    mask = AttentionMask(q_offset=offsets)
    if with_spans:
        span = make_mask("spans", b, max_len, p["device"]).span_ids.clone()
        # As in the decoder's KVCache: nothing is written past each row's last query yet.
        written = torch.arange(max_len, device=p["device"])[None] < (offsets + q_len)[:, None]
        mask = AttentionMask(q_offset=offsets, span_ids=span * written, sliding_window=max_len // 5)
    got = decode_attention(q, k, v, mask)
    want = reference_attention(q, k, v, mask, d**-0.5)
    tol = p["tol"]
    assert rel_err(got, want) < tol
    # The backend picks the decode kernel for this call (few queries, tensor offsets, no grad).
    assert rel_err(attention(q, k, v, mask, backend="triton"), want) < tol


@pytest.mark.parametrize("profile", profile_params)
def test_flex_backend(profile):
    """FlexAttention with the mask_mod built from the same description (forward; CPU flex has no backward)."""
    p = PROFILES[profile]
    mask = make_mask("combined", p["batch"], p["seq"], p["device"])
    dtype, tol = p["dtype"], p["tol"]
    q, k, v = qkv(p["batch"], p["heads"], p["kv_heads"], p["seq"], p["seq"], 64, dtype, p["device"])
    if profile == "interp":
        q, k, v = q.detach(), k.detach(), v.detach()
        assert rel_err(attention(q, k, v, mask, "flex"), reference_attention(q, k, v, mask, 0.125)) < tol
    else:
        out, ref = attention(q, k, v, mask, "flex"), reference_attention(q, k, v, mask, 0.125)
        grad = torch.randn_like(ref)
        got, want = torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad)
        assert rel_err(out, ref) < tol
        assert all(rel_err(a, b) < tol for a, b in zip(got, want))


@pytest.mark.parametrize("profile", profile_params)
def test_decoder_trains_and_streams_through_triton(profile):
    """A tiny Decoder with attention="triton" matches attention="reference": logits, every parameter's
    gradient on a packed multimodal batch, and streaming logits (prefill, then decode steps)."""
    p = PROFILES[profile]
    dev = p["device"]
    cfg = dict(vocab_size=97, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, max_seq_len=64)
    models = []
    for backend in ("triton", "reference"):
        torch.manual_seed(0)
        models.append(Decoder(ModelConfig(**cfg, attention=backend)).to(dev))
    tokens = torch.randint(0, 97, (2, 45), generator=torch.Generator().manual_seed(0)).to(dev)
    mask = make_mask("combined", 2, 45, dev)
    logits = []
    for m in models:
        out = m(tokens, mask=mask)
        out.square().mean().backward()
        logits.append(out)
    tol = 1e-4 if profile == "interp" else 1e-2  # fp32 tl.dot runs as tf32 on GPUs
    assert rel_err(logits[0], logits[1]) < tol
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        assert rel_err(a.grad, b.grad) < 10 * tol, name
    streamed = []
    with torch.no_grad():
        for m in models:
            with m.streaming(2, max_len=48):
                streamed.append(torch.cat([m(tokens[:, :20]), m(tokens[:, 20:21]), m(tokens[:, 21:23])], 1))
    assert rel_err(streamed[0], streamed[1]) < tol


def test_backends_registered():
    names = backends()
    assert "flex" in names
    assert ("triton" in names) == HAS_TRITON
