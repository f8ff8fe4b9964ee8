"""The whole ES-vs-GRPO analysis of one results folder, as data (``analyze``) and as files
(``write_report``: results.json, tables as CSV, PNG plots, report.md with the seeds' figures beside ours).
"""
from __future__ import annotations

import csv
import json
import os
import time
from typing import Dict

import jax
import numpy as np

from esjax import memory, streams
from esjax.analysis import connectivity as lmc
from esjax.analysis import geometry as geo
from esjax.analysis import theory as th
from esjax.analysis.verdicts import seed_verdicts
from esjax.analysis.drift import ESTIMATORS, kl_drift, kl_drift_values
from esjax.analysis.intervals import KL_ESTIMATOR, interval_tests
from esjax.checkpoint import load_params
from esjax.config import RunConfig
from esjax.evaluation import evaluate
from esjax.results import require_complete
from esjax.tasks import get_task
from esjax.tasks.probes import probe_sets
from esjax.trees import leaf_paths, leaf_selection

# The seeds' headline numbers, for the report (docs/protocols.md#g).
SEED_FIGURES = {
    "ES/GRPO update-norm ratio": "87–107× (paper 1, Qwen3-4B, Table 3); ≈1000× (paper 2, Qwen2.5-1.5B)",
    "ES update norm": "87.28 after 100 it. (paper 1); ≈88 after 500 it. (paper 2)",
    "sparsity τ=1e-6 (16-bit)": "GRPO ≈95–100 %, ES ≈5–25 % (paper 2, Fig. 4)",
    "cosine(Δ_ES, Δ_GRPO)": "\"nearly orthogonal\", theory O(√(r/d)) (paper 1)",
    "off-task KL": "Math→BoolQ 0.23 nats ES vs 0.01 GRPO (paper 1, Fig. 2)",
    "interpolation barrier": "none; path smooth, sometimes above the endpoints (paper 1, Fig. 3)",
    "theory": "‖Δθ_T‖ = α√(Td/N) within 0.5 % (paper 1); R² > 0.99, d_eff/d ≈ 96 %",
    "accuracy": "ES(100) within −2.1…+3.6 points of GRPO (paper 1, Table 1); within 3–4 points (paper 2)",
    "forgetting": "HellaSwag ≈60 → 50.4 under ES, 59.5–61.3 under GRPO (paper 2, Fig. 1); MMLU −3.7 ES vs +0.8 GRPO (paper 1)",
}
# which seed figure each verdict (esjax.analysis.verdicts) sits beside
FINDING_SEEDS = {"ES ≈ GRPO accuracy": "accuracy", "ES norm ≫ GRPO": "ES/GRPO update-norm ratio",
                 "ES denser": "sparsity τ=1e-6 (16-bit)", "ES off-task KL > GRPO": "off-task KL",
                 "forgetting ES > GRPO": "forgetting", "near-orthogonal": "cosine(Δ_ES, Δ_GRPO)",
                 "no barrier (ES → GRPO)": "interpolation barrier", "norm = theory α√(τd/N)": "theory"}


def perturbed_dimension(params, cfg: RunConfig) -> int:
    sel = leaf_selection(params, cfg.es.param_filter)
    return int(sum(x.size for x, s in zip(jax.tree.leaves(params), sel) if s))


def dimension_info(params, cfg: RunConfig, tied: bool) -> Dict:
    """How d counts the embedding. esjax perturbs each leaf once with one noise draw; a tied embedding is
    the single leaf ``embed`` (there is no separate ``lm_head`` leaf), so it counts once in d when
    ``cfg.es.param_filter`` selects it and not at all otherwise. (Code that adds noise to ``embed_tokens``
    and ``lm_head`` separately while they share storage adds two draws to the same matrix: twice the
    energy, i.e. the embedding counted twice in d, which is how es-awd matched α√(Td/N).)"""
    paths = leaf_paths(params)
    sel = dict(zip(paths, leaf_selection(params, cfg.es.param_filter)))
    embed = next((p for p in paths if p.split("/")[-1] in ("embed", "embed_tokens", "wte")), None)
    if embed is None:
        how = "no embedding leaf"
    elif not sel[embed]:
        how = "not perturbed (excluded by es.param_filter)"
    else:
        how = "once (tied: one leaf, one noise draw)" if tied else "once (untied; lm_head is its own leaf)"
    return {"tied_embeddings": bool(tied), "embedding_in_d": how}


