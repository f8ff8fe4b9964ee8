"""The seeds' tasks and probes (docs/protocols.md#c): loaders for every local format (parquet, save_to_disk,
JSONL, split slices), each paper's prompt and reward rule including its documented quirks, and the
multiple-choice log-prob scorer."""
import os

import jax
import numpy as np
import pytest

from esjax.evaluation import evaluate, letter_token_ids
from esjax.models.decoder import forward, positions_from_mask
from esjax.tasks import Example, encode_prompts, get_task
from esjax.tasks.base import DatasetError
from esjax.tasks.hashmark import string_match_extract
from esjax.tasks.math import paper1_equal
from esjax.tasks.sources import parse_split, read_split

FIX = os.path.join(os.path.dirname(__file__), "fixtures")
CD = Example("cd", "q", 98, {"nums": [44, 19, 35]})


@pytest.mark.parametrize("completion, correct", [
    ("so \\boxed{44 + 19 + 35}", True),
    ("\\boxed{44 + 19 + 35} no wait \\boxed{44 + 19}", False),     # the last box counts; 19 and 35 unused
    ("\\boxed{(44 + 19 + 35) * 1}", False),                          # an extra number
    ("\\boxed{44 \\times 2 + 19 - 35 + 26}", False),                 # \times is outside the charset (paper 1's TODO)
    ("\\boxed{{44 + 19 + 35}}", False),                              # nested braces: [^}]* cuts at the first }
    ("<answer>44 + 19 + 35</answer>", False),                        # the TinyZero tag does not count here
])
def test_countdown_boxed_paper1(completion, correct):
    r = get_task("countdown", style="boxed").reward(completion, CD)
    assert r.correct is correct and r.value == float(correct) and set(r.parts) == {"answer"}


def test_countdown_prompt_styles(tokenizer):
    ex = get_task("countdown").examples("train", 1)[0]
    p2 = get_task("countdown", style="paper2")
    msgs = p2.messages(ex)
    assert [m["role"] for m in msgs] == ["user"] and msgs[0]["content"].endswith(".Let me solve this step by step.\n<think>")
    assert "answer.Using the numbers " + str(np.array(ex.meta["nums"])) + "," in msgs[0]["content"]
    from esjax.tasks.countdown import numpy_list  # the seeds' context text prints the numbers as numpy does
    for nums in ([2, 54, 17], [83, 78, 1, 39], [44, 19, 35], [5, 100, 7, 61]):
        assert numpy_list(nums) == str(np.array(nums))
    assert numpy_list([83, 78, 1, 39]) == "[83 78  1 39]"
    # paper 2 scores "<think>" + completion: the completion closes the tag the prompt opened
    assert p2.reward(" 1+1 </think>\n<answer>0</answer>", CD).parts["format"] == 1.0
    qiu = get_task("countdown", style="qiu")
    ids = encode_prompts(tokenizer, qiu, [ex])[0]
    assert tokenizer.decode(ids) == qiu.user_message(ex) and "<|im_start|>" not in tokenizer.decode(ids)
    boxed = get_task("countdown", style="boxed")
    assert boxed.messages(ex)[1]["content"] == f"Numbers: {ex.meta['nums']}\nTarget: {ex.answer}"
    with pytest.raises(ValueError, match="style"):
        get_task("countdown", style="nope")


def test_countdown_from_local_files_with_split_slices():
    hub = get_task("countdown", style="boxed", path=os.path.join(FIX, "countdown"), order="file",
                   splits={"train": "train[0:2]", "test": "train[2:6]"})
    train, test = hub.examples("train", 10), hub.examples("test", 10)
    assert [e.meta["nums"] for e in train] == [[44, 19, 35], [2, 3, 4]] and len(test) == 4
    assert test[0].answer == 26 and hub.reward("\\boxed{10 + 5 * 2 + 1 * 6}", test[0]).correct is False
    assert hub.reward("\\boxed{(10 + 5) * 2 - 1 * 4}", test[0]).correct is False  # 4 is not among the numbers
    seeds_json = get_task("countdown", path=os.path.join(FIX, "countdown", "countdown.json"), order="file")
    assert [e.answer for e in seeds_json.examples("train", 3)] == [98, 24, 26]


