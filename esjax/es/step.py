"""The ES update: a pure, jit-compiled ``es_update(state, fitness) -> (state, metrics)``.

Member n of iteration t is scored at θ + σ·s_n·E_n (E_n from :mod:`esjax.es.noise`, s_n = ±1 with
antithetic pairs, else +1). Given fitness f (higher is better) and shaped weights z = shape(f):

    g_t = (1/N) Σ_n z_n s_n E_n          (noise regenerated from the seeds, never stored)
    θ_{t+1} = θ_t + α g_t                (optimizer="sgd": exactly Qiu et al. Alg. 2)

Scaling convention (references disagree, docs/protocols.md#a1): the textbook 1/σ is folded into α, there is
no √N (unlike EGGROLL) and no weight decay. ``optimizer="adam"`` feeds −g to ``optax.adam(α)`` instead.
The full-rank sum regenerates one member at a time (memory = one noise copy); the low-rank sum is
Σ_n z_n s_n A_n B_nᵀ/√r = [A_1…A_N]·diag(z s)·[B_1…B_N]ᵀ/(√r N), one (n_in × N·r)·(N·r × n_out) matmul.
With ``optimizer="sgd"`` each leaf's whole step (gradient, θ + α g, anchored decay, Σ u²) is one program
compiled once per leaf shape, so g is never held for the whole model (memory: θ, θ' and one leaf).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from esjax.es.noise import member_key
from esjax.es.schemes import get_scheme
from esjax.es.shaping import SHAPING, shape
from esjax.trees import leaf_paths, leaf_selection, module_type, shape_groups  # noqa: F401  (module_type: its old home)


@dataclasses.dataclass(frozen=True)
class ESConfig:
    """Defaults: Qiu et al. 2025 / both seed papers' code (N 30, σ 1e-3, α 5e-4, z-score, no antithetic)."""

    population_size: int = 30
    sigma: float = 1e-3
    alpha: float = 5e-4
    antithetic: bool = False
    shaping: str = "zscore"
    noise: str = "full"  # a registered noise scheme (esjax.es.schemes): "full" | "lowrank" | your own
    rank: int = 1  # low-rank noise rank r
    chunk_size: int = 0  # members evaluated together (vmap) per device; 0 = automatic
    correlated_noise: bool = False  # reproduce the seeds' same-seed-per-tensor noise (§A.3)
    param_filter: Optional[str] = None  # regex on leaf paths: perturb/update only these (subset ES)
    optimizer: str = "sgd"  # "sgd" (θ += α g) | "adam"
    member_temperature: float = 0.0  # 0 = greedy member decoding (Qiu, paper 2); paper 1 samples at 1.0
    member_top_p: float = 1.0
    kl_penalty: float = 0.0  # fitness = reward − kl_penalty · KL(member ‖ base) on the batch
    inplace_dtype: Optional[str] = None  # "bfloat16" | "float16": simulate the seeds' in-place 16-bit arithmetic
    awd_lambda: float = 0.0  # anchored weight decay toward the base model (es-awd, arXiv 2605.30148); 0 = off
    awd_norm: str = "l2"  # "l2": θ₀ + (1 − αλ)(θ − θ₀) | "l1": θ₀ + soft-threshold(θ − θ₀, αλ)

    def __post_init__(self):
        if self.population_size < 2:
            raise ValueError(f"population_size must be >= 2, got {self.population_size}")
        if self.antithetic and self.population_size % 2:
            raise ValueError(f"antithetic sampling needs an even population_size, got {self.population_size}")
        for name in ("sigma", "alpha", "member_temperature", "member_top_p", "kl_penalty", "awd_lambda"):
            if not np.isfinite(getattr(self, name)):
                raise ValueError(f"ESConfig.{name} must be a finite number, got {getattr(self, name)}")
        if self.sigma <= 0 or self.alpha <= 0:
            raise ValueError(f"sigma and alpha must be positive, got sigma={self.sigma}, alpha={self.alpha}")
        if self.shaping not in SHAPING:
            raise ValueError(f"unknown shaping {self.shaping!r}; choose from {sorted(SHAPING)}")
        scheme = get_scheme(self.noise)  # an unknown name lists the registered ones
        if self.rank < 1 or self.chunk_size < 0:
            raise ValueError(f"rank must be >= 1 and chunk_size >= 0, got {self.rank}, {self.chunk_size}")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if self.awd_lambda < 0 or self.awd_norm not in ("l2", "l1") or (self.awd_norm == "l2" and self.alpha * self.awd_lambda >= 1):
            raise ValueError(f"awd_lambda must be >= 0 (with alpha·awd_lambda < 1 for l2) and awd_norm 'l2' or 'l1', "
                             f"got awd_lambda={self.awd_lambda}, awd_norm={self.awd_norm!r}, alpha={self.alpha}")
        if self.member_temperature < 0 or not 0 < self.member_top_p <= 1 or self.kl_penalty < 0:
            raise ValueError("member_temperature >= 0, 0 < member_top_p <= 1 and kl_penalty >= 0 are required")
        if self.inplace_dtype is not None and (self.inplace_dtype not in ("bfloat16", "float16")
                                               or not scheme.dense or self.optimizer != "sgd"):
            raise ValueError(f"inplace_dtype must be bfloat16 or float16 and needs a dense noise scheme (full), "
                             f"optimizer='sgd' "
                             f"(the seeds' setting); got {self.inplace_dtype!r}, {self.noise!r}, {self.optimizer!r}")


