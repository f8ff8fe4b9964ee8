"""ES and GRPO from the same base model, then the whole analysis: one results folder with
results.json, tables/*.csv, plots/*.png and report.md.

    python -m experiments.compare --preset cpu-quick            # the README's main job
"""
from __future__ import annotations

import time

from experiments.cli import dry_run, parser, setup
from esjax.analysis.report import analyze, write_report
from esjax.runs import METHODS, evaluate_all, load_run_model, preflight, run_method


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
    model = load_run_model(cfg)
    base_eval = evaluate_all(model.params, model, cfg, cfg.max_new_tokens)
    phases = {"load_and_base_eval": time.perf_counter() - t0}
    summaries = {}
    for m in ("es", "grpo"):
        t1 = time.perf_counter()
        summaries[m] = run_method(cfg, m, out, model, progress=not args.no_progress, base_eval=base_eval)
        phases[f"train_{m}"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    res = analyze(out, cfg, model, n_interp=args.interp_points, n_eval=args.eval_size)
    phases["analysis"] = time.perf_counter() - t1
    path = write_report(out, res)
    n = res["norms"]
    acc = {m: (summaries[m]["before"][f"eval/{cfg.task}/accuracy"], summaries[m]["after"][f"eval/{cfg.task}/accuracy"])
           for m in summaries}
    print("phases (s): " + ", ".join(f"{k} {v:.0f}" for k, v in phases.items()))
    print(f"done in {time.perf_counter() - t0:.0f}s — {cfg.task} accuracy ES {acc['es'][0]:.3f}→{acc['es'][1]:.3f}, "
          f"GRPO {acc['grpo'][0]:.3f}→{acc['grpo'][1]:.3f}; ‖Δ‖ ES {n['es']['once']:.3g} vs GRPO {n['grpo']['once']:.3g} "
          f"({n['ratio_es_over_grpo']:.3g}×), cos {res['cosine']['global']:.2g}; report: {path}")


if __name__ == "__main__":
    main()
