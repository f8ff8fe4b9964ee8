"""Paper 2's "####" protocol for GSM8K, MATH and OlympiadBench (docs/protocols.md#c2–#c4), and verl rows.

Prompt: the question + ``SUFFIX`` as the single user message. Reward (es-catastrophic@565029a
``gsm8k_reward.my_reward_fn``, binary): take the last 300 characters (a bounded window: the work does not
grow with the completion); the last ``####\\s*([\\-0-9\\.,]+)``, else the last
``oxed\\s*\\{\\s*([^}]*)\\s*\\}`` matched case-insensitively (``\\BOXED{7}`` counts; no nested braces:
``\\boxed{\\frac{1}{2}}`` is cut at the first ``}``, a documented quirk that biases MATH/OlympiadBench low;
the seed's optional ``$``/``$$`` around the box never change what is captured); strip whitespace, drop
``,`` and ``$``; correct iff the string equals ``str(ground_truth)``. No numeric equivalence.

verl parquet rows (paper 2's data files) hold ``prompt`` (chat messages whose last content is question +
suffix) and ``reward_model.ground_truth``; :func:`verl_question_answer` reads them.
"""
from __future__ import annotations

import re
from typing import Optional, Tuple

SUFFIX = ' Let\'s think step by step and output the final answer after "####".'
_HASH = re.compile(r"####\s*([\-0-9\.,]+)")
_BOXED = re.compile(r"oxed\s*\{\s*([^}]*)\s*\}", re.IGNORECASE)


def string_match_extract(text: str) -> Optional[str]:
    tail = text[-300:]
    found = _HASH.findall(tail) or _BOXED.findall(tail)
    return found[-1].strip().replace(",", "").replace("$", "") if found else None


def string_match(text: str, ground_truth) -> bool:
    got = string_match_extract(text)
    return got is not None and got == str(ground_truth)


def is_verl_row(row: dict) -> bool:
    return isinstance(row.get("prompt"), (list, tuple)) and isinstance(row.get("reward_model"), dict)


def verl_question_answer(row: dict) -> Tuple[str, str]:
    """(question without the "####" suffix, ground truth) of a verl row; ValueError if malformed."""
    msgs = row["prompt"]
    if not msgs or not isinstance(msgs[-1], dict) or not isinstance(msgs[-1].get("content"), str):
        raise ValueError("verl row: prompt has no message content")
    truth = row["reward_model"].get("ground_truth")
    if truth is None:
        raise ValueError("verl row: reward_model has no ground_truth")
    question = msgs[-1]["content"]
    return question[:len(question) - len(verl_suffix(row))], str(truth)


def verl_suffix(row: dict) -> str:
    """The "####" instruction exactly as a verl row's prompt ends with it: ``SUFFIX``, ``SUFFIX`` without its
    leading space (paper 2's MATH test parquet: "…have?Let's think…"), or "" when absent. The seeds feed
    the prompt verbatim, so question + verl_suffix(row) is the row's own text (:func:`user_message`)."""
    content = row["prompt"][-1]["content"]
    for suffix in (SUFFIX, SUFFIX.lstrip()):
        if content.endswith(suffix):
            return suffix
    return ""


def verl_meta(row: dict) -> dict:
    """An example's meta for the suffix its verl row carried (:func:`user_message`); {} for other rows."""
    return {"suffix": verl_suffix(row)} if is_verl_row(row) else {}


def user_message(example, suffix: str = SUFFIX) -> str:
    """The question + the suffix the example's verl row carried (``meta["suffix"]``), else ``suffix``."""
    return example.question + example.meta.get("suffix", suffix)
