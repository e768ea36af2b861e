"""Ahead-of-time builds of the attention kernels for a GPU architecture, on a machine without a GPU.

What the compiler makes of a kernel depends on how the JIT specialises a launch: pointers and
integers divisible by 16 carry a divisibility hint, and without it loads stay scalar and the software
pipeliner leaves them synchronous (no ``cp.async``). A build here gives every pointer, stride and
sequence length that hint, as a launch of the benchmark's shapes would (aligned tensors, lengths
multiples of 16), so what it reports is what such a launch runs: registers
per thread, bytes spilled to local memory, shared memory, pipelined (asynchronous) copies, and
which tensor-core path the products take (Hopper's wgmma, or the older mma.sync). ``--tma`` builds
the training kernels with their TMA-descriptor loads (OMNI_ATTENTION_TMA=1) instead.

    python -m omni.kernels.aot                      # every autotune choice, sm_90, head dims 64, 128, 256
    python -m omni.kernels.aot --arch 90 --head-dims 128 --json runs/kernel_builds.json

It needs Triton's bundled ptxas, not a GPU; it cannot run under TRITON_INTERPRET=1.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import subprocess
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from typing import Optional

import triton

# Shared memory one thread block may use, per architecture (bytes).
SHARED_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
TRAINING_KERNELS = ("fwd", "dq", "dkdv")  # each with a TMA-descriptor variant (USE_TMA)
# Mask features compiled into a build: the model's packed multimodal mask, and every feature at once.
PACKED_MULTIMODAL = dict(CAUSAL=True, HAS_DOC=True, HAS_SPAN=True, HAS_WINDOW=False)
ALL_FEATURES = dict(PACKED_MULTIMODAL, HAS_WINDOW=True)
# Integer arguments taken as multiples of 16, besides the strides: the sequence lengths of the
# benchmark's shapes. Head and block counts are left unhinted (9 or 3 heads occur), which only makes
# their integer arithmetic a little more general.
_DIVISIBLE = ("q_len", "kv_len", "chunk")
_FLOAT_ARGS = ("qk_scale", "sm_scale")
_POINTER_TYPES = {"LSE": "*fp32", "DELTA": "*fp32", "OP": "*fp32", "LP": "*fp32", "QOFF": "*i64",
                  "DOC": "*i32", "SPAN": "*i32"}


@dataclass
class KernelBuild:
    """One kernel compiled for one architecture and one (blocks, warps, stages) choice."""

    kernel: str
    head_dim: int
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    registers: int
    spill_bytes: int
    shared_bytes: int
    async_copies: int
    wgmma: bool
    mma_sync: int  # products left on the pre-Hopper tensor-core path (mma.sync), per PTX instruction
    tma_loads: bool  # built with USE_TMA (the streamed tiles through TMA descriptors)
    tma_copies: int  # TMA (tensor descriptor) loads in the IR, pipelining copies included

    @property
    def block(self) -> str:
        """block_m x block_n as block_sizes() gives them (block_m alone for the row-wise kernels)."""
        return f"{self.block_m}x{self.block_n}" if self.block_n else str(self.block_m)


def _kernels() -> dict:
    """name -> (jit function, block constexprs for a head dim)."""
    from omni.kernels import decode, flash

    def blocks(kind: str):
        return lambda d: dict(zip(("BLOCK_M", "BLOCK_N"), flash.block_sizes(d, kind)))

    return {
        "fwd": (flash._fwd_kernel, blocks("fwd")),
        "dq": (flash._dq_kernel, blocks("fwd")),
        "dkdv": (flash._dkdv_kernel, blocks("dkdv")),
        "delta": (flash._delta_kernel, lambda d: dict(BLOCK_M=flash.DELTA_BLOCK_M)),
        # One decode step (16 rows: the smallest query tile) and a merge over 32 splits.
        "decode": (decode._decode_split_kernel, lambda d: dict(BLOCK_R=16, BLOCK_N=decode.SPLIT_BLOCK_N)),
        "decode_merge": (decode._decode_merge_kernel, lambda d: dict(BLOCK_R=16, BLOCK_S=32)),
    }


def _signature(fn, consts: dict) -> tuple[dict, dict]:
    """Triton signature and divisibility attributes, from the argument naming of omni.kernels:
    upper-case names are pointers (bf16 tensors unless listed, all 16-byte aligned), ``stride_*`` and
    the names in _DIVISIBLE are multiples of 16, the rest are plain int32 (fp32 for the scales)."""
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in consts:
            sig[name] = "constexpr"
            continue
        if name.isupper():
            sig[name] = _POINTER_TYPES.get(name, "*i32" if "CNT" in name or "IDX" in name else "*bf16")
        else:
            sig[name] = "fp32" if name in _FLOAT_ARGS else "i32"
        if name.isupper() or name.startswith("stride_") or name in _DIVISIBLE:
            attrs[(i,)] = [["tt.divisibility", 16]]
    return sig, attrs


def _ptxas_usage(ptx: str, arch: int) -> tuple[int, int]:
    """(registers per thread, spill-store bytes) from ptxas -v, run as Triton runs it."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "kernel.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        log = subprocess.run([get_ptxas(arch).path, "-v", "--regAllocOptLevel=2",
                              f"--gpu-name={sm_arch_from_capability(arch)}", src, "-o", src + ".o"],
                             capture_output=True, text=True, check=True).stderr
    regs = re.search(r"Used (\d+) registers", log)
    spill = re.search(r"(\d+) bytes spill stores", log)
    if regs is None or spill is None:
        raise RuntimeError(f"unexpected ptxas -v output:\n{log}")
    return int(regs.group(1)), int(spill.group(1))


