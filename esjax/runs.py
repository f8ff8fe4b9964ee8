"""Fine-tune one base model with ES or GRPO under a RunConfig: the loop behind every experiment.

Output files of ``<out>/<method>/``:

- ``config.json``: the resolved :class:`~esjax.config.RunConfig`;
- ``summary.json``: ``status`` is ``"incomplete"`` from the start of a run (or of its extension) until it
  finishes, then ``"complete"``; ``"failed"`` (with ``error``) if it stopped on an error or on a non-finite
  update. Totals, accuracies before/after and the update norm are there once complete;
- ``metrics.jsonl``: one row per iteration; row 0 is the base model's evaluation;
- ``tensorboard/``: with ``--set logger=tensorboard``, the same rows as TensorBoard scalars (step =
  iteration; :mod:`esjax.tensorboard`, no TensorFlow needed); per-example lists such as
  ``eval/<task>/correct`` stay in metrics.jsonl only. Rewritten from the restored history on resume;
- ``ckpt/``: orbax run state every ``checkpoint_every`` iterations, each step verified by a checksum
  (:mod:`esjax.checkpoint`); two steps are kept during a run, the newest one after it finishes;
- ``params/``: the final params (written when the run completes).

All JSON is strict: a non-finite number (NaN, ±inf) is written as ``null`` and the row (or summary) lists
those keys under ``non_finite``.

Resume rules. A run restarted with the same arguments restores the newest verified checkpoint, rewrites
the metrics log from it and continues; because data, noise and sampling keys are pure functions of
(seed, iteration), the resumed run reproduces the uninterrupted one. Before anything in the folder is
touched, the folder's ``config.json`` is compared with the new resolved config: only
:data:`RESUMABLE_KEYS` may differ (raising the iteration count extends a finished run; the checkpoint and
eval cadences and the logger do not change what is learned; the decode loop's ``decode_*`` settings
change how fast tokens are decoded, not which, up to float-rounding ties), and the other method's settings are ignored (``es.*``,
``es_batch``, ``es_iterations`` for GRPO; ``grpo.*``, ``grpo_steps`` for ES), as are GRPO's schedule length
``grpo.total_steps`` while both configs keep a constant learning rate (no schedule reads it), and ``grpo.track_kl`` while both have β = 0 (the KL is then logged, never learned from). Any other difference, or a
checkpoint past the new iteration count, raises :class:`RunConfigMismatch` naming the keys (old -> new):
use another ``--out`` folder or delete the old one. An iteration whose update, loss or params turn
non-finite stops the run with :class:`RunFailed`; its checkpoints (all from earlier iterations) are kept.
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from esjax import memory, streams
from esjax.results import (json_safe, read_metrics, read_summary, require_complete,  # noqa: F401  (re-exported)
                           safe_row, write_json)
from esjax.checkpoint import RunCheckpointer, save_params
from esjax.config import RunConfig, from_dict
from esjax.es.step import init_state as es_init
from esjax.es.trainer import make_es_iteration
from esjax.evaluation import evaluate
from esjax.grpo.step import init_state as grpo_init
from esjax.grpo.trainer import make_grpo_iteration
from esjax.models.registry import Model, load_model
from esjax.parallel import make_mesh, put_global, replicated
from esjax.tasks import get_task
from esjax.tensorboard import EventWriter

METHODS = ("es", "grpo")
TIMING_KEYS = ("time_generate", "time_reward", "time_update", "tokens_per_s", "wall_time")
RESUMABLE_KEYS = ("es_iterations", "grpo_steps", "checkpoint_every", "eval_every", "logger", "decode_steps_per_loop",
                  "decode_cache_block", "decode_compaction", "decode_attention", "remat")
OTHER_METHOD_KEYS = {"es": ("grpo", "grpo_steps"), "grpo": ("es", "es_batch", "es_iterations")}
FINITE_KEYS = ("update_norm", "update_norm_from_base", "loss", "grad_norm")  # a non-finite one stops the run


class RunConfigMismatch(ValueError):
    """A results folder holds a run whose config differs from the requested one (it is not resumed)."""


class RunFailed(RuntimeError):
    """A run stopped because an update turned non-finite (see ``summary.json``)."""


def batch_indices(pool: int, size: int, seed: int, iteration: int):
    """The training examples of one iteration: a deterministic sample of the pool."""
    return random.Random(f"{seed}/{iteration}").sample(range(pool), size)


def tree_distance(a, b) -> float:
    return float(jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32) - y.astype(jnp.float32)))
                              for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))))


def tensorboard_scalars(row: dict) -> dict:
    """A metrics row less its lists (per-example ``eval/<task>/correct``; ``non_finite``, the keys written
    as null), which TensorBoard scalars cannot hold; anything else must be a number
    (:func:`esjax.tensorboard.scalar_values` names the key otherwise)."""
    return {k: v for k, v in row.items() if not isinstance(v, (list, tuple))}


def open_tensorboard(run_dir: str) -> EventWriter:
    """A writer on ``<run_dir>/tensorboard`` after deleting the folder's earlier event files: the run
    writes its whole history again (as it rewrites metrics.jsonl), so a resumed run shows no duplicates."""
    logdir = os.path.join(run_dir, "tensorboard")
    if os.path.isdir(logdir):
        for name in os.listdir(logdir):
            if name.startswith("events.out.tfevents."):
                os.remove(os.path.join(logdir, name))
    return EventWriter(logdir)


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_changes(old: dict, new: dict, method: str) -> list:
    """``["key: old -> new", ...]`` for the fields that forbid resuming ``method`` (see module docstring)."""
    ignored = RESUMABLE_KEYS + OTHER_METHOD_KEYS[method]
    try:  # a key added since the old run was written (e.g. compute_dtype) reads as its default, which it used
        old = json.loads(json.dumps(from_dict(old).to_dict()))
    except (TypeError, ValueError):
        pass
    a, b = _flatten(old), _flatten(json.loads(json.dumps(new)))
    unread = []
    if method == "grpo":
        if a.get("grpo.lr_schedule", "constant") == b.get("grpo.lr_schedule", "constant") == "constant":
            unread += ["grpo.total_steps"]  # only a linear schedule reads it (make_optimizer); warmup both do
        if a.get("grpo.beta", 0.0) == b.get("grpo.beta", 0.0) == 0:
            unread += ["grpo.track_kl"]  # with no KL penalty the reference model is scored for the log only
    out = []
    for key in sorted(set(a) | set(b)):
        if key.split(".")[0] in ignored or key in unread or a.get(key, "<absent>") == b.get(key, "<absent>"):
            continue
        out.append(f"{key}: {json.dumps(a.get(key, '<absent>'))} -> {json.dumps(b.get(key, '<absent>'))}")
    return out


def _saved_steps(ckpt_dir: str) -> list:
    return sorted(int(n) for n in os.listdir(ckpt_dir) if n.isdigit()) if os.path.isdir(ckpt_dir) else []


def check_resumable(cfg: RunConfig, run_dir: str, method: str) -> None:
    """Raise :class:`RunConfigMismatch` if ``run_dir`` holds checkpoints of a run that ``cfg`` may not
    resume: another config (beyond :data:`RESUMABLE_KEYS`), no readable config.json, or a checkpoint past
    the iteration count. Touches nothing."""
    steps = _saved_steps(os.path.join(run_dir, "ckpt"))
    if not steps:
        return
    way_out = f"use another --out folder, or delete {run_dir} to start over"
    try:
        with open(os.path.join(run_dir, "config.json")) as f:
            old = json.load(f)
    except (OSError, ValueError) as e:
        raise RunConfigMismatch(f"{run_dir} holds checkpoints but no readable config.json ({e}), so resuming it "
                                f"cannot be checked; {way_out}") from None
    changes = config_changes(old, cfg.to_dict(), method)
    if changes:
        raise RunConfigMismatch(f"{run_dir} holds a {method} run with another config, not resumed: {'; '.join(changes)} "
                                f"(only {', '.join(RESUMABLE_KEYS)} may change on resume); {way_out}")
    key = "es_iterations" if method == "es" else "grpo_steps"
    if steps[-1] > getattr(cfg, key):
        raise RunConfigMismatch(f"{run_dir} holds a {method} checkpoint at iteration {steps[-1]}, past {key}="
                                f"{getattr(cfg, key)} (a run cannot be shortened); {way_out}")


def check_data(cfg: RunConfig, methods=METHODS, log=print) -> None:
    """Before any work: the trained task's train and test splits do not overlap, its train split holds
    at least one iteration's prompts for each method, and every evaluated task has test examples."""
    task = get_task(cfg.task, **cfg.kwargs_for(cfg.task))
    if hasattr(task, "check_disjoint"):
        task.check_disjoint("train", "test")
    where = ""
    if getattr(task, "splits", None) is not None:
        where = f" (data {getattr(task, 'path', None) or getattr(task, 'data_dir', None)}, split {task.splits.get('train')!r})"
    need = {"es": ("es_batch", cfg.es_batch, cfg.es_iterations),
            "grpo": ("grpo.prompts_per_step", cfg.grpo.prompts_per_step, cfg.grpo_steps)}
    sizes = [(need[m][1], need[m][0]) for m in methods if need[m][2] > 0]
    if sizes:
        n = len(task.examples("train", cfg.train_pool, cfg.seed))
        per_step, key = max(sizes)
        if n < per_step:
            raise ValueError(f"task {cfg.task!r}: the train split has {n} example{'s' * (n != 1)}{where}, fewer than "
                             f"the {per_step} prompts of one iteration ({key}={per_step}); give more data or lower {key}")
        if n < cfg.train_pool:
            log(f"note: task {cfg.task!r} has {n} train examples{where}, fewer than train_pool={cfg.train_pool}; "
                f"iterations sample from those {n}")
    for name in (cfg.task, *cfg.eval_tasks):
        t = task if name == cfg.task else get_task(name, **cfg.kwargs_for(name))
        if not t.examples("test", 1, cfg.seed):
            raise ValueError(f"task {name!r} has no test examples: check its data path and splits ({cfg.kwargs_for(name)})")


