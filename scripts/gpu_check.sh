#!/usr/bin/env bash
# The prepared device check (one call, <= 9.5 min on an H100/H200): the accelerator-relevant tests on the
# GPU first (failures print as they happen), then the accelerator benchmark's --quick table, then, with the
# time left, a traced profile of the low-rank ES population (docs/gpu.md reads them). Everything lands in
# $OUT (7 files: the device tool brings back at most 8, each <= 16 MB, so the traces travel gzipped).
# From a session that has a device (see docs/gpu.md):
#   mkdir -p .esjax-cache && cp -r ~/.cache/esjax/smollm2-135m-instruct-tokenizer .esjax-cache/
#   device run: command="bash scripts/gpu_check.sh", carry=[".esjax-cache"], timeout_s=590
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=. ESJAX_CACHE="$PWD/.esjax-cache" PYTHONUNBUFFERED=1
# one compilation cache for the whole call: the profiler reuses the benchmark's compiled programs
export JAX_COMPILATION_CACHE_DIR=/tmp/esjax-jax-cache JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT" /tmp/esjax-prof
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv; git rev-parse --short HEAD 2>/dev/null
  git status --short | head; date -u
  python3 -c "import jax, jaxlib; print('jax', jax.__version__, jaxlib.__version__, jax.devices())"; } > "$OUT/gpu.txt" 2>&1
# tests on the GPU (no 8 forced devices: the sharded cases stay on CPU/CI); TF32 is kept out of the float32
# comparisons by tests/conftest.py (highest matmul precision). -v: each test's name as it passes (each
# compiles its own programs: 7 took 160 s on an H100); -rf --tb=short: reasons survive a timeout.
JAX_PLATFORMS=cuda XLA_FLAGS= timeout 100 python3 -m pytest -p no:cacheprovider -v -rf --tb=short \
  tests/test_population_loop.py tests/test_precision.py tests/test_noise_schemes.py \
  -k "not sharded and not fresh_process and not export" > "$OUT/tests.txt" 2>&1
echo "pytest exit $? at $SECONDS s" >> "$OUT/tests.txt"
# the benchmark's --quick table (its sections in the order of what is still short of its target; the loop
# with +WHILE command buffers and the cache blocks were measured on 2026-11-27: docs/gpu.md §6)
t0=$SECONDS
timeout 360 python3 -m experiments.bench_accel --quick --budget-s 290 --out "$OUT" > "$OUT/bench.txt" 2>&1
echo "bench exit $? after $((SECONDS - t0)) s" >> "$OUT/bench.txt"
# the same shapes as the benchmark's es16 (30 x 16 x 64) program: is the GPU still idle while the host draws
# the member noise (160 ms of a 678 ms call on 2026-11-27, before the noise was drawn per leaf shape)?
# (only with the time that is left: the measurements above come first)
t1=$SECONDS
[ $((565 - SECONDS)) -ge 30 ] && timeout $((565 - SECONDS)) python3 -m experiments.profile_decode --what lowrank --members 30 --rows 480 --new 64 --hlo \
  --out /tmp/esjax-prof > /tmp/esjax-prof/log.txt 2>&1
echo "profile es exit $? after $((SECONDS - t1)) s" >> /tmp/esjax-prof/log.txt
cat /tmp/esjax-prof/log.txt > "$OUT/profile.txt" 2>/dev/null
(cd /tmp/esjax-prof && tar czf "$OUT/xplanes.tgz" *.xplane.pb *.hlo.txt 2>/dev/null)
tail -n 3 "$OUT/tests.txt"; grep -h "^#\|^programs\|^spans" "$OUT/profile.txt" | head; cat "$OUT/table.md" 2>/dev/null
