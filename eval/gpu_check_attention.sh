#!/usr/bin/env bash
# One GPU session for the attention kernels (at most 9 minutes on one H100; the limits below add up
# to 540 s), the figures first:
#   0. a canary for the TMA-descriptor loads (the causal GPU test alone): should they fault, the
#      benchmark leaves them out (--no-tma) rather than lose its CUDA context, and the run fails;
#   1. the benchmark: every case first checks the Triton kernels at full size (output and dq, dk, dv
#      against FlexAttention; decode against SDPA), then times them; on sm_90 twice, "triton" with
#      pointer loads and "triton-tma" with TMA-descriptor loads (OMNI_ATTENTION_TMA). Table on stdout, JSON in
#      $OUT/bench_attention.json, written after every case, so a run cut by a time limit keeps what it
#      measured;
#   2. the GPU tests: tests/kernels/test_flash.py -m gpu (bf16/fp16 outputs and gradients for every mask kind,
#      GQA, offsets, TMA loads, decode, flex, the decoder end to end), log in $OUT/attention_gpu_tests.log.
# Every kernel variant is compiled on first use (a few seconds each, one process), which is most of
# step 2's time; the benchmark goes first so that a slow compile cannot cost the figures.
# Usage: bash eval/gpu_check_attention.sh            (OUT defaults to runs/)
#        PYTHON=/path/to/python bash eval/gpu_check_attention.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-runs}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# The repo's package (omni, with kernels/ as omni.kernels) without touching the box's torch/triton.
$PY -c "import omni.kernels" 2>/dev/null || $PY -m pip install -q --no-deps --no-build-isolation -e . \
    || { echo "cannot install the omni package: pip install -e . needs setuptools"; exit 1; }
$PY - <<'PY' | tee "$OUT/attention_env.txt"
import torch, triton
print("torch", torch.__version__, "triton", triton.__version__, "cuda", torch.version.cuda,
      torch.cuda.get_device_name() if torch.cuda.is_available() else "NO CUDA")
PY
status=0
# The TMA-descriptor loads alone first (~20 s): a fault there would poison the benchmark's CUDA context.
tma=""
timeout 60 $PY -m pytest -q -x -m gpu tests/kernels/test_flash.py -k "tma_loads and causal" -p no:cacheprovider \
    > "$OUT/attention_tma_canary.log" 2>&1 \
    || { echo "TMA loads failed on their own (see $OUT/attention_tma_canary.log): benchmark without them"; tma="--no-tma"; status=1; }
timeout 320 $PY eval/bench_attention.py $tma --out "$OUT/bench_attention.json" 2>&1 | tee "$OUT/bench_attention.log" \
    | grep -v Warning
case "${PIPESTATUS[0]}" in
    0) ;;
    3) echo "benchmark: a full-size check FAILED (see the max rel err column)"; status=1 ;;
    *) echo "benchmark did not finish (partial JSON kept)"; status=1 ;;
esac
timeout 160 $PY -m pytest -q -m gpu tests/kernels/test_flash.py -p no:cacheprovider 2>&1 \
    | tee "$OUT/attention_gpu_tests.log" | tail -25
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "GPU tests FAILED or cut short (see $OUT/attention_gpu_tests.log)"; status=1; }
exit $status