def preflight(cfg: RunConfig, out_dir: str, methods=METHODS, log=print) -> None:
    """Every check that can fail before a model is loaded: resumability of each ``<out_dir>/<method>``
    (:func:`check_resumable`) and the data (:func:`check_data`)."""
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {m!r}")
        check_resumable(cfg, os.path.join(out_dir, m), m)
    check_data(cfg, methods, log)
    g = cfg.grpo
    updates = cfg.grpo_steps * g.updates_per_step
    if "grpo" in methods and g.lr_schedule == "linear" and g.total_steps < updates:
        log(f"[grpo] warning: the linear learning-rate schedule decays to 0 over grpo.total_steps={g.total_steps} "
            f"optimizer updates and the run makes {updates} (grpo_steps {cfg.grpo_steps} × {g.updates_per_step} "
            f"per step): its last {updates - g.total_steps} update(s) have learning rate 0 (grpo.total_steps="
            f"{updates} decays over the whole run)")


def load_run_model(cfg: RunConfig) -> Model:
    """The base model of a run: ``cfg.model`` (resolved against ``model_root``) with float32 master weights
    computing in ``cfg.compute_dtype`` (:mod:`esjax.models.precision`) and decoding with the run's
    ``decode_*`` settings."""
    return run_model(load_model(cfg.model_spec(), seed=cfg.seed, compute_dtype=cfg.compute_dtype), cfg)


