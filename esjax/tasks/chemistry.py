"""SciKnowEval-Chemistry 4-choice MCQ (paper 1, ``tasks/chemistry.py``; docs/protocols.md#c5).

Rows of ``hicai-zju/SciKnowEval`` (config v2, split ``test``): ``question``, ``choices`` =
{``text``: [4], ``label``: [A–D]}, ``answerKey``, ``domain``, ``type``. Kept: ``domain == "Chemistry"`` and
``type == "mcq-4-choices"``, shuffled as ``random.seed(42); random.shuffle`` does; the first 200 are
train, the next 2,000 test. The reply must give ``"answer": "C"``; extraction over the whole reply (each
pattern is one linear pass), first match wins:

1. the last ``"answer"\\s*:\\s*"?([A-Da-d])"?``, case-insensitive (``"Answer": "b"`` counts);
2. the last ``answer\\s*:\\s*([A-Da-d])\\b``, case-insensitive;
3. the last standalone letter: A–D, and with ``lenient_fallback`` (paper 1's quirk) a–d too, so the
   article "a" counts as "A".

``lenient_fallback=True`` is paper 1's extractor exactly (ESvsGRPO@43eed8c
``SciKnowEvalChemistryTask.compute_reward``); ``False`` (the default, esjax's) differs only in step 3.
"""
from __future__ import annotations

import random
import re
from typing import List, Optional

from esjax.tasks.base import Example, Reward, register
from esjax.tasks.sources import DataTask

SYSTEM = ('You are a chemistry expert. Reason step by step, then provide your final answer as JSON, e.g., '
          '"answer": "C".')
USER_END = 'Please show your choice in the answer field with only the choice letter, e.g., "answer": "C".'
LETTERS = "ABCD"


_JSON = re.compile(r'"answer"\s*:\s*"?([A-Da-d])"?', re.IGNORECASE)
_COLON = re.compile(r"answer\s*:\s*([A-Da-d])\b", re.IGNORECASE)
_LETTER = re.compile(r"\b([A-D])\b")
_LETTER_LENIENT = re.compile(r"\b([A-Da-d])\b")


def extract_choice(text: str, lenient_fallback: bool = False) -> Optional[str]:
    for pattern in (_JSON, _COLON, _LETTER_LENIENT if lenient_fallback else _LETTER):
        found = pattern.findall(text)
        if found:
            return found[-1].upper()
    return None


@register("chemistry")
class Chemistry(DataTask):
    name = "chemistry"
    system_prompt = SYSTEM
    max_new_tokens = 512
    default_splits = {"train": "test", "test": "test"}

    def __init__(self, path: Optional[str] = None, domain: str = "Chemistry", question_type: str = "mcq-4-choices",
                 train_size: int = 200, lenient_fallback: bool = False, **source):
        super().__init__(path, **source)
        self.domain, self.question_type, self.train_size, self.lenient = domain, question_type, train_size, lenient_fallback

    def _kept(self, row: dict) -> bool:
        return row.get("domain") == self.domain and row.get("type") == self.question_type

    def validate(self, row: dict) -> None:
        if not self._kept(row):
            return
        ch = row.get("choices")
        if not isinstance(row.get("question"), str) or not isinstance(ch, dict) or len(ch.get("text") or []) != 4:
            raise ValueError("need 'question' and 'choices' with 4 'text' entries")
        if row.get("answerKey") not in (ch.get("label") or list(LETTERS)):
            raise ValueError(f"answerKey {row.get('answerKey')!r} is not one of the choice labels")

    def select(self, rows, split: str, n: int, seed: int) -> List[int]:
        kept = [i for i, r in enumerate(rows) if self._kept(r)]
        random.Random(42).shuffle(kept)  # == random.seed(42); random.shuffle(kept)
        return kept[:self.train_size][:n] if split == "train" else kept[self.train_size:][:n]

    def to_example(self, row: dict, uid: str) -> Example:
        labels = row["choices"].get("label") or list(LETTERS)
        return Example(uid, row["question"], row["answerKey"], {"choices": list(zip(labels, row["choices"]["text"]))})

    def user_message(self, example: Example) -> str:
        options = "\n".join(f"{label}) {text}" for label, text in example.meta["choices"])
        return f"Question: {example.question}\n\n{options}\n\n{USER_END}"

    def reward(self, completion: str, example: Example) -> Reward:
        correct = extract_choice(completion, self.lenient) == example.answer
        return Reward.binary(correct)
