"""The whole ES-vs-GRPO analysis of one results folder, as data (``analyze``) and as files
(``write_report``: results.json, tables as CSV, PNG plots, report.md with the seeds' figures beside ours).
"""
from __future__ import annotations

import csv
import json
import os
from typing import Dict

import jax
import numpy as np

from esjax.analysis import connectivity as lmc
from esjax.analysis import geometry as geo
from esjax.analysis import theory as th
from esjax.analysis.drift import ESTIMATORS, kl_drift
from esjax.checkpoint import load_params
from esjax.config import RunConfig
from esjax.evaluation import evaluate
from esjax.es.noise import leaf_selection
from esjax.runs import read_metrics
from esjax.tasks import get_task
from esjax.tasks.probes import probe_sets

# The seeds' headline numbers, for the report (seeds brief §G).
SEED_FIGURES = {
    "ES/GRPO update-norm ratio": "87–107× (paper 1, Qwen3-4B, Table 3); ≈1000× (paper 2, Qwen2.5-1.5B)",
    "ES update norm": "87.28 after 100 it. (paper 1); ≈88 after 500 it. (paper 2)",
    "sparsity τ=1e-6 (16-bit)": "GRPO ≈95–100 %, ES ≈5–25 % (paper 2, Fig. 4)",
    "cosine(Δ_ES, Δ_GRPO)": "\"nearly orthogonal\", theory O(√(r/d)) (paper 1)",
    "off-task KL": "Math→BoolQ 0.23 nats ES vs 0.01 GRPO (paper 1, Fig. 2)",
    "interpolation barrier": "none; path smooth, sometimes above the endpoints (paper 1, Fig. 3)",
    "theory": "‖Δθ_T‖ = α√(Td/N) within 0.5 % (paper 1); R² > 0.99, d_eff/d ≈ 96 %",
}


def perturbed_dimension(params, cfg: RunConfig) -> int:
    sel = leaf_selection(params, cfg.es.param_filter)
    return int(sum(x.size for x, s in zip(jax.tree.leaves(params), sel) if s))


