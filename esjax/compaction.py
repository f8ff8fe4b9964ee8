"""How far a greedy generation compacts its rows (EOS compaction, :func:`esjax.sampling.generate`'s
``compaction``): the memory cap, and the choice a run makes per call from the previous call's lengths.

At each of the first h cache-block boundaries ``ends[k]`` (:func:`esjax.sampling.decode_segments`) the rows
still running move to the front and the rest of the generation runs on the halves of the batch that hold
one; each half's loop stops at its own last row. Whether that pays depends on the rows' lengths and the
device: when more than half the rows still run, both halves run, and each step then reads the weights
twice. So a run predicts the cost of each h' ≤ h on the previous call's lengths (:func:`compaction_cost`,
a replay of ``generate``'s loops under the step cost of :mod:`esjax.roofline`) and takes the cheapest
(:func:`compaction_choice`); on an accelerator the cost model does not know it keeps to the conservative
rule, :func:`compaction_fits` (never read the weights more often than the uncompacted loop).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from esjax.roofline import StepCost, cost_peaks, kv_slot_bytes, step_cost

# a compacting h' must beat h' = 0 by this fraction of the predicted cost: each h' a run uses is one more
# compiled program, and the cost model is first-order
MARGIN = 0.05


def compaction_cap(rows: int, prompt_len: int, ends: Sequence[int], halvings: int) -> int:
    """The most halvings h' ≤ ``halvings`` whose cache peak stays within the uncompacted loop's, rows ×
    (``prompt_len`` + M) slots: a compacting level holds its rows' cache at its boundary while its half
    decodes, so the peak is Σ_{k<h'} ⌈rows/2^k⌉·(P + ends[k]) + ⌈rows/2^h'⌉·(P + M) — what
    :func:`esjax.es.population.row_bytes` budgets for is never exceeded. With blocks of 256 over 1,024
    tokens, h' = 2 holds for prompts up to 341 tokens, h' = 1 up to 512."""
    full = rows * (prompt_len + ends[-1])
    for h in range(min(halvings, len(ends) - 1), 0, -1):
        held = sum(-(-rows // 2 ** k) * (prompt_len + ends[k]) for k in range(h))
        if held + -(-rows // 2 ** h) * (prompt_len + ends[-1]) <= full:
            return h
    return 0


def compaction_fits(lengths, ends: Sequence[int], halvings: int) -> int:
    """The most halvings h' ≤ ``halvings`` under which a generation whose rows end at ``lengths`` (tokens
    per row; (rows,) or (instances, rows): vmapped members, their longest row count deciding) runs one
    half at every level: at each of the first h' boundaries ``ends[k]``, the rows still running (length >
    ends[k]) fit in ⌈rows / 2^(k+1)⌉. With such an h' compaction only removes row-steps; a level that
    needs both halves re-reads the weights for them. The conservative choice (no cost model needed)."""
    lengths = np.asarray(lengths).reshape(-1, np.shape(lengths)[-1])
    rows, fits = lengths.shape[1], 0
    for k, end in enumerate(ends[:-1][:halvings]):
        if (lengths > end).sum(1).max() > -(-rows // 2 ** (k + 1)):
            break
        fits = k + 1
    return fits


def compaction_cost(lengths, ends: Sequence[int], halvings: int, prompt_len: int, cost: StepCost,
                    kv_slot: float, steps_per_loop: int = 1, weight_copies: int = 1) -> float:
    """Predicted seconds of the decode loops of a generation whose rows end at ``lengths`` ((rows,), or
    (instances, rows): one vmapped call, e.g. a chunk of ES members, whose loops run until every
    instance's rows stopped) with ``halvings`` compactions: ``generate``'s loops replayed step for step.
    A loop over b rows per instance in the segment ending at e runs whole iterations of ``steps_per_loop``
    steps while a row runs (a row of length ℓ runs ℓ steps) and each step costs ``cost.step(instances · b,
    P + e, weight_copies)``; the cache grown between segments and the halves gathered at a compacting
    boundary cost their bytes (``kv_slot`` bytes per slot and row) read and written at ``cost.bandwidth``.
    The prefill is the same for every h and left out."""
    lengths = np.asarray(lengths).reshape(-1, np.shape(lengths)[-1])
    n, k = lengths.shape[0], steps_per_loop
    copy = lambda rows, slots: 2 * n * rows * slots * kv_slot / cost.bandwidth  # noqa: E731  (read + write)

    def decode(ls, i, t, h, compacted=False):  # ls: (n, b) lengths of the rows in this loop
        b = ls.shape[1]
        if i and h and not compacted and b > 1:
            return halves(ls, i, t, h)
        total = copy(b, prompt_len + ends[i - 1]) if i else 0.0  # the cache grown to this segment's size
        longest = int(ls.max(initial=0))
        if longest > t and t < ends[i]:
            t_end = t + k * -(-(min(ends[i], longest) - t) // k)
            total += (t_end - t) * cost.step(n * b, prompt_len + ends[i], weight_copies)
            t = t_end
        return total + (decode(ls, i + 1, t, h) if i + 1 < len(ends) else 0.0)

    def halves(ls, i, t, h):
        b = ls.shape[1]
        half = -(-b // 2)
        live = ls > t
        order = np.argsort(~live, axis=1, kind="stable")  # running rows first
        ls = np.concatenate([np.take_along_axis(ls, order, 1), np.zeros((n, 2 * half - b), ls.dtype)], 1)
        trips = -(-int(live.sum(1).max()) // half)
        return sum(copy(half, prompt_len + ends[i - 1]) + decode(ls[:, j * half:(j + 1) * half], i, t, h - 1, True)
                   for j in range(trips))

    return decode(lengths, 0, 0, halvings)


def compaction_choice(previous_lengths, rows: int, prompt_len: int, cfg, max_new_tokens: int,
                      halvings: Optional[int] = None, instances: int = 1, weight_copies: int = 1,
                      peaks="device") -> int:
    """The compaction h' a run's next greedy generation of ``rows`` × ``prompt_len`` prompts and
    ``max_new_tokens`` under ``cfg``'s decode settings uses, at most ``halvings`` (None: the config's
    ``decode_compaction``) and within the memory cap (:func:`compaction_cap`); 0 without previous lengths
    (None: a run's first call).

    ``previous_lengths`` ((rows,) or (members, rows)) stand in for the next call's: vmapped in calls of
    ``instances`` members each (an ES chunk; the last padded with copies of its last member, as
    :func:`esjax.es.population.balanced_chunks` pads), each step reading ``weight_copies`` weight copies
    (full-rank members: their chunk's). With a cost model for the device (``peaks`` = (FLOP/s, bytes/s);
    "device": :func:`esjax.roofline.cost_peaks` of the default device) h' is the one of least predicted cost
    (:func:`compaction_cost`), if it beats h' = 0 by :data:`MARGIN`; without one (an accelerator
    :data:`esjax.roofline.PEAKS` does not name), the conservative :func:`compaction_fits`."""
    from esjax.sampling import decode_segments

    if previous_lengths is None:
        return 0
    ends = decode_segments(max_new_tokens, cfg.decode_cache_block, cfg.decode_steps_per_loop)
    halvings = cfg.decode_compaction if halvings is None else halvings
    cap = compaction_cap(rows, prompt_len, ends, halvings)
    cost = step_cost(cfg, cost_peaks() if isinstance(peaks, str) else peaks)
    if not cap or cost is None:
        return compaction_fits(previous_lengths, ends, cap)
    lengths = np.asarray(previous_lengths).reshape(-1, np.shape(previous_lengths)[-1])
    calls = -(-lengths.shape[0] // instances)
    lengths = np.concatenate([lengths, np.repeat(lengths[-1:], calls * instances - lengths.shape[0], 0)])
    kv_slot = kv_slot_bytes(cfg)
    predicted = [sum(compaction_cost(lengths[c * instances:(c + 1) * instances], ends, h, prompt_len, cost,
                                     kv_slot, cfg.decode_steps_per_loop, weight_copies)
                     for c in range(calls)) for h in range(cap + 1)]
    best = int(np.argmin(predicted))
    return best if predicted[best] <= (1 - MARGIN) * predicted[0] else 0
