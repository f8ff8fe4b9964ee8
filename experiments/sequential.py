"""Sequential (continual) fine-tuning: ES and GRPO each trained in turn on a task sequence, with the
accuracy matrix after every stage and the incremental off-task KL matrix.

    python -m experiments.sequential --preset cpu-quick --tasks arithmetic,arithmetic-word
"""
from __future__ import annotations

import json
import os

from esjax.models.registry import load_model
from esjax.sequential import run_sequence
from experiments.cli import parser, setup


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--tasks", default="arithmetic,arithmetic-word", help="comma-separated task sequence")
    p.add_argument("--methods", default="es,grpo")
    p.add_argument("--reset-optimizer", action="store_true", help="fresh optimizer moments at every stage")
    args = p.parse_args(argv)
    cfg, out = setup(args, "sequential")
    model = load_model(cfg.model, seed=cfg.seed)
    for m in args.methods.split(","):
        res = run_sequence(cfg, args.tasks.split(","), m, os.path.join(out, m), model, not args.no_progress,
                           args.reset_optimizer)
        print(json.dumps({"method": m, "accuracy": res["accuracy"]}))


if __name__ == "__main__":
    main()
