"""Fine-tune one base model with ES or GRPO under a RunConfig: the loop behind every experiment.

Writes ``<out>/<method>/``: ``config.json`` (resolved), ``metrics.jsonl`` (one row per iteration; row 0
is the base model's evaluation), ``ckpt/`` (orbax run state every ``checkpoint_every`` iterations) and
``params/`` (final params). A killed run restarted with the same arguments restores the newest
checkpoint, rewrites the metrics log from it and continues; because data, noise and sampling keys are
pure functions of (seed, iteration), the resumed run reproduces the uninterrupted one.
"""
from __future__ import annotations

import json
import os
import random
import time
from typing import Optional

import jax
import jax.numpy as jnp

from esjax.checkpoint import RunCheckpointer, save_params
from esjax.config import RunConfig
from esjax.es.step import init_state as es_init
from esjax.es.trainer import make_es_iteration
from esjax.evaluation import evaluate
from esjax.grpo.step import init_state as grpo_init
from esjax.grpo.trainer import make_grpo_iteration
from esjax.models.registry import Model, load_model
from esjax.parallel import make_mesh
from esjax.tasks import get_task

METHODS = ("es", "grpo")
TIMING_KEYS = ("time_generate", "time_reward", "time_update", "tokens_per_s", "wall_time")


def batch_indices(pool: int, size: int, seed: int, iteration: int):
    """The training examples of one iteration: a deterministic sample of the pool."""
    return random.Random(f"{seed}/{iteration}").sample(range(pool), size)


def tree_distance(a, b) -> float:
    return float(jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32) - y.astype(jnp.float32)))
                              for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))))


def evaluate_all(params, model: Model, cfg: RunConfig, max_new: int) -> dict:
    """Greedy accuracy on the training task's test split and on every eval task."""
    out = {}
    for name in (cfg.task, *cfg.eval_tasks):
        task = get_task(name, **cfg.kwargs_for(name))
        ex = task.examples("test", cfg.eval_size, cfg.seed)
        if not ex:
            raise ValueError(f"task {name!r} has no test examples: check its data path and splits ({cfg.kwargs_for(name)})")
        n_new = (max_new or task.max_new_tokens) if name == cfg.task else (cfg.eval_max_new_tokens or task.max_new_tokens)
        res = evaluate(params, model.cfg, model.tokenizer, task, ex, n_new)
        out[f"eval/{name}/accuracy"] = res["accuracy"]
        out[f"eval/{name}/reward"] = res["reward"]
    return out


def run_method(cfg: RunConfig, method: str, out_dir: str, model: Optional[Model] = None, progress: bool = True,
               log=print, base_eval: Optional[dict] = None, initial_state=None, return_state: bool = False):
    """Train ``method`` from the base model (resuming if a checkpoint exists); returns the summary.
    ``base_eval`` reuses an evaluation of the base model (identical for both methods);
    ``initial_state`` continues from an earlier run's learner state (sequential training: params and
    optimizer moments carry over, norms stay measured from ``model.params``)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    run_dir = os.path.join(out_dir, method)
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        json.dump(cfg.to_dict(), f, indent=2)
    model = model or load_model(cfg.model_spec(), seed=cfg.seed)
    task = get_task(cfg.task, **cfg.kwargs_for(cfg.task))
    max_new = cfg.max_new_tokens or task.max_new_tokens
    pool = task.examples("train", cfg.train_pool, cfg.seed)
    mesh = make_mesh() if cfg.use_mesh and jax.device_count() > 1 else None
    root = jax.random.key(cfg.seed)
    base = model.params
    if method == "es":
        state = initial_state or es_init(base, jax.random.fold_in(root, 1), cfg.es)
        iterate = make_es_iteration(model.cfg, model.tokenizer, task, cfg.es, max_new, cfg.es_batch, mesh,
                                    base_params=base)
        n_steps, per_step = cfg.es_iterations, cfg.es_batch

        def step(state, t):
            exs = [pool[i] for i in batch_indices(len(pool), per_step, cfg.seed, t)]
            return iterate(state, exs, jax.random.fold_in(jax.random.fold_in(root, 2), t))
    else:
        state = initial_state or grpo_init(base, jax.random.fold_in(root, 3), cfg.grpo)
        ref = base if cfg.grpo.beta > 0 or cfg.probe_size else None
        iterate = make_grpo_iteration(model.cfg, model.tokenizer, task, cfg.grpo, max_new, ref, mesh)
        n_steps, per_step = cfg.grpo_steps, cfg.grpo.prompts_per_step

        def step(state, t):
            return iterate(state, [pool[i] for i in batch_indices(len(pool), per_step, cfg.seed, t)])

    ckpt = RunCheckpointer(os.path.join(run_dir, "ckpt"))
    restored = ckpt.restore(state)
    if restored is not None:
        start, state, record = restored
        history = record["history"]
        log(f"[{method}] resumed from iteration {start}")
    else:
        first = base_eval if base_eval is not None else evaluate_all(state.params, model, cfg, max_new)
        start, history = 0, [{"iteration": 0, "wall_time": 0.0, **first}]
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(h) + "\n" for h in history)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_steps, initial=start, desc=method, dynamic_ncols=True)
    wall = history[-1]["wall_time"]
    for t in range(start, n_steps):
        t0 = time.perf_counter()
        state, m = step(state, t)
        m["iteration"] = t + 1
        m["update_norm_from_base"] = tree_distance(state.params, base)
        if (cfg.eval_every and (t + 1) % cfg.eval_every == 0) or t + 1 == n_steps:
            m.update(evaluate_all(state.params, model, cfg, max_new))
        wall += time.perf_counter() - t0
        m["wall_time"] = wall
        history.append(m)
        if (t + 1) % cfg.checkpoint_every == 0 or t + 1 == n_steps:
            ckpt.save(t + 1, state, {"history": history})
        with open(os.path.join(run_dir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(m) + "\n")
        if bar is not None:
            bar.set_postfix(reward=f"{m['reward_mean']:.3f}", acc=f"{m['train_accuracy']:.2f}",
                            norm=f"{m['update_norm_from_base']:.3g}")
            bar.update(1)
    if bar is not None:
        bar.close()
    ckpt.close()
    save_params(os.path.join(run_dir, "params"), state.params)
    totals = {k: float(sum(h.get(k, 0) for h in history)) for k in ("completions", "tokens", "forward_passes", "backward_passes")}
    summary = {"method": method, "iterations": n_steps, "wall_time": wall, **totals,
               "before": {k: v for k, v in history[0].items() if k.startswith("eval/")},
               "after": {k: v for k, v in history[-1].items() if k.startswith("eval/")},
               "update_norm": history[-1].get("update_norm_from_base", 0.0)}
    with open(os.path.join(run_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return (summary, state) if return_state else summary


def read_metrics(run_dir: str):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def strip_timing(rows):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS and not k.startswith("time_")} for r in rows]

