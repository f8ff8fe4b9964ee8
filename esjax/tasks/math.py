"""MATH (Hendrycks) from local data: the original folder of JSON files (``train/<subject>/<id>.json``),
JSONL, parquet or ``save_to_disk`` (e.g. ``nlile/hendrycks-MATH-benchmark`` with an ``answer`` column), or
paper 2's verl parquet. The reference is the ``answer`` column, else the last brace-matched ``\\boxed{}``
of the solution.

Prompt: ``prompt="boxed"`` (paper 1's system prompt, §C.3) or ``"hashmark"`` (paper 2's "####" suffix).
Reward (binary):
- ``"equivalent"`` (default): last boxed answer equal after :func:`normalize` (``\\dfrac``→``\\frac``,
  ``\\left``/``\\right``, spacing, ``$``, ``\\%``, degrees, ``\\text{units}``), or numerically equal after a
  safe LaTeX → arithmetic translation (``\\frac``, ``\\sqrt``, ``^``) evaluated by :mod:`esjax.tasks.safe_arith`;
- ``"paper1"``: paper 1's exact rule (:func:`paper1_equal`, seeds brief §C.3);
- ``"string_match"``: paper 2's "####" rule (:mod:`esjax.tasks.hashmark`).
``stratify_per_level=k`` takes the first k training problems of each level in file order (paper 1: 40).
"""
from __future__ import annotations

import re
from typing import List, Optional

from esjax.tasks.base import Example, Reward, register
from esjax.tasks.hashmark import SUFFIX, is_verl_row, string_match, verl_question_answer
from esjax.tasks.safe_arith import evaluate
from esjax.tasks.sources import DataTask

SYSTEM = ("You are a math expert. Solve the following competition math problem.\n\nPlease reason step by step, "
          "and put your final answer within \\boxed{}.")
REWARDS = ("equivalent", "paper1", "string_match")


def last_boxed(text: str) -> Optional[str]:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) with nested braces matched."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth, j = 1, i
    while j < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        j += 1
    return text[i:j - 1].strip() if depth == 0 else None


def question_answer(row: dict):
    """(problem, reference answer, level) of a Hendrycks / nlile / verl row; ValueError if malformed."""
    if is_verl_row(row):
        return (*verl_question_answer(row), _level(row.get("extra_info") or {}))
    if not isinstance(row.get("problem"), str):
        raise ValueError("missing string field 'problem'")
    if isinstance(row.get("answer"), str):
        return row["problem"], row["answer"], _level(row)
    if not isinstance(row.get("solution"), str):
        raise ValueError("missing string field 'solution'")
    answer = last_boxed(row["solution"])
    if answer is None:
        raise ValueError("solution has no \\boxed{} answer")
    return row["problem"], answer, _level(row)


def normalize(ans: str) -> str:
    s = ans.strip()
    s = re.sub(r"\\text\{\s*([^{}]*)\}", r"\1", s)
    s = re.sub(r"\\mbox\{[^{}]*\}", "", s)
    for a, b in (("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\left", ""), ("\\right", ""), ("\\!", ""),
                 ("\\,", ""), ("\\;", ""), ("\\$", ""), ("$", ""), ("\\%", ""), ("%", ""), ("^{\\circ}", ""),
                 ("^\\circ", ""), ("\\circ", ""), ("\\displaystyle", "")):
        s = s.replace(a, b)
    s = re.sub(r"\s+", "", s)
    s = re.sub(r"(?<=\d)(cm|m|km|inches|inch|feet|ft|degrees|units|dollars|cents)$", "", s)
    s = s.rstrip(".")
    if re.fullmatch(r"-?\d+\.0+", s):
        s = s.split(".")[0]
    return s


def latex_to_arith(s: str) -> Optional[str]:
    """Translate simple LaTeX numerals (\\frac, \\sqrt, ^, \\cdot, \\times) to safe_arith syntax."""
    s = normalize(s).replace("\\cdot", "*").replace("\\times", "*").replace(",", "")
    for _ in range(8):
        s2 = re.sub(r"\\frac\{([^{}]*)\}\{([^{}]*)\}", r"((\1)/(\2))", s)
        s2 = re.sub(r"\\frac(\d)(\d)", r"(\1/\2)", s2)
        s2 = re.sub(r"\\sqrt\{([^{}]*)\}", r"sqrt(\1)", s2)
        s2 = re.sub(r"\\sqrt(\d+)", r"sqrt(\1)", s2)
        s2 = re.sub(r"\^\{([^{}]*)\}", r"^(\1)", s2)
        if s2 == s:
            break
        s = s2
    s = re.sub(r"(\d|\))(sqrt|\()", r"\1*\2", s)  # implicit multiplication: 2sqrt(3), 3(4)
    return s if re.fullmatch(r"[0-9+\-*/().^ sqrt]+", s) else None


