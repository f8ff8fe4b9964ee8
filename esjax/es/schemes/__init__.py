"""ES noise schemes by name: ``full`` (Gaussian, :mod:`.full`) and ``lowrank`` (EGGROLL, :mod:`.lowrank`);
the interface and registry are in :mod:`.base`."""
from esjax.es.schemes.base import SCHEMES, DenseScheme, NoiseScheme, get_scheme, register_scheme
from esjax.es.schemes.full import FULL
from esjax.es.schemes.lowrank import LOWRANK

__all__ = ["SCHEMES", "NoiseScheme", "DenseScheme", "get_scheme", "register_scheme", "FULL", "LOWRANK"]
