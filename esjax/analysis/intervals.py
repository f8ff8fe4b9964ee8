"""The ES-vs-GRPO report's sampled numbers with their 95 % intervals (:mod:`esjax.analysis.stats`), from a
results dict written by :func:`esjax.analysis.report.analyze`.

* accuracy before/after per method and task: Wilson intervals; before → after: exact McNemar and
  Newcombe's paired interval when the summaries hold per-problem correctness (``eval/<task>/correct``,
  a 0/1 list in the eval examples' order), else Newcombe's unpaired interval (and no p-value);
* ES vs GRPO after training on the training task; forgetting ES − GRPO pooled over the off-task eval
  tasks' problems (:func:`esjax.analysis.verdicts.offtask_probes`: not the task nor its neighbours);
* KL drift per method, probe and estimator: percentile bootstrap over prompts (``kl_drift_per_prompt``);
  ES − GRPO on the pooled off-task prompts (``offtask_probes``: ``general`` and every probe that is
  neither the training task nor its neighbour): paired bootstrap;
* the ES → GRPO interpolation barrier (:func:`esjax.analysis.verdicts.barrier_interval`).

Norms, sparsity and cosines are exact functions of the two checkpoints and carry no interval.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from esjax.analysis import stats
from esjax.analysis.verdicts import barrier_interval, neighbours_of, offtask_probes

KL_ESTIMATOR = "sampled_token_exact"  # lowest-variance estimator of the per-token KL (drift.py)
BOOTSTRAP_SEED = 0


def _correct(summary: Dict, when: str, task: str) -> Optional[np.ndarray]:
    c = summary[when].get(f"eval/{task}/correct")
    return None if c is None else stats.as_correct(c, f"summary[{when!r}]['eval/{task}/correct']")


def _count(summary: Dict, when: str, task: str, n: int, method: str):
    key = f"eval/{task}/accuracy"
    if key not in summary[when]:
        raise ValueError(f"summaries[{method!r}][{when!r}] has no {key!r}")
    c = _correct(summary, when, task)
    if c is not None:
        if abs(c.mean() - summary[when][key]) > 1e-6:
            raise ValueError(f"summaries[{method!r}][{when!r}]: {key} = {summary[when][key]} but the per-problem "
                             f"correctness averages {c.mean()}")
        return int(c.sum()), c.size, c
    return stats.count_from_accuracy(summary[when][key], n, f"summaries[{method!r}][{when!r}][{key!r}]"), n, None


def compare(sa: Dict, wa: str, sb: Dict, wb: str, tasks, n: int, names=("a", "b")) -> Dict:
    """acc(b) − acc(a) pooled over ``tasks``' problems: paired if every task has per-problem correctness
    on both sides, else unpaired."""
    ka, kb, na, ca, cb = 0, 0, 0, [], []
    for t in tasks:
        k1, m1, c1 = _count(sa, wa, t, n, names[0])
        k2, m2, c2 = _count(sb, wb, t, n, names[1])
        if m1 != m2:
            raise ValueError(f"task {t!r}: {m1} problems in {names[0]} but {m2} in {names[1]}")
        ka, kb, na = ka + k1, kb + k2, na + m1
        ca.append(c1)
        cb.append(c2)
    if all(c is not None for c in ca + cb):
        return stats.paired_difference(np.concatenate(ca), np.concatenate(cb))
    return stats.unpaired_difference(ka, na, kb, na)


def interval_tests(res: Dict, seed: int = BOOTSTRAP_SEED) -> Dict:
    cfg = res["config"]
    task, n = cfg["task"], int(cfg["eval_size"])
    s = res["summaries"]
    tasks = [k.split("/")[1] for k in s["es"]["before"] if k.endswith("/accuracy")]
    off = offtask_probes(tasks, task)
    out: Dict = {"accuracy": {}}
    for m in ("es", "grpo"):
        out["accuracy"][m] = {}
        for t in tasks:
            row = {}
            for when in ("before", "after"):
                k, size, _ = _count(s[m], when, t, n, m)
                row[when] = {"accuracy": k / size, "ci": list(stats.wilson_interval(k, size)), "n": size}
            row["change"] = compare(s[m], "before", s[m], "after", [t], n, (m, m))
            out["accuracy"][m][t] = row
    out["es_vs_grpo_after"] = compare(s["grpo"], "after", s["es"], "after", [task], n, ("grpo", "es"))
    same_base = all(s["es"]["before"][f"eval/{t}/accuracy"] == s["grpo"]["before"][f"eval/{t}/accuracy"] for t in off)
    if not off:
        near = sorted(neighbours_of(task) & set(tasks))
        out["forgetting_missing"] = "no off-task eval task" + (f" ({', '.join(near)}: neighbour of {task})" if near else "")
    elif not same_base:
        out["forgetting_missing"] = "ES and GRPO start from different base accuracies on the eval tasks"
    else:  # drop_ES − drop_GRPO = acc_GRPO,after − acc_ES,after on the same problems
        out["forgetting_es_minus_grpo"] = compare(s["es"], "after", s["grpo"], "after", off, n, ("es", "grpo"))
    per = res.get("kl_drift_per_prompt")
    if per is None:
        out["offtask_kl_missing"] = "per-prompt KL not recorded in results.json (results from before kl_drift_values)"
    else:
        out["kl_intervals"] = {m: {p: {e: stats.bootstrap_mean_interval(v, seed) for e, v in est.items()}
                                   for p, est in per[m].items()} for m in ("es", "grpo")}
        probes = offtask_probes(per["es"], task)
        x = np.concatenate([per["es"][p][KL_ESTIMATOR] for p in probes])
        y = np.concatenate([per["grpo"][p][KL_ESTIMATOR] for p in probes])
        out["offtask_kl_es_minus_grpo"] = {**stats.paired_bootstrap_difference(x, y, seed), "probes": probes,
                                           "estimator": KL_ESTIMATOR}
    it = res.get("interpolation", {}).get("es_to_grpo")
    if not it:
        out["barrier_missing"] = "no ES → GRPO interpolation recorded"
    elif len(it["lambda"]) < 3:
        out["barrier_missing"] = f"{len(it['lambda'])} interpolation points: a barrier needs an interior one (--interp-points ≥ 3)"
    elif "n_eval" not in res:  # compare's --eval-size, not cfg.eval_size (32 vs 64 in cpu-quick)
        out["barrier_missing"] = "problems per interpolation point (n_eval) not recorded in these results"
    else:
        out["barrier_es_to_grpo"] = barrier_interval(it["lambda"], it["accuracy"], int(res["n_eval"]))
    return out
