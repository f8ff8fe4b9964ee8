# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # Geometry of ES vs GRPO updates, per layer
# Per-layer update norms, sparsity (fp32 and 16-bit) and ES–GRPO cosines from a results folder written by
# `python -m experiments.compare` (`ESJAX_RESULTS`, default `docs/cpu-quick`);
# the figures are also saved to `ESJAX_FIGURES` (default: the folder's `notebook_figures`).

# %%
import json
import os
import sys

import matplotlib

if "ipykernel" not in sys.modules:  # run as a script: draw off-screen (in Jupyter the figures show inline)
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from esjax.analysis.geometry import BUCKETS  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) if "__file__" in globals() else os.path.abspath("..")
RESULTS = os.environ.get("ESJAX_RESULTS", os.path.join(ROOT, "docs", "cpu-quick"))
FIGURES = os.environ.get("ESJAX_FIGURES", os.path.join(RESULTS, "notebook_figures"))
res = json.load(open(os.path.join(RESULTS, "results.json")))
# runs that did not finish are flagged (a results.json from before the status field counts as complete)
for m in ("es", "grpo"):
    status = res["summaries"][m].get("status", "complete")
    if status != "complete":
        print(f"WARNING: the {m.upper()} run in {RESULTS} is {status}, not complete: its numbers are not final")
layers = sorted((k for k in res["layer_norms"]["es"] if k != "None"), key=int)

# %% [markdown]
# ## Update norm per layer and bucket (log scale): ES moves every layer, GRPO barely

# %%
fig, ax = plt.subplots(1, 2, figsize=(11, 3.5), sharey=True)
for i, m in enumerate(("es", "grpo")):
    for b in BUCKETS:
        vals = [res["layer_norms"][m][l].get(b, np.nan) for l in layers]
        ax[i].semilogy([int(l) for l in layers], vals, label=b)
    ax[i].set_title(m.upper()), ax[i].set_xlabel("layer")
ax[0].legend(fontsize=7)
fig.tight_layout()
os.makedirs(FIGURES, exist_ok=True)
fig.savefig(os.path.join(FIGURES, "layer_norms.png"), dpi=100)

# %% [markdown]
# ## Sparsity at τ = 1e-6 by dtype, and per-layer cosine of the two updates

# %%
for m in ("es", "grpo"):
    print(m, {dt: round(v["1e-06"]["global"], 4) for dt, v in res["sparsity"][m].items()})
cos = res["cosine"]["per_layer"]
fig, ax = plt.subplots(figsize=(6, 3))
ax.bar([int(l) for l in layers], [cos[l] for l in layers])
ax.axhline(0, color="k", lw=0.5)
ax.set_xlabel("layer"), ax.set_ylabel("cos(Δ_ES, Δ_GRPO)")
fig.tight_layout()
fig.savefig(os.path.join(FIGURES, "layer_cosine.png"), dpi=100)
print("global cosine", res["cosine"]["global"])
