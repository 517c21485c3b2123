#!/usr/bin/env bash
# The prepared GPU check (issue #17, issue #12 item 8): FP16 numerics on the GPU, engine.runtime's CUDA
# paths without TensorRT, and the GPU forward benchmark, unattended, in under 8 minutes.
#   scripts/gpu-check.sh [bench.gpu_check flags]       e.g. --skip-forward, --budget-s 300
# Results: $OUT/gpu-check/ where the machine sets $OUT (else a temporary folder; --out-dir overrides):
# gpu-check.json after every check, forward/forward.json|csv. Progress lines on stdout, a summary at the end.
# Python: $PYTHON, else .venv/bin/python, else python3 (needs torch; onnx and onnxruntime for the numerics).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-.venv/bin/python}
[ -x "$python" ] || python=python3
limit=${GPU_CHECK_TIMEOUT_S:-470}   # hard stop; bench.gpu_check plans for --budget-s (420 s) within it

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
echo "[gpu-check] $("$python" --version 2>&1) at $python; hard limit ${limit} s"
exec timeout --signal=INT --kill-after=20 "$limit" "$python" -m bench.gpu_check "$@"
