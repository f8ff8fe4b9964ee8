"""Tasks and rewards: known completions, adversarial model output (bounded time, never raises), seeded
generators, local-file loaders with clear errors on malformed rows."""
import os
import random
import re

import pytest

from esjax.tasks import Example, encode_prompts, get_task, scan, task_names
from esjax.tasks.base import DatasetError
from esjax.tasks.countdown import reachable, tinyzero_format
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
def test_adversarial_equations_get_zero(payload):
    r = get_task("countdown").reward(f" x </think>\n<answer>{payload}</answer>", CD)
    assert r.parts["answer"] == 0.0
    assert evaluate(payload) is None


MB = 2 ** 20


def _every_reward():
    """(name, task, example) for every reward and answer extractor esjax has."""
    fx = lambda *p: os.path.join(FIX, *p)  # noqa: E731
    cd = Example("cd", "q", 24, {"nums": [2, 3, 4]})
    out = [(f"countdown/{s}", get_task("countdown", style=s), cd) for s in ("esjax", "paper2", "qiu", "boxed")]
    out += [(f"gsm8k/{r}", get_task("gsm8k", path=fx("gsm8k"), reward=r), Example("g", "q", "5"))
            for r in ("numeric", "string_match")]
    out += [(f"math/{r}", get_task("math", path=fx("math"), reward=r), Example("m", "q", "\\frac{1}{2}"))
            for r in ("equivalent", "paper1", "string_match")]
    out += [("olympiadbench", get_task("olympiadbench", path=fx("olympiadbench")), Example("o", "q", "5")),
            ("boolq", get_task("boolq", path=fx("boolq")), Example("b", "q", True)),
            ("chemistry", get_task("chemistry", path=fx("chemistry")), Example("c", "q", "B")),
            ("chemistry/lenient", get_task("chemistry", path=fx("chemistry"), lenient_fallback=True), Example("c", "q", "B")),
            ("arithmetic", get_task("arithmetic"), Example("a", "q", 5)),
            ("hellaswag", get_task("hellaswag", path=fx("hellaswag")), Example("h", "q", 2)),
            ("mmlu", get_task("mmlu", path=fx("mmlu")), Example("u", "q", "B")),
            ("lowercase", get_task("lowercase"), Example("l", "q", None))]
    return out