def run_model(model: Model, cfg: RunConfig) -> Model:
    """A model handed to a run, with the run's decode settings. It must compute in the run's
    ``compute_dtype`` (else the config would claim a precision the run did not use); the decode settings
    change how fast it decodes, not what, so they are applied."""
    mcfg = getattr(model, "cfg", None)
    if mcfg is None:  # a stand-in without a config has nothing to check or set
        return model
    if mcfg.compute_dtype != cfg.compute_dtype:
        raise ValueError(f"the model computes in {mcfg.compute_dtype} but the run config says compute_dtype="
                         f"{cfg.compute_dtype}: load it with esjax.runs.load_run_model(cfg) (load_model(..., compute_dtype=...))")
    return model._replace(cfg=mcfg.replace(**cfg.model_settings()))


def evaluate_all(params, model: Model, cfg: RunConfig, max_new: int, lengths: Optional[dict] = None) -> dict:
    """Greedy accuracy and mean reward on the training task's test split and on every eval task, and each
    task's per-problem correctness ``eval/<task>/correct`` (0/1 in the test examples' order: the paired
    before → after tests of :mod:`esjax.analysis.intervals`; TensorBoard leaves it out). ``lengths``: a
    run's {task: completion lengths per batch} from its previous evaluation, which the decode's EOS
    compaction is chosen from (:func:`esjax.evaluation.evaluate`), updated in place with this one's."""
    out = {}
    for name in (cfg.task, *cfg.eval_tasks):
        task = get_task(name, **cfg.kwargs_for(name))
        ex = task.examples("test", cfg.eval_size, cfg.seed)
        if not ex:
            raise ValueError(f"task {name!r} has no test examples: check its data path and splits ({cfg.kwargs_for(name)})")
        n_new = (max_new or task.max_new_tokens) if name == cfg.task else (cfg.eval_max_new_tokens or task.max_new_tokens)
        res = evaluate(params, model.cfg, model.tokenizer, task, ex, n_new,
                       previous_lengths=None if lengths is None else lengths.get(name))
        if lengths is not None:
            lengths[name] = res["batch_lengths"]
        out[f"eval/{name}/accuracy"] = res["accuracy"]
        out[f"eval/{name}/reward"] = res["reward"]
        out[f"eval/{name}/correct"] = res["correct"]
    return out


