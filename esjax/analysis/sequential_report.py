"""Report of a sequential (continual) run, ES beside GRPO: the accuracy matrix with 95 % intervals,
forgetting per task, backward/forward transfer, the incremental KL matrix, the update norm after each
stage against the ES random-walk theory, and PNG plots (``write_sequential_report``).

Notation (Lopez-Paz & Ranzato 2017): K tasks trained in order; R[i, j] = accuracy on task i after stage
j (j = 0 is the base model); b_i = R[i, 0].

* forgetting_i = max_j R[i, j] − R[i, K]: the drop of task i from its best observed accuracy (base
  included; paper 2 measures "the drop relative to the best observed prior-task performance");
* BWT = (1/(K−1)) Σ_{i<K} (R[i, K] − R[i, i])   (negative = forgetting of earlier tasks);
* FWT = (1/(K−1)) Σ_{i≥2} (R[i, i−1] − b_i)     (gain on task i from training on the earlier ones).

Every cell's interval is Wilson's on its n problems (:mod:`esjax.analysis.stats`); forgetting, BWT and
FWT are reported as point values beside those cell intervals.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from esjax.analysis import stats
from esjax.analysis import theory as th


def accuracy_matrix(res: Dict) -> np.ndarray:
    """(K, K + 1) R[i, j] from a ``run_sequence`` result (``accuracy`` = {task: [base, after 1, …]})."""
    tasks = res["tasks"]
    R = np.array([res["accuracy"][t] for t in tasks], float)
    if R.shape != (len(tasks), len(tasks) + 1):
        raise ValueError(f"sequential result for {res.get('method')!r}: accuracy matrix {R.shape}, expected "
                         f"{(len(tasks), len(tasks) + 1)} (tasks × [base, after each stage])")
    return R


def transfer(R: np.ndarray) -> Dict:
    """Forgetting per task, BWT and FWT of the accuracy matrix R (module docstring)."""
    K = R.shape[0]
    out = {"forgetting": (R.max(1) - R[:, K]).tolist()}
    out["bwt"] = float(np.mean([R[i, K] - R[i, i + 1] for i in range(K - 1)])) if K > 1 else None
    out["fwt"] = float(np.mean([R[i, i] - R[i, 0] for i in range(1, K)])) if K > 1 else None
    return out


def matrix_intervals(R: np.ndarray, n: int, where: str) -> List[List[List[float]]]:
    return [[list(stats.wilson_interval(stats.count_from_accuracy(a, n, f"{where} R[{i}, {j}]"), n))
             for j, a in enumerate(row)] for i, row in enumerate(R)]


def stage_rows(stage_dirs: Sequence[str]) -> List[dict]:
    """The ES metrics rows of consecutive stages as one run (iterations renumbered 1..ΣT_s), so the walk's
    clock continues across stages; ``stage_end`` marks each stage's last row."""
    rows, t = [], 0
    for s, d in enumerate(stage_dirs):
        with open(os.path.join(d, "metrics.jsonl")) as f:
            stage = [json.loads(line) for line in f if line.strip()]
        for r in stage:
            if r.get("iteration", 0) > 0:
                t += 1
                rows.append({**r, "iteration": t, "stage": s + 1})
    return rows


def stage_theory(stage_dirs: Sequence[str], d: int, es_cfg: Dict) -> Dict:
    """:func:`theory.drift_vs_theory` over the stages of one ES sequence, with the norms at each stage end."""
    rows = stage_rows(stage_dirs)
    t = th.drift_vs_theory(rows, es_cfg["alpha"], d, es_cfg["population_size"], es_cfg["antithetic"],
                           es_cfg.get("optimizer", "sgd"), where=", ".join(stage_dirs),
                           awd_lambda=es_cfg.get("awd_lambda", 0.0), awd_norm=es_cfg.get("awd_norm", "l2"))  # anchor θ₀ in every stage
    ends = [max(i for i, r in enumerate(rows) if r["stage"] == s + 1) for s in range(len(stage_dirs))
            if any(r["stage"] == s + 1 for r in rows)]
    return {**t, "stage_end_measured": [t["measured_norm"][i] for i in ends],
            "stage_end_predicted": [t["predicted_norm"][i] for i in ends]}


