"""PNG plots of a results dict (matplotlib, Agg backend)."""
from __future__ import annotations

import os

import numpy as np

from esjax.analysis.geometry import BUCKETS
from esjax.results import read_metrics


def _heatmap(ax, table, title):
    """Layers left to right, then one "emb/out" column for the leaves outside the layers (embedding, final
    norm, head: ``layer_of`` None), which a layer-only ES leaves alone and GRPO moves."""
    layers = sorted((k for k in table if k != "None"), key=int) + (["None"] if "None" in table else [])
    data = np.array([[table[l].get(b, np.nan) for b in BUCKETS] for l in layers])
    im = ax.imshow(data.T, aspect="auto", cmap="viridis")
    ax.set_yticks(range(len(BUCKETS)), BUCKETS)
    step = max(1, len(layers) // 12)
    ticks = sorted(set(range(0, len(layers), step)) | {len(layers) - 1})
    ax.set_xticks(ticks, ["emb/out" if layers[i] == "None" else layers[i] for i in ticks])
    ax.set_xlabel("layer")
    ax.set_title(title)
    return im


def make_plots(out_dir: str, res: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pdir = os.path.join(out_dir, "plots")
    os.makedirs(pdir, exist_ok=True)
    th = res["theory"]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    if th["T"]:
        ax[0].plot(th["T"], th["measured_norm"], "o-", label="ES measured")
        ax[0].plot(th["T"], th["predicted_norm"], "--", label="theory α√(Td/N)")
    g = [r for r in read_metrics(os.path.join(out_dir, "grpo")) if r["iteration"] > 0]
    ax[0].plot([r["iteration"] for r in g], [r["update_norm_from_base"] for r in g], "s-", label="GRPO measured")
    ax[0].set_xlabel("iteration / step"), ax[0].set_ylabel("‖θ_t − θ_base‖₂"), ax[0].set_yscale("log"), ax[0].legend()
    for m in ("es", "grpo"):
        rows = read_metrics(os.path.join(out_dir, m))
        ax[1].plot([r["iteration"] for r in rows[1:]], [r["reward_mean"] for r in rows[1:]], label=f"{m} train reward")
    ax[1].set_xlabel("iteration / step"), ax[1].legend()
    fig.tight_layout(), fig.savefig(os.path.join(pdir, "norm_and_reward.png"), dpi=110), plt.close(fig)

    fig, ax = plt.subplots(2, 2, figsize=(11, 6))
    for i, m in enumerate(("es", "grpo")):
        fig.colorbar(_heatmap(ax[0, i], res["layer_norms"][m], f"{m.upper()} ‖Δ‖ per (layer, bucket)"), ax=ax[0, i])
        fig.colorbar(_heatmap(ax[1, i], res["sparsity"][m]["bfloat16"]["1e-06"]["layers"],
                              f"{m.upper()} sparsity τ=1e-6 (bf16)"), ax=ax[1, i])
    fig.tight_layout(), fig.savefig(os.path.join(pdir, "layer_heatmaps.png"), dpi=110), plt.close(fig)

    probes = list(res["kl_drift"]["es"])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = np.arange(len(probes))
    for j, m in enumerate(("es", "grpo")):
        ax.bar(x + 0.4 * j, [res["kl_drift"][m][p]["sampled_token_exact"] for p in probes], 0.4, label=m.upper())
    ax.set_xticks(x + 0.2, probes), ax.set_ylabel("KL(ft‖base) per token (nats)"), ax.legend()
    fig.tight_layout(), fig.savefig(os.path.join(pdir, "kl_drift.png"), dpi=110), plt.close(fig)

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    for name, c in res["interpolation"].items():
        ax[0].plot(c["lambda"], c["accuracy"], "o-", label=f"{name} (B={c['barrier']:.2f})")
    ax[0].set_xlabel("λ"), ax[0].set_ylabel("accuracy"), ax[0].legend()
    dp = res["direction_probes"]
    for name in ("es", "grpo", "random"):
        ax[1].plot(dp["t"], dp[name], "o-", label=name)
    ax[1].set_xlabel("t (distance from base)"), ax[1].set_ylabel("accuracy"), ax[1].legend()
    fig.tight_layout(), fig.savefig(os.path.join(pdir, "connectivity_and_directions.png"), dpi=110), plt.close(fig)
