"""Results I/O, below the training loop and the analysis: a run folder's ``metrics.jsonl`` and
``summary.json`` (strict JSON: no NaN/inf), and the completion check analyses make before reading a run.
:mod:`esjax.runs` writes through it; :mod:`esjax.analysis` only reads through it."""
from __future__ import annotations

import json
import math
import os

import numpy as np


def json_safe(obj):
    """``obj`` with every non-finite float replaced by None (JSON null); (obj, dotted keys replaced)."""
    bad = []

    def walk(x, key):
        if isinstance(x, dict):
            return {k: walk(v, f"{key}.{k}" if key else str(k)) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [walk(v, f"{key}[{i}]") for i, v in enumerate(x)]
        if isinstance(x, (float, np.floating)) and not math.isfinite(x):
            bad.append(key)
            return None
        return x.item() if isinstance(x, np.generic) else x

    return walk(obj, ""), bad


def safe_row(row: dict) -> dict:
    """A metrics row / summary as strict JSON: non-finite values → null, listed under ``non_finite``."""
    out, bad = json_safe(row)
    if bad:
        out["non_finite"] = bad
    return out


def write_json(path: str, obj) -> None:
    """Strict JSON (no NaN/inf: see :func:`safe_row`), written atomically."""
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=2, allow_nan=False)
    os.replace(path + ".tmp", path)


def read_summary(run_dir: str) -> dict:
    """``summary.json`` of a run folder; ``{"status": "missing"}`` if the run never wrote one."""
    path = os.path.join(run_dir, "summary.json")
    if not os.path.exists(path):
        return {"status": "missing"}
    with open(path) as f:
        return json.load(f)


def require_complete(run_dir: str) -> dict:
    """The summary of a finished run, or a ValueError naming the folder and its status (analysis refuses
    incomplete or failed runs: their params are missing, stale or broken)."""
    s = read_summary(run_dir)
    status = s.get("status", "unknown (summary.json without a status: written by an older esjax)")
    if status != "complete":
        why = f": {s['error']}" if s.get("error") else ""
        raise ValueError(f"run {run_dir} is not complete (status {status}{why}); finish it by rerunning the same "
                         f"command, or analyse another folder")
    return s


def read_metrics(run_dir: str) -> list:
    """The rows of ``<run_dir>/metrics.jsonl``, in order."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]
