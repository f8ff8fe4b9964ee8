"""Population evaluation: every member's fitness inputs, as ``vmap`` over member ids in chunks.

``evaluate(params, delta, member, *args)`` is any pure function of one member's model. The noise scheme
(:mod:`esjax.es.schemes`) says what a member's model is: dense schemes (full-rank) give ``params =
θ + σ s_n E_n`` formed once per member directly in the compute dtype and ``delta = None``; delta schemes
(low-rank) give one shared compute-dtype copy of θ, cast once per call, and a ``delta`` (σ A_n B_nᵀ/√r)
that the decoder applies inside its matmuls. Either way the decoder's loop reads weights in the compute
dtype, never the fp32 master. :func:`population_fn` maps members with :func:`map_members` (vmap named
``MEMBER_AXIS`` within a chunk, sequential across chunks: an evaluator may reduce over the chunk's
members, as :func:`lm_evaluator`'s decode loop does to stop once for all of them) and, given a mesh, shards the member ids over the ``pop``
axis with ``shard_map`` (params replicated; each device draws only its own members' noise).
:func:`auto_chunk_size` sizes the chunk from the device's free memory where the backend reports it.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from esjax.es.noise import member_key
from esjax.es.schemes import get_scheme
from esjax.es.step import ESConfig, ESState, member_perturbation
from esjax.models.precision import cast_params
from esjax.trees import leaf_selection, shape_groups
from esjax.parallel import POP
from esjax.roofline import kv_slot_bytes
from esjax.sampling import SamplingConfig, generate

F32 = jnp.dtype(jnp.float32)
MEMBER_AXIS = "members"  # the vmap axis name members run under (see map_members)


def balanced_chunks(n: int, chunk: int) -> tuple:
    """(k, size): ``n`` members in k = ⌈n / chunk⌉ chunks of one size, ⌈n / k⌉ ≤ ``chunk``, the last chunk
    padded with k·size − n < k repeated members. One chunk shape means one compiled program: a smaller
    remainder chunk compiled the whole decoder a second time (30 members in chunks of 4: 8 × 4, not 7 × 4 + 2).
    The fewest chunks, not an exact divisor (10 × 3): a low-rank chunk's decode reads the shared weights
    whatever its size, so on an accelerator chunks cost more than padded members (≤ (k − 1)/n extra work)."""
    k = -(-n // max(1, min(chunk, n)))
    return k, -(-n // k)


def map_members(fn: Callable, xs, chunk: int):
    """``lax.map(fn, xs, batch_size=chunk)`` with the vmap axis named ``MEMBER_AXIS``: ``fn`` sees one
    member and may use collectives over the members of its chunk. xs: pytree with leading axis M →
    outputs stacked on a leading axis M. The chunks all have one size (:func:`balanced_chunks`; the last
    is padded with copies of the last member, whose outputs are dropped), so ``fn`` is traced once.
    Collectives over ``MEMBER_AXIS`` see those copies too (a ``pmin`` of done flags is unaffected)."""
    n = jax.tree.leaves(xs)[0].shape[0]
    k, size = balanced_chunks(n, chunk)
    pad = lambda x: jnp.concatenate([x, jnp.repeat(x[-1:], k * size - n, 0)]) if k * size > n else x  # noqa: E731
    head = jax.tree.map(lambda x: pad(x).reshape(k, size, *x.shape[1:]), xs)
    out = jax.lax.map(jax.vmap(fn, axis_name=MEMBER_AXIS), head)
    return jax.tree.map(lambda y: y.reshape(k * size, *y.shape[2:])[:n], out)


def member_output(evaluate: Callable, state: ESState, member, cfg: ESConfig, *args, dtype=F32, shared=None):
    """``evaluate`` on member ``member``'s model, in compute ``dtype``; ``shared``: the scheme's
    ``shared_params`` when the caller already has them. Runs under a ``MEMBER_AXIS`` vmap of one member
    when called outside :func:`map_members` (evaluators may reduce over that axis)."""
    scheme = get_scheme(cfg.noise)
    shared = scheme.shared_params(state.params, dtype) if shared is None else shared

    def one(m):
        params, delta = scheme.member(shared, member_perturbation(state.params, state.key, state.iteration, m, cfg,
                                                                  cfg.sigma), dtype)
        return evaluate(params, delta, m, *args)

    if _under_member_axis():
        return one(member)
    return jax.tree.map(lambda y: y[0], jax.vmap(one, axis_name=MEMBER_AXIS)(jnp.asarray(member)[None]))


def _under_member_axis() -> bool:
    """Whether ``MEMBER_AXIS`` is bound (we are inside :func:`map_members`)."""
    try:
        jax.lax.axis_index(MEMBER_AXIS)
    except NameError:
        return False
    return True


def evaluate_population(evaluate: Callable, state: ESState, members, cfg: ESConfig, chunk: int, *args, dtype=F32):
    """Outputs of ``evaluate`` for each member id in ``members`` (M,), stacked on a leading axis."""
    shared = get_scheme(cfg.noise).shared_params(state.params, dtype)
    return map_members(lambda m: member_output(evaluate, state, m, cfg, *args, dtype=dtype, shared=shared), members,
                       chunk)


def _compiled(fn, mesh: Optional[Mesh], in_specs: tuple):
    """jit(fn), or with a mesh jit(shard_map(fn)) with outputs split over ``pop``."""
    if mesh is None:
        return jax.jit(fn)
    return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=P(POP), check_vma=False))


def population_fn(evaluate: Callable, cfg: ESConfig, chunk: int, mesh: Optional[Mesh] = None,
                  arg_specs: tuple = (), dtype=F32):
    """``f(state, members, *args)``: outputs of ``evaluate`` per member id, compiled, members' models in
    compute ``dtype``; with a mesh, members are split over ``pop`` (len(members) must be a multiple of the
    pop axis size) and args use ``arg_specs`` (default replicated).

    Dense members are formed chunk by chunk by programs of their own, one per leaf shape
    (:func:`member_params_fn`), and then decoded by one program. Delta members (a few MB)
    are drawn by programs of their own (:func:`member_noise_fn`, one per leaf shape) and passed in with the
    shared compute-dtype weights: one program holding both the noise generator and the model compiled 2×
    slower (SmolLM2: 68 s vs 12 + 19 s) and ran no faster."""
    scheme = get_scheme(cfg.noise)
    dtype = jnp.dtype(dtype)
    if scheme.dense:
        return _dense_population_fn(evaluate, cfg, chunk, mesh, arg_specs, dtype)
    draw = member_noise_fn(cfg, mesh)

    @jax.named_scope("population")
    def population(shared, members, groups, *args, layout):  # profiles name the program jit_population
        def one(mg):  # one member: its draws per leaf shape into the params' tree (before its decode loop)
            return evaluate(*scheme.member(shared, draw.unstack(mg[1], layout), dtype), mg[0], *args)
        return map_members(one, (members, groups), chunk)

    compiled = functools.lru_cache(maxsize=None)(  # per number of evaluator args (their default specs) and layout
        lambda n_args, layout: _compiled(functools.partial(population, layout=layout), mesh,
                                         (P(), P(POP), P(POP), *(tuple(arg_specs) or (P(),) * n_args))))

    def f(state, members, *args):
        shared = scheme.shared_params(state.params, dtype)  # cast by its own program: the weights arrive cast
        layout = draw.layout(state.params)
        return compiled(len(args), layout)(shared, members, draw(state, members, layout), *args)

    def lower(state, members, *args) -> dict:
        """{program name: ``jax.stages.Lowered``} of what ``f`` runs, for abstract inputs (``jax.ShapeDtypeStruct``
        leaves allowed: ahead-of-time compilation allocates no weights)."""
        layout = draw.layout(state.params)
        shared = jax.eval_shape(functools.partial(scheme.shared_params, dtype=dtype), state.params)
        groups = jax.eval_shape(functools.partial(draw, layout=layout), state, members)
        return {"cast weights": jax.jit(functools.partial(scheme.shared_params, dtype=dtype)).lower(state.params),
                **draw.lower(state, members),
                "population": compiled(len(args), layout).lower(shared, members, groups, *args)}

    f.lower = lower
    return f


def _dense_population_fn(evaluate: Callable, cfg: ESConfig, chunk: int, mesh: Optional[Mesh], arg_specs: tuple,
                         dtype):
    """Dense members (full-rank): chunk by chunk, the chunk's perturbed leaves θ + σ s_n E_n are formed by
    :func:`member_params_fn` (one program per leaf shape) and the decoder program, compiled once, maps
    ``evaluate`` over them (unperturbed leaves, cast once per call, are shared by every member). Forming
    the ~340 leaves' noise inside the decoder program made it compile for 146 s on an H100 (docs/gpu.md);
    the values are those :func:`member_output` gives (same draws, same fp32 sum and cast). With a mesh each
    chunk holds ``chunk`` members per device, each formed where it runs."""
    form = member_params_fn(cfg, mesh, dtype)
    shards = 1 if mesh is None else mesh.shape[POP]
    compiled = functools.lru_cache(maxsize=None)(_dense_program)

    def chunks(members):
        """Member ids per chunk, each device's part contiguous: (shards, M/shards) sliced by columns into
        chunks of one size (:func:`balanced_chunks`: the last columns padded with the last member)."""
        per = members.reshape(shards, -1)
        k, size = balanced_chunks(per.shape[1], chunk)
        per = jnp.concatenate([per, jnp.repeat(per[:, -1:], k * size - per.shape[1], 1)], 1)
        return [per[:, j * size:(j + 1) * size].reshape(-1) for j in range(k)]

    def program(params, n_args):
        axes = tuple(0 if s else None for s in leaf_selection(params, cfg.param_filter))  # member axis or shared
        return compiled(evaluate, mesh, tuple(arg_specs) or (P(),) * n_args, jax.tree.structure(params), axes)

    def f(state, members, *args):
        shared = cast_params(form.unperturbed(state.params), dtype)  # once per call, shared by every chunk
        outs, run = [], None
        for ids in chunks(members):
            params = form.merge(form(state, ids), shared)
            run = run or program(params, len(args))  # every chunk has the same tree: one lookup per call
            outs.append(run(params, ids, *args))
        # chunk k's rows are (device, member in chunk): back to the order of ``members``, padding dropped
        per = members.shape[0] // shards
        return jax.tree.map(lambda *ys: jnp.concatenate([y.reshape(shards, -1, *y.shape[1:]) for y in ys], 1)[:, :per]
                            .reshape(-1, *ys[0].shape[1:]), *outs)

    def lower(state, members, *args) -> dict:
        """{program name: Lowered} for abstract inputs (``jax.ShapeDtypeStruct`` leaves: no weights
        allocated): the leaf-shape member programs and the decoder program of a full chunk."""
        ids = jax.ShapeDtypeStruct((shards * balanced_chunks(members.shape[0] // shards, chunk)[1],), members.dtype)
        shared = jax.eval_shape(lambda p: cast_params(form.unperturbed(p), dtype), state.params)
        params = form.merge(jax.eval_shape(form, state, ids), shared)
        return {**form.lower(state, ids), "population": program(params, len(args)).lower(params, ids, *args)}

    f.lower = lower
    return f


def _dense_program(evaluate, mesh, arg_specs, treedef, axes):
    """The compiled decoder program of a dense population: vmap of ``evaluate`` (axis ``MEMBER_AXIS``) over
    member ids and the params leaves with a member axis (``axes``: 0, or None for shared leaves)."""
    in_axes = jax.tree.unflatten(treedef, list(axes))

    @jax.named_scope("population")
    def population(params, members, *args):  # profiles name the program jit_population
        return jax.vmap(lambda p, m: evaluate(p, None, m, *args), in_axes=(in_axes, 0),
                        axis_name=MEMBER_AXIS)(params, members)

    specs = jax.tree.unflatten(treedef, [P(POP) if a == 0 else P() for a in axes])
    return _compiled(population, mesh, (specs, P(POP), *arg_specs))


def member_params_fn(cfg: ESConfig, mesh: Optional[Mesh] = None, dtype=F32):
    """``form(state, members)``: dense members' perturbed leaves θ + σ s_n E_n in compute ``dtype``, stacked
    on a leading member axis (``None`` for leaves the parameter filter leaves alone), leaf by leaf with
    one program per leaf shape: the values of :func:`member_output`'s members (same draws, fp32 sum, one
    cast). With a mesh each device forms only its members. ``form.unperturbed(params)``: those other
    leaves (``None`` elsewhere); ``form.merge(formed, shared)``: the two joined into one params tree;
    ``form.lower(state, members)``: {name: Lowered} per leaf shape (AOT)."""
    scheme = get_scheme(cfg.noise)
    dtype = jnp.dtype(dtype)

    @jax.named_scope("member_params")
    def member_params(theta, key, iteration, members, i):
        def one(n):
            k, sign = member_key(key, iteration, n, cfg.antithetic)
            return scheme.member_leaf(theta, scheme.leaf_perturbation(k, i, theta.shape, cfg.sigma * sign, cfg), dtype)
        return jax.vmap(one)(members)

    program = _compiled(member_params, mesh, (P(), P(), P(), P(POP), P()))  # jit: one compilation per leaf shape

    def selected(params):
        leaves, treedef = jax.tree.flatten(params)
        return leaves, treedef, leaf_selection(params, cfg.param_filter)

    def form(state, members):
        leaves, treedef, sel = selected(state.params)
        return jax.tree.unflatten(treedef, [program(x, state.key, state.iteration, members, np.uint32(i)) if s else None
                                            for i, (x, s) in enumerate(zip(leaves, sel))])

    def unperturbed(params):
        leaves, treedef, sel = selected(params)
        return jax.tree.unflatten(treedef, [None if s else x for x, s in zip(leaves, sel)])

    def merge(formed, shared):
        return jax.tree.map(lambda a, b: b if a is None else a, formed, shared, is_leaf=lambda x: x is None)

    def lower(state, members) -> dict:
        leaves, u32 = jax.tree.leaves(state.params), jax.ShapeDtypeStruct((), jnp.uint32)
        return {f"member params {shape}": program.lower(leaves[ids[0]], state.key, state.iteration, members, u32)
                for shape, ids in shape_groups(state.params, cfg.param_filter).items()}

    form.unperturbed, form.merge, form.lower = unperturbed, merge, lower
    return form


def member_noise_fn(cfg: ESConfig, mesh: Optional[Mesh] = None):
    """``draw(state, members)``: the members' scaled perturbations σ s_n E_n, as one array (pytree) per
    distinct leaf shape of shape (M, leaves of that shape, ...), each drawn by one program (vmap over the
    members and the leaf indices; an LLM's ~340 leaves have ~7 shapes); ``draw.unstack(groups,
    draw.layout(params))`` on one member's groups (inside a program) gives the tree
    :func:`esjax.es.step.member_perturbation` gives (``None`` for unselected leaves). One call per leaf
    spent 160 ms of a 680 ms population call on an H100 dispatching ~340 tiny programs while the GPU
    idled; one program over all leaves compiled for 32 s on CPU for Qwen2.5-1.5B shapes, and slicing
    each group into its leaves inside the draw programs tripled their compile time (4 s → 13.5 s): the
    population program slices them, chunk by chunk (sliced once for the whole population, they were
    copied whole: docs/gpu.md §6). With a mesh each device draws only its members.
    ``draw.lower(state, members)``: {name: Lowered} per leaf shape (AOT)."""
    scheme = get_scheme(cfg.noise)

    @jax.named_scope("member_noise")
    def member_noise(key, iteration, members, ids, shape):
        def one(n):  # (leaves, ...) draws of member n
            k, sign = member_key(key, iteration, n, cfg.antithetic)
            return jax.vmap(lambda i: scheme.leaf_perturbation(k, i, shape, cfg.sigma * sign, cfg))(ids)
        return jax.vmap(one)(members)

    program = functools.lru_cache(maxsize=None)(
        lambda shape: _compiled(functools.partial(member_noise, shape=shape), mesh, (P(), P(), P(POP), P())))

    def layout(params) -> tuple:
        """(treedef, ((shape, leaf indices), ...) per distinct selected shape in sorted order, per leaf its
        (group, position) or None): hashable, so the population program is compiled once per layout."""
        treedef = jax.tree.structure(params)
        by_shape = shape_groups(params, cfg.param_filter)
        where = [None] * treedef.num_leaves
        for g, ids in enumerate(by_shape.values()):
            for j, i in enumerate(ids):
                where[i] = (g, j)
        return treedef, tuple((shape, tuple(ids)) for shape, ids in by_shape.items()), tuple(where)

    def draw(state, members, layout=None):
        _, groups, _ = layout or draw.layout(state.params)
        return tuple(program(shape)(state.key, state.iteration, members, np.asarray(ids, np.uint32))
                     for shape, ids in groups)

    def unstack(groups, layout):
        """One member's draws, (leaves of that shape, ...) per shape, as the params' tree."""
        treedef, _, where = layout
        return jax.tree.unflatten(treedef, [None if w is None else jax.tree.map(lambda a: a[w[1]], groups[w[0]])
                                            for w in where])

    def lower(state, members) -> dict:
        return {f"member noise {shape} x{len(ids)}": program(shape).lower(state.key, state.iteration, members,
                                                                        np.asarray(ids, np.uint32))
                for shape, ids in layout(state.params)[1]}

    draw.layout, draw.unstack, draw.lower = layout, unstack, lower
    return draw


def lm_evaluator(model_cfg, max_new_tokens: int, cfg: ESConfig, prefix_len: int = 0, steps_per_loop: Optional[int] = None,
                 cache_block: Optional[int] = None, compaction: Optional[int] = None):
    """``evaluate(params, delta, member, tokens, mask, key) -> Generation`` for one member on a prompt
    batch whose first ``prefix_len`` columns are shared (prefilled once per member); greedy by default,
    sampled members draw from ``fold_in(key, member)``. Run it under :func:`map_members` (or
    :func:`member_output`): its decode loop stops once for all members of a chunk (see
    :func:`esjax.sampling.generate`'s ``member_axis``; ``steps_per_loop`` tokens per loop iteration;
    ``cache_block``: the cache grown in blocks; ``compaction``: rows that stopped dropped at block boundaries;
    None = ``model_cfg``'s ``decode_*`` settings). The members'
    log-probs are recorded only where the fitness reads them (``cfg.kl_penalty`` > 0); otherwise
    ``Generation.logprobs`` is None and the decode step skips its log-softmax over the vocabulary.
    An optional last argument ``row_max_new`` (B,) stops each prompt's rows after their own budget (every
    member alike; benchmarks use it to stand in for EOS on random weights)."""
    sampling = SamplingConfig(cfg.member_temperature, 0, cfg.member_top_p)

    def evaluate(params, delta, member, tokens, mask, key, row_max_new=None):
        return generate(params, model_cfg, tokens, mask, jax.random.fold_in(key, member), max_new_tokens,
                        sampling, delta, prefix_len, row_max_new=row_max_new, member_axis=MEMBER_AXIS,
                        steps_per_loop=steps_per_loop,
                        cache_block=cache_block, logprobs=cfg.kl_penalty > 0, compaction=compaction)

    return evaluate


def member_ids(n: int, shards: int = 1):
    """0..n-1 padded (with repeats of the last id) to a multiple of ``shards``; slice outputs to n."""
    pad = (-n) % shards
    return jnp.concatenate([jnp.arange(n, dtype=jnp.int32), jnp.full((pad,), n - 1, jnp.int32)])


CPU_BUDGET_BYTES = 2e9  # where the backend reports no memory (CPU): the measured default
CPU_MAX_ROWS = 512  # rows (member × prompt sequences) decoded together on CPU
ACCEL_MAX_ROWS = 16384
ACCEL_MEMORY_FRACTION = 0.7


def device_memory_budget(fraction: float = ACCEL_MEMORY_FRACTION) -> Optional[float]:
    """``fraction`` of the first local device's free memory (bytes_limit − bytes_in_use), or None where the
    backend does not report memory (CPU)."""
    stats = jax.local_devices()[0].memory_stats() or {}
    if "bytes_limit" not in stats:
        return None
    return fraction * (stats["bytes_limit"] - stats.get("bytes_in_use", 0))


def row_bytes(model_cfg, prompt_len: int, max_new_tokens: int) -> int:
    """Device memory of one decoded sequence: its KV cache (2·L·K·Dh per slot, P + M slots: a cache grown
    in blocks is grown layer by layer, so its peak is that plus one layer, see
    :func:`esjax.models.decoder.grow_cache`) plus the prefill's MLP activations (3·F per prompt token), in
    the compute dtype, and one float32 vocabulary row."""
    item = np.dtype(model_cfg.dtype).itemsize
    kv = kv_slot_bytes(model_cfg) * (prompt_len + max_new_tokens)
    return kv + item * 3 * model_cfg.intermediate_size * prompt_len + 4 * model_cfg.vocab_size


def auto_chunk_size(model_cfg, cfg: ESConfig, rows_per_member: int, prompt_len: int = 0, max_new_tokens: int = 0,
                    budget_bytes: Optional[float] = None) -> int:
    """Members evaluated at once (vmapped) per device: ``cfg.chunk_size`` if set, else as many as fit.

    On a device that reports its memory: budget = 70 % of free memory less what the population call
    shares (the scheme's ``shared_bytes``: low-rank members' compute-dtype copy of θ), a member costs its
    scheme's ``member_bytes`` plus ``rows_per_member`` × :func:`row_bytes`, at most 16,384 rows at once.
    Elsewhere (CPU): a 2 GB budget for the members' weights and at most 512 rows (measured on 2 cores).
    ``budget_bytes`` replaces the 70 % (or 2 GB) before anything is taken from it."""
    if cfg.chunk_size:
        return cfg.chunk_size
    rows = max(1, rows_per_member)
    scheme = get_scheme(cfg.noise)
    free = device_memory_budget()
    if budget_bytes is None:
        budget_bytes = CPU_BUDGET_BYTES if free is None else free
    per_member = scheme.member_bytes(model_cfg, cfg)
    if free is not None:
        budget_bytes -= scheme.shared_bytes(model_cfg, cfg)
        per_member += rows * row_bytes(model_cfg, prompt_len, max_new_tokens)
    max_rows = CPU_MAX_ROWS if free is None else ACCEL_MAX_ROWS
    return max(1, min(cfg.population_size, int(budget_bytes // per_member), max_rows // rows))
