"""ES and GRPO from the same base model, then the whole analysis: one results folder with
results.json, tables/*.csv, plots/*.png and report.md.

    python -m experiments.compare --preset cpu-quick            # the README's main job

Each phase prints a line when it starts and when it ends, with its time (the analysis takes minutes).
"""
from __future__ import annotations

import contextlib
import time

from experiments.cli import dry_run, parser, setup
from esjax.analysis.report import analyze, format_number, write_report
from esjax.memory import live_array_gb, peak_gb, release, resident_gb, reset_peak
from esjax.runs import METHODS, evaluate_all, load_run_model, preflight, run_method


ANALYSIS_STEPS = ("update geometry (norms, sparsity, per-layer norms and cosines, SVD on 3 blocks), off-task KL "
                  "drift, interpolation paths and direction probes (accuracy on the test prompts), theory vs measured")


@contextlib.contextmanager
def phase(name: str, phases: dict, what: str = ""):
    """Print ``[name] started`` (with ``what`` it does) and ``[name] done in N s, peak RSS G GB (K GB kept,
    of which live JAX arrays A GB)``: the phase's own peak resident memory, then what stays resident after
    :func:`esjax.memory.release` hands the phase's freed memory and compiled programs back (:mod:`esjax.memory`);
    record the time."""
    print(f"[{name}] started{': ' + what if what else ''}", flush=True)
    reset_peak()
    t = time.perf_counter()
    yield
    phases[name] = time.perf_counter() - t
    peak = peak_gb()
    release()  # what the phase compiled and freed goes back to the system before the next one
    now = resident_gb()
    print(f"[{name}] done in {phases[name]:.0f} s" + (f", peak RSS {peak:.1f} GB" if peak else "")
          + (f" ({now:.1f} GB kept" if now else " (") + f", of which live JAX arrays {live_array_gb():.1f} GB)",
          flush=True)


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--interp-points", type=int, default=5, help="points on each interpolation path (paper: 11)")
    p.add_argument("--eval-size", type=int, default=32, help="test prompts per connectivity / direction probe point")
    args = p.parse_args(argv)
    cfg, out = setup(args, "compare")
    if args.dry_run:
        return dry_run(cfg, (cfg.task,), not args.no_probe)
    preflight(cfg, out, METHODS)  # config of any earlier run in ``out``, data sizes and splits: before any work
    t0 = time.perf_counter()
    phases, summaries = {}, {}
    with phase("load_and_base_eval", phases, f"model {cfg.model}, greedy accuracy of the base model"):
        model = load_run_model(cfg)
        base_eval = evaluate_all(model.params, model, cfg, cfg.max_new_tokens)
    for m in ("es", "grpo"):
        with phase(f"train_{m}", phases):
            summaries[m] = run_method(cfg, m, out, model, progress=not args.no_progress, base_eval=base_eval)
    with phase("analysis", phases, ANALYSIS_STEPS):
        res = analyze(out, cfg, model, n_interp=args.interp_points, n_eval=args.eval_size)
    with phase("report", phases, "results.json, interval tests and verdicts, tables, plots, report.md"):
        path = write_report(out, res)
    n = res["norms"]
    acc = {m: (summaries[m]["before"][f"eval/{cfg.task}/accuracy"], summaries[m]["after"][f"eval/{cfg.task}/accuracy"])
           for m in summaries}
    print("phases (s): " + ", ".join(f"{k} {v:.0f}" for k, v in phases.items()))
    print(f"done in {time.perf_counter() - t0:.0f}s — {cfg.task} accuracy ES {acc['es'][0]:.3f}→{acc['es'][1]:.3f}, "
          f"GRPO {acc['grpo'][0]:.3f}→{acc['grpo'][1]:.3f}; ‖Δ‖ ES {n['es']['once']:.3g} vs GRPO {n['grpo']['once']:.3g} "
          f"({format_number(n['ratio_es_over_grpo'], '.3g', '×')}), cos {format_number(res['cosine']['global'], '.2g')}; report: {path}")


if __name__ == "__main__":
    main()
