"""``lowercase``: a toy reward for random-weight models in tests — the fraction of completion characters
that are ASCII lowercase letters. Random models emit varied tokens, so rewards vary across members and
samples and both learners get signal within a few steps."""
from __future__ import annotations

from typing import List

from esjax.tasks.base import Example, Reward, Task, register


@register("lowercase")
class Lowercase(Task):
    name = "lowercase"
    max_new_tokens = 8

    def examples(self, split: str, n: int, seed: int = 0) -> List[Example]:
        return [Example(f"lowercase/{split}/{seed}/{i}", f"Say something ({split} {seed}.{i}).", None) for i in range(n)]

    def reward(self, completion: str, example: Example) -> Reward:
        frac = sum("a" <= c <= "z" for c in completion) / max(len(completion), 1)
        return Reward(frac, frac > 0.5, {"lowercase": frac})
