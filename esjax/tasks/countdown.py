"""Countdown: reach a target from 3–4 numbers with + − × ÷, each number used once (docs/protocols.md#c1).

Examples are generated procedurally (default) or read from local data (``path=``: rows with
``nums``/``numbers`` and ``target``, e.g. ``Jiayi-Pan/Countdown-Tasks-3to4`` or the seeds'
``countdown.json`` / verl parquet; see :mod:`esjax.tasks.sources`). Prompt styles:

- ``"esjax"`` (default): Qiu's instruction split into system + user message, assistant opened with
  ``<think>``;
- ``"paper2"``: Qiu's whole raw string (numbers as ``[44 19 35]``, ending ``\\n<think>``) as the single
  user message, the scored text being ``"<think>" + completion`` (paper 2's ``countdown_reward.py``);
- ``"qiu"``: the same raw string without any chat template (Qiu et al.'s script);
- ``"boxed"``: paper 1 (system + ``Numbers: [44, 19, 35]\\nTarget: 98``), binary reward on the stripped
  content of the last ``\\boxed{}`` without nested braces (ESvsGRPO@43eed8c ``CountdownTaskNew``).

TinyZero reward (all styles but ``boxed``), the seeds' ``reward_function`` (es-catastrophic@565029a
``countdown_reward.py`` = es-fine-tuning-paper@523afc8 ``countdown/countdown_task.py``)::

    reward = w_format · format + w_answer · answer        (defaults 0.1 and 1.0, as in the seeds' code)
    format = 1   if re.match(r"^<think>.*?</think>\\n<answer>.*?</answer>$", text, re.DOTALL)
                 ("$" also matches before one final "\\n")
           = 0.1·[has <think>…</think>] + 0.5·[has <answer>…</answer>]   otherwise
    answer = 1   if the content of the last <answer>…</answer> passes the check below

Answer check (all styles): the content, as given, matches ``^[0-9+\\-*/() ]+$`` (``re.match``: one
trailing "\\n" allowed), its integers equal the given numbers as multisets (``exact_use=False``: each at
most once), and its value is within 1e-5 of the target. ``paper2``/``qiu`` check the raw content as the
seeds do, so ``<answer>\\n(35 + (44 + 19))\\n</answer>`` earns format credit only; ``esjax`` strips
whitespace inside ``<answer>`` first (es-at-scale's newer grader does too). Tags are found by linear
scans over the whole text (:mod:`esjax.tasks.scan`): any completion costs time linear in its length.

The equation is evaluated by :mod:`esjax.tasks.safe_arith` (exact rationals, bounded), never ``eval``.
Deliberate deviations from the seeds' ``eval`` (listed in ``docs/presets.md``): ``**`` and ``//`` are
refused, and an answer longer than 256 characters or nested deeper than 32 syntax-tree levels (e.g. 40
unary minus signs) scores 0 where ``eval`` would accept it.
"""
from __future__ import annotations

import itertools
import random
import re
from collections import Counter
from fractions import Fraction
from typing import List, Optional, Tuple

from esjax.tasks.base import Example, Reward, last_flat_boxed, register
from esjax.tasks.safe_arith import MAX_CHARS, evaluate, integers_in
from esjax.tasks.scan import has_between, last_between
from esjax.tasks.sources import DataTask

PROMPT = ("Using the numbers {nums}, create an equation that equals {target}. You can use basic arithmetic "
          "operations (+, -, *, /) and each number can only be used once. Show your work in <think> </think> "
          "tags. And return the final answer in <answer> </answer> tags, for example <answer> (1 + 2) / 3 "
          "</answer>. Let me solve this step by step.")
SYSTEM = ("You are a helpful assistant. You first think about the reasoning process in your mind and then "
          "provide the user with the answer.")
QIU_TEXT = SYSTEM + PROMPT.replace(". Let me", ".Let me") + "\n<think>"  # nums as numpy prints them: "[ 2 54 17]"
BOXED_SYSTEM = ("You are a math assistant. Using the given numbers, create an arithmetic expression that equals the "
                "target.\n\nRules:\n- Use each number exactly once\n- Use +, -, *, / operations\n\nPlease reason step "
                "by step, and put your final answer within \\boxed{}.")
