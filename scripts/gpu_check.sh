#!/usr/bin/env bash
# The prepared device check (one call, <= 8 min on an H100/H200): the accelerator-relevant tests on the GPU,
# then the accelerator benchmark's --quick table. Everything lands in $OUT (5 files).
# From a session that has a device (see docs/gpu.md):
#   mkdir -p .esjax-cache && cp -r ~/.cache/esjax/smollm2-135m-instruct-tokenizer .esjax-cache/
#   device run: command="bash scripts/gpu_check.sh", carry=[".esjax-cache"], timeout_s=540
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=. ESJAX_CACHE="$PWD/.esjax-cache"
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; git rev-parse --short HEAD 2>/dev/null; date -u
  python3 -c "import jax; print('jax', jax.__version__, jax.devices())"; } > "$OUT/gpu.txt" 2>&1
# Tests on the GPU (no 8 forced devices there: the sharded cases stay on CPU/CI). TF32 is kept out of the
# float32 comparisons by tests/conftest.py (highest matmul precision).
JAX_PLATFORMS=cuda XLA_FLAGS= timeout 200 python3 -m pytest -q -p no:cacheprovider \
  tests/test_precision.py tests/test_noise_schemes.py tests/test_es.py tests/test_models.py \
  -k "not sharded and not fresh_process" > "$OUT/tests.txt" 2>&1
echo "pytest exit $?" >> "$OUT/tests.txt"
timeout 330 python3 -m experiments.bench_accel --quick --out "$OUT" > "$OUT/bench.txt" 2>&1
echo "bench exit $?" >> "$OUT/bench.txt"
tail -n 3 "$OUT/tests.txt"; cat "$OUT/table.md" 2>/dev/null
