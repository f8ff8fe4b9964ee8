"""Where task rows come from, and the base class of every task backed by a dataset.

Users hold data locally (no downloads at run time). :func:`read_split` reads one split from

- a JSONL / JSON file or a folder of JSON files (the Hendrycks MATH layout),
- a parquet file (verl / HF-hub exports), or a folder with ``{split}.parquet`` / ``{split}-*.parquet``,
- a HF ``datasets`` dataset saved with ``save_to_disk`` (a ``DatasetDict`` folder or one split),
- tensorflow-datasets from a local ``data_dir`` (``source="tfds"``, imported lazily, never downloads).

A *split spec* ``"name[a:b]"`` takes rows a..b of split ``name`` in file order: paper 1 carves its train
and test sets out of one HF split (docs/protocols.md#c1, #c5), e.g. ``{"train": "train[0:200]",
"test": "train[200:2200]"}``; ``name`` may also be a file inside the folder (``"countdown.json[-2000:]"``). Rows are validated as they are read; a malformed row raises
:class:`~esjax.tasks.base.DatasetError` naming the file and row, or, with ``skip_malformed``, is counted
in ``task.skipped`` (never silently dropped).

Train and test must not share rows: :meth:`DataTask.check_disjoint` (run before training) refuses two
splits that resolve to the same file (or split of a folder) with overlapping row ranges, e.g. a single
JSONL given as ``path`` (it would serve both splits). Carve it with slices, ``{"train": "x[0:200]",
"test": "x[200:]"}``, or give a folder with separate split files. A task whose own default splits name
one split for both (chemistry carves train and test apart in ``select``; IFEval is evaluation only) is
exempt while those defaults are used.
"""
from __future__ import annotations

import glob
import os
import random
import re
from typing import Dict, List, Optional, Tuple

from esjax.tasks.base import DatasetError, Example, Task, collect_rows, read_records

_SPEC = re.compile(r"^([A-Za-z0-9_.\-]+)(?:\[(-?\d*):(-?\d*)\])?$")


def parse_split(spec: str) -> Tuple[str, Optional[int], Optional[int]]:
    """``"train[200:2200]"`` → ("train", 200, 2200); ``"test"`` → ("test", None, None); ``"x.json[-2000:]"``
    → the last 2,000 rows of the file ``x.json`` inside the task's folder."""
    m = _SPEC.match(spec)
    if not m:
        raise ValueError(f"bad split spec {spec!r}; expected NAME or NAME[start:stop]")
    start, stop = (int(x) if x else None for x in m.groups()[1:])
    return m.group(1), start, stop


def _parquet_rows(files: List[str]):
    import pyarrow.parquet as pq  # optional extra ("data")

    for f in files:
        try:
            table = pq.read_table(f)
        except Exception as e:  # pyarrow raises many types for a corrupt file
            raise DatasetError(f"{f}: cannot read parquet ({e})") from None
        for i, row in enumerate(table.to_pylist()):
            yield f"{f}: row {i}", row


def _hf_disk_rows(path: str, split: str):
    import datasets  # optional extra ("data")

    ds = datasets.load_from_disk(path)
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DatasetError(f"{path}: no split {split!r} (has {sorted(ds)})")
        ds = ds[split]
    for i, row in enumerate(ds):
        yield f"{path}[{split}]: row {i}", row


def _tfds_rows(name: str, split: str, data_dir: Optional[str]):
    import tensorflow_datasets as tfds  # optional extra ("tfds")

    ds = tfds.load(name, split=split, data_dir=data_dir, download=False)
    for i, row in enumerate(tfds.as_numpy(ds)):
        yield f"tfds {name}/{split}: row {i}", {k: v.decode() if isinstance(v, bytes) else v for k, v in row.items()}