BOXED_USER = "Numbers: {nums}\nTarget: {target}"
STYLES = ("esjax", "paper2", "qiu", "boxed")
_CHARSET = re.compile(r"^[0-9+\-*/() ]+$")  # used with .match: "$" also matches before one final "\n"
_MIDDLE = "</think>\n<answer>"
_OPS = ("+", "-", "*", "/")


def _combos(items):
    """Every (value, expression) combining all ``items`` [(Fraction, str)] with + − × ÷."""
    if len(items) == 1:
        yield items[0]
        return
    for i, j in itertools.permutations(range(len(items)), 2):
        (a, ea), (b, eb) = items[i], items[j]
        rest = [x for k, x in enumerate(items) if k not in (i, j)]
        for op in _OPS:
            if op == "/" and b == 0:
                continue
            v = {"+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b, "/": lambda: a / b}[op]()
            yield from _combos(rest + [(v, f"({ea} {op} {eb})")])


def reachable(nums: List[int], use_all: bool = True) -> dict:
    """Values reachable from ``nums`` (each number exactly once, or any sub-multiset) → one expression."""
    out = {}
    for k in ([len(nums)] if use_all else range(1, len(nums) + 1)):
        for idx in itertools.combinations(range(len(nums)), k):
            for v, e in _combos([(Fraction(nums[i]), str(nums[i])) for i in idx]):
                out.setdefault(v, e)
    return out


def numpy_list(nums) -> str:
    """The numbers as ``str(np.array(nums))`` prints them — the form of the seeds' ``context`` text (Qiu's
    countdown.json, paper 2's parquet): one width for all, right-aligned, "[ 2 54 17]", "[83 78  1 39]"."""
    w = max(len(str(n)) for n in nums)
    return "[" + " ".join(str(n).rjust(w) for n in nums) + "]"


def _row_numbers_target(row: dict):
    src = row.get("reward_model", {}).get("ground_truth", row) if isinstance(row.get("reward_model"), dict) else row
    nums = src.get("nums", src.get("numbers"))
    if not isinstance(nums, (list, tuple)) or not nums or not all(isinstance(x, int) or str(x).isdigit() for x in nums):
        raise ValueError("missing integer list field 'nums' (or 'numbers')")
    target = src.get("target")
    if target is None or not re.fullmatch(r"-?\d+(?:\.\d+)?", str(target).strip()):
        raise ValueError(f"missing or non-numeric field 'target' ({target!r})")
    return [int(x) for x in nums], Fraction(str(target).strip())


@register("countdown")
class Countdown(DataTask):
    name = "countdown"
    max_new_tokens = 256
    default_splits = {"train": "train", "test": "test"}

    def __init__(self, style: str = "esjax", path: Optional[str] = None, min_numbers: int = 3, max_numbers: int = 4,
                 max_value: int = 99, target_range: Tuple[int, int] = (10, 100), solvable_only: bool = True,
                 format_weight: float = 0.1, answer_weight: float = 1.0, exact_use: bool = True, **source):
        if style not in STYLES:
            raise ValueError(f"countdown style must be one of {STYLES}, got {style!r}")
        self.style = style
        self.system_prompt = {"esjax": SYSTEM, "boxed": BOXED_SYSTEM}.get(style)
        self.assistant_prefix = "<think>" if style == "esjax" else ""
        self.score_prefix = "" if style == "boxed" else "<think>"
        self.chat_template = style != "qiu"
        self.from_data = path is not None or source.get("source") == "tfds"  # else generated procedurally
        if self.from_data:
            super().__init__(path, **source)
        elif source:
            raise ValueError(f"countdown data options {sorted(source)} need path=")
        if not 2 <= min_numbers <= max_numbers <= 6:
            raise ValueError(f"need 2 <= min_numbers <= max_numbers <= 6, got {min_numbers}, {max_numbers}")
        if max_value < 1 or target_range[0] > target_range[1]:
            raise ValueError(f"bad max_value={max_value} or target_range={target_range}")
        self.min_numbers, self.max_numbers, self.max_value = min_numbers, max_numbers, max_value
        self.target_range, self.solvable_only = target_range, solvable_only
        self.format_weight, self.answer_weight, self.exact_use = format_weight, answer_weight, exact_use

    def validate(self, row: dict) -> None:
        _row_numbers_target(row)

    def to_example(self, row: dict, uid: str) -> Example:
        nums, target = _row_numbers_target(row)
        target = int(target) if target.denominator == 1 else target
        return Example(uid, PROMPT.format(nums=nums, target=target), target, {"nums": nums, "solution": row.get("solution")})

    def user_message(self, example: Example) -> str:
        nums, target = example.meta["nums"], example.answer
        if self.style == "boxed":
            return BOXED_USER.format(nums=list(nums), target=target)
        if self.style == "esjax":
            return PROMPT.format(nums=list(nums), target=target)
        return QIU_TEXT.format(nums=numpy_list(nums), target=target)

    def examples(self, split: str, n: int, seed: int = 0) -> List[Example]:
        if self.from_data:
            return super().examples(split, n, seed)
        rng = random.Random(f"countdown/{split}/{seed}")
        out = []
        while len(out) < n:
            nums = [rng.randint(1, self.max_value) for _ in range(rng.randint(self.min_numbers, self.max_numbers))]
            if self.solvable_only:
                values = reachable(nums, use_all=self.exact_use)
                lo, hi = self.target_range
                cands = sorted(int(v) for v in values if v.denominator == 1 and lo <= v <= hi)
                if not cands:
                    continue
                target = rng.choice(cands)
                solution = values[Fraction(target)]
            else:
                target, solution = rng.randint(*self.target_range), None
            out.append(Example(f"countdown/{split}/{seed}/{len(out)}", PROMPT.format(nums=nums, target=target), target,
                               {"nums": nums, "solution": solution}))
        return out

    def reward(self, completion: str, example: Example) -> Reward:
        if self.style == "boxed":
            boxed = last_flat_boxed(completion)
            correct = boxed is not None and self.check_equation(boxed.strip(), example.meta["nums"], example.answer)
            return Reward.binary(correct)
        text = self.score_prefix + completion
        fmt = tinyzero_format(text)
        answer = last_between(text, "<answer>", "</answer>")
        if answer is not None and self.style == "esjax":
            answer = answer.strip()
        correct = self.check_equation(answer, example.meta["nums"], example.answer)
        value = self.format_weight * fmt + self.answer_weight * float(correct)
        return Reward(value, correct, {"format": fmt, "answer": float(correct)})

    def check_equation(self, equation: Optional[str], nums: List[int], target) -> bool:
        """The seeds' answer check of ``equation`` as given: ``re.match(r"^[0-9+\\-*/() ]+$")``, its integers
        == ``nums`` as multisets (``exact_use``; else each at most once), value within 1e-5 of ``target``."""
        if not equation or len(equation) > MAX_CHARS or not _CHARSET.match(equation):
            return False  # (over MAX_CHARS evaluate() would refuse it anyway: the check saves the parsing)
        used, avail = Counter(integers_in(equation)), Counter(nums)
        if self.exact_use and used != avail:
            return False
        if any(used[k] > avail[k] for k in used):
            return False
        value = evaluate(equation)
        return value is not None and abs(value - Fraction(target)) < Fraction(1, 10 ** 5)


def tinyzero_format(text: str) -> float:
    """The seeds' ``format_reward_function(text)`` (no end token) in linear time.

    ``re.match(r"^<think>.*?</think>\\n<answer>.*?</answer>$", text, re.DOTALL)`` succeeds iff the text
    starts with ``<think>``, ends with ``</answer>`` or ``</answer>\\n`` (the closing tag at index e), and the
    first ``</think>\\n<answer>`` after the opening tag ends at or before e. Otherwise 0.1·[a ``<think>`` is
    followed by a ``</think>``] + 0.5·[an ``<answer>`` is followed by an ``</answer>``].
    """
    if text.endswith("</answer>"):
        end = len(text) - len("</answer>")
    elif text.endswith("</answer>\n"):
        end = len(text) - len("</answer>\n")
    else:
        end = -1
    if end >= 0 and text.startswith("<think>"):
        mid = text.find(_MIDDLE, len("<think>"))
        if 0 <= mid and mid + len(_MIDDLE) <= end:
            return 1.0
    return 0.1 * has_between(text, "<think>", "</think>") + 0.5 * has_between(text, "<answer>", "</answer>")
