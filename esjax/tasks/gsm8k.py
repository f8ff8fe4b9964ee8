"""GSM8K from local data: the official JSONL (``question``, ``answer`` ending in ``#### N``), verl parquet
(paper 2), a ``save_to_disk`` folder, or tensorflow-datasets ``gsm8k`` from a local ``data_dir``
(see :mod:`esjax.tasks.sources`).

The reference of an official row is its ``#### N`` line with the commas removed ("1,234" → "1234"), as
verl's ``gsm8k.py`` preprocessing (which produced paper 2's parquet files) does, so both rules read the
official JSONL and paper 2's parquet alike (the "####" rule drops commas from the prediction and could
never match a gold "1,234").

``reward="numeric"`` (default, esjax's rule): the answer is, in order, ``#### N``, the last ``\\boxed{N}``,
the last ``<answer>N</answer>``, else the last number, all read from the last 4,000 characters (a
bounded window); correct iff numerically equal (exact rationals).
``reward="string_match"``: paper 2's exact-string rule (:mod:`esjax.tasks.hashmark`, docs/protocols.md#c2).
"""
from __future__ import annotations

import re
from typing import Optional

from esjax.tasks.base import Example, Reward, last_number, parse_number, register
from esjax.tasks.hashmark import SUFFIX, is_verl_row, string_match, user_message, verl_meta, verl_question_answer
from esjax.tasks.scan import last_between
from esjax.tasks.sources import DataTask

REWARDS = ("numeric", "string_match")
_HASH_NUMBER = re.compile(r"####\s*\$?(-?[\d,]*\.?\d+)")
_FLAT_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")  # stops at any brace: no rescans


def reference_answer(solution: str) -> str:
    if "####" not in solution:
        raise ValueError("answer has no '#### N' final line")
    final = solution.rsplit("####", 1)[1].strip()
    if parse_number(final) is None:
        raise ValueError(f"final answer {final!r} is not a number")
    return final.replace(",", "")


def question_answer(row: dict):
    """(question, reference) of an official or verl row; ValueError names what is missing."""
    if is_verl_row(row):
        return verl_question_answer(row)
    for key in ("question", "answer"):
        if not isinstance(row.get(key), str):
            raise ValueError(f"missing string field {key!r}")
    return row["question"], reference_answer(row["answer"])


def extract_answer(text: str) -> Optional[str]:
    """esjax's numeric-rule answer, read from the last 4,000 characters (each step linear in them)."""
    tail = text[-4000:]
    for pattern in (_HASH_NUMBER, _FLAT_BOXED):
        found = pattern.findall(tail)
        if found:
            return found[-1].strip()
    tagged = last_between(tail, "<answer>", "</answer>")
    return tagged.strip() if tagged is not None else last_number(tail)


@register("gsm8k")
class GSM8K(DataTask):
    name = "gsm8k"
    tfds_name = "gsm8k"
    max_new_tokens = 256

    def __init__(self, path: Optional[str] = None, reward: str = "numeric", suffix: str = SUFFIX, **source):
        if reward not in REWARDS:
            raise ValueError(f"reward must be one of {REWARDS}, got {reward!r}")
        super().__init__(path, **source)
        self.reward_mode, self.suffix = reward, suffix

    def validate(self, row: dict) -> None:
        question_answer(row)

    def to_example(self, row: dict, uid: str) -> Example:
        return Example(uid, *question_answer(row), verl_meta(row))

    def user_message(self, example: Example) -> str:
        if self.suffix != SUFFIX:  # a suffix asked for explicitly replaces whatever the row carried
            return example.question + self.suffix
        return user_message(example)  # a verl row's prompt verbatim

    def reward(self, completion: str, example: Example) -> Reward:
        if self.reward_mode == "string_match":
            correct = string_match(completion, example.answer)
        else:
            got = parse_number(extract_answer(completion))
            correct = got is not None and got == parse_number(example.answer)
        return Reward.binary(correct)
