#!/usr/bin/env bash
# The prepared device check (one call, <= 9.5 min on an H100/H200): the accelerator-relevant tests on the
# GPU first (failures print as they happen), then the accelerator benchmark's --quick table, then the decode
# rows again with XLA's Triton GEMMs off (cuBLAS for every GEMM), then EOS compaction's rows, then, with the
# time left, traced profiles of the GRPO learner update and the low-rank ES population (docs/gpu.md reads
# them). Everything lands in $OUT (7 files: the device tool brings back at most 8, each <= 16 MB, so the
# traces travel gzipped).
# From a session that has a device (see docs/gpu.md):
#   mkdir -p .esjax-cache && cp -r ~/.cache/esjax/smollm2-135m-instruct-tokenizer .esjax-cache/
#   device run: command="bash scripts/gpu_check.sh", carry=[".esjax-cache"], timeout_s=590
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=. ESJAX_CACHE="$PWD/.esjax-cache" PYTHONUNBUFFERED=1
# one compilation cache for the whole call: the profiler reuses the benchmark's compiled programs (XLA_FLAGS
# are part of a program's cache key: the Triton-off run compiles its own)
export JAX_COMPILATION_CACHE_DIR=/tmp/esjax-jax-cache JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT" /tmp/esjax-prof
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv; git rev-parse --short HEAD 2>/dev/null
  git status --short | head; date -u
  python3 -c "import jax, jaxlib; print('jax', jax.__version__, jaxlib.__version__, jax.devices())"; } > "$OUT/gpu.txt" 2>&1
# tests on the GPU (no 8 forced devices: the sharded cases stay on CPU/CI); TF32 is kept out of the float32
# comparisons by tests/conftest.py (highest matmul precision). -v: each test's name as it passes (each
# compiles its own programs: 7 took 160 s on an H100); -rf --tb=short: reasons survive a timeout. Session
# 12's decode-loop changes first (joined weights, no log-softmax, the loop settings), then precision, then
# session 14's compaction (same tokens on the GPU), then session 17's fused decode-attention kernel (its first
# Triton compile: the kernel against the einsums, generations and members with it).
JAX_PLATFORMS=cuda XLA_FLAGS= timeout 120 python3 -m pytest -p no:cacheprovider -v -rf --tb=short \
  "tests/test_population_loop.py::test_lowrank_members_read_the_joined_weights_and_decode_as_the_parameter_layout" \
  "tests/test_population_loop.py::test_members_skip_the_log_softmax_when_the_fitness_reads_no_log_probs" \
  "tests/test_population_loop.py::test_population_decode_loop_settings_decode_the_same_tokens" \
  "tests/test_population_loop.py::test_the_decoding_layout_is_the_same_function" \
  tests/test_precision.py \
  "tests/test_compaction.py::test_compacted_generation_decodes_every_row_as_the_whole_batch_does[1]" \
  "tests/test_decode_attention.py::test_kernel_is_the_einsum_attention[3-64-100-64-77]" \
  "tests/test_decode_attention.py::test_kernel_reads_no_slot_past_filled_and_zeroes_a_row_with_nothing_to_attend" \
  "tests/test_decode_attention.py::test_generation_with_the_kernel_decodes_the_same_tokens[3-2-0-0.0-1-1]" \
  > "$OUT/tests.txt" 2>&1
echo "pytest exit $? at $SECONDS s" >> "$OUT/tests.txt"
# the benchmark's --quick table (its sections in the order of what is still short of its target; a section
# starts only within the budget, so the call's end is bounded by the last one started)
t0=$SECONDS
timeout 290 python3 -m experiments.bench_accel --quick --budget-s 200 --out "$OUT" > "$OUT/bench.txt" 2>&1
echo "bench exit $? after $((SECONDS - t0)) s" >> "$OUT/bench.txt"
# the fused decode-attention kernel through the populations (session 17): es16 and N = 1,024 low-rank with
# decode_attention=pallas, to set beside the --quick table's rows (which run XLA's attention)
t4=$SECONDS rc=skipped
if [ $((440 - SECONDS)) -ge 50 ]; then
  timeout $((440 - SECONDS)) python3 -m experiments.bench_accel --quick --no-reference --sections es16,n1024 \
    --noise lowrank --decode-attention pallas --budget-s 60 --out /tmp/esjax-pallas > /tmp/esjax-pallas.txt 2>&1
  rc=$?
