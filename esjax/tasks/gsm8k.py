"""GSM8K from local files in the official JSONL format (``question``, ``answer`` ending in ``#### N``).

Sources: ``path=`` a JSONL/JSON file or folder (``train.jsonl`` / ``test.jsonl`` inside), or
``source="tfds"`` (tensorflow-datasets ``gsm8k``, imported lazily, from a local ``data_dir``) or
``source="hf"`` (a ``datasets`` dataset saved with ``save_to_disk``). Answer extraction from the
completion, in order: ``#### N``, the last ``\\boxed{N}``, the last ``<answer>N</answer>``, else the last
number. Correct iff numerically equal to the reference (exact rationals).
"""
from __future__ import annotations

import os
import random
import re
from typing import List, Optional

from esjax.tasks.base import DatasetError, Example, Reward, Task, last_number, parse_number, read_records, register

SUFFIX = ' Let\'s think step by step and output the final answer after "####".'


def reference_answer(solution: str) -> str:
    if "####" not in solution:
        raise ValueError("answer has no '#### N' final line")
    final = solution.rsplit("####", 1)[1].strip()
    if parse_number(final) is None:
        raise ValueError(f"final answer {final!r} is not a number")
    return final


def _validate(row: dict) -> None:
    for key in ("question", "answer"):
        if not isinstance(row.get(key), str):
            raise ValueError(f"missing string field {key!r}")
    reference_answer(row["answer"])


def extract_answer(text: str) -> Optional[str]:
    tail = text[-4000:]
    for pattern in (r"####\s*\$?(-?[\d,]*\.?\d+)", r"\\boxed\{([^{}]*)\}", r"<answer>(.*?)</answer>"):
        found = re.findall(pattern, tail, re.DOTALL)
        if found:
            return found[-1].strip()
    return last_number(tail)


@register("gsm8k")
class GSM8K(Task):
    name = "gsm8k"
    max_new_tokens = 256

    def __init__(self, path: Optional[str] = None, source: str = "local", data_dir: Optional[str] = None,
                 skip_malformed: bool = False, suffix: str = SUFFIX):
        if source not in ("local", "tfds", "hf"):
            raise ValueError(f"source must be local, tfds or hf, got {source!r}")
        if source == "local" and path is None:
            raise ValueError("GSM8K needs path= to the official JSONL files (or source='tfds'/'hf')")
        self.path, self.source, self.data_dir, self.skip_malformed, self.suffix = path, source, data_dir, skip_malformed, suffix
        self.skipped: List[str] = []

    def _rows(self, split: str):
        if self.source == "tfds":
            import tensorflow_datasets as tfds  # optional extra

            ds = tfds.load("gsm8k", split=split, data_dir=self.data_dir, download=False)
            return [{k: v.decode() for k, v in r.items()} for r in tfds.as_numpy(ds)]
        if self.source == "hf":
            import datasets

            return list(datasets.load_from_disk(os.path.join(self.path, split) if os.path.isdir(os.path.join(self.path, split)) else self.path))
        path = self.path
        if os.path.isdir(path):
            path = os.path.join(path, f"{split}.jsonl")
        rows, skipped = read_records(path, self.skip_malformed, _validate)
        self.skipped += skipped
        return rows

    def examples(self, split: str, n: int, seed: int = 0) -> List[Example]:
        rows = self._rows(split)
        for i, r in enumerate(rows):
            if self.source != "local":
                try:
                    _validate(r)
                except ValueError as e:
                    raise DatasetError(f"{self.source} gsm8k/{split} row {i}: {e}") from None
        order = list(range(len(rows)))
        random.Random(f"gsm8k/{split}/{seed}").shuffle(order)
        return [Example(f"gsm8k/{split}/{i}", rows[i]["question"], reference_answer(rows[i]["answer"]))
                for i in order[:n]]

    def user_message(self, example: Example) -> str:
        return example.question + self.suffix

    def reward(self, completion: str, example: Example) -> Reward:
        got = parse_number(extract_answer(completion))
        correct = got is not None and got == parse_number(example.answer)
        return Reward(float(correct), correct, {"answer": float(correct)})