def stage_norms(stage_dirs: Sequence[str]) -> List[float]:
    """‖θ_s − θ_0‖ at the end of each stage (the last row of each stage's metrics)."""
    out = []
    for d in stage_dirs:
        with open(os.path.join(d, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        out.append(rows[-1].get("update_norm_from_base", 0.0))
    return out


def analyze_sequence(res: Dict, n: int, stage_dirs: Sequence[str], d: Optional[int] = None,
                     es_cfg: Optional[Dict] = None) -> Dict:
    R = accuracy_matrix(res)
    out = {"method": res["method"], "tasks": res["tasks"], "columns": res["columns"], "accuracy": R.tolist(),
           "accuracy_ci": matrix_intervals(R, n, f"{res['method']} sequence"), "n": n, **transfer(R),
           "incremental_kl": res["incremental_kl"], "stage_norms": stage_norms(stage_dirs)}
    if res["method"] == "es" and d is not None and es_cfg is not None:
        out["theory"] = stage_theory(stage_dirs, d, es_cfg)
    return out


def _plots(out_dir: str, per: Dict[str, Dict]) -> List[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pdir = os.path.join(out_dir, "plots")
    os.makedirs(pdir, exist_ok=True)
    methods = list(per)
    fig, axes = plt.subplots(1, len(methods), figsize=(5 * len(methods), 3.6), sharey=True, squeeze=False)
    for ax, m in zip(axes[0], methods):
        a = per[m]
        R, ci = np.array(a["accuracy"]), np.array(a["accuracy_ci"])
        x = np.arange(R.shape[1])
        for i, t in enumerate(a["tasks"]):
            ax.errorbar(x, R[i], yerr=[R[i] - ci[i, :, 0], ci[i, :, 1] - R[i]], marker="o", capsize=3, label=t)
        ax.set_xticks(x, a["columns"], rotation=20, fontsize=7)
        ax.set_title(f"{m.upper()}: accuracy per task (95 % Wilson)")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("accuracy")
    fig.tight_layout()
    fig.savefig(os.path.join(pdir, "forgetting_curves.png"), dpi=110)
    plt.close(fig)
    fig, axes = plt.subplots(2, len(methods), figsize=(5 * len(methods), 7), squeeze=False)
    kl_max = max([v for a in per.values() for row in a["incremental_kl"] for v in row.values()] + [1e-12])
    for col, m in enumerate(methods):
        a = per[m]
        R = np.array(a["accuracy"])
        im = axes[0][col].imshow(R, vmin=0, vmax=1, cmap="viridis")
        axes[0][col].set_xticks(range(R.shape[1]), a["columns"], rotation=20, fontsize=7)
        axes[0][col].set_yticks(range(len(a["tasks"])), a["tasks"])
        axes[0][col].set_title(f"{m.upper()} accuracy matrix")
        fig.colorbar(im, ax=axes[0][col])
        probes = list(a["incremental_kl"][0]) if a["incremental_kl"] else []
        K = np.array([[row[p] for p in probes] for row in a["incremental_kl"]])
        im = axes[1][col].imshow(K if K.size else np.zeros((1, 1)), cmap="magma", vmin=0, vmax=kl_max)  # one scale
        axes[1][col].set_xticks(range(len(probes)), probes, rotation=20, fontsize=7)
        axes[1][col].set_yticks(range(len(a["tasks"])), [f"stage {s + 1}" for s in range(len(a["tasks"]))])
        axes[1][col].set_title(f"{m.upper()} incremental KL (nats/token)")
        fig.colorbar(im, ax=axes[1][col])
    fig.tight_layout()
    fig.savefig(os.path.join(pdir, "matrices.png"), dpi=110)
    plt.close(fig)
    return ["forgetting_curves.png", "matrices.png"]


def _fmt(x, spec=".3f"):
    return "—" if x is None else format(x, spec)


def write_sequential_report(out_dir: str, per: Dict[str, Dict]) -> str:
    """report.md, sequential_report.json and plots/*.png under ``out_dir`` from {method:
    :func:`analyze_sequence` result}; returns the report path."""
    with open(os.path.join(out_dir, "sequential_report.json"), "w") as f:
        json.dump(per, f, indent=1)
    lines = ["# esjax sequential fine-tuning report", "",
             "Generated by `experiments/sequential.py`. R[i, j] = greedy accuracy on task i after stage j "
             "[95 % Wilson interval]; forgetting = best observed − final; BWT = mean over earlier tasks of "
             "final − just-trained; FWT = mean over later tasks of (before training it) − base.", ""]
    for m, a in per.items():
        lines += [f"## {m.upper()}: accuracy matrix (n = {a['n']} problems per cell)", "",
                  "| task | " + " | ".join(a["columns"]) + " | forgetting |", "|---|" + "---|" * (len(a["columns"]) + 1)]
        for i, t in enumerate(a["tasks"]):
            cells = [f"{v:.3f} [{lo:.2f}, {hi:.2f}]" for v, (lo, hi) in zip(a["accuracy"][i], a["accuracy_ci"][i])]
            lines.append(f"| {t} | " + " | ".join(cells) + f" | {a['forgetting'][i]:+.3f} |")
        lines += ["", f"BWT {_fmt(a['bwt'], '+.3f')}, FWT {_fmt(a['fwt'], '+.3f')}.", "",
                  f"Incremental KL(after stage ‖ before stage), `sampled_token_exact`, nats/token:", ""]
        probes = list(a["incremental_kl"][0]) if a["incremental_kl"] else []
        lines += ["| stage | " + " | ".join(probes) + " |", "|---|" + "---|" * len(probes)]
        lines += [f"| {s + 1} ({a['tasks'][s]}) | " + " | ".join(f"{row[p]:.4g}" for p in probes) + " |"
                  for s, row in enumerate(a["incremental_kl"])]
        lines += ["", "‖θ_s − θ_0‖ after each stage: " + ", ".join(f"{v:.4g}" for v in a["stage_norms"]) + "."]
        t = a.get("theory")
        if t:
            lines += ["", "| stage | measured ‖Δθ‖ | α√(τd/N) | ratio |", "|---|---|---|---|"]
            lines += [f"| {s + 1} | {mv:.4g} | {pv:.4g} | {mv / pv:.3f} |"
                      for s, (mv, pv) in enumerate(zip(t["stage_end_measured"], t["stage_end_predicted"]))]
            lines += ["", f"d = {t['d']:,}, N = {t['N']}, α = {t['alpha']}, clock: {t['clock']}. "
                      f"{t['applies_note']}".rstrip()]
        lines.append("")
    lines += ["## Plots", ""] + [f"![{p}](plots/{p})" for p in _plots(out_dir, per)]
    path = os.path.join(out_dir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path
