"""Named run presets, one module each (``PRESET``: a dict of :class:`esjax.config.RunConfig` fields).

``cpu-quick``, ``study`` and ``tiny`` are esjax's own; ``paper1``, ``paper2`` and ``qiu`` reproduce the seed
papers' setups knob for knob, every value cited to ``docs/protocols.md`` (§ numbers: its sections) in its
module; ``docs/presets.md`` tabulates them. Model and data are local: ``--set model=hf:/path/to/ckpt``
and ``--set data_root=/path/to/data`` (task ``path`` values are relative to it).
"""
from __future__ import annotations

import importlib

NAMES = {"cpu-quick": "cpu_quick", "study": "study", "tiny": "tiny", "paper1": "paper1", "paper2": "paper2", "qiu": "qiu"}


def load_presets() -> dict:
    return {name: importlib.import_module(f"esjax.presets.{mod}").PRESET for name, mod in NAMES.items()}
