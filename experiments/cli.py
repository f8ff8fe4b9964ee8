"""Shared command-line options of the experiment scripts (one place, no copies)."""
from __future__ import annotations

import argparse
import os

from esjax.config import PRESETS, build_config


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--preset", default="cpu-quick", choices=sorted(PRESETS))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set es.sigma=0.002 (repeatable)")
    p.add_argument("--out", default=None, help="results folder (default runs/<script>-<preset>)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--distributed", action="store_true", help="call jax.distributed.initialize() first")
    return p


def setup(args, script: str):
    import jax

    # compiled programs persist across runs (the first cpu-quick run spends minutes compiling)
    jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.expanduser("~"), ".cache", "esjax", "jax"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)
    if args.distributed:
        from esjax.parallel import initialize_distributed

        initialize_distributed()
    cfg = build_config(args.preset, args.overrides)
    out = args.out or os.path.join("runs", f"{script}-{args.preset}")
    os.makedirs(out, exist_ok=True)
    return cfg, out
