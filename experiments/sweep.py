"""Drift vs population size, learning rate and forgetting-aware ES variants, in one command.

The theory (docs/protocols.md#f2) says ES drift ‖Δθ_T‖ ≈ α√(T·d·f/N) grows with α and T and shrinks with N
(f = the logged noise-energy factor, 1 for z-scores without antithetic pairs). This sweeps ES over
``--populations`` × ``--alphas`` × ``--variants`` (plus GRPO as the reference), each run from the same
base model under the preset, and reports side by side: task accuracy before → after, forgetting on the
eval tasks, ‖Δθ‖ measured vs the theory's prediction, bf16 sparsity and off-task KL on general prompts.

    python -m experiments.sweep --preset cpu-quick --populations 4,8,16 --alphas 1e-3,2e-3 \\
        --variants plain,mask,kl --grpo

Writes ``<out>/sweep.json``, ``<out>/sweep.csv`` and ``<out>/sweep.png`` (measured vs predicted norm,
forgetting vs norm); every run keeps its own folder (resumable, like every esjax run).
"""
from __future__ import annotations

import csv
import json
import os

import jax
import numpy as np

from esjax.analysis import geometry as geo
from esjax.analysis import stats
from esjax.analysis.drift import kl_drift_values
from esjax.analysis.report import perturbed_dimension
from esjax.analysis.theory import drift_theory_of_run
from esjax.analysis.verdicts import offtask_probes
from esjax.checkpoint import load_params
from esjax.config import build_config
from esjax.results import safe_row, write_json
from esjax.runs import evaluate_all, load_run_model, run_method
from esjax.tasks.probes import GeneralChat, general_examples
from experiments.cli import dry_run, parser, setup

# forgetting-aware ES variants (low-rank noise, a parameter mask, a KL penalty, anchored weight decay)
VARIANTS = {
    "plain": [],
    "full": ["es.noise=full"],
    "lowrank": ["es.noise=lowrank"],
    "mask": ["es.param_filter=^layers/\\d+/w_(gate|up|down)$"],  # sparse ES: MLP matrices only
    "kl": ["es.kl_penalty=1.0"],  # fitness − KL(member ‖ base) on the batch
    "awd": ["es.awd_lambda=10"],  # anchored weight decay toward the base (es-awd's λ = 10, AWD-ℓ2)
}


def theory_columns(run_dir: str, d: int) -> dict:
    """The sweep's theory columns for one ES run folder, from :func:`theory.drift_theory_of_run` (the
    function the report and the notebook use)."""
    t = drift_theory_of_run(run_dir, d)
    return {"predicted_norm": t["predicted_norm"][-1] if t["T"] else None,
            "ratio_measured_over_predicted": t["final_ratio_measured_over_predicted"],
            "rho_estimate": t["rho_estimate"], "rho_status": t["rho_status"], "d": t["d"],
            "theory_applies": t["applies"], "theory_note": t["applies_note"],
            "awd_stationary_norm": t.get("awd", {}).get("stationary_norm")}


