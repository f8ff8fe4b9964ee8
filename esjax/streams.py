"""Named RNG streams: the ``jax.random.fold_in`` constants that keep a run's random streams apart.

A run's root key is ``jax.random.key(seed)`` (:mod:`esjax.runs`); each consumer folds in its stream
number once, then an index where it needs one per step (iteration, optimizer step, member, chunk)::

    ES noise       fold_in(root, ES_NOISE)                       the ES state's key: member n of
                                                                 iteration t draws from fold_in(fold_in(·, t), n)
    ES sampling    fold_in(fold_in(root, ES_SAMPLING), t)        sampled members' decoding at iteration t
    GRPO           fold_in(root, GRPO)                           the GRPO state's key: step s samples
                                                                 with fold_in(·, s)
    direction      fold_in(probe_key, RANDOM_DIRECTION)          the report's random-direction probe, from
                                                                 the drift probes' key(seed)

Evaluation is greedy and takes ``jax.random.key(EVALUATION)`` (its key is never drawn from). Data order
is not a key stream: batches and splits come from ``random.Random`` seeded by strings
(:func:`esjax.runs.batch_indices`, each task's ``examples``).

The numbers are part of every recorded result: changing one changes every run drawn from it.
"""
from __future__ import annotations

ES_NOISE = 1
ES_SAMPLING = 2
GRPO = 3
RANDOM_DIRECTION = 99
EVALUATION = 0

STREAMS = {"es_noise": ES_NOISE, "es_sampling": ES_SAMPLING, "grpo": GRPO, "random_direction": RANDOM_DIRECTION}