def run_method(cfg: RunConfig, method: str, out_dir: str, model: Optional[Model] = None, progress: bool = True,
               log=print, base_eval: Optional[dict] = None, initial_state=None, return_state: bool = False):
    """Train ``method`` from the base model (resuming if a checkpoint exists); returns the summary.
    ``base_eval`` reuses an evaluation of the base model (identical for both methods);
    ``initial_state`` continues from an earlier run's learner state (sequential training: params and
    optimizer moments carry over, norms stay measured from ``model.params``). Checks resumability and
    data (:func:`preflight`) before writing anything; see the module docstring for files and statuses."""
    preflight(cfg, out_dir, (method,), log)
    if model is not None:
        model = run_model(model, cfg)
    run_dir = os.path.join(out_dir, method)
    n_steps = cfg.es_iterations if method == "es" else cfg.grpo_steps
    os.makedirs(run_dir, exist_ok=True)
    write_json(os.path.join(run_dir, "config.json"), cfg.to_dict())
    write_json(os.path.join(run_dir, "summary.json"), {"method": method, "status": "incomplete", "iterations": n_steps})
    tb = open_tensorboard(run_dir) if cfg.logger == "tensorboard" else None
    try:
        summary, state = _train(cfg, method, run_dir, n_steps, model, progress, log, base_eval, initial_state, tb)
    except RunFailed:
        raise
    except Exception as e:
        write_json(os.path.join(run_dir, "summary.json"),
                   {"method": method, "status": "failed", "iterations": n_steps, "error": f"{type(e).__name__}: {e}"})
        raise
    finally:
        if tb is not None:
            tb.close()
    return (summary, state) if return_state else summary


