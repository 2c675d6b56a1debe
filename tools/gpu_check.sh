#!/usr/bin/env bash
# Every GPU check on a lent CUDA machine, with its own python3 (CUDA torch, Triton, NumPy, SymPy):
# bit checks, the Triton tests on CUDA, benchmarks; results in $OUT/gpu_check.md (or --out).
# Exit status: 0 passed, 1 a check failed, 3 no CUDA device (nothing run). See tools/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET
exec "${PYTHON:-python3}" -m tools.gpu_check "$@"
