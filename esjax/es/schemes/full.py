"""Full-rank Gaussian noise (Qiu et al. 2025; both seed papers): E_n ~ N(0, I) in every selected leaf."""
from __future__ import annotations

from esjax.es.noise import normal
from esjax.es.schemes.base import DenseScheme, register_scheme


class FullRank(DenseScheme):
    """Every selected leaf draws N(0, 1) entries from its own key (:func:`esjax.es.noise.full_noise`)."""

    name = "full"

    def sample(self, key, shape):
        return normal(key, shape)


FULL = register_scheme(FullRank())
