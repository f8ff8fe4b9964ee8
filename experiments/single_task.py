"""Fine-tune the base model on one task with ES and/or GRPO (resumable).

    python -m experiments.single_task --preset cpu-quick --method both --set es.alpha=0.003
"""
from __future__ import annotations

import json

from experiments.cli import dry_run, parser, setup
from esjax.runs import load_run_model, preflight, run_method


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--method", default="both", choices=["es", "grpo", "both"])
    args = p.parse_args(argv)
    cfg, out = setup(args, "single_task")
    if args.dry_run:
        return dry_run(cfg, (cfg.task,), not args.no_probe)
    methods = ("es", "grpo") if args.method == "both" else (args.method,)
    preflight(cfg, out, methods)  # config of any earlier run in ``out``, data sizes and splits: before any work
    model = load_run_model(cfg)
    scalars = lambda d: {k: v for k, v in d.items() if not k.endswith("/correct")}  # noqa: E731  (lists: summary.json)
    for m in methods:
        s = run_method(cfg, m, out, model, progress=not args.no_progress)
        print(json.dumps({"method": m, "before": scalars(s["before"]), "after": scalars(s["after"]),
                          "update_norm": s["update_norm"], "wall_time": round(s["wall_time"], 1)}))


if __name__ == "__main__":
    main()
