#!/usr/bin/env bash
# The prepared accelerator check: on a machine with an NVIDIA GPU, in under 8 minutes, the Pallas kernels against
# XLA (forward and backward, bf16, T = 1k..64k), the memory-efficient attention, one train step of each small
# preset, and the `retention` / `fla` kernels where those packages import. Writes OUT/accelerator_check.{json,md}
# (benchmarks/accelerator_check.py). Usage: bash benchmarks/accelerator_check.sh [OUT]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-accelerator_check}}
PY=${PYTHON:-python3}
mkdir -p "$OUT_DIR"
if ! $PY -c "import jax, sys; sys.exit(jax.devices()[0].platform != 'gpu')" 2>/dev/null; then
    # the [gpu] extra: jax[cuda12] and jax-triton (needs a package index; a machine without one brings wheels)
    timeout 150 $PY -m pip install -q -e ".[gpu]" || echo "note: the [gpu] extra did not install; timing what runs"
fi
$PY -m pip install -q -e . 2>/dev/null || true
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout 420 $PY benchmarks/accelerator_check.py --out "$OUT_DIR" "${@:2}" 2>&1 | tee "$OUT_DIR/accelerator_check.log"
