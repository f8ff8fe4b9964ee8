"""Continual learning: each method trained in turn on a sequence of tasks (docs/protocols.md#d).

Stage s fine-tunes the previous stage's learner state on task s (params *and* optimizer moments carry over,
as in paper 1, unless ``reset_optimizer``; the learning-rate schedule restarts per task, as paper 1 builds
a fresh scheduler per task). After every stage all tasks of the sequence are evaluated
greedily, giving the accuracy matrix (rows = task, columns = base, after stage 1, …), and the
incremental off-task KL(after ‖ before) is measured per stage and per task.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import jax

from esjax.analysis.drift import incremental_kl_matrix
from esjax.config import RunConfig
from esjax.grpo.step import restart_schedule
from esjax.results import safe_row, write_json
from esjax.runs import evaluate_all, run_method
from esjax.tasks.probes import probe_sets


def run_sequence(cfg: RunConfig, tasks: Sequence[str], method: str, out_dir: str, model, progress: bool = True,
                 reset_optimizer: bool = False) -> dict:
    os.makedirs(out_dir, exist_ok=True)
    settings = {"method": method, "tasks": list(tasks), "reset_optimizer": bool(reset_optimizer)}
    marker = os.path.join(out_dir, "sequence.json")  # what the stages' checkpoints were trained with
    if os.path.exists(marker):
        with open(marker) as f:
            before = json.load(f)
        changed = {k: (before.get(k), v) for k, v in settings.items() if before.get(k) != v}
        if changed:
            raise ValueError(f"{out_dir}: this sequence was started with other settings ({', '.join(f'{k}: {a!r} -> {b!r}' for k, (a, b) in changed.items())}); "
                             f"its stages' checkpoints would resume under the new ones: use another --out")
    else:
        write_json(marker, settings)
    kwargs = {t: cfg.kwargs_for(t) for t in tasks}
    stage_cfgs = [dataclasses.replace(cfg, task=t, task_kwargs=kwargs[t], eval_task_kwargs=kwargs,
                                      eval_tasks=tuple(x for x in tasks if x != t)) for t in tasks]
    evals = [evaluate_all(model.params, model, stage_cfgs[0], cfg.max_new_tokens)]
    stages, state = [model.params], None
    for s, scfg in enumerate(stage_cfgs):
        if state is not None:
            opt = jax.tree.map(lambda x: x * 0, state.opt_state) if reset_optimizer else restart_schedule(state.opt_state)
            state = state.replace(opt_state=opt)
        summary, state = run_method(scfg, method, os.path.join(out_dir, f"stage{s + 1}-{scfg.task}"), model,
                                    progress=progress, initial_state=state, return_state=True)
        stages.append(state.params)
        evals.append(summary["after"])
    acc = {t: [e[f"eval/{t}/accuracy"] for e in evals] for t in tasks}
    probes = probe_sets(list(tasks), cfg.probe_size, kwargs)
    kl = incremental_kl_matrix(stages, model.cfg, model.tokenizer, probes, jax.random.key(cfg.seed))
    result = {"method": method, "tasks": list(tasks), "columns": ["base"] + [f"after {t}" for t in tasks],
              "accuracy": acc, "incremental_kl": kl}
    write_json(os.path.join(out_dir, "sequential.json"), {**safe_row(result), "reset_optimizer": bool(reset_optimizer)})
    return result