def test_split_specs_and_loader_errors(tmp_path):
    assert parse_split("train[200:2200]") == ("train", 200, 2200) and parse_split("test") == ("test", None, None)
    with pytest.raises(ValueError, match="bad split spec"):
        parse_split("train[a:b]")
    with pytest.raises(FileNotFoundError, match="no split 'dev'.*train.parquet"):
        read_split(os.path.join(FIX, "boolq"), "dev")
    bad = tmp_path / "train.parquet"
    bad.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(DatasetError, match="cannot read parquet"):
        read_split(str(tmp_path), "train")
    with pytest.raises(DatasetError, match=r"row 1: missing integer list field 'nums'"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist([{"nums": [1, 2], "target": 3}, {"nums": None, "target": 4}]), str(bad))
        get_task("countdown", path=str(tmp_path)).examples("train", 2)
    lenient = get_task("countdown", path=str(tmp_path), skip_malformed=True)
    assert len(lenient.examples("train", 5)) == 1 and "row 1" in lenient.skipped[0]
    with pytest.raises(ValueError, match="need path="):
        get_task("countdown", order="file")


@pytest.mark.parametrize("task", ["gsm8k", "math", "olympiadbench"])
def test_a_verl_rows_prompt_is_sent_verbatim_whatever_suffix_it_carries(task):
    """Paper 2's MATH test parquet ends "…have?Let's think…" (no space): its prompt used to get the suffix
    a second time. The seeds send each verl row's prompt as it is, with, without or lacking the space."""
    from esjax.tasks.hashmark import SUFFIX

    kw = {"prompt": "hashmark", "reward": "string_match"} if task == "math" else {}
    t = get_task(task, path=os.path.join(FIX, "gsm8k_verl"), **kw)
    for content in ("How many?" + SUFFIX, "How many?" + SUFFIX.lstrip(), "How many?"):
        row = {"prompt": [{"role": "user", "content": content}], "reward_model": {"ground_truth": "7"}}
        ex = t.to_example(row, "r0")
        assert t.user_message(ex) == content and ex.question == "How many?"
    if task == "gsm8k":  # a suffix asked for explicitly replaces the row's
        assert get_task(task, path=os.path.join(FIX, "gsm8k_verl"), suffix=" Go.").user_message(ex) == "How many? Go."


def test_hashmark_string_match_paper2():
    gsm = get_task("gsm8k", path=os.path.join(FIX, "gsm8k_verl"), reward="string_match", order="file")
    exs = gsm.examples("train", 10)
    assert [e.answer for e in exs] == ["7", "25", "1234", "7"] and not exs[0].question.endswith("####\".")
    assert gsm.user_message(exs[0]).endswith('output the final answer after "####".')
    big = exs[2]
    assert gsm.reward("... #### 1,234", big).correct and gsm.reward("so \\boxed{1234}", big).correct
    assert not gsm.reward("#### 1234.0", big).correct                        # no numeric equivalence
    assert get_task("gsm8k", path=os.path.join(FIX, "gsm8k_verl")).reward("#### 1234.0", big).correct  # esjax's rule
    assert gsm.reward("#### 1234" + " ok" * 90, big).correct                  # still inside the last 300 chars
    assert not gsm.reward("#### 1234" + "x" * 300, big).correct               # beyond the last 300 characters
    # the truncated nested \boxed quirk: [^}]* stops at the first closing brace
    assert string_match_extract("\\boxed{\\frac{1}{2}}") == "\\frac{1"
    oly = get_task("olympiadbench", path=os.path.join(FIX, "olympiadbench"), order="file")
    ex = oly.examples("test", 5)[0]
    assert ex.answer == "$4 \\sqrt{5}$" and not oly.reward("#### 4\\sqrt{5}", ex).correct
    assert oly.reward("\\boxed{$4 \\sqrt{5}$}", ex).correct is False  # "$" is stripped from the prediction only


