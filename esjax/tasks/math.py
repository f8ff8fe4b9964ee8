"""MATH (Hendrycks) from local JSON: ``problem``, ``solution`` containing ``\\boxed{…}``, ``level``, ``type``.

Accepts the original folder layout (``train/<subject>/<id>.json``), a JSON list or JSONL. The reference is
the last ``\\boxed{}`` of the solution (brace matched). A completion is correct when its last boxed answer
is equivalent: equal after :func:`normalize` (``\\dfrac``→``\\frac``, ``\\left``/``\\right``, spacing,
``$``, ``\\%``, degrees, ``\\text{units}``), or numerically equal after a safe LaTeX → arithmetic
translation (``\\frac``, ``\\sqrt``, ``^``) evaluated by :mod:`esjax.tasks.safe_arith` (no sympy ``eval``).
"""
from __future__ import annotations

import os
import random
import re
from typing import List, Optional

from esjax.tasks.base import Example, Reward, Task, read_records, register
from esjax.tasks.safe_arith import evaluate

SYSTEM = ("You are a math expert. Solve the following competition math problem.\n\nPlease reason step by step, "
          "and put your final answer within \\boxed{}.")


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


def _validate(row: dict) -> None:
    for key in ("problem", "solution"):
        if not isinstance(row.get(key), str):
            raise ValueError(f"missing string field {key!r}")
    if last_boxed(row["solution"]) is None:
        raise ValueError("solution has no \\boxed{} answer")


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


@register("math")
class MATH(Task):
    name = "math"
    system_prompt = SYSTEM
    max_new_tokens = 512

    def __init__(self, path: Optional[str] = None, levels: Optional[List[int]] = None, skip_malformed: bool = False):
        if path is None:
            raise ValueError("MATH needs path= to local Hendrycks MATH JSON files")
        self.path, self.levels, self.skip_malformed = path, levels, skip_malformed
        self.skipped: List[str] = []

    def examples(self, split: str, n: int, seed: int = 0) -> List[Example]:
        path = os.path.join(self.path, split) if os.path.isdir(os.path.join(self.path, split)) else self.path
        if os.path.isdir(self.path) and not os.path.exists(path):
            path = os.path.join(self.path, f"{split}.jsonl")
        rows, skipped = read_records(path, self.skip_malformed, _validate)
        self.skipped += skipped
        if self.levels:
            rows = [r for r in rows if _level(r) in self.levels]
        order = list(range(len(rows)))
        random.Random(f"math/{split}/{seed}").shuffle(order)
        return [Example(f"math/{split}/{i}", rows[i]["problem"], last_boxed(rows[i]["solution"]),
                        {"level": _level(rows[i]), "type": rows[i].get("type")}) for i in order[:n]]

    def reward(self, completion: str, example: Example) -> Reward:
        correct = equivalent(last_boxed(completion[-20000:]), example.answer)
        return Reward(float(correct), correct, {"answer": float(correct)})


def _level(row) -> Optional[int]:
    m = re.search(r"\d+", str(row.get("level", "")))
    return int(m.group()) if m else None