# ~1 MB completions that made the old regexes backtrack (repeated opening tags, unclosed braces, long
# whitespace runs after a keyword): every reward must return its ordinary answer. Each scan is linear in
# the text (esjax.tasks.scan), so the whole test runs in about a second; a quadratic extractor would not
# finish (800 KB of opening tags took 355 s).
ADVERSARIAL = {
    "answer_tags": "<answer>" * (MB // 8),
    "think_tags": "<think>" * (MB // 7),
    "format_pairs": "</think>\n<answer></answer>x" * (MB // 27),
    "boxed_opens": "\\boxed{" * (MB // 7),
    "open_braces": "\\boxed{" + "{" * MB,
    "text_spaces": "\\boxed{\\text{" + " " * MB + "{}}",
    "text_opens": "\\boxed{" + "\\text{" * (MB // 6) + "}" * (MB // 6 + 1),
    "slashes": "\\boxed{" + "1/" * (MB // 2) + "2}",
    "json_spaces": '"answer"' + " " * MB,
    "colon_spaces": "answer" + " " * MB + ":",
    "hashes": "#### " + "9" * MB,
    "digits": "1" * MB,
    "nul": "\x00\ufffd\ud800" * (MB // 3),
}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_every_reward_reads_1mb_adversarial_completions(name):
    text = ADVERSARIAL[name]
    assert len(text) >= 10 ** 6
    for task_name, task, ex in _every_reward():
        r = task.reward(text, ex)
        if task_name == "lowercase":
            continue
        assert r.correct is False and r.value in (0.0, 0.1, 0.01, 0.05, 0.06), (name, task_name, r)


def test_1mb_completions_are_read_to_the_end():
    """No hidden window: an answer followed or preceded by 1 MB still counts, as in the seeds' code."""
    cd = Example("cd", "q", 24, {"nums": [2, 3, 4]})
    pad = "Let me think. " * (MB // 14)
    for style in ("esjax", "paper2", "qiu"):
        task = get_task("countdown", style=style)
        assert task.reward(f"{pad}</think>\n<answer>2 * 3 * 4</answer>", cd).value == pytest.approx(1.1)
        assert task.reward(f" x </think>\n<answer>2 * 3 * 4</answer>{pad}", cd).value == pytest.approx(1.06)
        # 65k pairs: the first "</think>\n<answer>" opens the format, the last answer holds all of them
        pairs = "</think>\n<answer>" * (MB // 17) + "2 * 3 * 4</answer>"
        assert task.reward(pairs, cd).parts == {"format": 1.0, "answer": 0.0}
    assert get_task("countdown", style="boxed").reward(f"\\boxed{{2 * 3 * 4}}{pad}", cd).correct
    half = Example("m", "q", "\\frac{1}{2}")
    for rule in ("equivalent", "paper1"):
        math = get_task("math", path=os.path.join(FIX, "math"), reward=rule)
        assert math.reward(f"\\boxed{{\\frac{{1}}{{2}}}}{pad}", half).correct
        assert math.reward("\\boxed{" + "{" * MB + "\\frac{1}{2}" + "}" * (MB + 1), half).correct is False
    chem = get_task("chemistry", path=os.path.join(FIX, "chemistry"))
    assert chem.reward('"answer": "B"' + " ok" * (MB // 3), Example("c", "q", "B")).correct
    boolq = get_task("boolq", path=os.path.join(FIX, "boolq"))
    assert boolq.reward("\\boxed{yes}" + "\\boxed{" * (MB // 7), Example("b", "q", True)).correct


def test_scans_agree_with_the_regexes_they_replace():
    rng = random.Random(0)
    for _ in range(3000):
        t = "".join(rng.choice(["<a>", "</a>", "<", "a", ">", "/", "\n", "x"]) for _ in range(rng.randint(0, 12)))
        assert [t[a:b] for a, b in scan.spans(t, "<a>", "</a>")] == re.findall(r"<a>(.*?)</a>", t, re.DOTALL)
        assert scan.last_between(t, "<a>", "</a>") == (re.findall(r"<a>(.*?)</a>", t, re.DOTALL) or [None])[-1]
        assert scan.has_between(t, "<a>", "</a>") == bool(re.search(r"<a>.*?</a>", t, re.DOTALL))
        b = "".join(rng.choice(["\\t{", "{", "}", "x", "\\", "t"]) for _ in range(rng.randint(0, 12)))
        assert scan.unwrap(b, "\\t{", "}") == re.sub(r"\\t\{([^}]*)\}", r"\1", b)
        depth, close = 1, -1
        for k, ch in enumerate(b[1:], 1):
            depth += {"{": 1, "}": -1}.get(ch, 0)
            if depth == 0:
                close = k
                break
        assert scan.closing_brace(b, 1) == close
        f = "".join(rng.choice(["<think>", "</think>", "<answer>", "</answer>", "\n", "x", "</think>\n<answer>"])
                    for _ in range(rng.randint(0, 8)))
        full = re.match(r"^<think>.*?</think>\n<answer>.*?</answer>$", f, re.DOTALL)
        part = 0.1 * bool(re.search(r"<think>.*?</think>", f, re.DOTALL)) + 0.5 * bool(re.search(r"<answer>.*?</answer>", f, re.DOTALL))
        assert tinyzero_format(f) == (1.0 if full else part), f


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
    paper2 = get_task("gsm8k", path=os.path.join(FIX, "gsm8k"), reward="string_match")
    assert paper2.reward("#### 15,000", big).correct and paper2.reward("\\boxed{15000}", big).correct
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
