"""The precision policy, in one place.

* **Master weights: float32.** ES (``es.step.init_state``) and GRPO keep θ, the optimizer state and every
  update in float32 whatever the checkpoint's dtype, so updates far below bf16 resolution (GRPO's, the
  ES random walk's first steps) accumulate instead of rounding away.
* **Compute dtype: ``ModelConfig.compute_dtype``** (float32 by default, the CPU setting; bfloat16 is the
  accelerator setting: ``--set compute_dtype=bfloat16``, i.e. ``RunConfig.compute_dtype``, which
  ``runs.load_run_model`` passes to ``load_model(..., compute_dtype=...)``). Activations, the KV cache and
  the weights a decode loop reads are in it. Whatever generates in a loop gets weights cast **once** before
  the loop (:func:`compute_params`): GRPO rollouts per step, low-rank ES members once per population call
  (shared, also in the decoding layout: :func:`decoding_params`), full-rank ES members once per member (θ + σε summed in float32, then cast),
  and any other caller of :func:`esjax.sampling.generate` (evaluation, drift probes), which casts the
  weights it is given before its prefill and loop (one precision for every generation). The decoder never
  reads float32 weights inside a decode step when the compute dtype is narrower (tested on the lowered
  program). Norm statistics, RoPE, softmax and logits are computed in float32.
* **Matmul precision: JAX's default** (``jax_default_matmul_precision``): exact float32 on CPU, TF32 for
  float32 matmuls on NVIDIA GPUs, bf16 passes on TPU. Tests that compare float32 logits with a reference
  run at ``highest`` (tests/conftest.py), so they hold on every backend.
"""
from __future__ import annotations

import functools

import jax


def cast_params(tree, dtype):
    """``tree`` with every array leaf (LowRank factors included; ``None`` stays ``None``) in ``dtype``: the
    same arrays when they already are, else one cast copy made by its own compiled program (so a generating
    program receives them cast). Traceable: inside ``jit`` the cast inlines."""
    dtype = jax.numpy.dtype(dtype)
    if all(x.dtype == dtype for x in jax.tree.leaves(tree)):
        return tree
    return _cast(tree, dtype)


def decoding_params(params, dtype):
    """What the members of a low-rank ES population share: ``params`` in ``dtype`` (:func:`cast_params`) and
    in the decoder's decoding layout (:func:`esjax.models.decoder.decoding_layout`: [wq | wk | wv] and
    [w_gate | w_up] joined, their cast and join made by one compiled program, once per population call).
    Every other leaf is :func:`cast_params`'s (the same arrays on fp32)."""
    from esjax.models.decoder import joinable_weights

    dtype = jax.numpy.dtype(dtype)
    names = joinable_weights(params)
    if not names:  # no layers to join
        return cast_params(params, dtype)
    parts = [{k: lp[k] for k in names} for lp in params["layers"]]
    rest = cast_params({**params, "layers": [{k: v for k, v in lp.items() if k not in names}
                                             for lp in params["layers"]]}, dtype)
    joined = _cast_and_join({"layers": parts}, dtype)["layers"]
    return {**rest, "layers": [{**lp, **j} for lp, j in zip(rest["layers"], joined)]}


@functools.partial(jax.jit, static_argnames="dtype")
def _cast_and_join(tree, dtype):
    from esjax.models.decoder import decoding_layout

    return decoding_layout(jax.tree.map(lambda x: x.astype(dtype), tree))


def compute_params(params, cfg):
    """``params`` in ``cfg.dtype``, the model's compute dtype (:func:`cast_params`)."""
    return cast_params(params, cfg.dtype)


@functools.partial(jax.jit, static_argnames="dtype")
def _cast(tree, dtype):
    return jax.tree.map(lambda x: x.astype(dtype), tree)
