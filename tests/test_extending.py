"""Extending esjax without editing it (README "Extending esjax"): a task, a GRPO loss aggregation and an
advantage estimator, each defined and registered here, run through the real code on the tiny model; an
analysis metric written over the shared tree helpers. (Noise schemes: tests/test_noise_schemes.py.)"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from esjax.analysis import geometry as geo
from esjax.grpo import losses
from esjax.grpo.step import GRPOConfig
from esjax.tasks import base as task_base
from esjax.tasks.base import Example, Reward, Task, get_task, register, task_names


class FixedReward(Task):
    """Each example carries its reward (0.25 or 0.75) whatever the completion: the learners must log the
    example's reward for every sample of it."""

    name = "fixed-reward-test"
    max_new_tokens = 4

    def examples(self, split, n, seed=0):
        return [Example(f"fixed/{split}/{seed}/{i}", f"Item {i}?", 0.25 + 0.5 * (i % 2)) for i in range(n)]

    def reward(self, completion, example):
        return Reward(example.answer, example.answer > 0.5, {"fixed": example.answer})


def weights_token_mean_x2(mask):
    """Twice DAPO's token mean: the loss and its gradient double, nothing else changes."""
    return 2 * mask / jnp.maximum(mask.sum(), 1)


def advantages_rank(r, std_ddof, eps):
    """Centred within-group ranks (0..G-1 minus their mean): a rank-based advantage."""
    ranks = jnp.argsort(jnp.argsort(r, 1), 1).astype(jnp.float32)
    return ranks - ranks.mean(1, keepdims=True)



@pytest.fixture(autouse=True)
def registered(monkeypatch):
    """The registrations a user's module makes at import, undone after each test (other test files
    enumerate the registries)."""
    monkeypatch.setattr(task_base, "_REGISTRY", dict(task_base._REGISTRY))
    register("fixed-reward-test")(FixedReward)
    monkeypatch.setitem(losses.LOSS_AGGREGATION, "token_mean_x2-test", weights_token_mean_x2)
    monkeypatch.setitem(losses.ADVANTAGE_SCALES, "rank-test", advantages_rank)


def test_a_task_defined_here_runs_es_and_grpo_iterations(tokenizer):
    from esjax.es.step import ESConfig, init_state as es_init
    from esjax.es.trainer import make_es_iteration
    from esjax.grpo.step import init_state
    from esjax.grpo.trainer import make_grpo_iteration
    from esjax.models.registry import load_model

    assert "fixed-reward-test" in task_names()
    task = get_task("fixed-reward-test")
    exs = task.examples("train", 2)
    model = load_model("tiny-random-llama", with_tokenizer=False)
    es = ESConfig(population_size=4, sigma=0.02, alpha=0.01)
    _, m = make_es_iteration(model.cfg, tokenizer, task, es, 4, 2)(es_init(model.params, jax.random.key(0), es), exs,
                                                                   jax.random.key(1))
    assert m["reward_mean"] == pytest.approx(0.5) and m["train_accuracy"] == pytest.approx(0.5)
    assert m["fitness_std"] == 0 and m["completions"] == 8  # every member scores 0.25 and 0.75: mean 0.5
    cfg = GRPOConfig(group_size=2, prompts_per_step=2)
    _, g = make_grpo_iteration(model.cfg, tokenizer, task, cfg, 4)(init_state(model.params, jax.random.key(0), cfg),
                                                                    exs)
    assert g["reward_mean"] == pytest.approx(0.5) and g["zero_variance"] == 1.0 and g["reward_min"] == 0.25


def test_a_loss_aggregation_defined_here_runs_the_grpo_learner(tokenizer):
    """The registered aggregation reaches the learner: same rollout, twice token_mean's loss and gradient."""
    from esjax.grpo.step import init_state
    from esjax.grpo.trainer import make_grpo_iteration
    from esjax.models.registry import load_model

    model = load_model("tiny-random-llama", with_tokenizer=False)
    task = get_task("lowercase")
    exs = task.examples("train", 2)
    out = {}
    for agg in ("token_mean", "token_mean_x2-test"):
        cfg = GRPOConfig(group_size=4, prompts_per_step=2, loss_aggregation=agg, learning_rate=1e-3)
        it = make_grpo_iteration(model.cfg, tokenizer, task, cfg, 6)
        out[agg] = it(init_state(model.params, jax.random.key(0), cfg), exs)[1]
    a, b = out["token_mean"], out["token_mean_x2-test"]
    assert a["reward_mean"] == b["reward_mean"] and a["grad_norm"] > 0
    assert b["loss"] == pytest.approx(2 * a["loss"], rel=1e-5)
    assert b["grad_norm"] == pytest.approx(2 * a["grad_norm"], rel=1e-5)
    with pytest.raises(ValueError, match="unknown loss_aggregation 'nope'.*token_mean_x2-test"):
        GRPOConfig(loss_aggregation="nope")


def test_an_advantage_estimator_defined_here():
    r = np.array([[0.1, 0.9, 0.5], [3.0, 1.0, 2.0]])
    np.testing.assert_array_equal(losses.group_advantages(r, "rank-test"), [[-1, 1, 0], [1, -1, 0]])
    np.testing.assert_allclose(losses.group_advantages(r, "none"), r - r.mean(1, keepdims=True), rtol=1e-6)
    with pytest.raises(ValueError, match="unknown advantage scale 'nope'.*rank-test"):
        losses.group_advantages(r, "nope")


def max_abs_change_by_bucket(ft, base):
    """An analysis metric: {bucket: max |Δ|} over the update, from the shared helpers (geometry.update,
    named_leaves, bucket = esjax.trees' taxonomy). A pure function of params pytrees."""
    out = {}
    for path, d in geo.named_leaves(geo.update(ft, base)).items():
        b = geo.bucket(path)
        out[b] = max(out.get(b, 0.0), float(jnp.max(jnp.abs(d))))
    return out


def test_an_analysis_metric_over_the_shared_tree_helpers():
    base = {"embed": jnp.zeros((3, 2)), "layers": [{"wq": jnp.zeros((2, 2)), "bq": jnp.zeros(2),
                                                     "w_up": jnp.zeros((2, 4)), "attn_norm": jnp.ones(2)}]}
    ft = jax.tree.map(lambda x: x + 0.0, base)
    ft["layers"][0]["bq"] = jnp.array([0.0, -0.5])
    ft["layers"][0]["wq"] = jnp.array([[0.1, 0.0], [0.0, 0.0]])
    ft["layers"][0]["w_up"] = jnp.full((2, 4), 0.25, jnp.bfloat16).astype(jnp.float32)
    ft["embed"] = base["embed"].at[0, 0].set(2.0)
    got = max_abs_change_by_bucket(ft, base)
    assert got == pytest.approx({"Q": 0.5, "MLP": 0.25, "norm": 0.0, "other": 2.0})
