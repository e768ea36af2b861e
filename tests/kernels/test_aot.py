"""omni.kernels.aot: every attention kernel builds for Hopper (sm_90) on a machine without a GPU.

It compiles kernels, so it cannot run under TRITON_INTERPRET=1 (tests/kernels/test_flash.py's child)."""
import os

import pytest

triton = pytest.importorskip("triton")
from omni.kernels import aot  # noqa: E402  (needs triton)

INTERP = os.environ.get("TRITON_INTERPRET") == "1"
TRITON_VERSION = tuple(int(part) for part in triton.__version__.split(".")[:2])


@pytest.mark.slow
@pytest.mark.skipif(INTERP, reason="needs compiled (not interpreted) kernel definitions")
def test_kernels_build_for_hopper():
    """Without a GPU, build every kernel for sm_90 with every choice the autotuner may make (specialised
    as a launch at the benchmark's shapes), so that a Hopper-only compile error, too much shared
    memory, a register spill, a loop the pipeliner gave up on or a product off the wgmma path shows up
    here. With the model's packed multimodal mask, head dims 64 and 128 must use wgmma and be
    spill-free (Triton 3.6 spills in dk/dv at D=128); head dim 256 (the largest allowed), and
    every kernel with all mask features (the sliding window too), must build and fit. The same holds
    for the training kernels built with TMA-descriptor loads (OMNI_ATTENTION_TMA=1), whose streamed
    loads must then be pipelined TMA copies."""
    # Built in this process (workers=1): under `make test` both cores are busy with its two workers, and a
    # pool would spawn processes that each import torch and Triton again (about as much CPU as the builds).
    choices = aot.offered_choices((64, 128, 256))
    for b in aot.build_all(choices, arch=90, workers=1, flags=aot.ALL_FEATURES):
        assert b.shared_bytes <= aot.SHARED_LIMIT[90], f"{b.kernel} D={b.head_dim} with a window: {b.shared_bytes} B"
    tma_choices = [c for c in choices if c[0] in aot.TRAINING_KERNELS]
    for b in aot.build_all(choices, arch=90, workers=1) + aot.build_all(tma_choices, arch=90, workers=1, tma=True):
        what = f"{b.kernel} D={b.head_dim} warps={b.num_warps} stages={b.num_stages}" + (" TMA" if b.tma_loads else "")
        assert b.shared_bytes <= aot.SHARED_LIMIT[90], f"{what} needs {b.shared_bytes} bytes of shared memory"
        if b.tma_loads:
            # Two streamed tensors in each of the two tile loops are 4 loads; pipelining adds the prologue's.
            assert b.tma_copies > 4, f"{what}: {b.tma_copies} TMA copies, the loads are not pipelined"
        elif b.kernel in aot.TRAINING_KERNELS + ("decode",):
            assert b.async_copies > 0, f"{what}: the key/value loads are not pipelined"
        # Triton 3.6 (the GPU machines') spills in dk/dv at D=128 (16-136 B: HOPPER_CONFIGS' comment,
        # docs/benchmarks.md); every other build must be spill-free under it too.
        spill_allowed = b.kernel == "dkdv" and b.head_dim == 128 and TRITON_VERSION < (3, 9)
        if b.head_dim <= 128:
            assert b.spill_bytes == 0 or spill_allowed, f"{what} spills {b.spill_bytes} bytes"
            # Training tiles are large enough for Hopper's warp-group MMA, for every product (none left
            # on mma.sync); decode tiles (16 rows) are not.
            assert b.wgmma == (b.kernel in aot.TRAINING_KERNELS), what
            if b.kernel in aot.TRAINING_KERNELS:
                assert b.mma_sync == 0, f"{what}: {b.mma_sync} products on mma.sync, not wgmma"