def analyze(out_dir: str, cfg: RunConfig, model, n_interp: int = 11, n_eval: int = 64, probe_size: int = 0,
            seed: int = 0) -> Dict:
    base = model.params
    es = load_params(os.path.join(out_dir, "es", "params"), base)
    grpo = load_params(os.path.join(out_dir, "grpo", "params"), base)
    d_es, d_grpo = geo.update(es, base), geo.update(grpo, base)
    tied = model.cfg.tie_embeddings
    res: Dict = {"config": cfg.to_dict(), "seed_figures": SEED_FIGURES}
    norms = {m: {"once": geo.global_norm(d), "tied_twice": geo.global_norm(d, True, tied),
                 "relative": geo.relative_norm(d, base)} for m, d in (("es", d_es), ("grpo", d_grpo))}
    norms["ratio_es_over_grpo"] = norms["es"]["once"] / max(norms["grpo"]["once"], 1e-30)
    res["norms"] = norms
    res["sparsity"] = {m: geo.sparsity_table(p, base, (1e-6, 1e-5, 1e-4), ("float32", "bfloat16", "float16"))
                       for m, p in (("es", es), ("grpo", grpo))}
    res["layer_norms"] = {"es": geo.layer_bucket_norms(d_es), "grpo": geo.layer_bucket_norms(d_grpo)}
    res["cosine"] = {"global": geo.cosine(d_es, d_grpo), "per_layer": geo.layer_cosines(d_es, d_grpo)}
    L = model.cfg.num_layers
    svd_layers = sorted({0, L // 2, L - 1})  # SVD metrics on first / middle / last block (CPU cost)
    res["svd_layers"] = svd_layers
    res["subspace_overlap_top8"] = geo.subspace_overlaps(d_es, d_grpo, 8, 2_000_000, svd_layers)
    res["rank_fraction"] = {m: geo.matrix_ranks(d, max_size=2_000_000, layers=svd_layers)
                            for m, d in (("es", d_es), ("grpo", d_grpo))}

    # KL drift on off-task probes (general chat + held-out prompts of every task)
    task = get_task(cfg.task, **cfg.kwargs_for(cfg.task))
    n_probe = probe_size or cfg.probe_size
    probes = probe_sets([cfg.task, *cfg.eval_tasks], n_probe, {t: cfg.kwargs_for(t) for t in (cfg.task, *cfg.eval_tasks)})
    key = jax.random.key(seed)
    max_new = cfg.max_new_tokens or task.max_new_tokens
    drift = lambda p: kl_drift(p, base, model.cfg, model.tokenizer, probes, key, {cfg.task: max_new})  # noqa: E731
    kl = res["kl_drift"] = {"es": drift(es), "grpo": drift(grpo)}

    # Linear mode connectivity and direction probes, scored by accuracy (and reward) on the task
    test = task.examples("test", n_eval, cfg.seed)
    score = lambda p: evaluate(p, model.cfg, model.tokenizer, task, test, max_new)["accuracy"]  # noqa: E731
    points = {"base": base, "es": es, "grpo": grpo}
    ends = {name: score(p) for name, p in points.items()}  # each endpoint scored once
    curves = {}
    for name in ("es_to_grpo", "base_to_es", "base_to_grpo"):
        a, b = name.split("_to_")
        lams, vals = lmc.interpolation_curve(score, points[a], points[b], n_interp, (ends[a], ends[b]))
        curves[name] = {"lambda": lams.tolist(), "accuracy": vals.tolist(), "barrier": lmc.barrier(lams, vals)}
    res["interpolation"] = curves
    t_max = max(norms["es"]["once"], norms["grpo"]["once"])
    ts = np.linspace(0, t_max, 4)[1:]
    rand = lmc.random_direction(base, jax.random.fold_in(key, 99))
    res["direction_probes"] = {"t": [0.0, *ts.tolist()], **{
        name: [ends["base"], *lmc.direction_probe(score, base, d, ts).tolist()]
        for name, d in (("es", d_es), ("grpo", d_grpo), ("random", rand))}}

    # Theory vs measured
    es_rows = [r for r in read_metrics(os.path.join(out_dir, "es")) if r["iteration"] > 0]
    T = np.array([r["iteration"] for r in es_rows], float)
    measured = np.array([r["update_norm_from_base"] for r in es_rows])
    d = perturbed_dimension(base, cfg)
    N, alpha = cfg.es.population_size, cfg.es.alpha
    exact = all("noise_energy_factor" in r for r in es_rows)
    if exact:  # exact for antithetic pairs and zero-variance steps
        predicted = alpha * np.sqrt(d / N * np.cumsum([r["noise_energy_factor"] for r in es_rows]))
    else:
        predicted = th.random_walk_norm(alpha, T, d, N)
    # ρ from the excess over the walk is only defined when the walk's energy is known
    # (th.estimate_rho with the logged walk energy in place of α²Td/N)
    rho = (float(np.sqrt(max(measured[-1] ** 2 - predicted[-1] ** 2, 0.0) / (alpha ** 2 * T[-1] ** 2)))
           if len(T) and (exact or not cfg.es.antithetic) else None)
    # with logged energy factors the walk's clock is Σ_t f_t (antithetic pairs and zero-variance steps move
    # it by 0–2 per iteration), so d_eff/d compares like with like; else the clock is t
    clock = np.cumsum([r["noise_energy_factor"] for r in es_rows]) if exact else T
    fit = {**th.fit_random_walk(clock, measured ** 2, alpha, N, d), "clock": "energy" if exact else "iterations"} if len(T) > 2 else {}
    # tr(F_off) measured along a random direction: KL(base + r·u ‖ base) ≈ ½ r² tr(F)/d
    r = norms["es"]["once"]
    moved = jax.tree.map(lambda p, u: (p + r * u).astype(p.dtype), base, rand)
    kl_rand = kl_drift(moved, base, model.cfg, model.tokenizer, {"general": probes["general"]}, key,
                       estimators=("sampled_token_exact",))["general"]["sampled_token_exact"]
    trace_f = 2 * d * kl_rand / r ** 2
    res["theory"] = {
        "d": d, "N": N, "alpha": alpha, "sigma": cfg.es.sigma, "antithetic": cfg.es.antithetic, "T": T.tolist(), "measured_norm": measured.tolist(),
        "predicted_norm": predicted.tolist(), "final_ratio_measured_over_predicted": float(measured[-1] / predicted[-1]) if len(T) else None,
        "random_walk_fit": fit, "rho_estimate": rho,
        "cosine_bound": float(th.cosine_bound(rho, T[-1], N, d)) if rho is not None else None,
        "cosine_measured": res["cosine"]["global"],
        "random_direction_kl_general": kl_rand, "trace_fisher_general_estimate": trace_f,
        "offtask_kl_predicted": float(0.5 * r ** 2 * trace_f / d),
        "offtask_kl_measured": kl["es"]["general"]["sampled_token_exact"],
    }
    res["summaries"] = {m: json.load(open(os.path.join(out_dir, m, "summary.json"))) for m in ("es", "grpo")}
    return res


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def write_report(out_dir: str, res: Dict) -> str:
    """results.json, tables/*.csv, plots/*.png and report.md under ``out_dir``; returns the report path."""
    from esjax.analysis.plots import make_plots

    os.makedirs(os.path.join(out_dir, "tables"), exist_ok=True)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(res, f, indent=1, default=float)
    n, s = res["norms"], res["summaries"]
    _write_csv(os.path.join(out_dir, "tables", "norms.csv"), ["method", "l2_once", "l2_tied_twice", "relative"],
               [[m, n[m]["once"], n[m]["tied_twice"], n[m]["relative"]] for m in ("es", "grpo")])
    _write_csv(os.path.join(out_dir, "tables", "sparsity.csv"), ["method", "dtype", "tau", "global", *geo.BUCKETS],
               [[m, dt, tau, v["global"], *[v["buckets"].get(b, "") for b in geo.BUCKETS]]
                for m in ("es", "grpo") for dt, taus in res["sparsity"][m].items() for tau, v in taus.items()])
    _write_csv(os.path.join(out_dir, "tables", "kl_drift.csv"), ["method", "probe", *ESTIMATORS],
               [[m, p, *[v[e] for e in ESTIMATORS]] for m in ("es", "grpo") for p, v in res["kl_drift"][m].items()])
    make_plots(out_dir, res)
    th_ = res["theory"]
    acc = lambda m, when: {k.split("/")[1]: v for k, v in s[m][when].items() if k.endswith("accuracy")}  # noqa: E731
    tasks = list(acc("es", "before"))
    lines = ["# esjax ES vs GRPO report", "",
             f"Model `{res['config']['model']}`, task `{res['config']['task']}`, seed {res['config']['seed']}. "
             "Generated by `experiments/compare.py`; every number below is measured in this run.", "",
             "## Accuracy (greedy) and budget", "",
             "| | " + " | ".join(f"{t} before → after" for t in tasks) + " | completions | tokens | fwd | bwd | wall s |",
             "|---|" + "---|" * (len(tasks) + 5)]
    for m in ("es", "grpo"):
        cells = [f"{acc(m, 'before')[t]:.3f} → {acc(m, 'after')[t]:.3f}" for t in tasks]
        lines.append(f"| {m.upper()} | " + " | ".join(cells) + f" | {s[m]['completions']:.0f} | {s[m]['tokens']:.0f} | "
                     f"{s[m]['forward_passes']:.0f} | {s[m]['backward_passes']:.0f} | {s[m]['wall_time']:.0f} |")
    sp = res["sparsity"]
    lines += ["", "## Update geometry", "", "| metric | ES | GRPO | seeds |", "|---|---|---|---|",
              f"| ‖Δθ‖₂ (tied once) | {n['es']['once']:.4g} | {n['grpo']['once']:.4g} | {SEED_FIGURES['ES update norm']} |",
              f"| ‖Δθ‖/‖θ‖ | {n['es']['relative']:.3g} | {n['grpo']['relative']:.3g} | |",
              f"| ES/GRPO norm ratio | {n['ratio_es_over_grpo']:.3g}× | | {SEED_FIGURES['ES/GRPO update-norm ratio']} |"]
    for dt in ("float32", "bfloat16", "float16"):
        lines.append(f"| sparsity τ=1e-6, {dt} | {sp['es'][dt]['1e-06']['global']:.3f} | {sp['grpo'][dt]['1e-06']['global']:.3f} | "
                     f"{SEED_FIGURES['sparsity τ=1e-6 (16-bit)'] if dt != 'float32' else ''} |")
    lines += [f"| cosine(Δ_ES, Δ_GRPO) | {res['cosine']['global']:.3g} | | {SEED_FIGURES['cosine(Δ_ES, Δ_GRPO)']} |",
              f"| mean top-8 subspace overlap | {np.mean(list(res['subspace_overlap_top8'].values())):.3g} | | |", "",
              "## KL drift from the base model (nats)", "",
              "| probe | ES k1 (sampled, per token) | GRPO k1 | ES exact per token | GRPO exact | ES greedy seq-sum | GRPO greedy seq-sum |",
              "|---|---|---|---|---|---|---|"]
    for p in res["kl_drift"]["es"]:
        e, g = res["kl_drift"]["es"][p], res["kl_drift"]["grpo"][p]
        lines.append(f"| {p} | {e['sampled_token_k1']:.4g} | {g['sampled_token_k1']:.4g} | {e['sampled_token_exact']:.4g} | "
                     f"{g['sampled_token_exact']:.4g} | {e['greedy_sequence_sum']:.4g} | {g['greedy_sequence_sum']:.4g} |")
    it = res["interpolation"]
    lines += ["", f"Seeds: {SEED_FIGURES['off-task KL']}.", "", "## Linear mode connectivity (task accuracy)", "",
              "| path | accuracy along λ | barrier |", "|---|---|---|"]
    for name, c in it.items():
        lines.append(f"| {name} | {' '.join(f'{v:.2f}' for v in c['accuracy'])} | {c['barrier']:.3f} |")
    lines += ["", f"Seeds: {SEED_FIGURES['interpolation barrier']}.", "", "## Theory vs measured (ES)", "",
              f"d = {th_['d']:,} perturbed parameters, N = {th_['N']}, α = {th_['alpha']}, σ = {th_['sigma']}.", "",
              "| quantity | predicted | measured |", "|---|---|---|"]
    if th_["T"]:
        lines.append(f"| ‖Δθ_T‖ at T = {int(th_['T'][-1])} (α√(Td/N){'' if th_['antithetic'] is False else '; antithetic pairs: 0–2× the energy'}) | {th_['predicted_norm'][-1]:.4g} | {th_['measured_norm'][-1]:.4g} "
                     f"(ratio {th_['final_ratio_measured_over_predicted']:.3f}) |")
        fit = th_["random_walk_fit"]
        if fit:
            lines.append(f"| ‖Δθ_t‖² linear in {'Σf_t (logged noise energy)' if fit.get('clock') == 'energy' else 't'} | R² → 1, d_eff/d → 1 | R² = {fit['r2']:.4f}, d_eff/d = {fit['d_eff_ratio']:.3f} |")
        if th_["rho_estimate"] is not None:
            lines.append(f"| \\|cos(Δ_ES, Δ_GRPO)\\| ≲ ρ√(TN/d)+1/√d (ρ̂ = {th_['rho_estimate']:.3g}) | ≤ {th_['cosine_bound']:.3g} | {abs(th_['cosine_measured']):.3g} |")
        else:
            lines.append(f"| \\|cos(Δ_ES, Δ_GRPO)\\| (ρ undefined: antithetic run without logged energy factor) | ~1/√d = {1 / np.sqrt(th_['d']):.3g} | {abs(th_['cosine_measured']):.3g} |")
    lines += [f"| off-task KL ≈ ½‖Δ‖² tr(F)/d (tr F from a random direction) | {th_['offtask_kl_predicted']:.4g} | "
              f"{th_['offtask_kl_measured']:.4g} |", "", f"Seeds: {SEED_FIGURES['theory']}.", "",
              "## Plots", ""] + [f"![{p}](plots/{p})" for p in sorted(os.listdir(os.path.join(out_dir, "plots")))]
    path = os.path.join(out_dir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path
