"""Prior-ability probes (esjax.tasks.prior): rewards on known completions, sizes, bounded parsing."""
import time

import pytest

from esjax.tasks import get_task
from esjax.tasks.prior import CAPITALS, WINDOW, mentions


def test_capitals_rewards_name_the_answer_as_whole_words():
    task = get_task("capitals")
    exs = task.examples("test", 280, 0)
    assert len({e.question for e in exs}) == 280 and {e.meta["kind"] for e in exs} == {"capital", "country"}
    peru = next(e for e in exs if e.question.startswith("What is the capital of Peru"))
    assert task.reward("The capital of Peru is Lima.", peru).correct
    assert not task.reward("The capital of Peru is Cusco.", peru).correct
    assert not task.reward("Limassol is a city in Cyprus.", peru).correct  # whole words only
    uk = next(e for e in exs if e.question.startswith("London is"))
    assert task.reward("London is the capital of the UK.", uk).correct  # a listed alias
    assert not task.reward("London is the capital of France.", uk).correct
    with pytest.raises(ValueError, match="capitals has 280 questions; 300"):
        task.examples("test", 300, 0)


def test_no_capital_question_is_answered_by_echoing_it():
    for country, capital in CAPITALS.items():
        assert not mentions(f"What is the capital of {country}?", capital), country
        assert not mentions(f"{capital.split('|')[0]} is the capital of which country?", country), country


def test_copy_reward_wants_the_phrase_in_order():
    task = get_task("copy")
    ex = task.examples("test", 5, 0)[0]
    words = ex.answer.split()
    assert 3 <= len(words) <= 5 and ex.question.endswith(ex.answer)
    assert task.reward(f"The {ex.answer}.", ex).correct
    assert task.reward(ex.answer.upper() + "!", ex).correct
    assert not task.reward(" ".join(reversed(words)), ex).correct
    assert not task.reward("I'm sorry, I can't do that.", ex).correct
    assert task.examples("test", 5, 0) == task.examples("test", 5, 0)
    assert task.examples("test", 5, 0) != task.examples("probe", 5, 0)


def test_probe_rewards_read_a_bounded_window_of_a_megabyte():
    ex = get_task("capitals").examples("test", 1, 0)[0]
    huge = "x " * 500_000 + ex.answer.split("|")[0]
    t0 = time.perf_counter()
    assert not get_task("capitals").reward(huge, ex).correct  # beyond the window
    assert get_task("capitals").reward(ex.answer.split("|")[0] + " " + huge, ex).correct
    assert time.perf_counter() - t0 < 1.0 and WINDOW == 300
