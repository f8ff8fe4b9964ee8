"""MMLU probe (paper 2's optional flag; paper 1's hold-out; docs/protocols.md#c7).

Rows of ``cais/mmlu`` ("all"): ``question``, ``subject``, ``choices`` (4), ``answer`` (0–3 or a letter).
Each test question is preceded by ``shots`` solved questions of the same subject from the ``dev`` split, in
the standard MMLU layout, inside the chat template. Scoring is not generation: the prediction is the
argmax over A–D of max(log p("A"), log p(" A")) at the first reply position (``choice_letters``; see
:func:`esjax.evaluation.evaluate`). Paper 2 samples 500 random test items (``order="shuffle"``).
"""
from __future__ import annotations

from typing import Dict, List, Optional

from esjax.tasks.base import Example, Reward, register
from esjax.tasks.sources import DataTask

LETTERS = "ABCD"


def _letter(answer) -> str:
    return LETTERS[answer] if isinstance(answer, int) else str(answer).strip().upper()


def format_question(row: dict, with_answer: bool) -> str:
    lines = [row["question"].strip()] + [f"{LETTERS[k]}. {c}" for k, c in enumerate(row["choices"])]
    return "\n".join(lines) + "\nAnswer:" + (f" {_letter(row['answer'])}\n\n" if with_answer else "")


@register("mmlu")
class MMLU(DataTask):
    name = "mmlu"
    max_new_tokens = 1
    choice_letters = LETTERS
    default_splits = {"train": "dev", "test": "test", "dev": "dev"}

    def __init__(self, path: Optional[str] = None, shots: int = 5, **source):
        super().__init__(path, **source)
        self.shots = shots
        self._dev: Optional[Dict[str, List[dict]]] = None

    def validate(self, row: dict) -> None:
        if not isinstance(row.get("question"), str) or not isinstance(row.get("subject"), str):
            raise ValueError("need string fields 'question' and 'subject'")
        if not isinstance(row.get("choices"), (list, tuple)) or len(row["choices"]) != 4:
            raise ValueError("'choices' must hold 4 strings")
        if _letter(row.get("answer")) not in LETTERS:
            raise ValueError(f"'answer' must be 0–3 or A–D, got {row.get('answer')!r}")

    def to_example(self, row: dict, uid: str) -> Example:
        if self._dev is None:
            self._dev = {}
            for r in (self.rows("dev") if self.shots else []):
                self._dev.setdefault(r["subject"], []).append(r)
        shots = self._dev.get(row["subject"], [])[:self.shots]
        if len(shots) < self.shots:
            raise ValueError(f"subject {row['subject']!r} has {len(shots)} dev questions, {self.shots} shots asked")
        subject = row["subject"].replace("_", " ")
        text = (f"The following are multiple choice questions (with answers) about {subject}.\n\n"
                + "".join(format_question(s, True) for s in shots) + format_question(row, False))
        return Example(uid, text, _letter(row["answer"]), {"subject": row["subject"]})

    def reward(self, completion: str, example: Example) -> Reward:
        said = completion.strip()[:1].upper()
        correct = said == example.answer
        return Reward.binary(correct)
