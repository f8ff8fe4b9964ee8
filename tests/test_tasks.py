"""Tasks and rewards: known completions, adversarial model output (bounded time, never raises), seeded
generators, local-file loaders with clear errors on malformed rows."""
import os
import time

import pytest

from esjax.tasks import Example, encode_prompts, get_task, task_names
from esjax.tasks.base import DatasetError
from esjax.tasks.countdown import reachable
from esjax.tasks.gsm8k import extract_answer
from esjax.tasks.math import equivalent, last_boxed
from esjax.tasks.safe_arith import evaluate

FIX = os.path.join(os.path.dirname(__file__), "fixtures")
CD = Example("cd", "q", 24, {"nums": [2, 3, 4]})


def test_registry_names():
    assert {"countdown", "gsm8k", "math", "arithmetic", "arithmetic-word", "lowercase"} <= set(task_names())
    with pytest.raises(ValueError, match="unknown task"):
        get_task("chess")


@pytest.mark.parametrize("completion, value, correct", [
    (" 2*3*4=24 </think>\n<answer>2 * 3 * 4</answer>", 1.1, True),           # perfect format, correct
    (" hmm </think>\n<answer>(2 + 4) * 3</answer>", 0.1, False),             # wrong value (18)
    (" 2*3*4 </think> <answer>2*3*4</answer>", 0.06 + 1.0, True),            # not the exact layout: 0.1·(0.1 + 0.5)
    ("2*3*4 = 24", 0.0, False),                                              # unformatted
    (" x </think>\n<answer>2*3*4</answer> then <answer>2+3+4</answer>", 0.1 * 1.0, False),  # last answer counts
    (" x </think>\n<answer>2*3*4*1</answer>", 0.1, False),                   # extra number
    (" x </think>\n<answer>24</answer>", 0.1, False),                        # numbers not used
    (" x </think>\n<answer>2 * 3 * 4</answer> extra text", 1.0 + 0.06, True),
])
def test_countdown_known_rewards(completion, value, correct):
    r = get_task("countdown").reward(completion, CD)
    assert r.value == pytest.approx(value) and r.correct == correct


@pytest.mark.parametrize("payload", [
    "9**9**9**9", "2" * 1000 + "*" + "3" * 1000, "(" * 5000 + "1" + ")" * 5000, "1/0", "1/(2-2)",
    "１２ + ３", "__import__('os').system('echo hi')", "().__class__", "x" * 10 ** 6, "1e308*1e308", "(2+3" * 300,
])
def test_adversarial_equations_get_zero_quickly(payload):
    t0 = time.perf_counter()
    r = get_task("countdown").reward(f" x </think>\n<answer>{payload}</answer>", CD)
    assert r.parts["answer"] == 0.0
    assert evaluate(payload) is None
    assert time.perf_counter() - t0 < 1.0


def test_adversarial_text_for_every_task_is_bounded():
    gsm = get_task("gsm8k", path=os.path.join(FIX, "gsm8k"))
    math = get_task("math", path=os.path.join(FIX, "math"))
    ar = get_task("arithmetic")
    evil = ["\\boxed{" * 20000, "#### " + "9" * 100000, "<answer>" * 50000, "1" * 10 ** 6, "\x00\ufffd" * 1000]
    t0 = time.perf_counter()
    for text in evil:
        assert gsm.reward(text, Example("g", "q", "5")).value == 0.0
        assert math.reward(text, Example("m", "q", "5")).value == 0.0
        ar.reward(text, Example("a", "q", 5))
    assert time.perf_counter() - t0 < 5.0


def test_safe_arith_exact_rationals():
    assert evaluate("(1 + 2) / 3") == 1
    assert evaluate("7 / 2") * 2 == 7
    assert evaluate("2 ^ 3", allow_pow=True) == 8 and evaluate("2 ^ 3") is None
    assert evaluate("sqrt(16)", allow_pow=True) == 4
    assert evaluate("abs(-3)") is None and evaluate("2 ** 100", allow_pow=True) is None


def test_countdown_generator_is_deterministic_and_solvable():
    task = get_task("countdown")
    a, b = task.examples("train", 10, seed=3), task.examples("train", 10, seed=3)
    assert a == b and a != task.examples("train", 10, seed=4)
    for ex in a:
        assert task.check_equation(ex.meta["solution"], ex.meta["nums"], ex.answer)
        assert 3 <= len(ex.meta["nums"]) <= 4
    assert 24 in reachable([2, 3, 4]) and 9 in reachable([2, 3, 4], use_all=False)
    with pytest.raises(ValueError, match="min_numbers"):
        get_task("countdown", min_numbers=1)


