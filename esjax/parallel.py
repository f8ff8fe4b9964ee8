"""The one owner of device meshes and multi-host set-up.

Mesh axes: ``pop`` (ES population members) and ``data`` (prompts / GRPO batch). ES shards members over
``pop`` with ``shard_map`` and replicates params: each device regenerates only its own members' noise,
only token ids / scalar rewards leave the devices, and every device applies the identical update.
GRPO shards the batch over ``data`` (jit with NamedSharding; gradients are averaged by XLA).

Multi-host: call :func:`initialize_distributed` first on every host (one process per host, e.g.
``gcloud compute tpus tpu-vm ssh NAME --worker=all --command="python -m experiments.single_task ..."``);
``jax.devices()`` then spans all hosts and the same mesh code runs unchanged.
"""
from __future__ import annotations

import os
from typing import Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

POP, DATA = "pop", "data"


def initialize_distributed(coordinator: Optional[str] = None, num_processes: Optional[int] = None,
                           process_id: Optional[int] = None) -> None:
    """``jax.distributed.initialize``; with no arguments it reads ESJAX_COORDINATOR, ESJAX_NUM_PROCESSES,
    ESJAX_PROCESS_ID, else lets JAX auto-detect (TPU pods, SLURM). No-op for a single process."""
    coordinator = coordinator or os.environ.get("ESJAX_COORDINATOR")
    num_processes = num_processes or (int(os.environ["ESJAX_NUM_PROCESSES"]) if "ESJAX_NUM_PROCESSES" in os.environ else None)
    process_id = process_id if process_id is not None else (
        int(os.environ["ESJAX_PROCESS_ID"]) if "ESJAX_PROCESS_ID" in os.environ else None)
    if coordinator is None and num_processes is None:
        return
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)


def make_mesh(pop: Optional[int] = None, data: int = 1) -> Mesh:
    """A (pop, data) mesh over all devices; ``pop`` defaults to n_devices / data."""
    n = jax.device_count()
    pop = pop or n // data
    if pop * data != n:
        raise ValueError(f"mesh {pop}x{data} does not cover the {n} devices")
    return Mesh(np.asarray(jax.devices()).reshape(pop, data), (POP, DATA))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading axis split over every device of the mesh (GRPO data parallelism)."""
    return NamedSharding(mesh, P((POP, DATA)))


def put_global(tree, sharding: NamedSharding):
    """Host values that are identical on every process → arrays laid out by ``sharding`` over the global
    mesh (``jax.device_put`` alone only reaches this process's devices). Typed PRNG keys included."""
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def put(x):
        if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
            return jax.random.wrap_key_data(put(jax.random.key_data(x)), impl=jax.random.key_impl(x))
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

    return jax.tree.map(put, tree)


def to_host(tree):
    """Global arrays → numpy on every process (gathering shards that live on other hosts)."""
    from jax.experimental import multihost_utils

    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(get, tree)