def run_row(out, name, cfg, method, model, base_eval, probe_n):
    s = run_method(cfg, method, os.path.join(out, name), model, progress=False, base_eval=base_eval)
    params = load_params(os.path.join(out, name, method, "params"), model.params)
    delta = geo.update(params, model.params)
    # forgetting: accuracy drop on the off-task eval tasks only (not the task nor its neighbours: transfer)
    offtask = offtask_probes([k.split("/")[1] for k in s["before"] if k.startswith("eval/") and k.endswith("/accuracy")],
                             cfg.task)
    kl = kl_drift_values(params, model.params, model.cfg, model.tokenizer,
                         {"general": (GeneralChat(), general_examples(probe_n))}, jax.random.key(cfg.seed),
                         estimators=("greedy_sequence_sum",))["general"]  # per prompt, for the interval
    row = {"run": name, "method": method, "N": cfg.es.population_size if method == "es" else None,
           "alpha": cfg.es.alpha if method == "es" else cfg.grpo.learning_rate,
           "accuracy_before": s["before"][f"eval/{cfg.task}/accuracy"],
           "accuracy_after": s["after"][f"eval/{cfg.task}/accuracy"],
           # the problems actually scored (a task may hold fewer than eval_size test items)
           "accuracy_after_ci": list(stats.wilson_interval(int(sum(s["after"][f"eval/{cfg.task}/correct"])),
                                                           len(s["after"][f"eval/{cfg.task}/correct"]))),
           "forgetting": float(np.mean([s["before"][f"eval/{t}/accuracy"] - s["after"][f"eval/{t}/accuracy"]
                                        for t in offtask] or [0.0])),
           "forgetting_tasks": offtask,
           "update_norm": geo.global_norm(delta), "sparsity_bf16": geo.sparsity(geo.cast_delta(params, model.params, "bfloat16")),
           "offtask_kl": float(kl["greedy_sequence_sum"].mean()),
           "offtask_kl_ci": stats.bootstrap_mean_interval(kl["greedy_sequence_sum"], cfg.seed)["ci"],
           "completions": s["completions"], "wall_time": s["wall_time"]}
    if method == "es":
        row.update(theory_columns(os.path.join(out, name, "es"), perturbed_dimension(model.params, cfg)))
    return row


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    es = [r for r in rows if r["method"] == "es"]
    a.scatter([r["predicted_norm"] for r in es], [r["update_norm"] for r in es])
    for r in es:
        a.annotate(r["run"], (r["predicted_norm"], r["update_norm"]), fontsize=7)
    lim = max([r["predicted_norm"] for r in es] + [r["update_norm"] for r in es]) * 1.1
    a.plot([0, lim], [0, lim], "k--", lw=0.8, label="theory α√(Tdf/N)")
    a.set_xlabel("predicted ‖Δθ‖")
    a.set_ylabel("measured ‖Δθ‖")
    a.legend()
    for r in rows:
        b.scatter(r["update_norm"], r["forgetting"], marker="o" if r["method"] == "es" else "s")
        b.annotate(r["run"], (r["update_norm"], r["forgetting"]), fontsize=7)
    b.set_xscale("log")
    b.set_xlabel("‖Δθ‖")
    b.set_ylabel("forgetting (accuracy drop on eval tasks)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def axis_overrides(n: str, a: str, variant: str) -> list:
    """The ``--set`` overrides one point of the sweep adds: its N, its α and its variant's settings."""
    return [f"es.population_size={n}", f"es.alpha={a}"] + VARIANTS[variant]


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--populations", default="4,8", help="comma-separated ES population sizes N")
    p.add_argument("--alphas", default=None, help="comma-separated ES learning rates α (default: the preset's)")
    p.add_argument("--variants", default="plain,mask,kl", help=f"comma-separated, from {sorted(VARIANTS)}")
    p.add_argument("--grpo", action="store_true", help="add the preset's GRPO run as the reference")
    p.add_argument("--probe-size", type=int, default=8, help="general prompts for the off-task KL")
    args = p.parse_args(argv)
    cfg, out = setup(args, "sweep")
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        raise ValueError(f"unknown variants {sorted(unknown)}; choose from {sorted(VARIANTS)}")
    alphas = args.alphas.split(",") if args.alphas else [repr(cfg.es.alpha)]
    points = [(n, a, v) for n in args.populations.split(",") for a in alphas for v in args.variants.split(",")]
    axes = {o.split("=", 1)[0] for n, a, v in points for o in axis_overrides(n, a, v)}
    if not args.alphas:  # α then comes from the config, a --set es.alpha included: nothing replaces it
        axes.discard("es.alpha")
    clash = sorted(axes & {o.split("=", 1)[0] for o in args.overrides})
    if clash:  # the sweep's own value would silently replace the user's (the later override wins)
        raise ValueError(f"--set {', '.join(clash)}: the sweep sets these itself (--populations, --alphas, "
                         f"--variants {args.variants}); choose them there")
    configs = {f"es-N{n}-a{a}-{v}": build_config(args.preset, args.overrides + axis_overrides(n, a, v))
               for n, a, v in points}
    if args.dry_run:
        return {name: dry_run(c, [c.task], not args.no_probe) for name, c in configs.items()}
    model = load_run_model(cfg)  # compute_dtype as the config says
    base_eval = evaluate_all(model.params, model, cfg, cfg.max_new_tokens)
    rows = []
    for name, run_cfg in configs.items():
        rows.append(run_row(out, name, run_cfg, "es", model, base_eval, args.probe_size))
        print(json.dumps({k: rows[-1][k] for k in ("run", "accuracy_after", "update_norm", "predicted_norm", "forgetting")}))
    if args.grpo:
        rows.append(run_row(out, "grpo", cfg, "grpo", model, base_eval, args.probe_size))
    write_json(os.path.join(out, "sweep.json"), [safe_row(r) for r in rows])  # strict JSON, written atomically
    keys = sorted({k for r in rows for k in r})
    with open(os.path.join(out, "sweep.csv.tmp"), "w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        w.writerows(rows)
    os.replace(os.path.join(out, "sweep.csv.tmp"), os.path.join(out, "sweep.csv"))
    plot(rows, os.path.join(out, "sweep.png"))
    print(f"sweep of {len(rows)} runs: {os.path.join(out, 'sweep.csv')}")
    return rows


if __name__ == "__main__":
    main()
