"""Shared command-line options of the experiment scripts (one place, no copies).

Errors reach a command-line user as one line, ``error: <message> (<type>; ...)``, with exit status 1;
``--traceback`` (or the environment variable ``ESJAX_TRACEBACK=1``) shows the full traceback instead.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from esjax.config import PRESETS, build_config


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--preset", default="cpu-quick", choices=sorted(PRESETS))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set es.sigma=0.002 (repeatable)")
    p.add_argument("--out", default=None, help="results folder (default runs/<script>-<preset>)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--distributed", action="store_true", help="call jax.distributed.initialize() first")
    p.add_argument("--dry-run", action="store_true",
                   help="print what the run will cost (counts, memory per device, wall time from a probe) and exit")
    p.add_argument("--no-probe", action="store_true", help="with --dry-run: skip loading the model for the timing probe")
    p.add_argument("--traceback", action="store_true",
                   help="on an error show the full traceback, not one line (also: ESJAX_TRACEBACK=1)")
    return p


def one_line_errors(enabled: bool = True) -> None:
    """Report an uncaught exception as one line on stderr (exit status 1) instead of a traceback."""
    if not enabled:
        return

    def hook(kind, err, tb):
        if issubclass(kind, KeyboardInterrupt):
            print("interrupted", file=sys.stderr)
            return
        msg = " ".join(str(err).split()) or kind.__name__
        print(f"error: {msg} ({kind.__name__}; rerun with --traceback or ESJAX_TRACEBACK=1 for the traceback)",
              file=sys.stderr)

    sys.excepthook = hook


def dry_run(cfg, tasks, probe: bool = True) -> dict:
    """Costs of each task of the run (see :mod:`esjax.cost`); loads the data and, with ``probe``, the model
    (and its tokenizer) for a short timing probe. With the tokenizer, the typical prompt length is the mean
    over 16 train prompts and the context check uses the longest prompt of the train pool and the test
    examples; without it (``--no-probe``) both are taken as 256 tokens, and the output says so."""
    import jax
    import numpy as np

    from esjax.cost import context_problem, estimate_wall_time, format_cost, probe_throughput, run_cost
    from esjax.models.registry import model_config
    from esjax.runs import load_run_model
    from esjax.tasks import encode_prompts, get_task

    model = load_run_model(cfg) if probe else None
    mcfg = model.cfg if model else model_config(cfg.model_spec()).replace(**cfg.model_settings())
    report = {}
    for name in tasks:
        task = get_task(name, **cfg.kwargs_for(name))
        tok = model.tokenizer if model else None
        exs = task.examples("train", min(16, cfg.train_pool), cfg.seed)
        prompt = int(np.mean([len(p) for p in encode_prompts(tok, task, exs)])) if tok else 256
        longest = None
        if tok:  # every prompt the run will encode: the train pool and the evaluated test examples
            pool = task.examples("train", cfg.train_pool, cfg.seed) + task.examples("test", cfg.eval_size, cfg.seed)
            longest = max(len(p) for p in encode_prompts(tok, task, pool))
        c = run_cost(dataclasses.replace(cfg, max_new_tokens=cfg.max_new_tokens or task.max_new_tokens),
                     mcfg, prompt, jax.device_count(), longest_prompt=longest)
        if tok and not c["context_problem"]:  # the eval tasks' prompts (e.g. HellaSwag's) with their own budgets
            for other in cfg.eval_tasks:
                et = get_task(other, **cfg.kwargs_for(other))
                p_long = max((len(p) for p in encode_prompts(tok, et, et.examples("test", cfg.eval_size, cfg.seed))), default=0)
                problem = context_problem(mcfg, p_long, cfg.eval_max_new_tokens or et.max_new_tokens)
                if problem:
                    c["context_problem"] = f"eval task {other!r}: {problem}"
                    break
        wall = estimate_wall_time(c, probe_throughput(model, prompt)) if model else None
        note = "" if tok else "\n(prompt lengths not measured with --no-probe: 256 tokens assumed for the context check)"
        print(f"== {name}\n{format_cost(c, wall)}{note}")
        report[name] = {"cost": c, "wall": wall}
    return report


def use_compilation_cache() -> None:
    """Compiled programs persist across runs (the first cpu-quick run spends minutes compiling): in
    ``~/.cache/esjax/jax`` unless ``JAX_COMPILATION_CACHE_DIR`` names another folder (a GPU check's
    cache, a cluster's shared one), for programs compiling ≥ 2 s unless
    ``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`` says otherwise."""
    import jax

    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.expanduser("~"), ".cache", "esjax", "jax"))
    if not os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"):
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)


def setup(args, script: str):
    """Error reporting, compilation cache, distributed start-up; the resolved config and the results folder."""
    one_line_errors(not (getattr(args, "traceback", False) or os.environ.get("ESJAX_TRACEBACK", "") not in ("", "0")))
    use_compilation_cache()
    if args.distributed:
        from esjax.parallel import initialize_distributed

        initialize_distributed()
    cfg = build_config(args.preset, args.overrides)
    out = args.out or os.path.join("runs", f"{script}-{args.preset}")
    os.makedirs(out, exist_ok=True)
    return cfg, out