def equivalent(a: Optional[str], b: Optional[str]) -> bool:
    if a is None or b is None:
        return False
    na, nb = normalize(a), normalize(b)
    if na == nb:
        return True
    ea, eb = latex_to_arith(a), latex_to_arith(b)
    if ea is None or eb is None:
        return False
    va, vb = evaluate(ea, allow_pow=True), evaluate(eb, allow_pow=True)
    return va is not None and vb is not None and abs(float(va) - float(vb)) <= 1e-6 * max(1.0, abs(float(vb)))


def paper1_normalize(ans: str) -> str:
    """Paper 1's ``math.py`` normalisation (§C.3): \\text{x}→x, no spaces, integral decimals → integers,
    no $ / % / degree marks, \\dfrac and \\tfrac → \\frac."""
    s = re.sub(r"\\text\{([^{}]*)\}", r"\1", ans.strip()).replace(" ", "")
    for a in ("\\$", "$", "\\%", "%", "^{\\circ}", "^\\circ", "\\circ"):
        s = s.replace(a, "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    if re.fullmatch(r"-?\d+\.0*", s):
        s = s.split(".")[0]
    return s


def _paper1_number(s: str) -> Optional[float]:
    m = re.fullmatch(r"(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}", s)
    if m:
        den = float(m.group(3))
        return None if den == 0 else (-1 if m.group(1) else 1) * float(m.group(2)) / den
    m = re.fullmatch(r"(-?\d+)/(-?\d+)", s)
    if m:
        return None if float(m.group(2)) == 0 else float(m.group(1)) / float(m.group(2))
    try:
        return float(s.replace(",", ""))
    except ValueError:
        return None


def paper1_equal(pred: Optional[str], gold: Optional[str]) -> bool:
    """Exact string match after :func:`paper1_normalize`, or |a − b| < 1e-6 for simple ``\\frac{a}{b}``,
    ``a/b`` and plain numbers (no sympy, no eval)."""
    if pred is None or gold is None:
        return False
    a, b = paper1_normalize(pred), paper1_normalize(gold)
    if a == b:
        return True
    x, y = _paper1_number(a), _paper1_number(b)
    return x is not None and y is not None and abs(x - y) < 1e-6


@register("math")
class MATH(DataTask):
    name = "math"
    tfds_name = "hendrycks_math"
    max_new_tokens = 512

    def __init__(self, path: Optional[str] = None, levels: Optional[List[int]] = None, prompt: str = "boxed",
                 reward: str = "equivalent", stratify_per_level: int = 0, **source):
        if prompt not in ("boxed", "hashmark"):
            raise ValueError(f"prompt must be 'boxed' or 'hashmark', got {prompt!r}")
        if reward not in REWARDS:
            raise ValueError(f"reward must be one of {REWARDS}, got {reward!r}")
        super().__init__(path, **source)
        self.levels, self.prompt, self.reward_mode, self.stratify = levels, prompt, reward, stratify_per_level
        self.system_prompt = SYSTEM if prompt == "boxed" else None

    def validate(self, row: dict) -> None:
        question_answer(row)

    def to_example(self, row: dict, uid: str) -> Example:
        problem, answer, level = question_answer(row)
        return Example(uid, problem, answer, {"level": level, "type": row.get("type") or row.get("subject")})

    def select(self, rows, split: str, n: int, seed: int) -> List[int]:
        keep = [i for i, r in enumerate(rows) if not self.levels or question_answer(r)[2] in self.levels]
        if self.stratify and split == "train":
            per_level: dict = {}
            for i in keep:
                per_level.setdefault(question_answer(rows[i])[2], []).append(i)
            return sorted(i for level in sorted(per_level, key=str) for i in per_level[level][:self.stratify])[:n]
        return [keep[j] for j in super().select(keep, split, n, seed)]

    def user_message(self, example: Example) -> str:
        return example.question + (SUFFIX if self.prompt == "hashmark" else "")

    def reward(self, completion: str, example: Example) -> Reward:
        if self.reward_mode == "string_match":
            correct = string_match(completion, example.answer)
        else:
            pred = last_boxed(completion[-20000:])
            correct = (paper1_equal if self.reward_mode == "paper1" else equivalent)(pred, example.answer)
        return Reward.binary(correct)


def _level(row) -> Optional[int]:
    m = re.search(r"\d+", str(row.get("level", "")))
    return int(m.group()) if m else None
