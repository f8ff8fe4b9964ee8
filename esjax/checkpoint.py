"""Orbax save / restore of a run: the learner state pytree (params, optimizer state, key, step) plus a
JSON record (the metrics so far). Restoring the newest good step and replaying the same data schedule
resumes a run exactly: every random choice is a pure function of (seed, iteration).

Verification. Every saved step ``<dir>/<step>/`` also gets ``esjax_checksum.json``, written after orbax
has finished the step: a SHA-256 over every leaf's tree path, dtype, shape and bytes (tree order) and
over the canonical JSON of the record. :meth:`RunCheckpointer.restore` takes the newest step whose

1. files orbax reads without error (missing manifest, truncated data, garbage metadata fail here),
2. leaves have the template's tree structure, shapes and dtypes,
3. floating leaves are all finite, and
4. checksum file exists and matches what was read (overwritten bytes that still decode fail here);

a step failing any check is skipped, with its reason, for the next older one; newer bad steps are
then deleted so that the run continues from the good one. It logs one line saying which step it used
and why newer ones were skipped, or raises :class:`CheckpointError` saying why no step could be used.
A step without a checksum file (a save interrupted between orbax and the checksum) counts as bad.
"""
from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import os
import shutil
import sys
from typing import Any, Callable, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

CHECKSUM_FILE = "esjax_checksum.json"


class CheckpointError(RuntimeError):
    """No checkpoint of a run directory could be used (each step's reason is in the message)."""


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_saveable(tree):
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _from_saved(restored, template):
    return jax.tree.map(lambda r, t: jax.random.wrap_key_data(r, impl=jax.random.key_impl(t)) if _is_key(t) else r,
                        restored, template)


def _host(x) -> np.ndarray:
    """A leaf as one host numpy array (a replicated multi-process array from its local copy)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if x.sharding.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def tree_digest(tree, record: Optional[dict] = None) -> str:
    """SHA-256 (hex) of a saveable pytree's leaves (path, dtype, shape, bytes) and a JSON record."""
    h = hashlib.sha256()
    for path, x in jax.tree_util.tree_leaves_with_path(tree):
        a = np.ascontiguousarray(_host(x))
        h.update(f"{jax.tree_util.keystr(path)}|{a.dtype.str}|{a.shape}\n".encode())
        h.update(a.reshape(-1).view(np.uint8))
    h.update(json.dumps(record, sort_keys=True).encode())
    return h.hexdigest()


def _short(e: BaseException) -> str:
    """One line of an exception: its type and the start of its first line."""
    msg = (str(e).strip().splitlines() or [""])[0].split(" See full TensorStore details")[0]
    return f"{type(e).__name__}: {msg[:160]}{'…' if len(msg) > 160 else ''}"


@contextlib.contextmanager
def _quiet():
    """Silence orbax's own logging of damaged files and the "exception ignored" reports of its abandoned
    read coroutines while a step is tried: the caller reports the reason in one line instead."""
    logger, hook = logging.getLogger("absl"), sys.unraisablehook
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    sys.unraisablehook = lambda unraisable: None
    try:
        yield
    finally:
        gc.collect()
        logger.setLevel(level)
        sys.unraisablehook = hook


def _check_leaves(restored, abstract) -> Optional[str]:
    """Why ``restored`` does not fit ``abstract`` (structure, shape, dtype) or holds non-finite floats."""
    got, want = jax.tree_util.tree_structure(restored), jax.tree_util.tree_structure(abstract)
    if got != want:
        return f"tree structure differs from the run's state ({got.num_leaves} vs {want.num_leaves} leaves)"
    for (path, r), a in zip(jax.tree_util.tree_leaves_with_path(restored), jax.tree.leaves(abstract)):
        name = jax.tree_util.keystr(path)
        if tuple(r.shape) != tuple(a.shape) or r.dtype != a.dtype:
            return f"leaf {name} is {r.dtype}{list(r.shape)}, the run's state needs {a.dtype}{list(a.shape)}"
        if jnp.issubdtype(r.dtype, jnp.floating) and not bool(jnp.isfinite(r).all()):
            return f"leaf {name} holds non-finite values (NaN/inf)"
    return None


class RunCheckpointer:
    """``save(step, state, record)``; ``restore(template) -> (step, state, record)`` or None (no step
    saved); ``keep_latest_only()`` after a finished run. See the module docstring for verification."""

    def __init__(self, directory: str, max_to_keep: int = 2):
        self.directory = os.path.abspath(directory)
        with _quiet():
            self.manager = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True))

    def _step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def save(self, step: int, state, record: dict) -> None:
        saveable = _to_saveable(state)
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(saveable),
                                                        record=ocp.args.JsonSave(record)))
        self.manager.wait_until_finished()
        digest = tree_digest(saveable, record)
        if jax.process_index() == 0:
            path = os.path.join(self._step_dir(step), CHECKSUM_FILE)
            with open(path + ".tmp", "w") as f:
                json.dump({"step": step, "sha256": digest}, f)
            os.replace(path + ".tmp", path)

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def all_steps(self) -> List[int]:
        return sorted(self.manager.all_steps())

    def _try(self, step: int, abstract) -> Tuple[Any, Optional[str]]:
        """(restored state and record, None) or (None, why step ``step`` is unusable)."""
        try:
            with open(os.path.join(self._step_dir(step), CHECKSUM_FILE)) as f:
                expected = json.load(f)["sha256"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            return None, f"no readable {CHECKSUM_FILE} ({_short(e)})"
        try:
            with _quiet():
                out = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), record=ocp.args.JsonRestore()))
        except Exception as e:  # orbax/tensorstore raise many types for damaged files
            return None, f"orbax could not read it ({_short(e)})"
        why = _check_leaves(out["state"], abstract)
        if why is None and tree_digest(out["state"], out["record"]) != expected:
            why = "checksum mismatch (the files changed after saving)"
        return (None, why) if why else ((out["state"], out["record"]), None)

    def restore(self, template, log: Optional[Callable[[str], None]] = print) -> Optional[Tuple[int, Any, dict]]:
        """The newest verified step as (step, state shaped like ``template``, record); None if no step
        was ever saved. Raises :class:`CheckpointError` if steps exist but none passes verification."""
        with _quiet():
            self.manager.reload()
            steps = sorted(self.manager.all_steps(), reverse=True)
        if not steps:
            return None
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _to_saveable(template))
        skipped = []
        for step in steps:
            got, why = self._try(step, abstract)
            if got is None:
                skipped.append(f"step {step}: {why}")
                continue
            for bad in steps[:len(skipped)]:  # newer, unusable: remove so the run continues from ``step``
                self._delete(bad)
            if log is not None:
                note = f" (skipped and deleted {'; '.join(skipped)})" if skipped else ""
                log(f"checkpoint: restored verified step {step} from {self.directory}{note}")
            state, record = got
            return step, _from_saved(state, template), record
        raise CheckpointError(f"no usable checkpoint in {self.directory}: {'; '.join(skipped)}. Delete that folder "
                              f"to start the run over (or use another --out folder)")

    def _delete(self, step: int) -> None:
        try:
            self.manager.delete(step)
        except Exception:  # damaged metadata can upset orbax's own delete
            shutil.rmtree(self._step_dir(step), ignore_errors=True)
            self.manager.reload()

    def keep_latest_only(self) -> None:
        """Delete every step but the newest (a finished run keeps one: enough to extend or re-summarise it)."""
        steps = self.all_steps()
        for step in steps[:-1]:
            self._delete(step)

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
