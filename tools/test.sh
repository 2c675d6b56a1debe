#!/usr/bin/env bash
# Set up, lint (the pinned ruff: `ruff check`, `ruff format --check`) and run the whole test
# suite (CPU only; Triton kernels run in the interpreter). Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh
.venv/bin/ruff check --quiet .
.venv/bin/ruff format --check --quiet .
exec .venv/bin/python -m pytest -q "$@"
