"""The issue-17 study in one command: the ``study`` preset's compare run, its N sweep, its
forgetting-aware variants and the sequential experiment (:data:`esjax.presets.study.COMMANDS`), each
phase timed.

    python -m experiments.study [--out runs/study] [--phases compare,nsweep,variants,sequential] [--publish docs/study]

Each phase writes its own folder (``OUT``, ``OUT-nsweep``, ``OUT-variants``, ``OUT-sequential``) and resumes after a kill
(finished runs are kept, checkpoints are restored); rerunning the command skips nothing silently: a
finished compare run is reloaded and re-analysed by ``experiments.compare`` itself. Progress lines are
the phases' own; this script adds ``[study/<phase>] done in N s`` and writes ``OUT/phases.json``
(seconds per phase, the time estimate beside it). ``--publish DIR`` then copies what a reader needs (the
compare report with its plots and tables, both sweeps' tables and plots, the phase times; no
checkpoints; the sequential report under ``DIR/sequential``) to ``DIR`` and writes ``DIR/sweeps.md``: the N sweep against α√(Tdf/N) and the variants,
from the sweeps' own rows. ``--phases ''`` with ``--publish`` publishes a finished study.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shlex
import shutil
import time

from esjax.presets import study
from esjax.results import write_json


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/study")
    p.add_argument("--phases", default="compare,nsweep,variants,sequential")
    p.add_argument("--publish", default=None, help="copy the study's reports (no checkpoints) to this folder")
    a = p.parse_args(argv)
    cmds = dict(zip(("compare", "nsweep", "variants", "sequential"), study.commands(a.out)))
    est = study.estimate_seconds()["phases"]
    est = {"compare": sum(v for k, v in est.items() if k.startswith("compare")),
           "nsweep": est["sweep_nsweep"], "variants": est["sweep_variants"], "sequential": est["sequential"]}
    done, reruns = {}, {}
    path = os.path.join(a.out, "phases.json")
    if os.path.exists(path):  # a resumed study keeps the times of the phases it already ran
        try:
            with open(path) as f:
                recorded = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e}); remove it to start the phase times afresh") from e
        done, reruns = recorded.get("seconds", {}), recorded.get("rerun_seconds", {})
    for phase in filter(None, a.phases.split(",")):
        if phase not in cmds:
            raise ValueError(f"unknown phase {phase!r}; choose from {sorted(cmds)}")
        argv_ = shlex.split(cmds[phase])[2:]  # drop "python -m"
        module = __import__(argv_[0], fromlist=["main"])
        print(f"[study/{phase}] {cmds[phase]}  (estimate {est[phase] / 60:.0f} min)", flush=True)
        t0 = time.perf_counter()
        module.main(argv_[1:])
        took = time.perf_counter() - t0
        # the first completed run's time stays the phase's time; a rerun (which mostly restores) is kept apart
        if phase in done:
            reruns.setdefault(phase, []).append(took)
        else:
            done[phase] = took
        print(f"[study/{phase}] done in {took:.0f} s", flush=True)
        os.makedirs(a.out, exist_ok=True)
        write_json(path, {"seconds": done, "rerun_seconds": reruns, "estimate_seconds": est, "commands": cmds})
    print(f"[study] done in {sum(done.values()):.0f} s: {path}", flush=True)
    if a.publish:
        publish(a.out, a.publish)
        print(f"[study] published to {a.publish}", flush=True)


def _fmt(x, spec=".3g"):
    return "" if x is None else format(x, spec)


def sweeps_markdown(rows_n: list, rows_v: list) -> str:
    """The N sweep (measured ‖Δθ‖ against α√(Tdf/N), and ‖Δθ‖·√N, constant under the 1/√N law) and the
    forgetting-aware variants, from the sweeps' rows."""
    out = ["# Study sweeps", "",
           "## N sweep: ‖Δθ‖ against the random-walk theory α√(Tdf/N)", "",
           "| run | N | ‖Δθ‖ measured | predicted | measured/predicted | ‖Δθ‖·√N | accuracy after [95 % Wilson] "
           "| forgetting (off-task eval tasks) | off-task KL (general, seq-sum) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows_n:
        ratio = r["update_norm"] / r["predicted_norm"] if r.get("predicted_norm") else None
        ci = r.get("accuracy_after_ci") or [None, None]
        out.append(f"| {r['run']} | {r['N']} | {_fmt(r['update_norm'], '.2f')} | {_fmt(r.get('predicted_norm'), '.2f')} | "
                   f"{_fmt(ratio, '.3f')} | {_fmt(r['update_norm'] * r['N'] ** 0.5, '.1f')} | {r['accuracy_after']:.3f} "
                   f"[{_fmt(ci[0], '.3f')}, {_fmt(ci[1], '.3f')}] | {r['forgetting']:+.3f} ({', '.join(r.get('forgetting_tasks', []))}) "
                   f"| {_fmt(r['offtask_kl'], '.3g')} |")
    out += ["", "es-awd (Qwen2.5-3B Countdown, 500 iterations) reports ‖Δθ‖ 119.2 / 58.6 / 42.1 at N = 30 / 128 / 256.", "",
            "## Variants at N = 8 (same iterations)", "",
            "| run | ‖Δθ‖ | predicted (plain random walk; AWD: OU) | accuracy after | forgetting | off-task KL (general) |",
            "|---|---|---|---|---|---|"]
    for r in rows_v:
        out.append(f"| {r['run']} | {_fmt(r['update_norm'], '.2f')} | {_fmt(r.get('predicted_norm'), '.2f')} | "
                   f"{r['accuracy_after']:.3f} | {r['forgetting']:+.3f} | {_fmt(r['offtask_kl'], '.3g')} |")
    out += ["", "es-awd: ES(30) ‖Δθ‖ 119.2, ES(30)+AWD-ℓ2 (λ = 10) 67.7, GRPO 1.32 (Qwen2.5-3B Countdown, 500 it.).", ""]
    return "\n".join(out)


def publish(out: str, dest: str):
    """Copy the study's readable outputs (no checkpoints) to ``dest`` and write ``dest/sweeps.md``. Every
    phase's report must be there (a missing one is an error naming it, not an empty table)."""
    needed = [os.path.join(out, "report.md"), os.path.join(f"{out}-nsweep", "sweep.json"),
              os.path.join(f"{out}-variants", "sweep.json"), os.path.join(f"{out}-sequential", "report.md")]
    missing = [f for f in needed if not os.path.exists(f)]
    if missing:
        raise FileNotFoundError(f"study outputs missing (run their phases first: compare, nsweep, variants, "
                                f"sequential): {', '.join(missing)}")
    os.makedirs(dest, exist_ok=True)
    for name in ("report.md", "results.json", "phases.json"):
        if os.path.exists(os.path.join(out, name)):
            shutil.copy(os.path.join(out, name), dest)
    for sub in ("plots", "tables"):
        if os.path.isdir(os.path.join(out, sub)):
            shutil.copytree(os.path.join(out, sub), os.path.join(dest, sub), dirs_exist_ok=True)
    rows = {}
    for name in ("nsweep", "variants"):
        src = f"{out}-{name}"
        for f in ("sweep.csv", "sweep.json", "sweep.png"):
            if os.path.exists(os.path.join(src, f)):
                shutil.copy(os.path.join(src, f), os.path.join(dest, f"{name}-{f}"))
        rows[name] = json.load(open(os.path.join(src, "sweep.json"))) if glob.glob(os.path.join(src, "sweep.json")) else []
    with open(os.path.join(dest, "sweeps.md"), "w") as f:
        f.write(sweeps_markdown(rows["nsweep"], rows["variants"]))
    seq = f"{out}-sequential"
    if os.path.exists(os.path.join(seq, "report.md")):  # report, plots and each method's accuracy/KL matrices
        os.makedirs(os.path.join(dest, "sequential"), exist_ok=True)
        for f in ["report.md", "sequential_report.json"] + [os.path.relpath(x, seq) for x in glob.glob(f"{seq}/*/sequential.json")]:
            if os.path.exists(os.path.join(seq, f)):
                os.makedirs(os.path.dirname(os.path.join(dest, "sequential", f)), exist_ok=True)
                shutil.copy(os.path.join(seq, f), os.path.join(dest, "sequential", f))
        if os.path.isdir(os.path.join(seq, "plots")):
            shutil.copytree(os.path.join(seq, "plots"), os.path.join(dest, "sequential", "plots"), dirs_exist_ok=True)


if __name__ == "__main__":
    main()
