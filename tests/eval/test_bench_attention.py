"""eval/bench_attention.py: the benchmark's CPU smoke run (Triton interpreter, tiny sizes) end to end."""
import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HAS_CUDA = torch.cuda.is_available()
try:
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:
    HAS_TRITON = False


@pytest.mark.slow
@pytest.mark.skipif(not HAS_TRITON or HAS_CUDA, reason="the CPU smoke run of the benchmark")
def test_benchmark_cpu_smoke(tmp_path):
    """eval/bench_attention.py --cpu-smoke runs end to end: every backend timed, both kernel variants checked
    against the reference at each case, the JSON written, exit status 0."""
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "eval/bench_attention.py", "--cpu-smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(out.read_text())
    # "triton" and, the interpreter emulating TMA descriptors, "triton-tma": 2 sequences x 2 masks each.
    triton_rows = [r for r in result["training"] if r["backend"] in ("triton", "triton-tma")]
    assert len(triton_rows) == 8 and all(r["check_ok"] and r["fwdbwd_tflops"] > 0 for r in triton_rows)
    assert len(result["decode"]) == 4 and all(r["check_ok"] for r in result["decode"])
