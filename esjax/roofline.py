"""What a decode step reads and computes, and what a device makes of it: the roofline the benchmarks
compare against (``experiments.bench_accel``) and the step cost the EOS-compaction choice predicts with
(:mod:`esjax.compaction`).

One decode step of ``rows`` rows whose attention reads S cache slots (compute dtype of s bytes; |θ|
parameters, L layers, K key/value heads, H query heads of Dh)::

    bytes = c · |θ| · s  +  rows · S · 2·L·K·Dh·s       (c weight copies: 1, or a full-rank chunk's members;
                                                          then each row's KV cache)
    FLOPs = rows · (2·|θ|  +  4·L·H·Dh·S)               (the matmuls, the head included; attention's two dots)

The roofline takes max(bytes / bandwidth, FLOPs / peak). :class:`StepCost` is the linear form the
compaction choice needs — what a step costs for its weights, per row and per cached slot of a row:
``c · weights + rows · (row + S · slot)`` with weights = |θ|·s / bandwidth, row = 2·|θ| / peak and slot =
(2·L·K·Dh·s / bandwidth + 4·L·H·Dh / peak). It charges a step its weight read even where a roofline would hide
it under the FLOPs: decode steps on GPUs run far from their roofline (0.38x at 128 rows of Qwen2.5-1.5B on
an H100, docs/gpu.md §6), so a first-order model is what it can be; the device check compares its
predictions with measured compaction (``experiments.bench_compaction``).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import numpy as np

# (bf16 dense peak FLOP/s, memory bytes/s) by a substring of jax's device_kind (vendor data sheets)
PEAKS = {"H200": (989e12, 4.8e12), "H100": (989e12, 3.35e12), "A100": (312e12, 2.0e12), "L4": (121e12, 0.3e12),
         "TPU v6": (918e12, 1.64e12), "TPU v5p": (459e12, 2.76e12), "TPU v5": (197e12, 0.82e12),
         "TPU v4": (275e12, 1.2e12)}

# A CPU's FLOPs per byte of memory traffic, as its decode steps use them (float32): on this project's
# 2-core AMD EPYC a step's weight read costs as much as ≈ 6 rows' step of SmolLM2-135M (the worst-case rows
# of experiments.bench_compaction, docs/gpu.md §9), i.e. 2·peak/bandwidth ≈ 6. Only the ratio matters to
# the compaction choice, so the pair below is in arbitrary units.
CPU_BALANCE = (3.0, 1.0)


def device_peaks(device=None):
    """(device kind, (peak FLOP/s, bytes/s) or None) of ``device`` (default: the first device), from
    :data:`PEAKS`; None for a device the table does not name (a CPU among them)."""
    kind = (device or jax.devices()[0]).device_kind
    for name, peaks in PEAKS.items():
        if name.lower() in kind.lower():
            return kind, peaks
    return kind, None


def cost_peaks(device=None):
    """The peaks a cost model uses on ``device``: :func:`device_peaks`, :data:`CPU_BALANCE` on a CPU, None
    for an accelerator the table does not know."""
    device = device or jax.devices()[0]
    peaks = device_peaks(device)[1]
    return CPU_BALANCE if peaks is None and device.platform == "cpu" else peaks


def kv_slot_bytes(mcfg) -> int:
    """Bytes of one cached slot of one row: keys and values of every layer, in the compute dtype."""
    return 2 * mcfg.num_layers * mcfg.num_kv_heads * mcfg.head_dim * np.dtype(mcfg.dtype).itemsize


def decode_params(mcfg) -> int:
    """Parameters a decode step reads whole and multiplies every row by: all of them but an untied input
    embedding, whose rows are looked up (a tied one is the head's weight)."""
    return mcfg.param_count() - (0 if mcfg.tie_embeddings else mcfg.vocab_size * mcfg.hidden_size)


def step_bytes(mcfg, rows: int, context: float, weight_copies: int = 1) -> float:
    """Bytes one decode step reads at ``rows`` rows and ``context`` cache slots read per row:
    ``weight_copies`` × the weights (full-rank members each read their own) + the KV cache, in the compute
    dtype."""
    return weight_copies * decode_params(mcfg) * np.dtype(mcfg.dtype).itemsize + rows * context * kv_slot_bytes(mcfg)


def step_flops(mcfg, rows: int, context: float) -> float:
    """FLOPs of one decode step at ``rows`` rows and ``context`` cache slots: 2 per parameter and row (the
    head included, an untied input embedding not: :func:`decode_params`) + attention's two dots over the slots."""
    return rows * (2 * decode_params(mcfg) + 4 * mcfg.num_layers * mcfg.num_heads * mcfg.head_dim * context)


class StepCost(NamedTuple):
    """Seconds of a decode step, linear in its rows and cached slots (see the module docstring): a step of
    ``rows`` rows reading ``slots`` slots each, with ``copies`` weight copies, costs
    ``copies · weights + rows · (row + slots · slot)``; ``bandwidth`` prices the cache copies (bytes)."""

    weights: float
    row: float
    slot: float
    bandwidth: float

    def step(self, rows: int, slots: int, copies: int = 1) -> float:
        return copies * self.weights + rows * (self.row + slots * self.slot)


def step_cost(mcfg, peaks) -> Optional[StepCost]:
    """:class:`StepCost` of ``mcfg``'s decode step under ``peaks`` = (FLOP/s, bytes/s); None for None."""
    if peaks is None:
        return None
    flop_peak, bandwidth = peaks
    item = np.dtype(mcfg.dtype).itemsize
    attention = 4 * mcfg.num_layers * mcfg.num_heads * mcfg.head_dim
    n = decode_params(mcfg)
    return StepCost(n * item / bandwidth, 2 * n / flop_peak,
                    kv_slot_bytes(mcfg) / bandwidth + attention / flop_peak, bandwidth)
