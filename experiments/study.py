"""The issue-17 study in one command: the ``study`` preset's compare run, then its N sweep and its
forgetting-aware variants (:data:`esjax.presets.study.COMMANDS`), each phase timed.

    python -m experiments.study [--out runs/study] [--phases compare,nsweep,variants]

Each phase writes its own folder (``OUT``, ``OUT-nsweep``, ``OUT-variants``) and resumes after a kill
(finished runs are kept, checkpoints are restored); rerunning the command skips nothing silently: a
finished compare run is reloaded and re-analysed by ``experiments.compare`` itself. Progress lines are
the phases' own; this script adds ``[study/<phase>] done in N s`` and writes ``OUT/phases.json``
(seconds per phase, the time estimate beside it).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import time

from esjax.presets import study


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/study")
    p.add_argument("--phases", default="compare,nsweep,variants")
    a = p.parse_args(argv)
    cmds = dict(zip(("compare", "nsweep", "variants"), study.commands(a.out)))
    est = study.estimate_seconds()["phases"]
    est = {"compare": sum(v for k, v in est.items() if k.startswith("compare")),
           "nsweep": est["sweep_nsweep"], "variants": est["sweep_variants"]}
    done = {}
    path = os.path.join(a.out, "phases.json")
    for phase in a.phases.split(","):
        if phase not in cmds:
            raise ValueError(f"unknown phase {phase!r}; choose from {sorted(cmds)}")
        argv_ = shlex.split(cmds[phase])[2:]  # drop "python -m"
        module = __import__(argv_[0], fromlist=["main"])
        print(f"[study/{phase}] {cmds[phase]}  (estimate {est[phase] / 60:.0f} min)", flush=True)
        t0 = time.perf_counter()
        module.main(argv_[1:])
        done[phase] = time.perf_counter() - t0
        print(f"[study/{phase}] done in {done[phase]:.0f} s", flush=True)
        os.makedirs(a.out, exist_ok=True)
        with open(path, "w") as f:
            json.dump({"seconds": done, "estimate_seconds": est, "commands": cmds}, f, indent=1)
    print(f"[study] done in {sum(done.values()):.0f} s: {path}", flush=True)


if __name__ == "__main__":
    main()
