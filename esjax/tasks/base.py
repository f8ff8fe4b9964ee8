"""The task protocol and registry shared by ES, GRPO and the analysis.

A task gives deterministic examples, chat messages for an example and a reward for a completion::

    task = get_task("countdown")
    exs = task.examples("train", 64, seed=0)
    reward = task.reward(completion_text, exs[0])   # Reward(value, parts)

Rewards are pure functions of (text, example): they parse model output, never execute it.
Higher reward is better everywhere in esjax (ES maximises fitness).
"""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Callable, Dict, List, Optional, Sequence

from esjax.tasks.scan import last_between

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")


@dataclasses.dataclass(frozen=True)
class Example:
    """One task instance. ``answer`` is what the reward checks against; ``meta`` is free-form."""

    uid: str
    question: str
    answer: Any
    meta: Dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Reward:
    """value = Σ weight·part; ``correct`` is the accuracy indicator used for evaluation."""

    value: float
    correct: bool
    parts: Dict[str, float] = dataclasses.field(default_factory=dict)

    @classmethod
    def binary(cls, correct: bool) -> "Reward":
        """1 if correct else 0 (the seeds' rule for every task but TinyZero Countdown)."""
        correct = bool(correct)
        return cls(float(correct), correct, {"answer": float(correct)})


class Task:
    """Base class: subclasses set ``name``/``system_prompt`` and implement ``examples`` and ``reward``."""

    name: str = ""
    system_prompt: Optional[str] = None
    assistant_prefix: str = ""  # text the prompt already opened (scored as part of the completion)
    chat_template: bool = True  # False: the prompt is raw text (Qiu et al.'s Countdown), no template
    max_new_tokens: int = 64  # a sensible default generation budget for this task
    choice_letters: Optional[str] = None  # e.g. "ABCD": evaluate by next-token log-probs, not generation
    choice_top_k: int = 0  # a letter counts only among the position's top-k tokens (0 = the whole vocabulary)

    def examples(self, split: str, n: int, seed: int = 0) -> List[Example]:
        raise NotImplementedError

    def user_message(self, example: Example) -> str:
        return example.question

    def messages(self, example: Example) -> List[Dict[str, str]]:
        msgs = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return msgs + [{"role": "user", "content": self.user_message(example)}]

    def reward(self, completion: str, example: Example) -> Reward:
        raise NotImplementedError


_REGISTRY: Dict[str, Callable[..., Task]] = {}


def register(name: str):
    def deco(cls):
        _REGISTRY[name] = cls
        return cls
    return deco


def get_task(name: str, **kwargs) -> Task:
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; registered: {sorted(_REGISTRY)}")
    return _REGISTRY[name](**kwargs)


def task_names() -> List[str]:
    return sorted(_REGISTRY)


def encode_prompts(tokenizer, task: Task, examples: Sequence[Example]) -> List[List[int]]:
    """Token ids of each example's chat-templated prompt (generation prompt and assistant prefix added)."""
    out = []
    for ex in examples:
        if task.chat_template:
            text = tokenizer.apply_chat_template(task.messages(ex), add_generation_prompt=True, tokenize=False)
        else:  # raw text, tokenised as Qiu et al.'s script does (the tokenizer's own BOS, if any)
            text = task.user_message(ex)
        ids = tokenizer(text + task.assistant_prefix, add_special_tokens=not task.chat_template)["input_ids"]
        out.append(ids)
    return out


def last_flat_boxed(text: str) -> Optional[str]:
    r"""Content of the last ``\boxed{...}`` as paper 1's extractors find it, ``re.findall(r"\\boxed\{([^}]*)\}",
    text)[-1]``: no nested braces (brace-matched extraction is :func:`esjax.tasks.math.last_boxed`). The
    whole text is read, in linear time (:func:`esjax.tasks.scan.last_between`)."""
    return last_between(text, "\\boxed{", "}")


def last_number(text: str) -> Optional[str]:
    found = _NUMBER.findall(text)
    return found[-1] if found else None


def parse_number(text: Optional[str]):
    """A Fraction from '1,234', '-3.5', '7/2', '$12' … or None (no eval)."""
    from fractions import Fraction

    if text is None:
        return None
    t = text.strip().replace(",", "").replace("$", "").rstrip(".")
    if not re.fullmatch(r"-?\d+(?:\.\d+)?(?:/\d+)?", t):
        return None
    try:
        return Fraction(t)
    except (ValueError, ZeroDivisionError):
        return None


class DatasetError(ValueError):
    """A malformed dataset row, with the file and line it came from."""


class _BadJSON:
    def __init__(self, msg: str):
        self.msg = msg


def collect_rows(items, validate: Optional[Callable[[dict], None]] = None, skip_malformed: bool = False):
    """(where, row) pairs → (rows, skipped). Each row goes through ``validate`` (raise ValueError to
    reject); a rejected row raises :class:`DatasetError` naming ``where``, or with ``skip_malformed`` is
    recorded in ``skipped`` as "where: reason"."""
    rows, skipped = [], []
    for where, obj in items:
        try:
            if isinstance(obj, _BadJSON):
                raise ValueError(f"bad JSON ({obj.msg})")
            if not isinstance(obj, dict):
                raise ValueError("row is not a JSON object")
            if validate:
                validate(obj)
            rows.append(obj)
        except ValueError as e:
            if not skip_malformed:
                raise DatasetError(f"{where}: {e}") from None
            skipped.append(f"{where}: {e}")
    return rows, skipped


def _json_items(path: str):
    def parse(text):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            return _BadJSON(e.msg)

    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith(".jsonl"):
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                yield f"{path}:{i}", parse(line)
        return
    obj = parse(text)
    if isinstance(obj, list):
        for i, row in enumerate(obj, 1):
            yield f"{path}: item {i}", row
    else:
        yield (f"{path}:1" if isinstance(obj, _BadJSON) else path), obj


def read_records(path: str, skip_malformed: bool = False, validate: Optional[Callable[[dict], None]] = None):
    """Rows of a JSONL file, a JSON list, or a folder of JSON files (Hendrycks MATH layout).

    Returns (rows, skipped); see :func:`collect_rows` for validation and ``skip_malformed``.
    """
    import os

    if not os.path.exists(path):
        raise FileNotFoundError(f"dataset not found: {path}")
    if os.path.isdir(path):
        files = sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs if f.endswith((".json", ".jsonl")))
        rows, skipped = [], []
        for f in files:
            r, s = collect_rows(_json_items(f), validate, skip_malformed)
            rows += r
            skipped += s
        return rows, skipped
    return collect_rows(_json_items(path), validate, skip_malformed)