@flax.struct.dataclass
class ESState:
    params: Any
    opt_state: Any
    key: jax.Array  # base noise key: member noise = f(key, iteration, member)
    iteration: jax.Array


def make_optimizer(cfg: ESConfig):
    return optax.sgd(cfg.alpha) if cfg.optimizer == "sgd" else optax.adam(cfg.alpha)


def init_state(params, key, cfg: ESConfig) -> ESState:
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)  # fp32 master weights
    return ESState(params, make_optimizer(cfg).init(params), key, jnp.zeros((), jnp.int32))


def member_perturbation(params, state_key, iteration, member, cfg: ESConfig, scale=1.0):
    """Noise of one member times ``scale``·s_n, as its scheme defines it: a dense pytree (full) or a delta
    pytree (lowrank)."""
    key, sign = member_key(state_key, iteration, member, cfg.antithetic)
    return get_scheme(cfg.noise).perturbation(params, key, scale * sign, leaf_selection(params, cfg.param_filter), cfg)


@functools.lru_cache(maxsize=None)
def _leaf_gradient_program(cfg: ESConfig):
    """Leaf i of g as a program compiled once per leaf shape (i, key, iteration and weights are inputs)."""
    return jax.jit(functools.partial(get_scheme(cfg.noise).leaf_gradient, cfg=cfg), static_argnames="shape")


def estimate_gradient(params, state_key, iteration, weights, cfg: ESConfig):
    """g = (1/N) Σ_n w_n s_n E_n, regenerating each member's noise. weights: (N,).

    Leaf by leaf, each leaf by a program compiled once per leaf shape: an LLM's ~340 leaves have ~7
    shapes, so the update compiles in seconds whatever the depth and N (one program over all leaves
    compiled 5× slower on CPU, and took 131 s on a GPU for Qwen2.5-1.5B shapes). Called inside ``jit``,
    the leaf programs inline into the caller's. Unselected leaves (``param_filter``) get zeros."""
    program = _leaf_gradient_program(cfg)
    leaves, treedef = jax.tree.flatten(params)
    sel = leaf_selection(params, cfg.param_filter)
    g = [program(state_key, iteration, weights, np.uint32(i), shape=tuple(x.shape)) if s
         else jnp.zeros(x.shape, jnp.float32) for i, (x, s) in enumerate(zip(leaves, sel))]
    return jax.tree.unflatten(treedef, g)


