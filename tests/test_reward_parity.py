"""Reward parity with the seeds' own reward code (issue 15).

``fixtures/reward_parity/table.jsonl`` holds ~370 generated completions per style, each scored by the
seed's reward function at the commit the presets cite (the table's ``_meta`` names them; the completions
come from ``generate_completions.py``). Every esjax task that implements a seed rule must give the same
score on every row, except the deliberate safety deviations listed here and in ``docs/presets.md``.
"""
import json
import os
from collections import defaultdict

import pytest

from esjax.tasks import Example, get_task

FIX = os.path.join(os.path.dirname(__file__), "fixtures")
TABLE = os.path.join(FIX, "reward_parity", "table.jsonl")

# id -> why esjax scores it differently (all: esjax never evals; it refuses ** and //, and bounds the
# answer to 256 characters and 32 syntax-tree levels). The seeds give these answers full credit.
DEVIATIONS = {
    "countdown_tinyzero/dev_pow": "** refused",
    "countdown_tinyzero/dev_floordiv": "// refused",
    "countdown_tinyzero/dev_long": "answer longer than 256 characters",
    "countdown_tinyzero/dev_long_parens": "answer longer than 256 characters",
    "countdown_tinyzero/dev_deep_unary": "deeper than 32 levels",
    "countdown_boxed/dev_pow": "** refused",
    "countdown_boxed/dev_floordiv": "// refused",
    "countdown_boxed/dev_long": "answer longer than 256 characters",
    "countdown_boxed/dev_deep_unary": "deeper than 32 levels",
}


def _scorers(style):
    """The esjax tasks that claim the seed's rule for a table style."""
    path = lambda *p: os.path.join(FIX, *p)  # noqa: E731
    return {
        "countdown_tinyzero": lambda: [get_task("countdown", style="paper2"), get_task("countdown", style="qiu")],
        "countdown_boxed": lambda: [get_task("countdown", style="boxed")],
        "math_paper1": lambda: [get_task("math", path=path("math"), reward="paper1")],
        "boolq": lambda: [get_task("boolq", path=path("boolq"))],
        "chemistry": lambda: [get_task("chemistry", path=path("chemistry"), lenient_fallback=True)],
        "hashmark": lambda: [get_task("gsm8k", path=path("gsm8k"), reward="string_match"),
                             get_task("math", path=path("math"), reward="string_match"),
                             get_task("olympiadbench", path=path("olympiadbench"))],
    }[style]()


def _example(row):
    e = row["example"]
    if row["style"].startswith("countdown"):
        return Example(row["id"], "q", e["target"], {"nums": e["numbers"]})
    return Example(row["id"], "q", e["ground_truth"] if row["style"] == "hashmark" else e["answer"])


def _rows():
    with open(TABLE, encoding="utf-8") as f:
        lines = [json.loads(line) for line in f]
    assert "_meta" in lines[0] and len(lines[0]["_meta"]["seeds"]) == 6
    by_style = defaultdict(list)
    for row in lines[1:]:
        by_style[row["style"]].append(row)
    return by_style


ROWS = _rows()


@pytest.mark.parametrize("style", sorted(ROWS))
def test_every_row_scores_as_the_seed(style):
    rows = ROWS[style]
    assert len(rows) >= 300 and len({r["completion"] for r in rows}) >= 300
    assert len({r["seed_score"] for r in rows}) >= 2  # both credited and uncredited rows
    differ = {}
    for task in _scorers(style):
        for row in rows:
            got = task.reward(row["completion"], _example(row))
            if got.value != row["seed_score"]:
                differ[row["id"]] = (row["seed_score"], got.value)
            elif "seed_parts" in row:
                assert got.parts == row["seed_parts"], row["id"]
    expected = {k for k in DEVIATIONS if k.startswith(style + "/")}
    assert set(differ) == expected, {k: differ[k] for k in set(differ) ^ expected if k in differ}
    for key in expected:  # each deviation withholds exactly the answer credit the seed's eval gave
        seed, ours = differ[key]
        assert seed - ours == 1.0


def test_issue_examples_score_as_the_seeds():
    cd = Example("cd", "q", 98, {"nums": [44, 19, 35]})
    newline_answer = "... </think>\n<answer>\n(35 + (44 + 19))\n</answer>"
    assert get_task("countdown", style="paper2").reward(newline_answer, cd).value == pytest.approx(0.1)
    assert get_task("countdown", style="qiu").reward(newline_answer, cd).value == pytest.approx(0.1)
    assert get_task("countdown", style="esjax").reward(newline_answer, cd).value == pytest.approx(1.1)  # esjax's rule
    math = get_task("math", path=os.path.join(FIX, "math"), reward="paper1")
    half = Example("m", "q", "\\frac{1}{2}")
    for said in ("\\frac{1}{2}\\text{ cm}", "\\frac{1}{2}.", "\\frac{1}{2}\\pi", "\\frac{1.0}{2}"):
        assert math.reward(f"\\boxed{{{said}}}", half).correct, said
    assert not math.reward("\\fbox{\\frac{1}{2}}", half).correct
    boolq = get_task("boolq", path=os.path.join(FIX, "boolq"))
    yes = Example("b", "q", True)
    assert [boolq.reward(f"\\boxed{{{s}}}", yes).correct for s in ("yes .", "_yes_", "“yes”", "yes。")] == [
        False, False, True, True]
    chem = get_task("chemistry", path=os.path.join(FIX, "chemistry"), lenient_fallback=True)
    assert chem.reward('"Answer": "B" then C', Example("c", "q", "B")).correct
    gsm = get_task("gsm8k", path=os.path.join(FIX, "gsm8k"), reward="string_match")
    assert gsm.reward("\\BOXED{7}", Example("g", "q", "7")).correct


def test_table_completions_are_the_generators_output(capsys):
    import runpy

    runpy.run_path(os.path.join(FIX, "reward_parity", "generate_completions.py"), run_name="__main__")
    generated = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    table = [{k: r[k] for k in ("id", "style", "completion", "example")} for style in ROWS.values() for r in style]
    assert sorted(generated, key=lambda r: r["id"]) == sorted(table, key=lambda r: r["id"])
