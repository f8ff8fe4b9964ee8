# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # Theory vs measured ES drift
# Loads a results folder written by `python -m experiments.compare` and overlays the analytical ES
# theory (`esjax.analysis.theory.drift_vs_theory`, the function the report and the sweep call) on what
# was measured: the update norm ‖θ_t − θ_0‖ against α√(τ·d/N), the random-walk fit of ‖Δθ_t‖², the
# cosine bound and the off-task KL prediction.
# Set `ESJAX_RESULTS` to the folder (default: the committed cpu-quick report in `docs/cpu-quick`).

# %%
import json
import os
import sys

import matplotlib

if "ipykernel" not in sys.modules:  # run as a script: draw off-screen (in Jupyter the figures show inline)
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from esjax.analysis.theory import drift_theory_of_run  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) if "__file__" in globals() else os.path.abspath("..")
RESULTS = os.environ.get("ESJAX_RESULTS", os.path.join(ROOT, "docs", "cpu-quick"))
FIGURES = os.environ.get("ESJAX_FIGURES", os.path.join(RESULTS, "notebook_figures"))
res = json.load(open(os.path.join(RESULTS, "results.json")))
# runs that did not finish are flagged (a results.json from before the status field counts as complete)
for m in ("es", "grpo"):
    status = res["summaries"][m].get("status", "complete")
    if status != "complete":
        print(f"WARNING: the {m.upper()} run in {RESULTS} is {status}, not complete: its numbers are not final")
stored = res["theory"]
# the one theory-vs-measured function the report and the sweep call, on this folder's ES metrics
t = drift_theory_of_run(os.path.join(RESULTS, "es"), stored["d"], stored["trace_fisher_general_estimate"])
T, measured, predicted = np.array(t["T"]), np.array(t["measured_norm"]), np.array(t["predicted_norm"])
print(f"d = {t['d']:,} (embedding: {stored.get('embedding_in_d', 'not recorded')}), N = {t['N']}, alpha = {t['alpha']}, "
      f"clock = {t['clock']}")

# %% [markdown]
# ## Norm: random walk α√(τd/N), τ = Σ_t f_t (the logged noise energy; τ = T when it is not logged)

# %%
fit = t["random_walk_fit"]
fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
ax[0].plot(T, measured, "o-", label="measured ES")
ax[0].plot(T, predicted, "--", label="α√(τd/N)")
ax[0].set_xlabel("iteration"), ax[0].set_ylabel("‖Δθ‖"), ax[0].legend()
clock = np.array(t["energy_clock"])
ax[1].plot(clock, measured ** 2, "o", label="measured ‖Δθ‖²")
ax[1].plot(clock, fit["slope"] * clock + fit["intercept"], "-", label=f"fit R²={fit['r2']:.4f}, d_eff/d={fit['d_eff_ratio']:.3f}")
ax[1].set_xlabel("τ (" + t["clock"] + " clock)"), ax[1].legend()
fig.tight_layout()
os.makedirs(FIGURES, exist_ok=True)
fig.savefig(os.path.join(FIGURES, "theory_norm.png"), dpi=100)
print("measured / predicted at the end:", t["final_ratio_measured_over_predicted"])

# %% [markdown]
# ## Cosine with GRPO and off-task KL
# ρ is a correlation: an estimate above 1 means the excess over the walk is not a coherent signal, and
# the cosine bound falls back on ρ ≤ 1.

# %%
rho = t["rho_estimate"]
print(f"rho: {rho:.3g}" if rho is not None else f"rho: {t['rho_status']}")
print(f"|cos| bound ({t['cosine_bound_rho']}) {t['cosine_bound']:.3g}, measured {'undefined (an update is zero)' if stored['cosine_measured'] is None else format(abs(stored['cosine_measured']), '.3g')}")
print(f"off-task KL predicted {t['offtask_kl_predicted']:.4g} vs measured {stored['offtask_kl_measured']:.4g} nats/token")
fig, ax = plt.subplots(figsize=(5, 3.5))
ax.plot(T, t["offtask_kl_curve"], "--", label="½‖Δθ‖²_walk tr(F)/d (tr F from a random direction)")
ax.plot([T[-1]], [stored["offtask_kl_measured"]], "o", label="measured (general prompts)")
ax.set_xlabel("iteration"), ax.set_ylabel("KL per token"), ax.legend()
fig.tight_layout()
fig.savefig(os.path.join(FIGURES, "theory_kl.png"), dpi=100)
