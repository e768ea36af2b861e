#!/usr/bin/env bash
# One GPU session for the attention kernels (< 8 minutes on one H100):
#   1. correctness at real sizes: tests/test_kernels.py -m gpu (bf16/fp16 outputs and gradients, decode,
#      flex, the decoder end to end), log in $OUT/attention_gpu_tests.log;
#   2. the benchmark: table on stdout, JSON in $OUT/bench_attention.json (written after every case,
#      so a run cut by the time limit keeps what it measured).
# Usage: bash eval/gpu_check_attention.sh            (OUT defaults to runs/)
#        PYTHON=/path/to/python bash eval/gpu_check_attention.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-runs}
mkdir -p "$OUT"
# The repo's package (omni, with kernels/ as omni.kernels) without touching the box's torch/triton.
$PY -c "import omni.kernels" 2>/dev/null || $PY -m pip install -q --no-deps --no-build-isolation -e . \
    || { echo "cannot install the omni package: pip install -e . needs setuptools"; exit 1; }
$PY - <<'PY' | tee "$OUT/attention_env.txt"
import torch, triton
print("torch", torch.__version__, "triton", triton.__version__, "cuda", torch.version.cuda,
      torch.cuda.get_device_name() if torch.cuda.is_available() else "NO CUDA")
PY
status=0
timeout 200 $PY -m pytest -q -m gpu -x tests/test_kernels.py -p no:cacheprovider 2>&1 \
    | tee "$OUT/attention_gpu_tests.log" | tail -25
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "GPU correctness tests FAILED (see $OUT/attention_gpu_tests.log)"; status=1; }
timeout 250 $PY eval/bench_attention.py --out "$OUT/bench_attention.json" 2>&1 | tee "$OUT/bench_attention.log" \
    | grep -v Warning
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "benchmark did not finish (partial JSON kept)"; status=1; }
exit $status