@functools.lru_cache(maxsize=None)
def _leaf_step_program(cfg: ESConfig):
    """Leaf i of the SGD step as one program compiled once per (leaf shape, selected): θ' = θ + α g_i
    (g_i = 0 for a leaf outside ``param_filter``), then anchored decay toward ``anchor`` if configured.
    (θ_i (shape), anchor_i or None, key, iteration, weights (N,), i) → (θ'_i, Σ (θ'_i − θ_i)²)."""
    scheme = get_scheme(cfg.noise)

    def step(p, anchor, key, iteration, weights, i, selected):
        new = p
        if selected:  # optax.sgd(α) on −g, as the whole-tree optimizer step computes it: p + (−α)(−g)
            new = p + (-cfg.alpha) * -scheme.leaf_gradient(key, iteration, weights, i, p.shape, cfg).astype(p.dtype)
        if cfg.awd_lambda:
            new = anchored_decay(new, anchor, cfg.alpha * cfg.awd_lambda, cfg.awd_norm)
        u = (new - p).astype(jnp.float32)
        return new, jnp.sum(u * u)

    return jax.jit(step, static_argnames="selected")


def _sgd_step(state: ESState, fitness, z, anchor, cfg: ESConfig):
    """The SGD update leaf by leaf (:func:`_leaf_step_program`) and its metrics from the leaves' Σ u², u the
    change applied to the fp32 weights (θ' − θ; αg up to fp32 rounding at θ, the decay included)."""
    program = _leaf_step_program(cfg)
    leaves, treedef = jax.tree.flatten(state.params)
    if cfg.awd_lambda and jax.tree.structure(anchor) != treedef:
        raise ValueError(f"the AWD anchor's tree {jax.tree.structure(anchor)} differs from the params' {treedef}")
    anchors = jax.tree.leaves(anchor) if cfg.awd_lambda else [None] * len(leaves)
    sel = leaf_selection(state.params, cfg.param_filter)
    new, ssq = [], []
    for i, (p, a, s) in enumerate(zip(leaves, anchors, sel)):
        if s or cfg.awd_lambda:
            q, e = program(p, a, state.key, state.iteration, z, np.uint32(i), selected=bool(s))
        else:  # neither stepped nor decayed: the leaf is unchanged
            q, e = p, jnp.zeros((), jnp.float32)
        new.append(q)
        ssq.append(e)
    metrics = _metrics_from_ssq(fitness, z, tuple(ssq), update_groups(state.params), cfg)
    return ESState(jax.tree.unflatten(treedef, new), state.opt_state, state.key, state.iteration + 1), metrics


def inplace_update(params, state_key, iteration, z, cfg: ESConfig):
    """The seeds' 16-bit in-place arithmetic (docs/protocols.md#a4), for measuring its effect on norms and
    sparsity. With rd(·) rounding to ``cfg.inplace_dtype`` and the weights held at 16-bit values:
    every member's perturb/restore leaves its rounding residue, θ ← rd(rd(θ + rd(σ s_n ε_n)) − rd(σ s_n ε_n)),
    then the update is N sequential adds θ ← rd(θ + rd((α/N) z_n s_n ε_n)) (paper 1 / Qiu-accelerated).
    The noise is drawn in fp32 and rounded (the seeds draw it directly in 16 bits)."""
    dt = jnp.dtype(cfg.inplace_dtype)
    rd = lambda x: x.astype(dt)  # noqa: E731
    N = z.shape[0]

    def restore(n, p):
        e = member_perturbation(params, state_key, iteration, n, cfg, cfg.sigma)
        return jax.tree.map(lambda w, x: rd(rd(w + rd(x)) - rd(x)), p, e)

    def add(n, p):
        e = member_perturbation(params, state_key, iteration, n, cfg, cfg.alpha / N)
        return jax.tree.map(lambda w, x: rd(w + rd(z[n] * x)), p, e)

    p16 = jax.lax.fori_loop(0, N, restore, jax.tree.map(rd, params))
    return jax.tree.map(lambda w: w.astype(jnp.float32), jax.lax.fori_loop(0, N, add, p16))


