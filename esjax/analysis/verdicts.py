"""The seeds' findings, each decided from this run's intervals: reproduced / contradicted / inconclusive.

Every rule is a pure function of numbers with their 95 % intervals (:mod:`esjax.analysis.stats`); norms,
sparsity and cosines are exact (no sampling noise in them), so their rules are thresholds. The thresholds:

* ``ACCURACY_MARGIN`` = 0.05: accuracy differences inside ±5 points count as "≈" (equivalence margin).
* ``NORM_RATIO`` = 10: "ES norm ≫ GRPO" means at least an order of magnitude.
* ``THEORY_TOLERANCE`` = 0.05: "norm = theory" means |measured/predicted − 1| ≤ 5 % (paper 1: 0.5 %;
  es-awd: 0.2–3.5 %).

Findings (docs/protocols.md#g) and rules, with [lo, hi] the interval of the named difference:

1. ES ≈ GRPO accuracy (paper 1: ES matches GRPO): δ = acc_ES − acc_GRPO after training, an equivalence
   test with margin m = ``ACCURACY_MARGIN``: reproduced if the whole interval lies inside the band,
   −m ≤ lo and hi ≤ m; contradicted if it lies wholly outside it, lo > m or hi < −m (ES clearly better
   or clearly worse); else inconclusive (the interval straddles an edge of the band: too few problems).
2. ES norm ≫ GRPO: reproduced if ‖Δ_ES‖/‖Δ_GRPO‖ ≥ 10, contradicted if ≤ 1, else inconclusive.
3. ES denser (paper 2): bf16 sparsity at τ = 1e-6; reproduced if ES < GRPO, else contradicted.
4. ES off-task KL > GRPO: δ = mean over off-task prompts of KL_ES − KL_GRPO (paired bootstrap);
   reproduced if lo > 0, contradicted if hi < 0, else inconclusive.
5. Forgetting ES > GRPO (paper 2): δ = drop_ES − drop_GRPO on the off-task eval problems (same base, so
   = acc_GRPO,after − acc_ES,after); reproduced if lo > 0, contradicted if hi < 0, else inconclusive.

"Off-task" (findings 4 and 5) is decided by :func:`offtask_probes`, never by position: a probe or eval
task counts only if it is not the training task and not one of its listed near neighbours
(``NEIGHBOURS``: tasks that exercise the same skill, e.g. ``arithmetic`` ↔ ``arithmetic-word``, where a
change measures transfer, not forgetting or drift of prior abilities). ``general`` (the everyday chat
prompts, :mod:`esjax.tasks.probes`) always counts.
6. Near-orthogonal: reproduced if |cos(Δ_ES, Δ_GRPO)| ≤ the theory bound ρ√(TN/d) + 1.96/√d (ρ ≤ 1
   unless a valid ρ̂; 1.96/√d covers 95 % of the cosines of independent directions), else contradicted.
7. No barrier on the ES → GRPO path: barrier b = max_λ(chord − acc(λ)), interval from the Wilson interval
   of acc at the worst λ (endpoints taken as known); reproduced if hi ≤ margin, contradicted if lo > margin,
   else inconclusive.
8. Norm = theory: reproduced if |ratio − 1| ≤ 5 %, contradicted otherwise; inconclusive where the walk law
   does not apply (non-SGD optimizer, unknown walk energy).
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from esjax.analysis import stats

ACCURACY_MARGIN = 0.05
GENERAL_PROBE = "general"
# near neighbours of a training task: same skill, so their change is transfer, not off-task drift.
# Symmetric by construction (:func:`neighbours_of` looks both ways).
NEIGHBOURS: Mapping[str, Tuple[str, ...]] = {"arithmetic": ("arithmetic-word",)}
NORM_RATIO = 10.0
THEORY_TOLERANCE = 0.05
REPRODUCED, CONTRADICTED, INCONCLUSIVE = "reproduced", "contradicted", "inconclusive"


def neighbours_of(task: str, table: Mapping[str, Sequence[str]] = NEIGHBOURS) -> set:
    """The tasks listed as near neighbours of ``task`` in ``table``, in either direction."""
    return set(table.get(task, ())) | {t for t, ns in table.items() if task in ns}


def offtask_probes(names: Iterable[str], task: str, table: Mapping[str, Sequence[str]] = NEIGHBOURS) -> List[str]:
    """The names in ``names`` (probe sets or eval tasks, order kept) that measure prior abilities when
    training on ``task``: not ``task`` itself and not one of its neighbours; ``general`` always counts."""
    near = neighbours_of(task, table) | {task}
    return [p for p in names if p == GENERAL_PROBE or p not in near]


def _v(finding: str, verdict: str, evidence: str, rule: str) -> Dict:
    return {"finding": finding, "verdict": verdict, "evidence": evidence, "rule": rule}


def _ci(lo, hi):
    return f"[{lo:+.3g}, {hi:+.3g}]"


def _interval_verdict(lo: float, hi: float, repro_above: float, contra_below: float) -> str:
    if lo > repro_above:
        return REPRODUCED
    if hi < contra_below:
        return CONTRADICTED
    return INCONCLUSIVE


def accuracy_parity(diff: Optional[Dict]) -> Dict:
    m = ACCURACY_MARGIN
    f, rule = "ES ≈ GRPO accuracy", (f"δ = ES − GRPO, equivalence margin {m}; reproduced if the CI ⊂ [−{m}, +{m}], "
                                     f"contradicted if lo > {m} or hi < −{m}")
    if diff is None:
        return _v(f, INCONCLUSIVE, "no accuracy on the task", rule)
    lo, hi = diff["ci"]
    v = REPRODUCED if -m <= lo and hi <= m else CONTRADICTED if lo > m or hi < -m else INCONCLUSIVE
    return _v(f, v,
              f"δ = {diff['difference']:+.3f}, 95 % CI {_ci(lo, hi)} ({diff['test']})", rule)


def norm_ratio(ratio: Optional[float]) -> Dict:
    f, rule = "ES norm ≫ GRPO", f"exact; reproduced if ratio ≥ {NORM_RATIO:g}, contradicted if ≤ 1"
    if ratio is None:
        return _v(f, INCONCLUSIVE, "GRPO's update is zero: no ratio", rule)
    v = REPRODUCED if ratio >= NORM_RATIO else CONTRADICTED if ratio <= 1 else INCONCLUSIVE
    return _v(f, v, f"‖Δ_ES‖/‖Δ_GRPO‖ = {ratio:.3g}×", rule)


def denser(es_sparsity: float, grpo_sparsity: float, aggregation: str = "layer average", zero: str = "") -> Dict:
    """``zero``: which update never moved, if one did (a zero update is 100 % sparse: no finding)."""
    f, rule = "ES denser", "exact; reproduced if ES sparsity < GRPO's"
    evidence = f"bf16 sparsity τ=1e-6 ({aggregation}): ES {es_sparsity:.3f} vs GRPO {grpo_sparsity:.3f}"
    if zero:
        return _v(f, INCONCLUSIVE, f"{evidence}; {zero}", rule)
    return _v(f, REPRODUCED if es_sparsity < grpo_sparsity else CONTRADICTED, evidence, rule)


def offtask_kl(diff: Optional[Dict], missing: str = "") -> Dict:
    f, rule = ("ES off-task KL > GRPO", "δ = KL_ES − KL_GRPO over off-task prompts (not the task nor its neighbours); "
               "reproduced if lo > 0, contradicted if hi < 0")
    if diff is None:
        return _v(f, INCONCLUSIVE, missing or "per-prompt KL not recorded", rule)
    lo, hi = diff["ci"]
    of = f" of {', '.join(diff['probes'])}" if diff.get("probes") else ""
    return _v(f, _interval_verdict(lo, hi, 0.0, 0.0),
              f"δ = {diff['mean']:+.4g} nats/token, 95 % CI {_ci(lo, hi)} over {diff['n']} prompts{of} ({diff['test']})", rule)


def forgetting(diff: Optional[Dict], missing: str = "") -> Dict:
    f, rule = "forgetting ES > GRPO", "δ = drop_ES − drop_GRPO on off-task problems (not the task nor its neighbours); reproduced if lo > 0, contradicted if hi < 0"
    if diff is None:
        return _v(f, INCONCLUSIVE, missing or "no off-task eval task", rule)
    lo, hi = diff["ci"]
    return _v(f, _interval_verdict(lo, hi, 0.0, 0.0),
              f"δ = {diff['difference']:+.3f}, 95 % CI {_ci(lo, hi)} ({diff['test']})", rule)


def near_orthogonal(cosine: Optional[float], bound: Optional[float]) -> Dict:
    f, rule = "near-orthogonal", "exact; reproduced if |cos| ≤ ρ√(TN/d) + 1.96/√d"
    if cosine is None:
        return _v(f, INCONCLUSIVE, "an update is zero: no cosine", rule)
    if bound is None:
        return _v(f, INCONCLUSIVE, f"|cos| = {abs(cosine):.3g}; no theory bound (no ES iterations)", rule)
    return _v(f, REPRODUCED if abs(cosine) <= bound else CONTRADICTED, f"|cos| = {abs(cosine):.3g} vs bound {bound:.3g}", rule)


def barrier_interval(lams: Sequence[float], acc: Sequence[float], n: int, confidence: float = 0.95) -> Dict:
    """Barrier B = max(0, max_λ (chord(λ) − acc(λ))) over the interior λ (the endpoints, the two trained
    models, are taken as known: their gap is 0 by construction), with a *simultaneous* interval: each
    interior acc(λ_i) gets a Wilson interval at confidence 1 − (1 − ``confidence``)/k (Bonferroni over the
    k interior points), and

        CI(B) = [max(0, max_i (chord_i − hi_i)), max(0, max_i (chord_i − lo_i))].

    Taking the interval at the worst λ alone ignored that the worst of k noisy points was picked (a
    barrier at the margin came out "contradicted" about a quarter of the time at k = 9, n = 64), and a path
    at or above the chord put its worst point at an endpoint, whose interval then made any finding of no
    barrier inconclusive."""
    lams, acc = np.asarray(lams, float), np.asarray(acc, float)
    if len(lams) < 3 or len(lams) != len(acc):
        raise ValueError(f"barrier_interval: need the two endpoints and at least one interior λ with one accuracy "
                         f"each, got {len(lams)} λ and {len(acc)} accuracies")
    gap = (1 - lams) * acc[0] + lams * acc[-1] - acc
    inner = range(1, len(lams) - 1)
    conf = 1 - (1 - confidence) / len(inner)
    ci = [stats.wilson_interval(stats.count_from_accuracy(acc[i], n, f"interpolation point λ={lams[i]}"), n, conf)
          for i in inner]
    chord = [acc[i] + gap[i] for i in inner]
    i = max(inner, key=lambda j: gap[j])
    lo = max(0.0, max(c - h for c, (_, h) in zip(chord, ci)))
    hi = max(0.0, max(c - low for c, (low, _) in zip(chord, ci)))
    return {"barrier": max(0.0, float(gap[i])), "lambda": float(lams[i]), "ci": [float(lo), float(hi)], "n": n,
            "confidence": confidence, "interior_points": len(inner)}


def no_barrier(b: Optional[Dict], missing: str = "") -> Dict:
    f, rule = "no barrier (ES → GRPO)", f"reproduced if hi ≤ {ACCURACY_MARGIN}, contradicted if lo > {ACCURACY_MARGIN}"
    if b is None:
        return _v(f, INCONCLUSIVE, missing or "no interpolation recorded", rule)
    lo, hi = b["ci"]
    v = REPRODUCED if hi <= ACCURACY_MARGIN else CONTRADICTED if lo > ACCURACY_MARGIN else INCONCLUSIVE
    k = f", simultaneous over {b['interior_points']} interior λ" if "interior_points" in b else ""
    where = f"at λ = {b['lambda']:.2f}" if b["barrier"] > 0 else "(no point below the chord)"
    return _v(f, v, f"barrier {b['barrier']:.3f} {where}, 95 % CI {_ci(lo, hi)} (n = {b['n']}{k})", rule)


def norm_theory(ratio: Optional[float], applies: bool = True, note: str = "") -> Dict:
    f, rule = "norm = theory α√(τd/N)", f"reproduced if |measured/predicted − 1| ≤ {THEORY_TOLERANCE:g}"
    if ratio is None or not applies:
        return _v(f, INCONCLUSIVE, note or "no ES iterations", rule)
    return _v(f, REPRODUCED if abs(ratio - 1) <= THEORY_TOLERANCE else CONTRADICTED, f"measured/predicted = {ratio:.4f}", rule)


def seed_verdicts(res: Dict, tests: Dict) -> List[Dict]:
    """The eight verdicts for a report's results ``res`` and its interval ``tests``
    (:func:`esjax.analysis.report.interval_tests`)."""
    th_, n = res["theory"], res["norms"]
    sp = {m: res["sparsity"][m]["bfloat16"]["1e-06"] for m in ("es", "grpo")}
    agg = "average" if sp["es"].get("average") is not None else "global"  # results before the layer average: global
    zero = " and ".join(f"{m.upper()}'s update is zero" for m in ("es", "grpo") if n.get(m, {}).get("once") == 0)
    return [accuracy_parity(tests.get("es_vs_grpo_after")),
            norm_ratio(n["ratio_es_over_grpo"]),
            denser(sp["es"][agg], sp["grpo"][agg], {"average": "layer average", "global": "all entries"}[agg], zero),
            offtask_kl(tests.get("offtask_kl_es_minus_grpo"), tests.get("offtask_kl_missing", "")),
            forgetting(tests.get("forgetting_es_minus_grpo"), tests.get("forgetting_missing", "")),
            near_orthogonal(res["cosine"]["global"], th_.get("cosine_bound_95", th_.get("cosine_bound"))),
            no_barrier(tests.get("barrier_es_to_grpo"), tests.get("barrier_missing", "")),
            norm_theory(th_.get("final_ratio_measured_over_predicted"), th_.get("applies", True), th_.get("applies_note", ""))]