def theory_results(out_dir: str, d: int, sigma: float, dim_info: Dict, cosine: float, kl_rand: float,
                   trace_f: float, kl_measured: float) -> Dict:
    """The report's theory section: :func:`theory.drift_theory_of_run` on ``out_dir``/es plus what the
    report measured beside it (cosine with GRPO, off-task KL, tr(F_off) from a random direction)."""
    return {**th.drift_theory_of_run(os.path.join(out_dir, "es"), d, trace_f), "sigma": sigma, **dim_info,
            "cosine_measured": cosine, "random_direction_kl_general": kl_rand,
            "trace_fisher_general_estimate": trace_f, "offtask_kl_measured": kl_measured}


def _stages(progress: bool):
    """``done(name)`` prints ``[analysis/name] done in N s`` (seconds since the previous stage), flushed,
    and hands the stage's freed heap pages back (:func:`esjax.memory.trim`)."""
    last = [time.perf_counter()]

    def done(name: str):
        memory.trim()
        now = time.perf_counter()
        if progress:
            print(f"[analysis/{name}] done in {now - last[0]:.0f} s", flush=True)
        last[0] = now
    return done


def analyze(out_dir: str, cfg: RunConfig, model, n_interp: int = 11, n_eval: int = 64, probe_size: int = 0,
            seed: int = 0, progress: bool = True) -> Dict:
    """Every measurement of the report on the finished runs in ``out_dir``; with ``progress`` one line per
    stage (geometry, kl_drift, connectivity, direction_probes, theory) as it ends (the whole takes minutes)."""
    stage = _stages(progress)
    summaries = {m: require_complete(os.path.join(out_dir, m)) for m in ("es", "grpo")}  # refuse unfinished runs
    base = model.params
    es = load_params(os.path.join(out_dir, "es", "params"), base)
    grpo = load_params(os.path.join(out_dir, "grpo", "params"), base)
    d_es, d_grpo = geo.update(es, base), geo.update(grpo, base)
    tied = model.cfg.tie_embeddings
    res: Dict = {"config": cfg.to_dict(), "seed_figures": SEED_FIGURES, "n_eval": n_eval}
    norms = {m: {"once": geo.global_norm(d), "tied_twice": geo.global_norm(d, True, tied),
                 "relative": geo.relative_norm(d, base)} for m, d in (("es", d_es), ("grpo", d_grpo))}
    # None when GRPO never moved (e.g. every group tied): no ratio, and the verdict says why
    norms["ratio_es_over_grpo"] = norms["es"]["once"] / norms["grpo"]["once"] if norms["grpo"]["once"] > 0 else None
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
    del d_es, d_grpo  # recomputed for the direction probes: each params-sized tree held only while needed (memory)
    stage("geometry")

    # KL drift on off-task probes (general chat + held-out prompts of every task)
    task = get_task(cfg.task, **cfg.kwargs_for(cfg.task))
    n_probe = probe_size or cfg.probe_size
    probes = probe_sets([cfg.task, *cfg.eval_tasks], n_probe, {t: cfg.kwargs_for(t) for t in (cfg.task, *cfg.eval_tasks)})
    key = jax.random.key(seed)
    max_new = cfg.max_new_tokens or task.max_new_tokens
    drift = lambda p: kl_drift_values(p, base, model.cfg, model.tokenizer, probes, key, {cfg.task: max_new})  # noqa: E731
    per_prompt = {"es": drift(es), "grpo": drift(grpo)}
    res["kl_drift_per_prompt"] = {m: {p: {e: v.tolist() for e, v in est.items()} for p, est in probes_.items()}
                                  for m, probes_ in per_prompt.items()}
    kl = res["kl_drift"] = {m: {p: {e: float(np.mean(v)) for e, v in est.items()} for p, est in probes_.items()}
                            for m, probes_ in per_prompt.items()}
    stage("kl_drift")

    # Linear mode connectivity and direction probes, scored by accuracy (and reward) on the task
    test = task.examples("test", n_eval, cfg.seed)
    last = {}  # the previous point's completion lengths per batch: the next point's EOS compaction

    def score(p):
        res = evaluate(p, model.cfg, model.tokenizer, task, test, max_new, previous_lengths=last.get("lengths"))
        last["lengths"] = res["batch_lengths"]
        memory.trim()  # each scored point's freed buffers, before the next point's params are made
        return res["accuracy"]

    points = {"base": base, "es": es, "grpo": grpo}
    ends = {name: score(p) for name, p in points.items()}  # each endpoint scored once
    curves = {}
    for name in ("es_to_grpo", "base_to_es", "base_to_grpo"):
        a, b = name.split("_to_")
        lams, vals = lmc.interpolation_curve(score, points[a], points[b], n_interp, (ends[a], ends[b]))
        curves[name] = {"lambda": lams.tolist(), "accuracy": vals.tolist(), "barrier": lmc.barrier(lams, vals)}
    res["interpolation"] = curves
    d_es, d_grpo = geo.update(es, base), geo.update(grpo, base)
    del es, grpo, points  # the fine-tuned params are not needed after this
    stage("connectivity")
    t_max = max(norms["es"]["once"], norms["grpo"]["once"])
    ts = np.linspace(0, t_max, 4)[1:]
    # in the subspace ES perturbs (es.param_filter): the update's own dimension d, which the theory divides by
    rand = lmc.random_direction(base, jax.random.fold_in(key, streams.RANDOM_DIRECTION),
                                leaf_selection(base, cfg.es.param_filter))
    res["direction_probes"] = {"t": [0.0, *ts.tolist()], **{
        name: [ends["base"], *lmc.direction_probe(score, base, d, ts).tolist()]
        for name, d in (("es", d_es), ("grpo", d_grpo), ("random", rand))}}
    del d_es, d_grpo
    stage("direction_probes")

    # Theory vs measured: tr(F_off) along a random direction, KL(base + r·u ‖ base) ≈ ½ r² tr(F)/d
    d = perturbed_dimension(base, cfg)
    r = norms["es"]["once"]
    moved = jax.tree.map(lambda p, u: (p + r * u).astype(p.dtype), base, rand)
    kl_rand = kl_drift(moved, base, model.cfg, model.tokenizer, {"general": probes["general"]}, key,
                       estimators=("sampled_token_exact",))["general"]["sampled_token_exact"]
    trace_f = 2 * d * kl_rand / r ** 2
    res["theory"] = theory_results(out_dir, d, cfg.es.sigma, dimension_info(base, cfg, tied), res["cosine"]["global"],
                                   kl_rand, trace_f, kl["es"]["general"]["sampled_token_exact"])
    res["summaries"] = summaries
    stage("theory")
    return res


