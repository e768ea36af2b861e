"""Attention benchmark: our Triton kernels vs torch SDPA (flash / efficient / cuDNN), FlexAttention and,
when installed, flash-attn / xformers, on plain causal and packed multimodal masks; plus decode.

Throughput counts only visible (query, key) pairs of each row and head:
    forward TF/s          = 4 * B * H * D * pairs / time
    forward+backward TF/s = 3.5 * 4 * B * H * D * pairs / time

    python eval/bench_attention.py                   # GPU: full table + JSON (runs/bench_attention.json)
    python eval/bench_attention.py --cpu-smoke       # CPU: Triton interpreter, tiny sizes, proves it runs

Each case first checks the Triton kernels at full size (output and dq, dk, dv against FlexAttention on
GPU, the float32 reference on CPU; the decode step against SDPA); the exit status is 3 if any failed.
Where TMA descriptors are available (sm_90+; the interpreter on CPU) the kernels run twice: "triton"
with the default loads (pointer loads unless OMNI_ATTENTION_TMA=1), "triton-tma" with the streamed tiles
loaded through TMA descriptors (K/V in the forward and dq kernels, Q/dO in dk/dv).

On CPU the smoke mode is automatic; its timings say nothing about GPUs.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Callable, Optional

import torch

FWD_FLOPS = "4 * B * H * D * pairs"
BWD_FACTOR = 3.5
# Largest max|triton - ref| / max|ref| over the output and dq, dk, dv before a case is marked FAILED:
# bf16 on GPU against FlexAttention (as tests/kernels/test_flash.py), float32 in the CPU smoke run.
CHECK_TOL = {torch.bfloat16: 3e-2, torch.float32: 1e-4}
KERNEL_ROWS = ("triton", "triton-tma")  # this repo's kernels: checked before they are timed


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu-smoke", action="store_true", help="Triton interpreter on CPU at tiny sizes")
    ap.add_argument("--seqs", type=int, nargs="+", default=[2048, 8192, 16384])
    ap.add_argument("--tokens", type=int, default=32768, help="B * S per case (B = tokens // S)")
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--docs", type=int, default=4, help="documents per row (packed mask)")
    ap.add_argument("--span", type=int, default=1024, help="bidirectional image span per document")
    ap.add_argument("--decode-lens", type=int, nargs="+", default=[1024, 4096, 16384, 32768])
    ap.add_argument("--no-tma", action="store_true", help="leave out the triton-tma rows")
    ap.add_argument("--out", default="runs/bench_attention.json")
    args = ap.parse_args(argv)
    if args.cpu_smoke or not torch.cuda.is_available():
        args.cpu_smoke = True
        # Must happen before triton is imported (Triton picks interpreter vs compiler per kernel definition).
        os.environ["TRITON_INTERPRET"] = "1"
        args.seqs, args.tokens, args.heads, args.head_dim = [64, 128], 128, 2, 64
        args.docs, args.span, args.decode_lens = 2, 16, [64, 256]
    return args


def timer_ms(fn: Callable[[], object], grads: Optional[list[torch.Tensor]] = None, graph: bool = False,
             warm_up: bool = True) -> float:
    """Mean milliseconds per call: triton's do_bench on GPU (CUDA graph replay if ``graph``), wall clock
    of one call on CPU, after an untimed one unless ``warm_up`` is False (the caller's check has just run
    it at these shapes; under the interpreter a call is seconds)."""
    if torch.cuda.is_available():
        from triton.testing import do_bench, do_bench_cudagraph

        if graph:
            return do_bench_cudagraph(fn, grad_to_none=grads)
        return do_bench(fn, grad_to_none=grads)
    if warm_up:
        fn()
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def visible_pairs(mask, batch: int, seq: int, device: torch.device) -> float:
    """Visible (query, key) pairs per row, averaged over rows (dense per row: fine at 16k)."""
    from omni.model.attention import AttentionMask

    total = 0
    for b in range(batch):
        row = AttentionMask(
            causal=mask.causal,
            document_ids=None if mask.document_ids is None else mask.document_ids[b:b + 1],
            span_ids=None if mask.span_ids is None else mask.span_ids[b:b + 1],
            sliding_window=mask.sliding_window,
        )
        total += int(row.dense(1, seq, seq, device).sum())
    return total / batch


def candidates(mask_kind: str, mask, cpu: bool, tma: bool) -> dict[str, Callable]:
    """Backends to time: name -> f(q, k, v) -> out. Each is only listed if it can express the mask;
    "triton-tma" only where ``tma`` (TMA descriptors can read the case's tensors)."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from omni.kernels.flash import flash_attention
    from omni.model.attention import attention

    fns: dict[str, Callable] = {"triton": lambda q, k, v: attention(q, k, v, mask, "triton")}
    if tma:
        fns["triton-tma"] = lambda q, k, v: flash_attention(q, k, v, mask, tma=True)
    fns["flex"] = lambda q, k, v: attention(q, k, v, mask, "flex")
    if mask_kind == "causal":
        def sdpa_with(kind):
            def run(q, k, v):
                with sdpa_kernel([kind]):
                    return F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return run

        if cpu:
            fns["sdpa"] = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            fns["sdpa-cudnn"] = sdpa_with(SDPBackend.CUDNN_ATTENTION)
            fns["sdpa-flash"] = sdpa_with(SDPBackend.FLASH_ATTENTION)
            fns["sdpa-efficient"] = sdpa_with(SDPBackend.EFFICIENT_ATTENTION)
            try:
                from flash_attn import flash_attn_func

                fns["flash-attn"] = lambda q, k, v: flash_attn_func(
                    q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True).transpose(1, 2)
            except ImportError:
                pass
            try:
                import xformers.ops as xops

                fns["xformers"] = lambda q, k, v: xops.memory_efficient_attention(
                    q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                    attn_bias=xops.LowerTriangularMask()).transpose(1, 2)
            except ImportError:
                pass
    else:
        # SDPA cannot express the packed mask without materialising it: dense boolean mask.
        fns["sdpa-dense-mask"] = lambda q, k, v: attention(q, k, v, mask, "sdpa")
    return fns


def output_and_grads(fn: Callable, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     dout: torch.Tensor) -> list[torch.Tensor]:
    """[out, dq, dk, dv] of one backend, on fresh leaf copies of q, k, v."""
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = fn(*leaves)
    out.backward(dout)
    return [out.detach()] + [t.grad for t in leaves]


def max_rel_err(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    """Largest max|a - b| / max|b| over matching tensors."""
    return max(float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-6))
               for a, b in zip(got, want))


