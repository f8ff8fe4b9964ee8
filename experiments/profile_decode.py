"""Where a decode step's time goes: trace one call of plain generation or an ES population on whatever
device JAX finds (random weights of real shapes, EOS off) and rank the device's ops by their total time.

    python -m experiments.profile_decode [--shapes qwen2.5-1.5b] [--what generate,lowrank,full,grpo]
                                         [--rows 128] [--new 32] [--members 8] [--out DIR]

``grpo`` traces one GRPO learner update instead (``bench_accel``'s MFU row: ``--grpo-rows`` sequences of
``--prompt-len`` + ``--grpo-new`` tokens in micro-batches of ``--grpo-micro``).

Each program is compiled and run once first, then traced for one call with ``jax.profiler.trace``; the
trace is read back with ``jax.profiler.ProfileData`` (no TensorBoard needed). For each program
``profile_<what>.txt`` holds: the wall time of the traced call, the time the device was busy (sum of op
durations on its busiest line, and that sum over the wall time: far below 1 means launch gaps or host
work), each compiled program's share of that time (a population call runs the weight cast, the member
noise and the decode program), and the ops ranked by total time with their counts, named
``program:op`` where the trace records the program (op names such as ``copy.1`` repeat across programs;
GPU kernels by kernel name; the trace does not record jax's named scopes for kernels inside CUDA graphs). On CPU the "device" lines are the XLA CPU
client's threads. Writes under ``--out`` (``$OUT`` on the device machine).
"""
from __future__ import annotations

import argparse
import collections
import glob
import os
import shutil
import tempfile
import time

import jax
import numpy as np

from esjax.es.population import auto_chunk_size, lm_evaluator, member_ids, population_fn
from esjax.es.step import ESConfig, init_state
from esjax.models.decoder import init_params
from esjax.models.precision import compute_params
from esjax.sampling import make_generate
from experiments.bench_accel import grpo_learner_case
from experiments.shapes import shape_config

def _stats(event) -> dict:
    import warnings
    with warnings.catch_warnings():  # jaxlib's event_stats type warns on iteration (harmless)
        warnings.simplefilter("ignore", DeprecationWarning)
        return {str(k): v for k, v in event.stats}


def summarize_xplane(path: str, top: int = 40) -> dict:
    """Per device line: busy ns, busy ns per compiled program (``modules``), each program's first start and
    last end from the line's first op (``spans``, ns), and ops ranked by total ns (``program:op`` where the
    event names its program), from one ``*.xplane.pb``."""
    from jax.profiler import ProfileData
    pd = ProfileData.from_file(path)
    lines = []
    for plane in pd.planes:
        is_device = plane.name.startswith("/device:")
        for line in plane.lines:
            if not is_device and not line.name.startswith("tf_XLAPjRtCpuClient"):
                continue
            if "XLA Modules" in line.name or "Steps" in line.name or "Source" in line.name:
                continue
            ops = collections.defaultdict(lambda: [0.0, 0, ""])
            modules = collections.Counter()  # busy ns per compiled program (a call runs several)
            spans = {}  # per program: [first start, last end] in ns
            busy, first, last = 0.0, float("inf"), 0.0
            for ev in line.events:
                dur = float(ev.duration_ns)
                if dur <= 0:
                    continue
                st = _stats(ev)
                # GPU kernels run inside CUDA-graph "command buffers": their own name says which fusion it is
                name = ev.name if is_device else str(st.get("hlo_op") or ev.name)
                module = st.get("hlo_module")
                if module is not None:  # op names repeat across programs (copy.1 in each): keep them apart
                    name = f"{module}:{name}"
                prog = str(module) if module is not None else "(no program)"
                modules[prog] += dur
                span = spans.setdefault(prog, [float(ev.start_ns), 0.0])
                span[0], span[1] = min(span[0], float(ev.start_ns)), max(span[1], float(ev.start_ns) + dur)
                busy += dur
                first, last = min(first, float(ev.start_ns)), max(last, float(ev.start_ns) + dur)
                rec = ops[name]
                rec[0] += dur
                rec[1] += 1
                if not rec[2]:
                    rec[2] = "; ".join(f"{k}={str(v)[:90]}" for k, v in st.items()
                                       if k in ("hlo_op", "long_name", "hlo_category", "kernel_details", "name"))[:240]
            if ops:
                ranked = sorted(ops.items(), key=lambda kv: -kv[1][0])[:top]
                lines.append({"plane": plane.name, "line": line.name, "busy_ns": busy, "span_ns": last - first,
                              "events": sum(r[1] for r in ops.values()),
                              "ops": ranked, "modules": modules.most_common(),
                              "spans": sorted(((m, a - first, b - first) for m, (a, b) in spans.items()),
                                              key=lambda t: t[1])})
    lines.sort(key=lambda r: -r["busy_ns"])
    return {"lines": lines}


