"""Orbax save / restore of a run: the learner state pytree (params, optimizer state, key, step) plus a
JSON record (iteration, metrics so far, config). Restoring the newest step and replaying the same data
schedule resumes a run exactly: every random choice is a pure function of (seed, iteration)."""
from __future__ import annotations

import os
from typing import Any, Optional, Tuple

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_saveable(tree):
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _from_saved(restored, template):
    return jax.tree.map(lambda r, t: jax.random.wrap_key_data(r, impl=jax.random.key_impl(t)) if _is_key(t) else r,
                        restored, template)


class RunCheckpointer:
    """``save(step, state, record)``; ``restore(template) -> (step, state, record)`` or None."""

    def __init__(self, directory: str, max_to_keep: int = 2):
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True))

    def save(self, step: int, state, record: dict) -> None:
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(_to_saveable(state)),
                                                        record=ocp.args.JsonSave(record)))
        self.manager.wait_until_finished()

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def restore(self, template) -> Optional[Tuple[int, Any, dict]]:
        step = self.manager.latest_step()
        if step is None:
            return None
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _to_saveable(template))
        out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                 record=ocp.args.JsonRestore()))
        return step, _from_saved(out["state"], template), out["record"]

    def close(self) -> None:
        self.manager.close()


def save_params(path: str, params) -> None:
    """Write a params pytree with orbax (overwrites)."""
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.abspath(path), params, force=True)
        ckptr.wait_until_finished()


def load_params(path: str, template):
    """Read params saved by :func:`save_params` into the structure/dtypes of ``template``."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no saved params at {path}")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(os.path.abspath(path), abstract)