def _locate(path: str, split: str):
    """(kind, target) for one split under ``path``; kind in json | parquet | hf."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"dataset not found: {path}")
    if os.path.isfile(path):
        return ("parquet", [path]) if path.endswith(".parquet") else ("json", path)
    if os.path.exists(os.path.join(path, "dataset_dict.json")) or os.path.exists(os.path.join(path, "state.json")):
        return "hf", path
    for cand in (split, f"{split}.parquet", f"{split}.jsonl", f"{split}.json"):
        if os.path.isfile(os.path.join(path, cand)):
            return _locate(os.path.join(path, cand), split)
    if os.path.isdir(os.path.join(path, split)):
        sub = os.path.join(path, split)
        return ("hf", sub) if os.path.exists(os.path.join(sub, "state.json")) else ("json", sub)
    shards = sorted(glob.glob(os.path.join(path, f"{split}-*.parquet")) + glob.glob(os.path.join(path, "data", f"{split}-*.parquet")))
    if shards:
        return "parquet", shards
    raise FileNotFoundError(f"no split {split!r} under {path} (looked for {split}.parquet, {split}.jsonl, "
                            f"{split}.json, {split}/, {split}-*.parquet, a save_to_disk folder; found {sorted(os.listdir(path))})")


def _target(path: Optional[str], name: str, source: str, tfds_name: Optional[str]):
    """(identity, label) of the rows split/file ``name`` reads: equal identities read the same rows."""
    if source == "tfds":
        return ("tfds", tfds_name, name), f"tfds {tfds_name}/{name}"
    if path is None:
        raise ValueError("this task needs path= to local data (or source='tfds' with data_dir=)")
    kind, target = _locate(path, name)
    if kind == "parquet":
        files = tuple(os.path.abspath(f) for f in target)
        return ("parquet", files), files[0] if len(files) == 1 else f"{len(files)} parquet shards {files[0]}…"
    if kind == "hf" and os.path.exists(os.path.join(target, "dataset_dict.json")):
        return ("hf", os.path.abspath(target), name), f"{target} [{name}]"
    return (kind, os.path.abspath(target)), target


def read_split(path: Optional[str], split: str, source: str = "auto", data_dir: Optional[str] = None,
               tfds_name: Optional[str] = None, validate=None, skip_malformed: bool = False):
    """Rows of one split (spec ``name[a:b]`` allowed) → (rows, skipped). See the module docstring."""
    name, start, stop = parse_split(split)
    if source == "tfds":
        items = _tfds_rows(tfds_name, name, data_dir)
        rows, skipped = collect_rows(items, validate, skip_malformed)
    elif source in ("auto", "local", "hf"):
        if path is None:
            raise ValueError("this task needs path= to local data (or source='tfds' with data_dir=)")
        kind, target = _locate(path, name)
        if kind == "json":
            rows, skipped = read_records(target, skip_malformed, validate)
        else:
            items = _parquet_rows(target) if kind == "parquet" else _hf_disk_rows(target, name)
            rows, skipped = collect_rows(items, validate, skip_malformed)
    else:
        raise ValueError(f"source must be auto, local, hf or tfds, got {source!r}")
    return rows[start:stop], skipped


class DataTask(Task):
    """A task whose examples are rows of a local dataset.

    Subclasses set ``tfds_name`` and ``default_splits`` and implement ``validate(row)`` (raise
    ValueError) and ``to_example(row, uid)``. ``order="file"`` takes the first n rows of the split (the
    seeds' protocol); ``"shuffle"`` a seeded permutation.
    """

    tfds_name: Optional[str] = None
    default_splits: Dict[str, str] = {"train": "train", "test": "test"}

    def __init__(self, path: Optional[str] = None, source: str = "auto", data_dir: Optional[str] = None,
                 splits: Optional[Dict[str, str]] = None, order: str = "shuffle", skip_malformed: bool = False):
        if order not in ("shuffle", "file"):
            raise ValueError(f"order must be 'shuffle' or 'file', got {order!r}")
        if source != "tfds" and path is None:
            raise ValueError(f"task {self.name!r} needs path= to local data (JSONL/parquet/save_to_disk), "
                             f"or source='tfds' with data_dir=")
        self.splits = {**self.default_splits, **(splits or {})}
        for spec in self.splits.values():
            parse_split(spec)
        self.path, self.source, self.data_dir, self.order, self.skip_malformed = path, source, data_dir, order, skip_malformed
        self.skipped: List[str] = []
        self._rows: Dict[str, List[dict]] = {}  # split → validated rows of its spec
        self._full: Dict[tuple, List[dict]] = {}  # file identity → every validated row, read once per task instance

    def validate(self, row: dict) -> None:
        raise NotImplementedError

    def to_example(self, row: dict, uid: str) -> Example:
        raise NotImplementedError

    def _all_rows(self, name: str) -> List[dict]:
        """Every validated row of split/file ``name`` (no slice), read once per underlying file."""
        key, _ = _target(self.path, name, self.source, self.tfds_name)
        if key not in self._full:
            self._full[key], skipped = read_split(self.path, name, self.source, self.data_dir, self.tfds_name,
                                                  self.validate, self.skip_malformed)
            self.skipped += skipped
        return self._full[key]

    def rows(self, split: str) -> List[dict]:
        if split == "probe" and split not in self.splits:
            split = "test"  # off-task KL probes: held-out prompts
        if split not in self.splits:
            raise ValueError(f"task {self.name!r} has no split {split!r} (has {sorted(self.splits)})")
        if split not in self._rows:
            name, start, stop = parse_split(self.splits[split])
            self._rows[split] = self._all_rows(name)[start:stop]
        return self._rows[split]

    def check_disjoint(self, a: str = "train", b: str = "test") -> None:
        """Raise :class:`DatasetError` naming the task, the specs and the file if splits ``a`` and ``b``
        read overlapping rows of one file (see the module docstring); reads the file only when the two
        specs resolve to the same one."""
        if a not in self.splits or b not in self.splits:
            return
        spec_a, spec_b = self.splits[a], self.splits[b]
        if spec_a == spec_b == self.default_splits.get(a) == self.default_splits.get(b):
            return  # the task's own design (it carves the split itself, or never trains on it)
        (na, sa, ea), (nb, sb, eb) = parse_split(spec_a), parse_split(spec_b)
        key_a, label = _target(self.path, na, self.source, self.tfds_name)
        if key_a != _target(self.path, nb, self.source, self.tfds_name)[0]:
            return
        n = len(self._all_rows(na))
        ra, rb = range(*slice(sa, ea).indices(n)), range(*slice(sb, eb).indices(n))
        lo, hi = max(ra.start, rb.start), min(ra.stop, rb.stop)
        if lo < hi:
            raise DatasetError(
                f"task {self.name!r}: the {a} split {spec_a!r} and the {b} split {spec_b!r} both read rows {lo}..{hi - 1} "
                f"({hi - lo} of {n}) of {label}, so the model would be tested on its training data; give a folder with "
                f"separate {a}/{b} files, or disjoint slices, e.g. task_kwargs.splits="
                f'{{"{a}": "{na}[0:K]", "{b}": "{na}[K:]"}}')

    def select(self, rows: List[dict], split: str, n: int, seed: int) -> List[int]:
        order = list(range(len(rows)))
        if self.order == "shuffle":
            random.Random(f"{self.name}/{split}/{seed}").shuffle(order)
        return order[:n]

    def examples(self, split: str, n: int, seed: int = 0) -> List[Example]:
        rows = self.rows(split)
        return [self.to_example(rows[i], f"{self.name}/{split}/{i}") for i in self.select(rows, split, n, seed)]