def error_text(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"


def check_case(fn: Callable, want: "list[torch.Tensor] | Exception", ref_name: str, q: torch.Tensor,
               k: torch.Tensor, v: torch.Tensor, dout: torch.Tensor) -> dict:
    """One kernel row's full-size check against the reference's [out, dq, dk, dv] (or the exception the
    reference raised); failures are reported in the row, not raised."""
    try:
        if isinstance(want, Exception):
            raise RuntimeError(f"the {ref_name} reference failed: {error_text(want)}")
        err = max_rel_err(output_and_grads(fn, q, k, v, dout), want)
        return dict(check_vs=ref_name, check_err=err, check_ok=err < CHECK_TOL[q.dtype])
    except Exception as e:
        return dict(check_vs=ref_name, check_error=error_text(e))


def save(path: str, result: dict) -> None:
    """Write the JSON (also after every case, so a run cut short by a time limit keeps what it measured)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)


def bench_training(args: argparse.Namespace, device: torch.device, dtype: torch.dtype, result: dict) -> list[dict]:
    from omni.kernels.flash import tma_supported
    from omni.kernels.masks import packed_multimodal_mask
    from omni.model.attention import AttentionMask, attention

    rows = result["training"]
    h, d = args.heads, args.head_dim
    for seq in args.seqs:
        b = max(1, args.tokens // seq)
        for kind in ("causal", "packed_multimodal"):
            mask = AttentionMask() if kind == "causal" else packed_multimodal_mask(b, seq, args.docs, args.span, device)
            pairs = visible_pairs(mask, b, seq, device)
            fwd_flop = 4 * b * h * d * pairs
            g = torch.Generator(device=device).manual_seed(0)
            q, k, v = (torch.randn(b, h, seq, d, device=device, dtype=dtype, generator=g).requires_grad_()
                       for _ in range(3))
            dout = torch.randn_like(q)
            fns = candidates(kind, mask, args.cpu_smoke, tma_supported(k, v) and not args.no_tma)
            # Full-size correctness of the kernels in the same run: against FlexAttention on GPU (an
            # independent implementation of the same mask), the float32 reference math on CPU.
            ref_name = "reference" if args.cpu_smoke else "flex"
            ref_fn = fns["flex"] if ref_name == "flex" else (lambda q_, k_, v_: attention(q_, k_, v_, mask, "reference"))
            try:
                want = output_and_grads(ref_fn, q, k, v, dout)
            except Exception as e:
                want = e
            checks = {name: check_case(fns[name], want, ref_name, q, k, v, dout)
                      for name in KERNEL_ROWS if name in fns}
            del want
            for name, check in checks.items():
                print(f"  {kind:18s} S={seq:6d} check {name} vs {ref_name}: "
                      + (f"max rel err {check['check_err']:.2e} {'ok' if check['check_ok'] else 'FAILED'}"
                         if "check_err" in check else check["check_error"]), flush=True)
            for name, fn in fns.items():
                row = dict(seq=seq, batch=b, mask=kind, backend=name, pairs_per_row=pairs)
                row.update(checks.get(name, {}))
                try:
                    qd, kd, vd = q.detach(), k.detach(), v.detach()  # CPU flex refuses inputs needing grad
                    with torch.no_grad():
                        ms = timer_ms(lambda: fn(qd, kd, vd), warm_up=name not in checks)
                    row["fwd_ms"], row["fwd_tflops"] = ms, fwd_flop / ms / 1e9
                    # CPU FlexAttention has no backward; the dense-mask SDPA is a forward reference only.
                    if not (args.cpu_smoke and name == "flex") and name != "sdpa-dense-mask":
                        ms = timer_ms(lambda: fn(q, k, v).backward(dout), grads=[q, k, v], warm_up=name not in checks)
                        row["fwdbwd_ms"], row["fwdbwd_tflops"] = ms, BWD_FACTOR * fwd_flop / ms / 1e9
                except Exception as e:  # a baseline that cannot run this shape is reported, not fatal
                    row["error"] = error_text(e)
                rows.append(row)
                save(args.out, result)
                print(f"  {kind:18s} S={seq:6d} {name:16s} "
                      + (row.get("error") or f"fwd {row['fwd_tflops']:7.3g} TF/s  fwd+bwd "
                         + (f"{row['fwdbwd_tflops']:7.3g}" if "fwdbwd_tflops" in row else "     -")),
                      flush=True)
            del q, k, v, dout
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def bench_decode(args: argparse.Namespace, device: torch.device, dtype: torch.dtype, result: dict) -> list[dict]:
    """One query per row against a cache of L keys: 32 heads, D=64 (the DESIGN.md anchor shape), and GQA 32/8."""
    import torch.nn.functional as F

    from omni.kernels.decode import decode_attention
    from omni.model.attention import AttentionMask

    rows = result["decode"]
    heads, d = (32, 64) if not args.cpu_smoke else (4, 64)
    for kv_heads in (heads, heads // 4):
        for length in args.decode_lens:
            g = torch.Generator(device=device).manual_seed(0)
            q = torch.randn(1, heads, 1, d, device=device, dtype=dtype, generator=g)
            k, v = (torch.randn(1, kv_heads, length, d, device=device, dtype=dtype, generator=g) for _ in range(2))
            mask = AttentionMask(q_offset=torch.tensor([length - 1], device=device))
            gqa = kv_heads != heads
            fns = {
                "triton-decode": lambda: decode_attention(q, k, v, mask),
                "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa),
            }
            row = dict(length=length, heads=heads, kv_heads=kv_heads, head_dim=d)
            row["check_err"] = max_rel_err([fns["triton-decode"]()], [fns["sdpa"]()])  # the step sees every key
            row["check_ok"] = row["check_err"] < CHECK_TOL[dtype]
            for name, fn in fns.items():
                row[f"{name}_us"] = timer_ms(fn, warm_up=False) * 1e3  # both ran in the check
                if device.type == "cuda":
                    row[f"{name}_graph_us"] = timer_ms(fn, graph=True) * 1e3
            row["kv_gbps_triton"] = 2 * k.numel() * k.element_size() / (row["triton-decode_us"] * 1e3)
            rows.append(row)
            save(args.out, result)
            print(f"  decode L={length:6d} Hkv={kv_heads:2d}  triton {row['triton-decode_us']:8.1f} us   "
                  f"sdpa {row['sdpa_us']:8.1f} us   max rel err {row['check_err']:.1e}"
                  + ("" if row["check_ok"] else " FAILED"), flush=True)
    return rows


def autotune_choices() -> dict[str, dict[str, str]]:
    """The (warps, stages) the autotuner picked for each kernel and key (length buckets, head dim, mask
    flags), for the next round of tuning; empty where nothing was tuned (CPU, one config)."""
    from omni.kernels import flash

    kernels = {"fwd": flash._fwd_kernel, "dkdv": flash._dkdv_kernel, "dq": flash._dq_kernel}
    return {name: {str(key): str(config) for key, config in getattr(k, "cache", {}).items()}
            for name, k in kernels.items()}


def table(rows: list[dict]) -> str:
    """Markdown table with each backend's ratio to FlexAttention and to the best SDPA in the same case,
    and, for triton, its largest relative error against the check's reference."""
    out = ["| mask | S | B | backend | fwd TF/s | fwd+bwd TF/s | fwd vs flex | fwd vs best sdpa | max rel err |",
           "|---|---|---|---|---|---|---|---|---|"]
    cases = {(r["mask"], r["seq"]) for r in rows}
    for mask, seq in sorted(cases, key=lambda c: (c[0], c[1])):
        case = [r for r in rows if r["mask"] == mask and r["seq"] == seq and "error" not in r]
        flex = next((r["fwd_tflops"] for r in case if r["backend"] == "flex"), math.nan)
        sdpa = max((r["fwd_tflops"] for r in case if r["backend"].startswith("sdpa")), default=math.nan)
        for r in [r for r in rows if r["mask"] == mask and r["seq"] == seq]:
            if "error" in r:
                out.append(f"| {mask} | {seq} | {r['batch']} | {r['backend']} | error: {r['error']} | | | | |")
                continue
            fb = f"{r['fwdbwd_tflops']:.3g}" if "fwdbwd_tflops" in r else "-"
            err = "-"
            if "check_err" in r:
                err = f"{r['check_err']:.1e} vs {r['check_vs']}" + ("" if r["check_ok"] else " FAILED")
            elif "check_error" in r:
                err = "check failed to run"
            out.append(f"| {mask} | {seq} | {r['batch']} | {r['backend']} | {r['fwd_tflops']:.3g} | {fb} | "
                       f"{r['fwd_tflops'] / flex:.2f}x | {r['fwd_tflops'] / sdpa:.2f}x | {err} |")
    return "\n".join(out)


def decode_table(rows: list[dict]) -> str:
    out = ["| L | H/Hkv | triton µs | sdpa µs | ratio | triton graph µs | sdpa graph µs | triton KV GB/s |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        tg, sg = r.get("triton-decode_graph_us"), r.get("sdpa_graph_us")
        out.append(f"| {r['length']} | {r['heads']}/{r['kv_heads']} | {r['triton-decode_us']:.1f} | {r['sdpa_us']:.1f} | "
                   f"{r['sdpa_us'] / r['triton-decode_us']:.2f}x | {'-' if tg is None else f'{tg:.1f}'} | "
                   f"{'-' if sg is None else f'{sg:.1f}'} | {r['kv_gbps_triton']:.0f} |")
    return "\n".join(out)


def main(argv: Optional[list[str]] = None) -> dict:
    args = parse_args(argv)
    import triton

    from omni.kernels.flash import tma_requested

    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    # Every (shape, mask, grad mode) compiles FlexAttention anew; past dynamo's default limit (8) it
    # would fall back to eager flex, which materialises the scores (a slow, memory-hungry baseline).
    torch._dynamo.config.recompile_limit = 64
    dtype = torch.float32 if args.cpu_smoke else torch.bfloat16
    env = dict(
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), torch=torch.__version__, triton=triton.__version__,
        device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu (Triton interpreter)",
        dtype=str(dtype), heads=args.heads, head_dim=args.head_dim, tokens_per_case=args.tokens,
        mask=f"packed_multimodal: {args.docs} documents per row, one {args.span}-token bidirectional span each",
        flops=f"forward {FWD_FLOPS}; forward+backward {BWD_FACTOR} x forward (pairs = visible pairs per row)",
        cpu_smoke=args.cpu_smoke, triton_loads="tma" if tma_requested() else "pointer",
    )
    print(f"FLOPs: forward = {FWD_FLOPS}; forward+backward = {BWD_FACTOR} x forward; pairs = visible pairs per row")
    print(f"{env['device']}, torch {env['torch']}, triton {env['triton']}, {env['dtype']}")
    result = dict(env=env, training=[], decode=[])
    training = bench_training(args, device, dtype, result)
    result["autotune"] = autotune_choices()
    decode = bench_decode(args, device, dtype, result)
    print("\n" + table(training) + "\n\n" + decode_table(decode))
    save(args.out, result)
    print(f"\nwrote {args.out}")
    return result


def checks_passed(result: dict) -> bool:
    """Every triton case matched its reference (the exit status of the script)."""
    rows = [r for r in result["training"] if r["backend"] in KERNEL_ROWS] + result["decode"]
    return all(r.get("check_ok", False) for r in rows)


if __name__ == "__main__":
    sys.exit(0 if checks_passed(main(sys.argv[1:])) else 3)