def _train(cfg: RunConfig, method: str, run_dir: str, n_steps: int, model, progress, log, base_eval, initial_state,
           tb: Optional[EventWriter] = None):
    model = model or load_run_model(cfg)
    task = get_task(cfg.task, **cfg.kwargs_for(cfg.task))
    max_new = cfg.max_new_tokens or task.max_new_tokens
    pool = task.examples("train", cfg.train_pool, cfg.seed)
    mesh = make_mesh() if cfg.use_mesh and jax.device_count() > 1 else None
    root = jax.random.key(cfg.seed)
    base = model.params
    if method == "es":
        state = initial_state or es_init(base, jax.random.fold_in(root, streams.ES_NOISE), cfg.es)
        iterate = make_es_iteration(model.cfg, model.tokenizer, task, cfg.es, max_new, cfg.es_batch, mesh,
                                    base_params=base)
        per_step = cfg.es_batch

        def step(state, t):
            exs = [pool[i] for i in batch_indices(len(pool), per_step, cfg.seed, t)]
            return iterate(state, exs, jax.random.fold_in(jax.random.fold_in(root, streams.ES_SAMPLING), t))
    else:
        state = initial_state or grpo_init(base, jax.random.fold_in(root, streams.GRPO), cfg.grpo)
        # the updates reuse the state's buffers (donation), so the state must own its arrays: fp32 master
        # params are the base model's own arrays, and a caller's initial state stays the caller's
        state = state.replace(params=jax.tree.map(jnp.copy, state.params),
                              opt_state=jax.tree.map(jnp.copy, state.opt_state) if initial_state is not None else state.opt_state)
        ref = base if cfg.grpo.beta > 0 or cfg.grpo.track_kl else None  # the KL penalty, or the KL logged
        iterate = make_grpo_iteration(model.cfg, model.tokenizer, task, cfg.grpo, max_new, ref, mesh,
                                      donate_state=True)
        per_step = cfg.grpo.prompts_per_step

        def step(state, t):
            return iterate(state, [pool[i] for i in batch_indices(len(pool), per_step, cfg.seed, t)])

    # the last generation's completion lengths, training's (the iteration's own list) and each task's last
    # evaluation's: the next EOS compaction is chosen from them, so a checkpoint keeps them
    train_lengths, eval_lengths = getattr(iterate, "decode_lengths", None), {}
    ckpt_dir = os.path.join(run_dir, "ckpt")
    ckpt = RunCheckpointer(ckpt_dir)
    restored = ckpt.restore(state, log=lambda msg: log(f"[{method}] {msg}"))
    if restored is not None:
        start, state, record = restored
        if mesh is not None:  # restored arrays are committed to one device: lay them out as the mesh's programs read them
            state = put_global(state, replicated(mesh))
        history = record["history"]
        lengths = record.get("decode_lengths", {})  # what the next EOS compaction is chosen from, as if uninterrupted
        if train_lengths is not None:
            train_lengths[:] = [np.asarray(x) for x in lengths.get("train", [])]
        eval_lengths.update({k: [np.asarray(b) for b in v] for k, v in lengths.get("eval", {}).items()})
        log(f"[{method}] resumed from iteration {start}")
    else:
        first = base_eval if base_eval is not None else evaluate_all(state.params, model, cfg, max_new, lengths=eval_lengths)
        start, history = 0, [safe_row({"iteration": 0, "wall_time": 0.0, **first})]
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(h, allow_nan=False) + "\n" for h in history)
    if tb is not None:
        for h in history:
            tb.add_scalars(tensorboard_scalars(h), h["iteration"])
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_steps, initial=start, desc=method, dynamic_ncols=True)
    wall, last_saved = history[-1]["wall_time"], (start if restored is not None else None)
    for t in range(start, n_steps):
        t0 = time.perf_counter()
        state, m = step(state, t)
        memory.trim()  # the step's freed buffers back to the system (fragmented heap, esjax.memory.trim)
        m["iteration"] = t + 1
        m["update_norm_from_base"] = tree_distance(state.params, base)  # non-finite if any param is
        bad = {k: float(m[k]) for k in FINITE_KEYS if k in m and not math.isfinite(m[k])}
        if not bad and ((cfg.eval_every and (t + 1) % cfg.eval_every == 0) or t + 1 == n_steps):
            m.update(evaluate_all(state.params, model, cfg, max_new, lengths=eval_lengths))
        wall += time.perf_counter() - t0
        m["wall_time"] = wall
        m = safe_row(m)
        with open(os.path.join(run_dir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(m, allow_nan=False) + "\n")
        if tb is not None:
            tb.add_scalars(tensorboard_scalars(m), t + 1)
        if bad:
            if bar is not None:
                bar.close()
            ckpt.close()
            kept = (f"the last good checkpoint (iteration {last_saved}) is kept in {ckpt_dir}" if last_saved
                    else "no checkpoint was saved before it")
            msg = (f"[{method}] iteration {t + 1} turned non-finite ({', '.join(f'{k}={v}' for k, v in bad.items())}); "
                   f"run stopped: {kept}; "
                   f"lower the step size (es.alpha / grpo.learning_rate) and rerun into another --out folder")
            write_json(os.path.join(run_dir, "summary.json"),
                       {"method": method, "status": "failed", "iterations": n_steps, "iterations_done": t,
                        "last_checkpoint": last_saved, "error": msg})
            raise RunFailed(msg)
        history.append(m)
        if (t + 1) % cfg.checkpoint_every == 0 or t + 1 == n_steps:
            ckpt.save(t + 1, state, {"history": history, "decode_lengths": {
                "train": [np.asarray(x).tolist() for x in train_lengths or []],
                "eval": {k: [np.asarray(b).tolist() for b in v] for k, v in eval_lengths.items()}}})
            last_saved = t + 1
        if bar is not None:
            bar.set_postfix(reward=f"{m.get('reward_mean') or 0:.3f}", acc=f"{m.get('train_accuracy') or 0:.2f}",
                            norm=f"{m['update_norm_from_base']:.3g}")
            bar.update(1)
    if bar is not None:
        bar.close()
    ckpt.keep_latest_only()
    ckpt.close()
    save_params(os.path.join(run_dir, "params"), state.params)
    totals = {k: float(sum(h.get(k) or 0 for h in history)) for k in ("completions", "tokens", "forward_passes", "backward_passes")}
    summary = safe_row({"method": method, "status": "complete", "iterations": n_steps, "wall_time": wall, **totals,
                        "before": {k: v for k, v in history[0].items() if k.startswith("eval/")},
                        "after": {k: v for k, v in history[-1].items() if k.startswith("eval/")},
                        "update_norm": history[-1].get("update_norm_from_base", 0.0)})
    write_json(os.path.join(run_dir, "summary.json"), summary)
    return summary, state


def strip_timing(rows):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS and not k.startswith("time_")} for r in rows]

