"""A whitelist evaluator for untrusted arithmetic text — never ``eval``.

``evaluate("(3 + 4) * 2")`` parses with :func:`ast.parse` and walks only numbers, ``+ - * /``, unary ±
and parentheses (``allow_pow`` adds ``**``/``^`` with small integer exponents and ``sqrt(x)``), using
exact :class:`fractions.Fraction` arithmetic. Bounded: input length, tree depth, node count and the size
of every intermediate value. Anything else — names, calls, attributes, huge numbers, division by zero —
returns ``None``; it never raises.
"""
from __future__ import annotations

import ast
import math
import re
from fractions import Fraction
from typing import Optional

MAX_CHARS = 256
MAX_DEPTH = 32
MAX_NODES = 128
MAX_MAGNITUDE = Fraction(10) ** 30
MAX_EXPONENT = 12
_ALLOWED_CHARS = re.compile(r"^[0-9+\-*/().^ sqrt]*$")


class _Reject(Exception):
    pass


def _check(v: Fraction) -> Fraction:
    if abs(v.numerator) > MAX_MAGNITUDE * max(1, v.denominator) or v.denominator > MAX_MAGNITUDE:
        raise _Reject("magnitude")
    return v


def _eval(node, depth: int, allow_pow: bool) -> Fraction:
    if depth > MAX_DEPTH:
        raise _Reject("depth")
    if isinstance(node, ast.Expression):
        return _eval(node.body, depth + 1, allow_pow)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _check(Fraction(node.value) if isinstance(node.value, int) else Fraction(str(node.value)))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        v = _eval(node.operand, depth + 1, allow_pow)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp):
        a = _eval(node.left, depth + 1, allow_pow)
        b = _eval(node.right, depth + 1, allow_pow)
        if isinstance(node.op, ast.Add):
            return _check(a + b)
        if isinstance(node.op, ast.Sub):
            return _check(a - b)
        if isinstance(node.op, ast.Mult):
            return _check(a * b)
        if isinstance(node.op, ast.Div):
            if b == 0:
                raise _Reject("division by zero")
            return _check(a / b)
        if allow_pow and isinstance(node.op, ast.Pow):
            if b.denominator != 1 or abs(b) > MAX_EXPONENT or (a == 0 and b < 0):
                raise _Reject("exponent")
            return _check(a ** int(b))
    if (allow_pow and isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "sqrt"
            and len(node.args) == 1 and not node.keywords):
        v = _eval(node.args[0], depth + 1, allow_pow)
        if v < 0:
            raise _Reject("sqrt of negative")
        return _check(Fraction(math.sqrt(v)))
    raise _Reject(type(node).__name__)


def evaluate(text: str, allow_pow: bool = False) -> Optional[Fraction]:
    """Exact value of an arithmetic expression, or None if it is not a safe, bounded one."""
    if not isinstance(text, str) or len(text) > MAX_CHARS or not _ALLOWED_CHARS.match(text):
        return None
    if not allow_pow and ("^" in text or "**" in text or "sqrt" in text):
        return None
    try:
        tree = ast.parse(text.replace("^", "**").strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        return None
    try:
        return _eval(tree, 0, allow_pow)
    except (_Reject, OverflowError, ValueError, ZeroDivisionError, RecursionError):
        return None


def integers_in(text: str):
    """The integer literals of an expression, in order (for 'use each number once' checks)."""
    return [int(t) for t in re.findall(r"\d+", text)]
