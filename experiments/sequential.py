"""Sequential (continual) fine-tuning: ES and GRPO each trained in turn on a task sequence, with the
accuracy matrix after every stage and the incremental off-task KL matrix.

    python -m experiments.sequential --preset cpu-quick --tasks arithmetic,arithmetic-word
"""
from __future__ import annotations

import json
import os

from esjax.models.registry import load_model
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
    model = load_model(cfg.model_spec(), seed=cfg.seed)
    for m in args.methods.split(","):
        res = run_sequence(cfg, tasks, m, os.path.join(out, m), model, not args.no_progress,
                           args.reset_optimizer)
        print(json.dumps({"method": m, "accuracy": res["accuracy"]}))


if __name__ == "__main__":
    main()
