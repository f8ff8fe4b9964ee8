"""Short-answer arithmetic: a procedural task a 135M model partly solves, so learning and forgetting
show within minutes on a CPU.

Kinds: ``add``/``sub``/``mul`` ("What is 23 + 45?") and ``word`` (a two-step story: "Tom has 12 apples. He
buys 7 more and gives away 5. How many apples does Tom have now?"). Knobs: digits per operand, the mix
of kinds. Reward = ``format_weight``·[a number was given] + [the last number equals the answer], read from
the completion's last 2,000 characters (a bounded window).
"""
from __future__ import annotations

import random
import re
from typing import List, Sequence

from esjax.tasks.base import Example, Reward, Task, last_number, parse_number, register

_NAMES = ("Tom", "Ana", "Lee", "Sam", "Mia", "Raj", "Eva", "Kai")
_ITEMS = ("apples", "books", "coins", "pens", "cards", "eggs", "stones", "shells")
KINDS = ("add", "sub", "mul", "word")


@register("arithmetic")
class Arithmetic(Task):
    name = "arithmetic"
    max_new_tokens = 24

    def __init__(self, kinds: Sequence[str] = ("add", "sub", "mul"), digits: int = 2, format_weight: float = 0.1,
                 instruction: str = "Answer with just the number."):
        bad = [k for k in kinds if k not in KINDS]
        if bad or not kinds:
            raise ValueError(f"unknown arithmetic kinds {bad}; choose from {KINDS}")
        if not 1 <= digits <= 6:
            raise ValueError(f"digits must be in [1, 6], got {digits}")
        self.kinds, self.digits, self.format_weight, self.instruction = tuple(kinds), digits, format_weight, instruction

    def _operand(self, rng, digits=None):
        d = digits or self.digits
        return rng.randint(10 ** (d - 1) if d > 1 else 1, 10 ** d - 1)

    def examples(self, split: str, n: int, seed: int = 0) -> List[Example]:
        rng = random.Random(f"arithmetic/{split}/{seed}/{self.kinds}/{self.digits}")
        out = []
        for i in range(n):
            kind = rng.choice(self.kinds)
            a, b = self._operand(rng), self._operand(rng)
            if kind == "add":
                q, ans = f"What is {a} + {b}?", a + b
            elif kind == "sub":
                a, b = max(a, b), min(a, b)
                q, ans = f"What is {a} - {b}?", a - b
            elif kind == "mul":
                b = self._operand(rng, 1)
                q, ans = f"What is {a} * {b}?", a * b
            else:
                name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
                c = rng.randint(1, a)
                q = (f"{name} has {a} {item}. {name} gets {b} more and then gives away {c}. "
                     f"How many {item} does {name} have now?")
                ans = a + b - c
            out.append(Example(f"arithmetic/{split}/{seed}/{i}", q, ans, {"kind": kind}))
        return out

    def user_message(self, example: Example) -> str:
        return f"{example.question} {self.instruction}".strip()

    def reward(self, completion: str, example: Example) -> Reward:
        text = re.sub(r"(?<=\d),(?=\d{3})", "", completion[-2000:])
        got = parse_number(last_number(text))
        correct = got is not None and got == example.answer
        fmt = float(got is not None)
        return Reward(self.format_weight * fmt + float(correct), correct, {"format": fmt, "answer": float(correct)})


@register("arithmetic-word")
class ArithmeticWord(Arithmetic):
    """The two-step word-problem variant: a held-out neighbour task for forgetting probes."""

    def __init__(self, kinds: Sequence[str] = ("word",), **kw):
        super().__init__(kinds=kinds, **kw)
