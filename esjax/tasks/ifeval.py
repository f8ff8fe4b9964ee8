"""IFEval, prompt-level strict accuracy (paper 1's hold-out, docs/protocols.md#c7).

Rows of ``google/IFEval``: ``key``, ``prompt``, ``instruction_id_list``, ``kwargs`` (one dict per
instruction). The checkers are Google's, as packaged by ``lm-eval`` (``lm_eval.tasks.ifeval``; install
``lm-eval langdetect immutabledict nltk`` and the nltk ``punkt`` data where allowed); esjax imports them
lazily and says so when they are missing. Correct iff every instruction is followed by the raw reply.
"""
from __future__ import annotations

from typing import Optional

from esjax.tasks.base import Example, Reward, register
from esjax.tasks.sources import DataTask


def instruction_registry():
    try:
        from lm_eval.tasks.ifeval import instructions_registry
    except ImportError as e:
        raise ImportError(f"IFEval's checkers come from lm-eval (pip install lm-eval langdetect immutabledict "
                          f"nltk): {e}") from None
    return instructions_registry.INSTRUCTION_DICT


@register("ifeval")
class IFEval(DataTask):
    name = "ifeval"
    max_new_tokens = 1024
    default_splits = {"train": "train", "test": "train"}

    def __init__(self, path: Optional[str] = None, **source):
        source.setdefault("order", "file")
        super().__init__(path, **source)

    def validate(self, row: dict) -> None:
        ids, kwargs = row.get("instruction_id_list"), row.get("kwargs")
        if not isinstance(row.get("prompt"), str) or not isinstance(ids, (list, tuple)) or not ids:
            raise ValueError("need string 'prompt' and a non-empty 'instruction_id_list'")
        if not isinstance(kwargs, (list, tuple)) or len(kwargs) != len(ids):
            raise ValueError("'kwargs' must hold one dict per instruction")

    def to_example(self, row: dict, uid: str) -> Example:
        return Example(uid, row["prompt"], list(row["instruction_id_list"]), {"kwargs": list(row["kwargs"])})

    def reward(self, completion: str, example: Example) -> Reward:
        registry = instruction_registry()
        followed = []
        for iid, kw in zip(example.answer, example.meta["kwargs"]):
            checker = registry[iid](iid)
            checker.build_description(**{k: v for k, v in (kw or {}).items() if v})
            args = checker.get_instruction_args()
            if args and "prompt" in args:
                checker.build_description(prompt=example.question)
            followed.append(bool(completion.strip()) and checker.check_following(completion))
        correct = all(followed)
        return Reward(float(correct), correct, {"instructions_followed": sum(followed) / len(followed)})