def build(kernel: str, head_dim: int, num_warps: int, num_stages: int, arch: int = 90,
          flags: Optional[dict] = None, block: Optional[tuple[int, int]] = None, tma: bool = False) -> KernelBuild:
    """Compile one kernel of omni.kernels for ``sm_{arch}`` and report its resources.

    ``flags`` are the mask features compiled in (default: the packed multimodal mask the model trains
    with and the benchmark times; ALL_FEATURES adds the sliding window, the largest variant).
    ``block`` overrides the training kernels' (block_m, block_n), to try other tiles. ``tma``: the
    training kernels load the tiles they stream (K/V; Q/dO in dk/dv) through TMA descriptors.
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import ASTSource

    from omni.kernels.tiles import interpreting

    if interpreting():
        raise RuntimeError("omni.kernels.aot compiles kernels; unset TRITON_INTERPRET")
    jit_fn, blocks = _kernels()[kernel]
    fn = jit_fn.fn if isinstance(jit_fn, triton.runtime.Autotuner) else jit_fn
    mask_flags = flags or PACKED_MULTIMODAL
    tile = blocks(head_dim) if block is None else dict(BLOCK_M=block[0], BLOCK_N=block[1])
    consts = dict(tile, HEAD_DIM=head_dim, **{k: v for k, v in dict(mask_flags, USE_TMA=tma).items()
                                              if k in fn.arg_names})
    sig, attrs = _signature(fn, consts)
    compiled = triton.compile(ASTSource(fn, sig, consts, attrs), target=GPUTarget("cuda", arch, 32),
                              options=dict(num_warps=num_warps, num_stages=num_stages))
    regs, spill = _ptxas_usage(compiled.asm["ptx"], arch)
    return KernelBuild(kernel, head_dim, consts.get("BLOCK_M", consts.get("BLOCK_R", 0)), consts.get("BLOCK_N", 0),
                       num_warps, num_stages, regs, spill, compiled.metadata.shared,
                       compiled.asm["ttgir"].count("ttg.async_copy_global_to_local"),
                       "wgmma" in compiled.asm["ptx"], compiled.asm["ptx"].count("mma.sync"),
                       consts.get("USE_TMA", False), compiled.asm["ttgir"].count("async_tma_copy_global_to_local"))


def offered_choices(head_dims: tuple[int, ...] = (64, 128, 256), arch: int = 90) -> list[tuple[str, int, int, int]]:
    """(kernel, head_dim, num_warps, num_stages) for every choice the autotuner may make on ``sm_{arch}``,
    and the fixed launches of the untuned kernels."""
    from omni.kernels.decode import SPLIT_STAGES, SPLIT_WARPS, merge_warps
    from omni.kernels.flash import tuning_choices

    out = []
    for d in head_dims:
        for name in TRAINING_KERNELS:
            out += [(name, d, w, s) for w, s in tuning_choices(name, arch // 10)]
        # delta and merge launch with Triton's default stages (3); delta with its default 4 warps.
        out += [("delta", d, 4, 3), ("decode", d, SPLIT_WARPS, SPLIT_STAGES), ("decode_merge", d, merge_warps(d), 3)]
    return out


def _build_star(args: tuple) -> KernelBuild:
    return build(*args)


def build_all(choices: list[tuple], arch: int = 90, workers: int = 2,
              flags: Optional[dict] = None, tma: bool = False) -> list[KernelBuild]:
    """Build many (kernel, head_dim, warps, stages) choices in ``workers`` processes."""
    jobs = [(*c, arch, flags, None, tma) for c in choices]
    if workers <= 1:
        return [_build_star(j) for j in jobs]
    # Spawned, not forked: the caller has torch's threads running, and forking a threaded process can
    # deadlock the child.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_build_star, jobs))


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", type=int, default=90, help="compute capability x10 (90: H100/H200; 80: A100; 89: L4/4090)")
    ap.add_argument("--head-dims", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--window", action="store_true", help="compile the sliding window in too (every feature)")
    ap.add_argument("--tma", action="store_true", help="the training kernels only, with TMA-descriptor loads")
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args(argv)
    flags = ALL_FEATURES if args.window else PACKED_MULTIMODAL
    choices = offered_choices(tuple(args.head_dims), args.arch)
    if args.tma:
        choices = [c for c in choices if c[0] in TRAINING_KERNELS]
    builds = build_all(choices, args.arch, args.workers, flags, args.tma)
    limit = SHARED_LIMIT.get(args.arch)
    features = "causal + documents + spans" + (" + window" if args.window else "") + ("; TMA loads" if args.tma else "")
    print(f"sm_{args.arch}, triton {triton.__version__}; mask: {features}; "
          f"shared limit {limit // 1024 if limit else '?'} KiB per block")
    head = f"{'kernel':<13}{'D':>4}{'block':>9}{'warps':>6}{'stages':>7}{'regs':>6}{'spill B':>8}" \
           f"{'smem KiB':>9}{'async':>6}{'tma':>5}{'wgmma':>6}{'mma.sync':>9}"
    print(head + "\n" + "-" * len(head))
    for b in builds:
        print(f"{b.kernel:<13}{b.head_dim:>4}{b.block:>9}{b.num_warps:>6}{b.num_stages:>7}"
              f"{b.registers:>6}{b.spill_bytes:>8}{b.shared_bytes / 1024:>9.1f}{b.async_copies:>6}{b.tma_copies:>5}"
              f"{'yes' if b.wgmma else 'no':>6}{b.mma_sync:>9}")
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(dict(arch=args.arch, triton=triton.__version__, builds=[asdict(b) for b in builds]), f, indent=1)


if __name__ == "__main__":
    main()