fi
{ echo; echo "## es16 and n1024 with decode_attention=pallas (exit $rc, $((SECONDS - t4)) s)"
  cat /tmp/esjax-pallas/table.md /tmp/esjax-pallas.txt 2>/dev/null | tail -n 20; } >> "$OUT/bench.txt"
# the decode rows with XLA's Triton GEMM fusions off: every GEMM goes to cuBLAS (the H100 profile of
# 2026-11-27 had q/k/v as one Triton GEMM at ~20 % of peak); a launch setting, decided by this row pair
t1=$SECONDS rc=skipped
if [ $((490 - SECONDS)) -ge 40 ]; then
  XLA_FLAGS=--xla_gpu_enable_triton_gemm=false timeout $((490 - SECONDS)) \
    python3 -m experiments.bench_accel --quick --no-reference --sections generate,es16 --noise lowrank \
    --budget-s 50 --out /tmp/esjax-triton-off > /tmp/esjax-triton-off.txt 2>&1
  rc=$?
fi
{ echo; echo "## the same rows with XLA_FLAGS=--xla_gpu_enable_triton_gemm=false (exit $rc, $((SECONDS - t1)) s)"
  cat /tmp/esjax-triton-off/table.md /tmp/esjax-triton-off.txt 2>/dev/null | tail -n 30; } >> "$OUT/bench.txt"
# EOS compaction (session 14, never on a GPU): 256 rows x 1,024 new tokens in blocks of 256, rows that stop
# early (log-normal lengths around 205 tokens, 5 % run the budget: a run would pick compaction 2 after them),
# compaction 0 vs 2; decides whether the seed presets keep decode_compaction=2 (docs/gpu.md §9)
t3=$SECONDS rc=skipped
if [ $((540 - SECONDS)) -ge 45 ]; then
  timeout $((540 - SECONDS)) python3 -m experiments.bench_compaction --shapes qwen2.5-1.5b --rows 256 --new 1024 \
    --block 256 --halvings 2 --sections plain --cases early --median 0.2 > /tmp/esjax-compaction.txt 2>&1
  rc=$?
fi
{ echo; echo "## EOS compaction, bench_compaction (exit $rc, $((SECONDS - t3)) s)"; grep -v Warning /tmp/esjax-compaction.txt 2>/dev/null | tail -n 12; } >> "$OUT/bench.txt"
# traced profiles with the time left: the GRPO learner (its MFU row, never profiled), then the es16 program
# (is the GPU still idle while the host draws the member noise? 160 ms of 678 on 2026-11-27)
t2=$SECONDS rc=skipped
if [ $((572 - SECONDS)) -ge 30 ]; then
  timeout $((572 - SECONDS)) python3 -m experiments.profile_decode --what grpo,lowrank \
    --members 30 --rows 480 --new 64 --hlo --out /tmp/esjax-prof > /tmp/esjax-prof/log.txt 2>&1
  rc=$?
fi
echo "profile exit $rc after $((SECONDS - t2)) s" >> /tmp/esjax-prof/log.txt
cat /tmp/esjax-prof/log.txt > "$OUT/profile.txt" 2>/dev/null
(cd /tmp/esjax-prof && tar czf "$OUT/xplanes.tgz" *.xplane.pb *.hlo.txt 2>/dev/null)
tail -n 3 "$OUT/tests.txt"; grep -h "^#\|^programs\|^spans" "$OUT/profile.txt" | head; cat "$OUT/table.md" 2>/dev/null
tail -n 12 "$OUT/bench.txt"
