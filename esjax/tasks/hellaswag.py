"""HellaSwag probe (paper 2, ``evaluation_script.py``; docs/protocols.md#c7): a prior-ability test, never trained on.

Rows of ``hellaswag`` (split ``validation``): ``activity_label``, ``ctx_a``, ``ctx_b``, ``endings`` (4),
``label``. Every ``stride``-th item (paper 2: 10, i.e. 1,005 items) in file order; each item's endings are
shuffled by one ``random.Random(seed)`` (42) walked over the items in order. Context =
``activity_label + ": " + ctx_a + " " + ctx_b.capitalize()``, preprocessed as paper 2's script does:
`` [title]`` → ``". "``, then ``re.sub("[[.*?]]", "", t)`` — in the lm-eval reference a pattern that removes
``[step]``-like tags, there a character class that removes only "[]", ".]", "*]", "?]" ("[step]" stays, as
in the seed's prompts) — then double spaces collapsed once. The reply (greedy, 10 tokens) is correct when
its first digit in 1–4 is the position of the gold ending. ``every_item``: the test split gives all of
them (paper 2's 1,005), not the first ``n`` a run's ``eval_size`` asks for; probe and training sets
still take ``n``.
"""
from __future__ import annotations

import random
import re
from typing import List, Optional

from esjax.tasks.base import Example, Reward, register
from esjax.tasks.sources import DataTask

INSTRUCTION = ("You are given a situation followed by four possible endings. Choose the most appropriate ending by "
               "selecting the corresponding number. Respond only with the number of the correct answer.")


def preprocess(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    # paper 2's re.sub("[[.*?]]", "", t), written without the nested-set ambiguity Python warns about: one
    # of "[", ".", "*", "?" followed by "]" (lm-eval's tag removal it was meant to be would drop "[step]")
    text = re.sub(r"[\[.*?]\]", "", text)
    return text.replace("  ", " ")


@register("hellaswag")
class HellaSwag(DataTask):
    name = "hellaswag"
    max_new_tokens = 10
    default_splits = {"train": "train", "test": "validation"}

    def __init__(self, path: Optional[str] = None, stride: int = 10, shuffle_seed: int = 42, every_item: bool = False,
                 **source):
        source.setdefault("order", "file")
        super().__init__(path, **source)
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.stride, self.shuffle_seed, self.every_item = stride, shuffle_seed, every_item

    def validate(self, row: dict) -> None:
        for key in ("activity_label", "ctx_a", "ctx_b"):
            if not isinstance(row.get(key), str):
                raise ValueError(f"missing string field {key!r}")
        if not isinstance(row.get("endings"), (list, tuple)) or len(row["endings"]) != 4:
            raise ValueError("'endings' must hold 4 strings")
        if str(row.get("label")) not in ("0", "1", "2", "3"):
            raise ValueError(f"'label' must be 0–3, got {row.get('label')!r}")

    def examples(self, split: str, n: int, seed: int = 0) -> List[Example]:
        rows = self.rows(split)
        rng, out = random.Random(self.shuffle_seed), []
        for i in range(0, len(rows), self.stride):
            r = rows[i]
            order = list(range(4))
            rng.shuffle(order)
            context = preprocess(r["activity_label"] + ": " + r["ctx_a"] + " " + r["ctx_b"].capitalize())
            endings = [preprocess(r["endings"][j]) for j in order]
            out.append(Example(f"hellaswag/{split}/{i}", context, order.index(int(r["label"])) + 1, {"endings": endings}))
        return out if self.every_item and split == "test" else out[:n]  # probes and training take n

    def user_message(self, example: Example) -> str:
        options = "\n".join(f"{k}. {e}" for k, e in enumerate(example.meta["endings"], 1))
        return f"{INSTRUCTION}\n\nContext: {example.question}\n{options}\n\nAnswer: "

    def reward(self, completion: str, example: Example) -> Reward:
        m = re.search(r"[1-4]", completion)
        correct = m is not None and int(m.group()) == example.answer
        return Reward.binary(correct)
