"""Replayable ES updates: a run's parameters rebuilt from its base model and its metrics log alone.

Update t is a pure function of (θ_{t−1}, the base noise key, t, fitness_t) — the members' noise is
regenerated from the key (:mod:`esjax.es.noise`), shaping, σ, α, the optimizer and anchored weight decay
come from the ES config — so each ES metrics row logs ``es_key`` (the key's data) and ``es_fitness`` (the
N fitness values the update used, after any KL penalty), and

    θ_T = replay(θ₀, cfg, rows 1..T)

reproduces the run's params bit for bit (tested), without any checkpoint: any iteration's Δθ can be rebuilt
and analysed from a few KB of log.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from esjax.es.step import ESConfig, es_update, init_state


def replay(base_params, cfg: ESConfig, rows: Sequence[dict], until: Optional[int] = None, where: str = "rows",
           anchor=None):
    """θ after the ES iterations logged in ``rows`` (metrics rows; iteration 0, the base evaluation, is
    skipped), starting from ``base_params``; ``until``: stop after that iteration.

    Rows log the noise iteration each update drew (``es_noise_iteration``): a task of a sequence after the
    first continues the previous task's ES state, so its iteration 1 draws noise iteration T₁ (the first
    task's length), and its replay starts from the params the previous task ended at (``base_params``) at
    that iteration. Such a replay needs ``optimizer="sgd"`` (Adam's moments carried from the earlier task
    are not in the log) and, with anchored decay, ``anchor``: what the run decays toward, the model the
    sequence started from (default ``base_params``). Rows without the field (older logs) start at 0."""
    rows = [r for r in rows if r.get("iteration", 0) > 0 and (until is None or r["iteration"] <= until)]
    its = [r["iteration"] for r in rows]
    if its != list(range(1, len(rows) + 1)):
        raise ValueError(f"{where}: ES iterations must run 1..T without gaps, got {its[:20]}")
    missing = [r["iteration"] for r in rows if "es_key" not in r or "es_fitness" not in r]
    if missing:
        raise ValueError(f"{where}: iterations {missing[:10]} lack es_key / es_fitness (logged since esjax "
                         f"records replayable updates); they cannot be replayed")
    if not rows:
        return base_params
    start = rows[0].get("es_noise_iteration", 0)
    noise_its = [r.get("es_noise_iteration", start + i) for i, r in enumerate(rows)]
    if noise_its != list(range(start, start + len(rows))):
        raise ValueError(f"{where}: noise iterations must run on from {start} without gaps, got {noise_its[:20]}")
    if start and cfg.optimizer != "sgd":
        raise ValueError(f"{where}: the updates continue an ES state at noise iteration {start} (a later task of a "
                         f"sequence); optimizer={cfg.optimizer!r} carried moments the log does not hold, so only "
                         f"optimizer='sgd' replays from the task's starting params")
    if start and cfg.awd_lambda and anchor is None:
        raise ValueError(f"{where}: the updates continue an ES state at noise iteration {start} (a later task of a "
                         f"sequence) with anchored weight decay; the run decayed toward its base model, not "
                         f"toward these starting params: pass anchor= (the run's base params)")
    key = jax.random.wrap_key_data(np.asarray(rows[0]["es_key"], np.uint32))
    state = init_state(base_params, key, cfg)
    state = state.replace(iteration=jnp.full_like(state.iteration, start))
    anchor = (state.params if anchor is None else init_state(anchor, key, cfg).params) if cfg.awd_lambda else None
    for r in rows:
        if r["es_key"] != rows[0]["es_key"]:
            raise ValueError(f"{where}: iteration {r['iteration']} logs another noise key than iteration 1")
        state, _ = es_update(state, np.asarray(r["es_fitness"], np.float32), cfg, anchor=anchor)
    return state.params


def es_config_of_run(run_dir: str) -> ESConfig:
    """The ESConfig a run folder's ``config.json`` records (fields this esjax does not know are an error)."""
    with open(os.path.join(run_dir, "config.json")) as f:
        es = json.load(f).get("es")
    if es is None:
        raise ValueError(f"{run_dir}/config.json has no 'es' section")
    known = {f.name for f in dataclasses.fields(ESConfig)}
    unknown = sorted(set(es) - known)
    if unknown:
        raise ValueError(f"{run_dir}/config.json: unknown ES settings {unknown}")
    return ESConfig(**es)


def replay_run(run_dir: str, base_params, until: Optional[int] = None, anchor=None):
    """:func:`replay` of the ES run folder ``run_dir`` (its ``config.json`` and ``metrics.jsonl``)."""
    path = os.path.join(run_dir, "metrics.jsonl")
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return replay(base_params, es_config_of_run(run_dir), rows, until, where=path, anchor=anchor)
