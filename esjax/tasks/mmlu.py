"""MMLU probe (paper 2's optional flag; paper 1's hold-out; docs/protocols.md#c7).

Rows of ``cais/mmlu`` ("all"): ``question``, ``subject``, ``choices`` (4), ``answer`` (0–3 or a letter).
Each test question is preceded by ``shots`` solved questions of the same subject from the ``dev`` split, in
the standard MMLU layout, inside the chat template. Scoring is not generation: the prediction is the
argmax over A–D of max(log p("A"), log p(" A")) at the first reply position (``choice_letters``; see
:func:`esjax.evaluation.evaluate`), among the ``top_k`` most likely tokens only (paper 2 reads vLLM's
top-20 log-probs: no letter there, no answer; 0 = the whole vocabulary). The layout is paper 2's
``evaluation_script.py``: "about  high school chemistry." (its ``format_subject`` puts a space before
each word) and the questions unstripped. Paper 2 samples 500 random test items (``order="shuffle"``).
"""
from __future__ import annotations

from typing import Dict, List, Optional

from esjax.tasks.base import Example, Reward, register
from esjax.tasks.sources import DataTask

LETTERS = "ABCD"


def _letter(answer) -> str:
    return LETTERS[answer] if isinstance(answer, int) else str(answer).strip().upper()


def format_question(row: dict, with_answer: bool) -> str:
    lines = [row["question"]] + [f"{LETTERS[k]}. {c}" for k, c in enumerate(row["choices"])]
    return "\n".join(lines) + "\nAnswer:" + (f" {_letter(row['answer'])}\n\n" if with_answer else "")


@register("mmlu")
class MMLU(DataTask):
    name = "mmlu"
    max_new_tokens = 1
    choice_letters = LETTERS
    default_splits = {"train": "dev", "test": "test", "dev": "dev"}

    def __init__(self, path: Optional[str] = None, shots: int = 5, top_k: int = 20, **source):
        super().__init__(path, **source)
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = the whole vocabulary), got {top_k}")
        self.shots, self.choice_top_k = shots, top_k
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
        subject = "".join(" " + w for w in row["subject"].split("_"))  # paper 2's format_subject: " high school …"
        text = (f"The following are multiple choice questions (with answers) about {subject}.\n\n"
                + "".join(format_question(s, True) for s in shots) + format_question(row, False))
        return Example(uid, text, _letter(row["answer"]), {"subject": row["subject"]})

    def reward(self, completion: str, example: Example) -> Reward:
        said = completion.strip()[:1].upper()
        correct = said == example.answer
        return Reward.binary(correct)
