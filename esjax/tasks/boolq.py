"""BoolQ yes/no reading comprehension (paper 1, ``tasks/boolq.py``; docs/protocols.md#c6).

Rows of ``google/boolq``: ``question``, ``passage``, ``answer`` (bool). Paper 1 trains on the first 200 of
``train`` and tests on the first 2,000 of ``validation`` (``order="file"``). Reward, paper 1's rule
exactly (ESvsGRPO@43eed8c ``BoolQTask.compute_reward``): the last ``\\boxed{}`` (no nested braces),
stripped, lower-cased, stripped again, then every character that is neither a word character nor
whitespace removed (``re.sub(r"[^\\w\\s]", "")``, Unicode-aware) and nothing stripped afterwards: ``yes .``
reads "yes " and fails, ``“yes”`` and ``yes。`` read "yes", ``_yes_`` keeps its underscores. Correct if in
{yes, true, 1, correct, right} for a True gold and in {no, false, 0, incorrect, wrong} for a False one.
Linear in the completion's length.
"""
from __future__ import annotations

import re
from typing import Optional

from esjax.tasks.base import Example, Reward, last_flat_boxed, register
from esjax.tasks.sources import DataTask

SYSTEM = ("You are a reading assistant. Answer yes or no based on the passage.\n\nPlease reason step by step, "
          "and put your final answer within \\boxed{}.")
YES = frozenset({"yes", "true", "1", "correct", "right"})
NO = frozenset({"no", "false", "0", "incorrect", "wrong"})
_NOT_WORD_OR_SPACE = re.compile(r"[^\w\s]")


def normalize(said: str) -> str:
    """Paper 1's ``normalize_answer`` of the stripped box content."""
    return _NOT_WORD_OR_SPACE.sub("", said.strip().lower().strip())


@register("boolq")
class BoolQ(DataTask):
    name = "boolq"
    system_prompt = SYSTEM
    max_new_tokens = 512
    default_splits = {"train": "train", "test": "validation"}

    def __init__(self, path: Optional[str] = None, **source):
        super().__init__(path, **source)

    def validate(self, row: dict) -> None:
        if not isinstance(row.get("question"), str) or not isinstance(row.get("passage"), str):
            raise ValueError("need string fields 'question' and 'passage'")
        if not isinstance(row.get("answer"), bool):
            raise ValueError(f"'answer' must be a boolean, got {row.get('answer')!r}")

    def to_example(self, row: dict, uid: str) -> Example:
        return Example(uid, row["question"], row["answer"], {"passage": row["passage"]})

    def user_message(self, example: Example) -> str:
        return f"Passage: {example.meta['passage']}\n\nQuestion: {example.question}"

    def reward(self, completion: str, example: Example) -> Reward:
        boxed = last_flat_boxed(completion)
        correct = boxed is not None and normalize(boxed) in (YES if example.answer else NO)
        return Reward.binary(correct)
