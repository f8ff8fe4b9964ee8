"""Sequential (continual) fine-tuning: ES and GRPO each trained in turn on a task sequence, with the
accuracy matrix after every stage and the incremental off-task KL matrix. Writes ``<out>/report.md``
(accuracy matrices with intervals, forgetting, BWT/FWT, KL matrices, per-stage norms against the ES
theory; :mod:`esjax.analysis.sequential_report`) and its plots beside each method's ``sequential.json``.

    python -m experiments.sequential --preset cpu-quick --tasks arithmetic,arithmetic-word
"""
from __future__ import annotations

import json
import os

from esjax.analysis.report import perturbed_dimension
from esjax.analysis.sequential_report import analyze_sequence, write_sequential_report
from esjax.runs import METHODS, load_run_model
from esjax.sequential import run_sequence
from experiments.cli import dry_run, parser, setup


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--tasks", default=None, help="comma-separated task sequence (default: the preset's "
                   "sequence, else arithmetic,arithmetic-word)")
    p.add_argument("--methods", default="es,grpo")
    p.add_argument("--reset-optimizer", action="store_true", help="fresh optimizer moments at every stage")
    args = p.parse_args(argv)
    cfg, out = setup(args, "sequential")
    tasks = args.tasks.split(",") if args.tasks else list(cfg.sequence or ("arithmetic", "arithmetic-word"))
    if args.dry_run:
        return dry_run(cfg, tasks, not args.no_probe)
    unknown = set(args.methods.split(",")) - set(METHODS)
    if unknown:  # before the first method's whole sequence runs
        raise ValueError(f"--methods: unknown {sorted(unknown)}; choose from {', '.join(METHODS)}")
    model = load_run_model(cfg)  # compute_dtype as the config says
    d = perturbed_dimension(model.params, cfg)
    per = {}
    for m in args.methods.split(","):
        res = run_sequence(cfg, tasks, m, os.path.join(out, m), model, not args.no_progress,
                           args.reset_optimizer)
        print(json.dumps({"method": m, "accuracy": res["accuracy"]}))
        stage_dirs = [os.path.join(out, m, f"stage{s + 1}-{t}", m) for s, t in enumerate(tasks)]
        per[m] = analyze_sequence(res, cfg.eval_size, stage_dirs, d, cfg.to_dict()["es"])
    print(f"report: {write_sequential_report(out, per)}")
    return per


if __name__ == "__main__":
    main()