def test_math_paper1_rules_and_stratified_train():
    task = get_task("math", path=os.path.join(FIX, "math_nlile"), stratify_per_level=2, reward="paper1", order="file")
    train = task.examples("train", 200)
    assert [e.meta["level"] for e in train] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert [e.answer for e in train[:2]] == ["10", "12"]
    assert len(task.examples("test", 500)) == 4
    assert paper1_equal("\\dfrac{1}{2}", "0.5") and paper1_equal("3/4", "0.75") and paper1_equal("\\text{5}", "5.00")
    assert paper1_equal("90^\\circ", "90") and paper1_equal("1,000", "1000")
    assert not paper1_equal("\\sqrt{4}", "2")  # no LaTeX evaluation beyond \frac in paper 1
    assert task.reward("\\boxed{\\frac{10}{1}}", train[0]).correct
    hm = get_task("math", path=os.path.join(FIX, "math_nlile"), prompt="hashmark", reward="string_match")
    assert hm.system_prompt is None and hm.user_message(train[0]).endswith('"####".')


def test_chemistry_mcq_paper1():
    task = get_task("chemistry", path=os.path.join(FIX, "chemistry"), train_size=3)
    train, test = task.examples("train", 200), task.examples("test", 200)
    assert len(train) == 3 and len(test) == 5  # 8 chemistry MCQs kept of 10 rows
    assert {e.uid for e in train}.isdisjoint(e.uid for e in test)
    assert task.examples("train", 200) == train  # random.seed(42) shuffle, deterministic
    ex = train[0]
    msg = task.user_message(ex)
    assert msg.startswith("Question: Which element") and "\nA) Hydrogen\nB) Helium" in msg and msg.endswith('"answer": "C".')
    other = "ABCD".replace(ex.answer, "")[0]
    assert task.reward(f'{{"answer": "{ex.answer}"}}', ex).correct
    assert task.reward(f'answer: {ex.answer.lower()}', ex).correct
    assert not task.reward(f'"answer": "{other}" ... answer: {ex.answer}', ex).correct  # JSON form wins
    text = "I think this is a tricky one."
    strict = task.reward(text, Example("c", "q", "A"))
    lenient = get_task("chemistry", path=os.path.join(FIX, "chemistry"), lenient_fallback=True).reward(text, Example("c", "q", "A"))
    assert not strict.correct and lenient.correct  # the article "a" counts as "A" only with paper 1's quirk on


def test_boolq_paper1():
    task = get_task("boolq", path=os.path.join(FIX, "boolq"), order="file")
    train, test = task.examples("train", 200), task.examples("test", 2000)
    assert train[0].answer is True and test[0].question == "is water wet"
    assert task.user_message(train[0]) == "Passage: On a clear day the sky is blue.\n\nQuestion: is the sky blue on a clear day"
    assert task.reward("\\boxed{Yes.}", train[0]).correct and task.reward("\\boxed{TRUE}", train[0]).correct
    assert not task.reward("\\boxed{no}", train[0]).correct and not task.reward("yes", train[0]).correct
    assert task.reward("\\boxed{incorrect}", train[1]).correct