def format_number(x, fmt: str, unit: str = "") -> str:
    """``x`` formatted, or "undefined" for None (a cosine or ratio with a zero update)."""
    return "undefined" if x is None else f"{x:{fmt}}{unit}"


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _accuracy_cell(a: Dict) -> str:
    b, f, c = a["before"], a["after"], a["change"]
    p = f", p = {c['p_value']:.3g}" if c.get("p_value") is not None else ""
    return (f"{b['accuracy']:.3f} [{b['ci'][0]:.3f}, {b['ci'][1]:.3f}] → {f['accuracy']:.3f} [{f['ci'][0]:.3f}, "
            f"{f['ci'][1]:.3f}] (Δ {c['difference']:+.3f} [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}]{p})")


def write_report(out_dir: str, res: Dict) -> str:
    """results.json, tables/*.csv, plots/*.png and report.md under ``out_dir``; returns the report path."""
    from esjax.analysis.plots import make_plots

    os.makedirs(os.path.join(out_dir, "tables"), exist_ok=True)

    def dump(r):
        with open(os.path.join(out_dir, "results.json"), "w") as f:
            json.dump(r, f, indent=1, default=float)
    dump(res)  # the measurements first: a bad input to the interval tests below cannot lose them
    tests = interval_tests(res)
    res = {**res, "intervals": tests, "verdicts": seed_verdicts(res, tests)}
    dump(res)
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
        cells = [_accuracy_cell(tests["accuracy"][m][t]) for t in tasks]
        lines.append(f"| {m.upper()} | " + " | ".join(cells) + f" | {s[m]['completions']:.0f} | {s[m]['tokens']:.0f} | "
                     f"{s[m]['forward_passes']:.0f} | {s[m]['backward_passes']:.0f} | {s[m]['wall_time']:.0f} |")
    lines += ["", "Accuracy: fraction correct [95 % Wilson interval]; Δ = after − before with its 95 % interval and, "
              "where per-problem correctness is recorded, the exact McNemar p-value on the same problems.", "",
              "## Seed findings: verdicts from the intervals", "",
              "| finding | measured (95 % interval) | seeds | verdict | rule |", "|---|---|---|---|---|"]
    cell = lambda x: x.replace("|", "\\|")  # noqa: E731  a literal | inside a markdown table cell
    lines += [f"| {cell(v['finding'])} | {cell(v['evidence'])} | {SEED_FIGURES.get(FINDING_SEEDS.get(v['finding'], ''), '')} | "
              f"**{v['verdict']}** | {cell(v['rule'])} |" for v in res["verdicts"]]
    sp = res["sparsity"]
    lines += ["", "## Update geometry", "", "| metric | ES | GRPO | seeds |", "|---|---|---|---|",
              f"| ‖Δθ‖₂ (tied once) | {n['es']['once']:.4g} | {n['grpo']['once']:.4g} | {SEED_FIGURES['ES update norm']} |",
              f"| ‖Δθ‖/‖θ‖ | {n['es']['relative']:.3g} | {n['grpo']['relative']:.3g} | |",
              f"| ES/GRPO norm ratio | {format_number(n['ratio_es_over_grpo'], '.3g', '×')} | | {SEED_FIGURES['ES/GRPO update-norm ratio']} |"]
    for dt in ("float32", "bfloat16", "float16"):
        aggs = [a for a in (("average", "layer average (paper 2)"), ("global", "all entries"))
                if a[0] in sp["es"][dt]["1e-06"]]  # results written before the layer average lack it
        for agg, what in aggs:
            seeds = SEED_FIGURES["sparsity τ=1e-6 (16-bit)"] if dt != "float32" and agg == aggs[0][0] else ""
            lines.append(f"| sparsity τ=1e-6, {dt}, {what} | {format_number(sp['es'][dt]['1e-06'][agg], '.3f')} | "
                         f"{format_number(sp['grpo'][dt]['1e-06'][agg], '.3f')} | {seeds} |")
    lines += [f"| cosine(Δ_ES, Δ_GRPO) | {format_number(res['cosine']['global'], '.3g')} | | {SEED_FIGURES['cosine(Δ_ES, Δ_GRPO)']} |",
              f"| mean top-8 subspace overlap | {np.mean(list(res['subspace_overlap_top8'].values())):.3g} | | |", "",
              "## KL drift from the base model (nats)", "",
              "| probe | ES k1 (sampled, per token) | GRPO k1 | ES exact per token | GRPO exact | ES greedy seq-sum | GRPO greedy seq-sum |",
              "|---|---|---|---|---|---|---|"]
    ci = tests.get("kl_intervals")  # bootstrap over prompts, when per-prompt values are recorded

    def kl_cell(m, p, e):
        v = f"{res['kl_drift'][m][p][e]:.4g}"
        return v + (f" [{ci[m][p][e]['ci'][0]:.3g}, {ci[m][p][e]['ci'][1]:.3g}]" if ci else "")
    for p in res["kl_drift"]["es"]:
        lines.append(f"| {p} | " + " | ".join(kl_cell(m, p, e) for e in ("sampled_token_k1", KL_ESTIMATOR, "greedy_sequence_sum")
                                               for m in ("es", "grpo")) + " |")
    lines += ["", "[95 % percentile-bootstrap interval over prompts, seed 0, 10,000 resamples]" if ci else
              "No intervals: per-prompt KL values are not recorded in these results."]
    it = res["interpolation"]
    lines += ["", f"Seeds: {SEED_FIGURES['off-task KL']}.", "", "## Linear mode connectivity (task accuracy)", "",
              "| path | accuracy along λ | barrier |", "|---|---|---|"]
    for name, c in it.items():
        lines.append(f"| {name} | {' '.join(f'{v:.2f}' for v in c['accuracy'])} | {c['barrier']:.3f} |")
    lines += ["", f"Seeds: {SEED_FIGURES['interpolation barrier']}.", "", "## Theory vs measured (ES)", "",
              f"d = {th_['d']:,} perturbed parameters (embedding: {th_.get('embedding_in_d', 'not recorded')}), N = {th_['N']}, "
              f"α = {th_['alpha']}, σ = {th_['sigma']}. {th_.get('applies_note', '')}", "",
              "| quantity | predicted | measured |", "|---|---|---|"]
    if th_["T"]:
        lines.append(f"| ‖Δθ_T‖ at T = {int(th_['T'][-1])} (α√(τd/N), τ = {'Σf_t, the logged noise energy' if th_.get('clock') == 'energy' else 'T'}) | {th_['predicted_norm'][-1]:.4g} | {th_['measured_norm'][-1]:.4g} "
                     f"(ratio {th_['final_ratio_measured_over_predicted']:.3f}) |")
        fit = th_["random_walk_fit"]
        if fit:
            lines.append(f"| ‖Δθ_t‖² linear in {'Σf_t (logged noise energy)' if fit.get('clock') == 'energy' else 't'} | R² → 1, d_eff/d → 1 | R² = {fit['r2']:.4f}, d_eff/d = {fit['d_eff_ratio']:.3f} |")
        rho_txt = f"ρ̂ = {th_['rho_estimate']:.3g}" if th_["rho_estimate"] is not None else "ρ ≤ 1"
        lines.append(f"| \\|cos(Δ_ES, Δ_GRPO)\\| ≲ ρ√(TN/d)+1/√d ({rho_txt}) | ≤ {th_['cosine_bound']:.3g} | {format_number(None if th_['cosine_measured'] is None else abs(th_['cosine_measured']), '.3g')} |")
        lines.append(f"| ρ (reward–noise correlation) from the excess ‖Δθ_T‖² − α²τd/N | ≤ 1 | "
                     f"{format(th_['rho_estimate'], '.3g') if th_['rho_estimate'] is not None else th_['rho_status']} |")
    lines += [f"| off-task KL ≈ ½‖Δ‖² tr(F)/d (tr F from a random direction) | {th_['offtask_kl_predicted']:.4g} | "
              f"{th_['offtask_kl_measured']:.4g} |", "", f"Seeds: {SEED_FIGURES['theory']}.", "",
              "## Plots", ""] + [f"![{p}](plots/{p})" for p in sorted(os.listdir(os.path.join(out_dir, "plots")))]
    path = os.path.join(out_dir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path
