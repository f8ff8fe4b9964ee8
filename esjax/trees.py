"""Pytree helpers shared by es/, grpo/ and analysis/: leaf paths, leaf selection, the leaf taxonomy.

A params pytree is a dict of arrays (see :mod:`esjax.models.decoder`); its leaves are named by their
path, ``'embed'``, ``'layers/3/wq'``, …, in ``jax.tree`` order, and bucketed by module type
(q, k, v, o, mlp, norm, embed, head, bias) for per-module metrics.
"""
from __future__ import annotations

import re
from typing import Optional

import jax

MODULE_TYPES = {"wq": "q", "wk": "k", "wv": "v", "wo": "o", "w_gate": "mlp", "w_up": "mlp", "w_down": "mlp",
                "embed": "embed", "lm_head": "head", "bq": "bias", "bk": "bias", "bv": "bias"}


def leaf_paths(tree) -> list:
    """'embed', 'layers/0/wq', … for every leaf, in ``jax.tree`` order."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return ["/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path) for path, _ in flat]


def shape_groups(tree, param_filter: Optional[str]) -> dict:
    """{leaf shape: indices (``jax.tree`` order) of the leaves ``param_filter`` selects with that shape},
    in sorted shape order: the unit per-leaf-shape programs (ES update, member noise) compile by."""
    groups = {}
    for i, (x, s) in enumerate(zip(jax.tree.leaves(tree), leaf_selection(tree, param_filter))):
        if s:
            groups.setdefault(tuple(x.shape), []).append(i)
    return dict(sorted(groups.items()))


def module_type(path: str) -> str:
    """Bucket of a leaf path: q, k, v, o, mlp, norm, embed, head, bias, or other."""
    leaf = path.rsplit("/", 1)[-1]
    return MODULE_TYPES.get(leaf, "norm" if "norm" in leaf else "other")


def leaf_selection(tree, param_filter: Optional[str]) -> list:
    """Per-leaf booleans: which leaves match ``param_filter`` (a regex searched in each path; None = all)."""
    paths = leaf_paths(tree)
    if param_filter is None:
        return [True] * len(paths)
    pat = re.compile(param_filter)
    sel = [bool(pat.search(p)) for p in paths]
    if not any(sel):
        raise ValueError(f"param_filter {param_filter!r} matches no parameter (paths look like {paths[:3]})")
    return sel
