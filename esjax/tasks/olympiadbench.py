"""OlympiadBench (paper 2 only, docs/protocols.md#c4): the "####" prompt and exact-string reward of
:mod:`esjax.tasks.hashmark`. Rows: paper 2's verl parquet, or OlympiadBench's own ``question`` /
``final_answer`` (a list; its first entry is the reference)."""
from __future__ import annotations

from typing import Optional

from esjax.tasks.base import Example, Reward, register
from esjax.tasks.hashmark import is_verl_row, string_match, user_message, verl_meta, verl_question_answer
from esjax.tasks.sources import DataTask


def question_answer(row: dict):
    if is_verl_row(row):
        return verl_question_answer(row)
    final = row.get("final_answer")
    final = final[0] if isinstance(final, (list, tuple)) and final else final
    if not isinstance(row.get("question"), str) or not isinstance(final, str):
        raise ValueError("need string 'question' and 'final_answer' (or a verl prompt/reward_model row)")
    return row["question"], final


@register("olympiadbench")
class OlympiadBench(DataTask):
    name = "olympiadbench"
    max_new_tokens = 1024

    def __init__(self, path: Optional[str] = None, **source):
        super().__init__(path, **source)

    def validate(self, row: dict) -> None:
        question_answer(row)

    def to_example(self, row: dict, uid: str) -> Example:
        return Example(uid, *question_answer(row), verl_meta(row))

    def user_message(self, example: Example) -> str:
        return user_message(example)  # a verl row's prompt verbatim

    def reward(self, completion: str, example: Example) -> Reward:
        correct = string_match(completion, example.answer)
        return Reward.binary(correct)