def es_update(state: ESState, fitness, cfg: ESConfig, anchor=None):
    """One ES step from the population's fitness (N,) (higher = better) → (new state, metrics). Pure.

    ``anchor``: the base model θ₀ (params pytree), needed when ``cfg.awd_lambda`` > 0: after the step the
    weights are pulled toward it (:func:`anchored_decay`). Called directly it runs as a few small compiled
    programs — shaping; with SGD one whole-step program per leaf shape (:func:`_leaf_step_program`) and the
    metrics from the leaves' Σu²; with Adam the per-leaf-shape gradient programs of
    :func:`estimate_gradient` and the optimizer step — which compile in seconds at LLM scale.
    ``jax.jit(partial(es_update, cfg=cfg))`` gives the same result as one program, but inlines every leaf's
    call and compiles far slower on a large model (Qwen2.5-1.5B shapes: 43–98 s on CPU): call it unjitted."""
    fitness = jnp.asarray(fitness, jnp.float32)
    if fitness.shape != (cfg.population_size,):
        raise ValueError(f"fitness has shape {fitness.shape}, expected ({cfg.population_size},)")
    if cfg.awd_lambda and anchor is None:
        raise ValueError("ESConfig.awd_lambda > 0 needs the anchor: es_update(state, fitness, cfg, anchor=base_params)")
    if cfg.inplace_dtype is not None:
        return _inplace_step(state, fitness, anchor, cfg)
    z = _shaped(fitness, cfg)
    if cfg.optimizer == "sgd":
        return _sgd_step(state, fitness, z, anchor, cfg)
    g = estimate_gradient(state.params, state.key, state.iteration, z, cfg)
    return _apply_gradient(state, g, fitness, z, anchor, cfg)


def anchored_decay(params, anchor, rate, norm: str = "l2"):
    """Anchored weight decay (es-awd, arXiv 2605.30148) with rate = αλ, leaf by leaf, Δ = θ − θ₀:

        l2:  θ ← θ₀ + (1 − αλ) Δ                      (the random walk becomes an Ornstein–Uhlenbeck process)
        l1:  θ ← θ₀ + sign(Δ) · max(|Δ| − αλ, 0)      (soft threshold: small drifts snap back to θ₀)

    Leaves that never moved (outside ``param_filter``) stay exactly θ₀."""
    def one(p, a):
        d = p - a.astype(p.dtype)
        if norm == "l2":
            return a.astype(p.dtype) + (1 - rate) * d
        return a.astype(p.dtype) + jnp.sign(d) * jnp.maximum(jnp.abs(d) - rate, 0)
    return jax.tree.map(one, params, anchor)


def lower_es_update(state: ESState, cfg: ESConfig) -> dict:
    """{program name: ``jax.stages.Lowered``} of the programs :func:`es_update` runs (shaping; with SGD one
    step program per distinct leaf shape and a metrics program, otherwise one gradient program per leaf
    shape and the optimizer step), for abstract ``state`` leaves (``jax.ShapeDtypeStruct`` allowed):
    ahead-of-time compilation that allocates no weights."""
    f = jax.ShapeDtypeStruct((cfg.population_size,), jnp.float32)
    u32 = jax.ShapeDtypeStruct((), jnp.uint32)
    out = {"shaping": _shaped.lower(f, cfg)}
    if cfg.inplace_dtype is not None:
        return {**out, "in-place update": _inplace_step.lower(state, f, state.params if cfg.awd_lambda else None, cfg)}
    sel = leaf_selection(state.params, cfg.param_filter)
    if cfg.optimizer == "sgd":
        step = _leaf_step_program(cfg)
        kinds = sorted({(tuple(x.shape), jnp.dtype(x.dtype).name, bool(s))
                        for x, s in zip(jax.tree.leaves(state.params), sel) if s or cfg.awd_lambda})
        for shape, dtype, s in kinds:
            leaf = jax.ShapeDtypeStruct(shape, dtype)
            out[f"step {shape}" + ("" if s else " (decay only)")] = step.lower(
                leaf, leaf if cfg.awd_lambda else None, state.key, state.iteration, f, u32, selected=s)
        scalar = jax.ShapeDtypeStruct((), jnp.float32)
        out["metrics"] = _metrics_from_ssq.lower(f, f, (scalar,) * len(sel), update_groups(state.params), cfg)
        return out
    program = _leaf_gradient_program(cfg)
    for shape in shape_groups(state.params, cfg.param_filter):
        out[f"gradient {shape}"] = program.lower(state.key, state.iteration, f, u32, shape=shape)
    g = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32), state.params)
    out["optimizer step"] = _apply_gradient.lower(state, g, f, f, state.params if cfg.awd_lambda else None, cfg)
    return out


@functools.partial(jax.jit, static_argnames="cfg")
def _shaped(fitness, cfg: ESConfig):
    return shape(cfg.shaping, fitness)


