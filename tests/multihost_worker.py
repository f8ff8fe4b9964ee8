"""One process of the multi-host check (tests/test_multihost.py): 2 ES iterations and 1 GRPO step of the
``tiny`` preset over a mesh spanning every process's devices, then the final params to ``<out>/<pid>.npz``.
Run with ESJAX_COORDINATOR / ESJAX_NUM_PROCESSES / ESJAX_PROCESS_ID set (or none: one process)."""
import os
import sys

import jax

jax.config.update("jax_cpu_collectives_implementation", "gloo")

from esjax.parallel import initialize_distributed  # noqa: E402

initialize_distributed()

import numpy as np  # noqa: E402

from esjax.config import build_config  # noqa: E402
from esjax.es.step import init_state as es_init  # noqa: E402
from esjax.es.trainer import make_es_iteration  # noqa: E402
from esjax.grpo.step import init_state as grpo_init  # noqa: E402
from esjax.grpo.trainer import make_grpo_iteration  # noqa: E402
from esjax.models.registry import load_model  # noqa: E402
from esjax.parallel import make_mesh, put_global, replicated  # noqa: E402
from esjax.tasks import get_task  # noqa: E402


def main(out):
    cfg = build_config("tiny", ["es.population_size=8", "grpo.prompts_per_step=2", "grpo.group_size=4"])
    model = load_model(cfg.model_spec())
    mesh = make_mesh()
    task = get_task(cfg.task)
    exs = task.examples("train", 4, 0)
    base = put_global(model.params, replicated(mesh))
    state = put_global(es_init(model.params, jax.random.key(1), cfg.es), replicated(mesh))
    es_iter = make_es_iteration(model.cfg, model.tokenizer, task, cfg.es, 4, 4, mesh, base_params=base)
    for t in range(2):
        state, m = es_iter(state, exs, jax.random.key(10 + t))
    gstate = put_global(grpo_init(model.params, jax.random.key(3), cfg.grpo), replicated(mesh))
    grpo_iter = make_grpo_iteration(model.cfg, model.tokenizer, task, cfg.grpo, 4, None, mesh)
    gstate, gm = grpo_iter(gstate, exs[:2])
    flat = {f"es/{i}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(state.params))}
    flat.update({f"grpo/{i}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(gstate.params))})
    flat.update({f"base/{i}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(model.params))})
    np.savez(os.path.join(out, f"{jax.process_index()}.npz"), **flat)
    print(f"process {jax.process_index()}/{jax.process_count()} devices {jax.device_count()} "
          f"es reward {m['reward_mean']:.3f} grpo loss {gm['loss']:.4f}")


if __name__ == "__main__":
    main(sys.argv[1])
