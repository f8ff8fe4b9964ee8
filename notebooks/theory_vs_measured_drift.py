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
# theory (`esjax.analysis.theory`) on what was measured: the update norm ‖θ_t − θ_0‖ against
# α√(t·d/N), the random-walk fit of ‖Δθ_t‖², the cosine bound and the off-task KL prediction.
# Set `ESJAX_RESULTS` to the folder (default: the committed cpu-quick report in `docs/cpu-quick`).

# %%
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from esjax.analysis import theory as th  # noqa: E402

RESULTS = os.environ.get("ESJAX_RESULTS", os.path.join(os.path.dirname(os.path.abspath("__file__")), "..", "docs", "cpu-quick"))
res = json.load(open(os.path.join(RESULTS, "results.json")))
t = res["theory"]
T, measured = np.array(t["T"]), np.array(t["measured_norm"])
print(f"d = {t['d']:,}, N = {t['N']}, alpha = {t['alpha']}, sigma = {t['sigma']}")

# %% [markdown]
# ## Norm: random walk α√(Td/N)

# %%
predicted = th.random_walk_norm(t["alpha"], T, t["d"], t["N"])
fit = th.fit_random_walk(T, measured ** 2, t["alpha"], t["N"], t["d"])
fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
ax[0].plot(T, measured, "o-", label="measured ES")
ax[0].plot(T, predicted, "--", label="α√(Td/N)")
ax[0].set_xlabel("iteration"), ax[0].set_ylabel("‖Δθ‖"), ax[0].legend()
ax[1].plot(T, measured ** 2, "o", label="measured ‖Δθ‖²")
ax[1].plot(T, fit["slope"] * T + fit["intercept"], "-", label=f"fit R²={fit['r2']:.4f}, d_eff/d={fit['d_eff_ratio']:.3f}")
ax[1].set_xlabel("iteration"), ax[1].legend()
fig.tight_layout()
out = os.path.join(RESULTS, "notebook_figures")
os.makedirs(out, exist_ok=True)
fig.savefig(os.path.join(out, "theory_norm.png"), dpi=100)
print("measured / predicted at the end:", measured[-1] / predicted[-1])

# %% [markdown]
# ## Cosine with GRPO and off-task KL

# %%
rho = th.estimate_rho(measured[-1] ** 2, t["alpha"], T[-1], t["d"], t["N"])
print(f"rho estimate {rho:.3g}; |cos| bound {th.cosine_bound(rho, T[-1], t['N'], t['d']):.3g}, measured {abs(t['cosine_measured']):.3g}")
print(f"off-task KL predicted {t['offtask_kl_predicted']:.4g} vs measured {t['offtask_kl_measured']:.4g} nats/token")
kl_T = th.offtask_kl(t["alpha"], T, t["trace_fisher_general_estimate"], t["N"])
fig, ax = plt.subplots(figsize=(5, 3.5))
ax.plot(T, kl_T, "--", label="½α²T tr(F)/N (tr F from a random direction)")
ax.plot([T[-1]], [t["offtask_kl_measured"]], "o", label="measured (general prompts)")
ax.set_xlabel("iteration"), ax.set_ylabel("KL per token"), ax.legend()
fig.tight_layout()
fig.savefig(os.path.join(out, "theory_kl.png"), dpi=100)