@functools.partial(jax.jit, static_argnames="cfg")
def _apply_gradient(state: ESState, g, fitness, z, anchor, cfg: ESConfig):
    """θ ← optimizer step along g (ascent), then anchored decay if configured, with the iteration's metrics."""
    updates, opt_state = make_optimizer(cfg).update(jax.tree.map(jnp.negative, g), state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if cfg.awd_lambda:
        params = anchored_decay(params, anchor, cfg.alpha * cfg.awd_lambda, cfg.awd_norm)
        updates = jax.tree.map(jnp.subtract, params, state.params)
    return ESState(params, opt_state, state.key, state.iteration + 1), _metrics(fitness, z, updates, cfg)


@functools.partial(jax.jit, static_argnames="cfg")
def _inplace_step(state: ESState, fitness, anchor, cfg: ESConfig):
    z = shape(cfg.shaping, fitness)
    params = inplace_update(state.params, state.key, state.iteration, z, cfg)
    if cfg.awd_lambda:
        params = anchored_decay(params, anchor, cfg.alpha * cfg.awd_lambda, cfg.awd_norm)
    updates = jax.tree.map(jnp.subtract, params, state.params)
    return ESState(params, state.opt_state, state.key, state.iteration + 1), _metrics(fitness, z, updates, cfg)


def _fitness_metrics(fitness, z, cfg: ESConfig) -> dict:
    return {"fitness_mean": fitness.mean(), "fitness_std": fitness.std(), "fitness_max": fitness.max(),
            "fitness_min": fitness.min(), "noise_energy_factor": noise_energy_factor(z, cfg.antithetic)}


def _metrics(fitness, z, updates, cfg: ESConfig) -> dict:
    return {**_fitness_metrics(fitness, z, cfg), "update_norm": optax.tree.norm(updates), **update_rms_by_module(updates)}


def noise_energy_factor(z, antithetic: bool):
    """f with E‖g‖² = f · d / N over the noise, given the shaped weights z (N,).

    Independent members: f = Σ z² / N (= 1 for z-scores, 0 if all fitness is equal). Antithetic pairs
    share ε with opposite signs, so g = (1/N) Σ_k (z_2k − z_2k+1) ε_k and f = Σ_k (z_2k − z_2k+1)² / N ∈ [0, 2]."""
    if antithetic:
        return jnp.sum((z[0::2] - z[1::2]) ** 2) / z.shape[0]
    return jnp.sum(z ** 2) / z.shape[0]


def update_groups(params) -> tuple:
    """The static grouping the update metrics need: ((module type, leaf size), …) per leaf, in leaf order."""
    return tuple((module_type(path), int(np.prod(x.shape))) for path, x in zip(leaf_paths(params), jax.tree.leaves(params)))


def update_norm_metrics(ssq, groups) -> dict:
    """From per-leaf Σu² (leaf order) and :func:`update_groups`: ``update_norm`` = √(Σ_leaves Σu²) and the
    RMS per module type, ``rms/<type>`` = √(Σ_{leaves of type} Σu² / their size): {'rms/q': …, 'rms/mlp': …}."""
    sums, counts = {}, {}
    for e, (t, size) in zip(ssq, groups):
        sums[t] = sums.get(t, 0.0) + e
        counts[t] = counts.get(t, 0) + size
    return {"update_norm": jnp.sqrt(sum(ssq)), **{f"rms/{t}": jnp.sqrt(sums[t] / counts[t]) for t in sums}}


def update_rms_by_module(updates) -> dict:
    """RMS of the update per module type: {'rms/q': …, 'rms/mlp': …}."""
    ssq = [jnp.sum(jnp.square(u.astype(jnp.float32))) for u in jax.tree.leaves(updates)]
    out = update_norm_metrics(ssq, update_groups(updates))
    del out["update_norm"]
    return out


@functools.partial(jax.jit, static_argnames=("groups", "cfg"))
def _metrics_from_ssq(fitness, z, ssq: tuple, groups: tuple, cfg: ESConfig) -> dict:
    """:func:`_metrics` from the per-leaf Σu² the leaf step programs return (the update is never a tree)."""
    return {**_fitness_metrics(fitness, z, cfg), **update_norm_metrics(ssq, groups)}
