"""MATH (Hendrycks) from local data: the original folder of JSON files (``train/<subject>/<id>.json``),
JSONL, parquet or ``save_to_disk`` (e.g. ``nlile/hendrycks-MATH-benchmark`` with an ``answer`` column), or
paper 2's verl parquet. The reference is the ``answer`` column, else the last brace-matched ``\\boxed{}``
of the solution.

Prompt: ``prompt="boxed"`` (paper 1's system prompt, §C.3) or ``"hashmark"`` (paper 2's "####" suffix).
Reward (binary):
- ``"equivalent"`` (default, esjax's rule): the last ``\\boxed{}``/``\\fbox{}`` (brace-matched) equal after
  :func:`normalize` (``\\dfrac``→``\\frac``, ``\\left``/``\\right``, spacing, ``$``, ``\\%``, degrees,
  ``\\text{units}``), or numerically equal after a safe LaTeX → arithmetic translation (``\\frac``,
  ``\\sqrt``, ``^``) evaluated by :mod:`esjax.tasks.safe_arith`;
- ``"paper1"``: paper 1's rule exactly (ESvsGRPO@43eed8c ``MATHTask.compute_reward``, docs/protocols.md#c3):
  :func:`paper1_extract` then :func:`paper1_equal`, quirks included (the ``\\frac{a}{b}`` reading is
  anchored at the start only, so ``\\frac{1}{2}\\text{ cm}``, ``\\frac{1}{2}.`` and ``\\frac{1}{2}\\pi``
  count as ½; ``\\fbox`` is not read; ``float()`` reads ``1e3`` and ``1_000``);
- ``"string_match"``: paper 2's "####" rule (:mod:`esjax.tasks.hashmark`).
Each rule reads the whole completion in time linear in its length (:mod:`esjax.tasks.scan`).
``stratify_per_level=k`` takes the first k training problems of each level in file order (paper 1: 40).
"""
from __future__ import annotations

import re
from typing import List, Optional

from esjax.tasks.base import Example, Reward, register
from esjax.tasks.hashmark import is_verl_row, string_match, user_message, verl_meta, verl_question_answer
from esjax.tasks.safe_arith import evaluate
from esjax.tasks.scan import closing_brace, unwrap
from esjax.tasks.sources import DataTask

SYSTEM = ("You are a math expert. Solve the following competition math problem.\n\nPlease reason step by step, "
          "and put your final answer within \\boxed{}.")
REWARDS = ("equivalent", "paper1", "string_match")


def last_boxed(text: str) -> Optional[str]:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) with nested braces matched, stripped; None
    if absent or unclosed."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    j = closing_brace(text, i)
    return text[i:j].strip() if j >= 0 else None


def paper1_extract(text: str) -> str:
    """Paper 1's ``_extract_boxed_answer``: the content of the last ``\\boxed{`` up to its matching brace,
    unstripped; "" if there is none or it is unclosed."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return ""
    i = start + len("\\boxed{")
    j = closing_brace(text, i)
    return text[i:j] if j >= 0 else ""


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
    s = re.sub(r"\\text\{([^{}]*)\}", r"\1", s)  # (a \s* before the group would backtrack quadratically)
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
    """Paper 1's ``_normalize_answer``, step for step: strip; ``re.sub(r"\\\\text\\{([^}]*)\\}", r"\\1")``;
    remove the spaces (" " only); if a "." is left and no letter, and ``float()`` reads an integral value
    v, ``str(int(v))``; remove ``\\$ $ \\% % ^{\\circ} ^\\circ \\circ``; ``\\dfrac``/``\\tfrac`` → ``\\frac``."""
    s = unwrap(ans.strip(), "\\text{", "}").replace(" ", "")
    if "." in s and not any(map(str.isalpha, s)):
        try:
            v = float(s)
            if v == int(v):
                s = str(int(v))
        except (ValueError, OverflowError):
            pass
    for a in ("\\$", "$", "\\%", "%", "^{\\circ}", "^\\circ", "\\circ"):
        s = s.replace(a, "")
    return s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")


_PAPER1_FRAC = re.compile(r"\\frac\{([^}]+)\}\{([^}]+)\}")  # used with .match: anchored at the start only


def _paper1_frac(s: str) -> Optional[float]:
    """Paper 1's ``_latex_frac_to_float``: a leading ``\\frac{a}{b}`` read as float(a)/float(b), else None."""
    m = _PAPER1_FRAC.match(s)
    if m:
        try:
            return float(m.group(1)) / float(m.group(2))
        except (ValueError, ZeroDivisionError, OverflowError):
            pass
    return None


def _paper1_slash(s: str) -> float:
    parts = s.split("/", 2)  # the seed splits at every "/" and reads the first two parts
    return float(parts[0]) / float(parts[1])


def paper1_equal(pred: Optional[str], gold: Optional[str]) -> bool:
    """Paper 1's ``_answers_equal``: after :func:`paper1_normalize`, equal strings; or both read as numbers
    (a leading ``\\frac{a}{b}``, else ``float()`` with commas removed) within 1e-6; or, when only one side
    holds a "/", its first two "/"-separated parts divided vs ``float()`` of the other, within 1e-6.
    ``float()`` is Python's (it reads ``1e3``, ``1_000``, ``nan``); nothing is evaluated."""
    if pred is None or gold is None:
        return False
    pred, gold = paper1_normalize(pred), paper1_normalize(gold)
    if pred == gold:
        return True
    try:
        x = _paper1_frac(pred)
        x = float(pred.replace(",", "")) if x is None else x
        y = _paper1_frac(gold)
        y = float(gold.replace(",", "")) if y is None else y
        if abs(x - y) < 1e-6:
            return True
    except (ValueError, OverflowError):
        pass
    try:
        if "/" in pred and "/" not in gold:
            return abs(_paper1_slash(pred) - float(gold)) < 1e-6
        if "/" in gold and "/" not in pred:
            return abs(_paper1_slash(gold) - float(pred)) < 1e-6
    except (ValueError, ZeroDivisionError, OverflowError):
        pass
    return False


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
        meta = {"level": level, "type": row.get("type") or row.get("subject")}
        return Example(uid, problem, answer, {**meta, **verl_meta(row)})

    def select(self, rows, split: str, n: int, seed: int) -> List[int]:
        keep = [i for i, r in enumerate(rows) if not self.levels or question_answer(r)[2] in self.levels]
        if self.stratify and split == "train":
            per_level: dict = {}
            for i in keep:
                per_level.setdefault(question_answer(rows[i])[2], []).append(i)
            return sorted(i for level in sorted(per_level, key=str) for i in per_level[level][:self.stratify])[:n]
        return [keep[j] for j in super().select(keep, split, n, seed)]

    def user_message(self, example: Example) -> str:
        return user_message(example) if self.prompt == "hashmark" else example.question  # a verl row verbatim

    def reward(self, completion: str, example: Example) -> Reward:
        if self.reward_mode == "string_match":
            correct = string_match(completion, example.answer)
        elif self.reward_mode == "paper1":
            pred = paper1_extract(completion)
            correct = bool(pred) and paper1_equal(pred, example.answer)
        else:
            correct = equivalent(last_boxed(completion), example.answer)
        return Reward.binary(correct)


def _level(row) -> Optional[int]:
    m = re.search(r"\d+", str(row.get("level", "")))
    return int(m.group()) if m else None
