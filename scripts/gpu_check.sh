#!/usr/bin/env bash
# The prepared device check (one call, <= 9.5 min on an H100/H200): the accelerator-relevant tests on the
# GPU first, the fused decode-attention kernel's before the rest (failures print as they happen), then the
# accelerator benchmark's --quick table on the rows still short or new, then, with the faster decode
# attention, one chunk of the paper-2 iteration measured (and es16 with the kernel if it won), then, with the
# time left, a traced profile of the GRPO learner update (docs/gpu.md reads it) and EOS compaction's rows.
# (Session 12's Triton-GEMMs-off rows: `XLA_FLAGS=--xla_gpu_enable_triton_gemm=false python3 -m
# experiments.bench_accel --quick --no-reference --sections generate,es16 --noise lowrank`, a call of its own.)
# Everything lands in $OUT (7 files: the device tool brings back at most 8, each <= 16 MB, so the traces
# travel gzipped).
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
# 17's fused decode-attention kernel first (its first real Triton compile: the kernel against the einsums
# at Qwen2.5-1.5B's head, masked slots, a generation with it), then session 12's decode-loop changes, the
# precision tests and session 14's compaction, as far as the time goes.
JAX_PLATFORMS=cuda XLA_FLAGS= timeout 120 python3 -m pytest -p no:cacheprovider -v -rf --tb=short \
  "tests/test_decode_attention.py::test_kernel_is_the_einsum_attention[6-128-1100-64-1030]" \
  "tests/test_decode_attention.py::test_kernel_reads_no_masked_slot_and_zeroes_a_row_with_nothing_to_attend" \
  "tests/test_decode_attention.py::test_generation_with_the_kernel_decodes_the_same_tokens[3-2-0-0.0-1-1-None]" \
  "tests/test_decode_attention.py::test_kernel_is_the_einsum_attention[3-64-100-64-77]" \
  "tests/test_population_loop.py::test_lowrank_members_read_the_joined_weights_and_decode_as_the_parameter_layout" \
  "tests/test_population_loop.py::test_members_skip_the_log_softmax_when_the_fitness_reads_no_log_probs" \
  "tests/test_population_loop.py::test_population_decode_loop_settings_decode_the_same_tokens" \
  "tests/test_population_loop.py::test_the_decoding_layout_is_the_same_function" \
  tests/test_precision.py \
  "tests/test_compaction.py::test_compacted_generation_decodes_every_row_as_the_whole_batch_does[1]" \
  > "$OUT/tests.txt" 2>&1
echo "pytest exit $? at $SECONDS s" >> "$OUT/tests.txt"
# the benchmark's --quick table on the rows still short of their targets or new (a section starts only within
# the budget, so the call's end is bounded by the last one started): the decode step against its roofline,
# XLA's attention vs the fused kernel (session 17), N = 1,024, the GRPO learner, es16. No transformers
# reference (34.9x on an H100, §6), no es200 / ES update rows (met, §6), no extrapolated paper-2 (measured below)
t0=$SECONDS
timeout 290 python3 -m experiments.bench_accel --quick --no-reference --budget-s 200 --out "$OUT" \
  --sections generate,attention,n1024,grpo,es16 > "$OUT/bench.txt" 2>&1
echo "bench exit $? after $((SECONDS - t0)) s" >> "$OUT/bench.txt"
# the faster decode attention of the attention rows (XLA / fused >= 1 at both lengths: the kernel; a default
# changes only at >= 1.05x, docs/gpu.md §12). With the kernel, es16 again (beside the table's XLA es16: the
# population with it), then one chunk of the paper-2 iteration (30 x 200 x 1,024, low-rank) measured
IMPL=$(python3 -c "import json,sys; r=json.load(open(sys.argv[1]))['results']
q=[v['ratio'] for k,v in r.items() if 'fused attention kernel' in k]
print('pallas' if len(q) == 2 and min(q) >= 1.0 else 'xla')" "$OUT/results.json" 2>/dev/null || echo xla)
SECTIONS=paper2; [ "$IMPL" = pallas ] && SECTIONS=es16,paper2
t4=$SECONDS rc=skipped
if [ $((520 - SECONDS)) -ge 100 ]; then
  timeout $((520 - SECONDS)) python3 -m experiments.bench_accel --quick --no-reference --sections "$SECTIONS" \
    --noise lowrank --paper2-chunk --paper2-noise lowrank --decode-attention "$IMPL" --budget-s 120 \
    --out /tmp/esjax-p2 > /tmp/esjax-p2.txt 2>&1
  rc=$?
fi
{ echo; echo "## $SECTIONS with decode_attention=$IMPL, paper-2 as one measured chunk (exit $rc, $((SECONDS - t4)) s)"
  cat /tmp/esjax-p2/table.md /tmp/esjax-p2.txt 2>/dev/null | tail -n 20; } >> "$OUT/bench.txt"
# a traced profile of the GRPO learner update (its MFU row, never profiled) with the time left, packed at once
t2=$SECONDS rc=skipped
if [ $((565 - SECONDS)) -ge 40 ]; then
  timeout $((565 - SECONDS)) python3 -m experiments.profile_decode --what grpo --hlo --out /tmp/esjax-prof \
    > /tmp/esjax-prof/log.txt 2>&1
  rc=$?
fi
(cd /tmp/esjax-prof && tar czf "$OUT/xplanes.tgz" *.xplane.pb *.hlo.txt 2>/dev/null)
# EOS compaction (session 14, never on a GPU), only if time is left: 256 rows x 1,024 new tokens in blocks of
# 256, rows that stop early, compaction 0 vs 2; decides whether the seed presets keep decode_compaction=2 (§9)
t3=$SECONDS rc3=skipped
if [ $((580 - SECONDS)) -ge 30 ]; then
  timeout $((580 - SECONDS)) python3 -m experiments.bench_compaction --shapes qwen2.5-1.5b --rows 256 --new 1024 \
    --block 256 --halvings 2 --sections plain --cases early --median 0.2 > /tmp/esjax-compaction.txt 2>&1
  rc3=$?
fi
{ echo; echo "## EOS compaction, bench_compaction (exit $rc3, $((SECONDS - t3)) s)"; grep -v Warning /tmp/esjax-compaction.txt 2>/dev/null | tail -n 12; } >> "$OUT/bench.txt"
echo "profile exit $rc after $((SECONDS - t2)) s" >> /tmp/esjax-prof/log.txt
cat /tmp/esjax-prof/log.txt > "$OUT/profile.txt" 2>/dev/null
tail -n 3 "$OUT/tests.txt"; grep -h "^#\|^programs\|^spans" "$OUT/profile.txt" | head; cat "$OUT/table.md" 2>/dev/null
tail -n 12 "$OUT/bench.txt"