def trace_call(fn, out_dir: str, label: str) -> tuple[float, dict]:
    """(wall seconds of one traced call of ``fn``, summary) — ``fn`` must already be compiled."""
    tmp = tempfile.mkdtemp(prefix=f"prof_{label}_")
    try:
        with jax.profiler.trace(tmp):
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            wall = time.perf_counter() - t0
        found = glob.glob(os.path.join(tmp, "**", "*.xplane.pb"), recursive=True)
        if not found:
            raise RuntimeError(f"no xplane.pb written under {tmp}")
        if out_dir:
            shutil.copy(found[0], os.path.join(out_dir, f"profile_{label}.xplane.pb"))
        return wall, summarize_xplane(found[0])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def report(label: str, wall: float, summary: dict, steps: int, first: float, unit: str = "decode step") -> str:
    out = [f"# {label}: traced call {wall * 1e3:.1f} ms wall ({wall / steps * 1e3:.2f} ms per {unit} over {steps}); "
           f"first call {first:.1f} s", ""]
    for ln in summary["lines"][:3]:
        busy = ln["busy_ns"] / 1e9
        out.append(f"## {ln['plane']} / {ln['line']}: busy {busy * 1e3:.1f} ms ({busy / wall:.0%} of wall; first op to "
                   f"last {ln['span_ns'] / 1e6:.1f} ms), "
                   f"{ln['events']} op events ({ln['events'] / steps:.0f} per {unit})")
        out.append("programs: " + ", ".join(f"{m} {t / max(ln['busy_ns'], 1):.0%}" for m, t in ln["modules"][:8]))
        # when each program ran, from the line's first op (a device idle before the decode shows here)
        out.append("spans (ms from the first op): " + ", ".join(f"{m} {a / 1e6:.1f}–{b / 1e6:.1f}"
                                                               for m, a, b in ln["spans"]))
        out.append("| op | total ms | share | count | µs each | detail |")
        out.append("|---|---|---|---|---|---|")
        for name, (tot, cnt, detail) in ln["ops"]:
            out.append(f"| {name[:60]} | {tot / 1e6:.2f} | {tot / max(ln['busy_ns'], 1):.1%} | {cnt} | "
                       f"{tot / cnt / 1e3:.1f} | {detail[:160]} |")
        out.append("")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="qwen2.5-1.5b")
    p.add_argument("--compute-dtype", default=None)
    p.add_argument("--what", default="generate,lowrank")
    p.add_argument("--rows", type=int, default=128, help="rows of plain generation; members × prompts for ES")
    p.add_argument("--members", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new", type=int, default=32)
    p.add_argument("--out", default=os.environ.get("OUT", "runs/profile_decode"))
    p.add_argument("--grpo-rows", type=int, default=64, help="--what grpo: sequences per learner update")
    p.add_argument("--grpo-new", type=int, default=256, help="--what grpo: scored tokens after the prompt")
    p.add_argument("--grpo-micro", type=int, default=16, help="--what grpo: sequences per micro-batch")
    p.add_argument("--hlo", action="store_true", help="also write each ES population's (and the GRPO learner's) "
                   "optimized HLO (profile_<what>.hlo.txt): the trace names fusions, the HLO says what they compute")
    a = p.parse_args(argv)
    a.compute_dtype = a.compute_dtype or ("float32" if jax.default_backend() == "cpu" else "bfloat16")
    os.makedirs(a.out, exist_ok=True)
    mcfg = shape_config(a.shapes, a.compute_dtype)
    master = init_params(mcfg.replace(param_dtype="float32"), jax.random.key(0))
    rng = np.random.default_rng(0)
    texts = []
    for what in a.what.split(","):
        try:
            steps, unit, lowered = a.new, "decode step", None  # lowered: the program whose HLO --hlo writes
            if what == "grpo":  # bench_accel's learner update (its MFU row): per micro-batch
                step, state, batch = grpo_learner_case(mcfg, master, a.grpo_rows, a.prompt_len, a.grpo_new,
                                                       a.grpo_micro)
                steps, unit = a.grpo_rows // a.grpo_micro, "micro-batch"
                fn = lambda: step(state, batch)[0].params  # noqa: E731
                lowered = step.lower(state, batch) if a.hlo else None
            elif what == "generate":
                tokens = rng.integers(3, mcfg.vocab_size, (a.rows, a.prompt_len)).astype(np.int32)
                mask = np.ones_like(tokens, bool)
                params = compute_params(master, mcfg)
                gen = make_generate(mcfg, a.new, logprobs=False)
                budget = np.full(a.rows, a.new, np.int32)  # bench_accel's call: its compiled program is reused
                fn = lambda: gen(params, tokens, mask, jax.random.key(0), None, None, budget).tokens  # noqa: E731
            else:
                per = max(1, a.rows // a.members)
                cfg = ESConfig(population_size=a.members, noise=what, sigma=1e-3, rank=1)
                chunk = auto_chunk_size(mcfg, cfg, per, a.prompt_len, a.new)
                state = init_state(master, jax.random.key(1), cfg)
                pop = population_fn(lm_evaluator(mcfg, a.new, cfg), cfg, chunk, dtype=mcfg.dtype)
                tokens = rng.integers(3, mcfg.vocab_size, (per, a.prompt_len)).astype(np.int32)
                mask = np.ones_like(tokens, bool)
                ids = member_ids(a.members)
                fn = lambda: pop(state, ids, tokens, mask, jax.random.key(2)).tokens  # noqa: E731
                if a.hlo:
                    lowered = pop.lower(state, ids, tokens, mask, jax.random.key(2))["population"]
            if lowered is not None:
                with open(os.path.join(a.out, f"profile_{what}.hlo.txt"), "w") as f:
                    f.write(lowered.compile().as_text())
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            first = time.perf_counter() - t0
            wall, summary = trace_call(fn, a.out, what)
            shape = (f"{a.grpo_rows} seqs x {a.prompt_len + a.grpo_new} tokens, micro-batch {a.grpo_micro}"
                     if what == "grpo" else f"{a.rows} rows, {a.new} new")
            text = report(f"{what} ({a.shapes}, {shape}, {jax.devices()[0].device_kind})", wall, summary, steps,
                          first, unit)
        except Exception as e:  # noqa: BLE001  (one failed program must not lose the others)
            text = f"# {what}: failed: {type(e).__name__}: {str(e)[:300]}"
        with open(os.path.join(a.out, f"profile_{what}.txt"), "w") as f:
            f.write(text + "\n")
        print(text[:3000], flush=True)
        texts.append(text)
    return texts


if __name__ == "__main__":
    main()