def test_hellaswag_probe_paper2():
    task = get_task("hellaswag", path=os.path.join(FIX, "hellaswag"))
    exs = task.examples("test", 100)
    assert [e.uid.rsplit("/", 1)[1] for e in exs] == ["0", "10", "20"]  # every 10th item
    for e, i in zip(exs, (0, 10, 20)):
        gold = ["puts the tray in the oven.", "eats the bowl.", "flies away. now.", "paints the dog."][i % 4]
        assert e.meta["endings"][e.answer - 1] == gold  # the gold ending follows its shuffle
    assert exs[0].question == "Baking cookies: A woman mixes batch 0 of dough. She"
    assert task.reward(f" {exs[0].answer}.", exs[0]).correct and not task.reward("none", exs[0]).correct
    assert task.user_message(exs[0]).endswith("\n\nAnswer: ")
    assert [e.uid for e in task.examples("test", 2)] == [e.uid for e in exs[:2]]  # a run's eval_size caps it
    every = get_task("hellaswag", path=os.path.join(FIX, "hellaswag"), every_item=True)
    assert len(every.examples("test", 2)) == 3 and len(every.examples("probe", 2)) == 2  # probes still take n
    # paper 2's preprocess, pattern "[[.*?]]" as written there: "[step]" tags stay, "?]" / ".]" go
    from esjax.tasks.hellaswag import preprocess
    assert preprocess(" How to bake [title] Preheat. [step] Mix it?]  now") == "How to bake. Preheat. [step] Mix it now"


def test_mmlu_five_shot_and_letter_logprob_scoring(tokenizer):
    from esjax.models.registry import load_model

    task = get_task("mmlu", path=os.path.join(FIX, "mmlu"), order="file")
    exs = task.examples("test", 6)
    assert exs[0].question.count("Answer:") == 6 and exs[0].question.startswith(
        "The following are multiple choice questions (with answers) about  high school chemistry.")  # sic (paper 2)
    assert exs[0].answer == "B" and exs[0].question.endswith("D. z\nAnswer:")
    with pytest.raises(ValueError, match="3 dev questions, 5 shots"):
        get_task("mmlu", path=os.path.join(FIX, "mmlu"), splits={"dev": "dev[0:3]"}, order="file").examples("test", 1)
    model = load_model("tiny-random-llama")
    res = evaluate(model.params, model.cfg, model.tokenizer, task, exs, 1)
    # reference: the same argmax computed directly from the forward pass, one prompt at a time
    ids = letter_token_ids(model.tokenizer, "ABCD")
    hits, whole = [], []
    for ex, prompt in zip(exs, encode_prompts(model.tokenizer, task, exs)):
        tok = np.asarray([prompt], np.int32)
        mask = np.ones_like(tok, bool)
        logits, _ = forward(model.params, model.cfg, tok, positions_from_mask(mask), mask)
        logp = np.asarray(jax.nn.log_softmax(logits[0, -1]))
        lp = np.where(logp[ids] >= np.sort(logp)[-20], logp[ids], -np.inf).max(-1)  # vLLM's top-20 (paper 2)
        hits.append(bool(np.isfinite(lp).any()) and "ABCD"[int(np.argmax(lp))] == ex.answer)
        whole.append("ABCD"[int(np.argmax(logp[ids].max(-1)))] == ex.answer)
    assert res["accuracy"] == pytest.approx(np.mean(hits)) and res["completion_length"] == 1
    every = get_task("mmlu", path=os.path.join(FIX, "mmlu"), order="file", top_k=0)  # the whole vocabulary
    assert evaluate(model.params, model.cfg, model.tokenizer, every, exs, 1)["accuracy"] == pytest.approx(np.mean(whole))


def test_ifeval_rows_and_checker_glue(monkeypatch):
    task = get_task("ifeval", path=os.path.join(FIX, "ifeval"))
    exs = task.examples("test", 5)
    assert exs[1].answer == ["length_constraints:number_words"] and exs[1].meta["kwargs"][0]["num_words"] == 5

    class Lowercase:  # the lm-eval checker protocol: build_description, get_instruction_args, check_following
        def __init__(self, iid):
            self.kw = {}

        def build_description(self, **kw):
            self.kw.update(kw)

        def get_instruction_args(self):
            return self.kw

        def check_following(self, text):
            return text == text.lower()

    import esjax.tasks.ifeval as ifeval

    monkeypatch.setattr(ifeval, "instruction_registry", lambda: {"change_case:english_lowercase": Lowercase})
    assert task.reward("soft rain on the roof", exs[0]).correct
    assert not task.reward("Soft Rain", exs[0]).correct and not task.reward("   ", exs[0]).correct