def test_gsm8k_loader_extraction_and_rewards():
    task = get_task("gsm8k", path=os.path.join(FIX, "gsm8k"))
    train = task.examples("train", 100)
    assert len(train) == 24 and task.examples("train", 5, seed=1) == task.examples("train", 5, seed=1)
    ex = train[0]
    assert task.reward(f"So the total is {ex.answer}.\n#### {ex.answer}", ex).correct
    assert task.reward(f"The answer is \\boxed{{{ex.answer}}}", ex).correct
    assert task.reward(f"... making {ex.answer}", ex).correct  # last-number fallback
    assert not task.reward("#### 0.5", ex).correct
    big = [e for e in task.examples("test", 100) if e.answer == "15000"][0]  # "#### 15,000": commas dropped, as verl
    assert task.reward("#### 15000", big).correct and task.reward("$15,000.00", big).correct
    assert extract_answer("#### 12 and then 13") == "12"
    assert "####" in task.user_message(ex)


def test_malformed_rows_raise_with_file_and_line_or_are_counted():
    task = get_task("gsm8k", path=os.path.join(FIX, "gsm8k", "malformed.jsonl"))
    with pytest.raises(DatasetError, match=r"malformed.jsonl:2: answer has no '#### N'"):
        task.examples("train", 10)
    lenient = get_task("gsm8k", path=os.path.join(FIX, "gsm8k", "malformed.jsonl"), skip_malformed=True)
    assert len(lenient.examples("train", 10)) == 1
    assert [s.split(": ")[0].rsplit(":", 1)[1] for s in lenient.skipped] == ["2", "3", "4"]
    assert "bad JSON" in lenient.skipped[1] and "missing string field 'question'" in lenient.skipped[2]
    with pytest.raises(DatasetError, match=r"malformed.jsonl:1: solution has no \\boxed"):
        get_task("math", path=os.path.join(FIX, "math", "malformed.jsonl")).examples("train", 5)
    with pytest.raises(FileNotFoundError, match="dataset not found"):
        get_task("gsm8k", path="/nonexistent/gsm8k.jsonl").examples("train", 1)


def test_math_boxed_extraction_and_equivalence():
    assert last_boxed("a \\boxed{1} b \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{\\frac{\\sqrt{3}}{2}}") == "\\frac{\\sqrt{3}}{2}"
    assert last_boxed("\\boxed{unclosed") is None
    assert equivalent("\\dfrac{3}{4}", "0.75") and equivalent("\\frac12", "0.5")
    assert equivalent("5\\sqrt{2}", "\\sqrt{50}") and equivalent("120^\\circ", "120")
    assert equivalent("\\left( 2, 3 \\right)", "(2,3)") and equivalent("10\\%", "10")
    assert equivalent("\\text{5 cm}", "5") and not equivalent("\\frac{1}{3}", "0.33")
    task = get_task("math", path=os.path.join(FIX, "math"))
    train = task.examples("train", 100)
    assert len(train) >= 20 and all(e.meta["level"] for e in train)
    ex = [e for e in task.examples("test", 100) if e.answer == "\\frac{5}{6}"][0]
    assert task.reward("so the sum is \\boxed{\\dfrac{5}{6}}", ex).correct
    assert not task.reward("\\boxed{\\frac{5}{7}}", ex).correct
    assert task.examples("train", 100) == get_task("math", path=os.path.join(FIX, "math"), levels=None).examples("train", 100)
    assert all(e.meta["level"] == 1 for e in get_task("math", path=os.path.join(FIX, "math"), levels=[1]).examples("train", 100))


def test_arithmetic_task_and_chat_prompts(tokenizer):
    task = get_task("arithmetic", kinds=("add", "mul", "word"), digits=2)
    exs = task.examples("train", 30, seed=0)
    assert exs == task.examples("train", 30, seed=0) and {e.meta["kind"] for e in exs} == {"add", "mul", "word"}
    ex = Example("a", "What is 12 + 30?", 42)
    assert task.reward("12 + 30 = 42", ex).value == pytest.approx(1.1)
    assert task.reward("The answer is 41.", ex).value == pytest.approx(0.1)
    assert task.reward("no idea", ex).value == 0.0
    ids = encode_prompts(tokenizer, get_task("countdown"), get_task("countdown").examples("train", 1))[0]
    text = tokenizer.decode(ids)
    assert text.endswith("<|im_start|>assistant\n<think>") and "Using the numbers" in text
