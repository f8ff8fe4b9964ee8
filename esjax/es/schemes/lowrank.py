"""Low-rank EGGROLL noise: E = A Bᵀ/√r per matrix (A: (n_in, r), B: (n_out, r) ~ N(0, 1)), full Gaussian
noise for vectors. Members share the weights and apply σ s (x A) Bᵀ/√r inside each matmul (a ``delta``);
the update's matrix leaf is Σ_n w_n s_n A_n B_nᵀ / (√r N) = [A_1…A_N] diag(w s) [B_1…B_N]ᵀ / (√r N),
one (n_in × N·r)·(N·r × n_out) matmul."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from esjax.es.noise import leaf_key, lowrank_draw_shape, lowrank_leaf, lowrank_noise, member_key, normal
from esjax.es.schemes.base import NoiseScheme, register_scheme
from esjax.models.precision import cast_params, decoding_params


class LowRankScheme(NoiseScheme):
    name = "lowrank"
    dense = False

    def perturbation(self, params, key, scale, selection, cfg):
        return lowrank_noise(params, key, cfg.rank, scale, selection, cfg.correlated_noise)

    def shared_params(self, params, dtype):
        # one compute-dtype copy per population call (on fp32 only the joined weights are new), in the decoding layout
        return decoding_params(params, dtype)

    def member(self, shared, perturbation, dtype):
        return shared, cast_params(perturbation, dtype)

    def leaf_perturbation(self, key, i, shape, scale, cfg):
        draw = normal(leaf_key(key, i, cfg.correlated_noise), lowrank_draw_shape(shape, cfg.rank))
        return lowrank_leaf(draw, shape, cfg.rank, scale)

    def leaf_gradient(self, key, iteration, weights, i, shape, cfg):
        def draw(n):
            k, sign = member_key(key, iteration, n, cfg.antithetic)
            return self.leaf_perturbation(k, i, shape, 1.0 * sign, cfg)

        N = weights.shape[0]
        d = jax.vmap(draw)(jnp.arange(N))
        if len(shape) == 2:  # a: (N, n_in, r) already / √r, b: (N, n_out, r)
            return jnp.einsum("n,nir,njr->ij", weights, d.a, d.b) / N
        return jnp.einsum("n,n...->...", weights, d) / N

    def member_bytes(self, model_cfg, cfg) -> int:
        """r·(n_in + n_out) fp32 factors per matrix and one dense draw per vector."""
        from esjax.models.decoder import param_shapes
        shapes = jax.tree.leaves(param_shapes(model_cfg), is_leaf=lambda s: isinstance(s, tuple))
        return 4 * sum(cfg.rank * sum(s) if len(s) == 2 else s[0] for s in shapes)

    def shared_bytes(self, model_cfg, cfg) -> int:
        """The decoding copy: every parameter in the compute dtype when that is narrower than the fp32
        master; on fp32 only the joined weights, [wq | wk | wv] and [w_gate | w_up] (the other leaves are the
        master's own arrays)."""
        m = model_cfg
        item = np.dtype(m.dtype).itemsize
        if item < 4:
            return item * m.param_count()
        qkv = (m.num_heads + 2 * m.num_kv_heads) * m.head_dim
        return item * m.num_layers * m.hidden_size * (qkv + 2 * m.intermediate_size)


LOWRANK = register_scheme(LowRankScheme())
