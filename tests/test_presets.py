"""The seed presets (paper1, paper2, qiu): each loads, resolves its data under ``data_root`` and runs one ES
iteration and one GRPO step end to end on the tiny random model with the fixtures; the dry run prints
costs that follow from the config; sequential stages restart the GRPO schedule but keep AdamW moments."""
import json
import os

import jax
import jax.numpy as jnp
import optax
import pytest

from esjax.config import PRESETS, build_config
from esjax.cost import run_cost
from esjax.grpo.step import GRPOConfig, init_state, make_optimizer, restart_schedule
from esjax.models.registry import load_model, model_config
from esjax.runs import run_method

FIX = os.path.join(os.path.dirname(__file__), "fixtures")
LAYOUT = {"countdown-tasks-3to4": "countdown", "hendrycks-math-benchmark": "math_nlile", "sciknoweval": "chemistry",
          "boolq": "boolq", "countdown": "countdown", "hellaswag": "hellaswag"}
TINY = ["model=tiny-random-llama", "train_pool=4", "es_batch=2", "es_iterations=1", "grpo_steps=1", "max_new_tokens=4", "eval_max_new_tokens=4",
        "eval_size=4", "probe_size=2", "checkpoint_every=1", "eval_every=0", "es.population_size=4", "es.sigma=0.05",
        "es.alpha=0.05", "grpo.group_size=4", "grpo.prompts_per_step=2", "grpo.total_steps=1"]
DATA = {"paper1": ['task_kwargs.splits={"train": "train[0:3]", "test": "train[3:6]"}',
                   "eval_task_kwargs.chemistry.train_size=4"],
        "paper2": ["grpo.mini_batch_prompts=1"],
        "qiu": ["grpo.mini_batch_prompts=1",  # Qiu's [0:200] / [-2000:] overlap on the 6-row fixture
                'task_kwargs.splits={"train": "countdown.json[0:3]", "test": "countdown.json[3:6]"}']}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    for name, fixture in LAYOUT.items():
        os.symlink(os.path.join(FIX, fixture), root / name)
    return str(root)


@pytest.mark.parametrize("preset", ["paper1", "paper2", "qiu"])
def test_seed_preset_runs_one_step_of_each_method(preset, data_root, tmp_path):
    paper = build_config(preset)
    assert paper.es.population_size == 30 and paper.max_new_tokens == 1024 and paper.model.startswith("hf:")
    cfg = build_config(preset, TINY + DATA[preset] + [f"data_root={data_root}"])
    model = load_model(cfg.model_spec())
    for method in ("es", "grpo"):
        s = run_method(cfg, method, str(tmp_path), model, progress=False)
        rows = [json.loads(line) for line in open(tmp_path / method / "metrics.jsonl")]
        assert len(rows) == 2 and s["completions"] == 8
        for name in (cfg.task, *cfg.eval_tasks):
            assert 0.0 <= s["after"][f"eval/{name}/accuracy"] <= 1.0
        if method == "grpo":
            assert rows[1]["optimizer_updates"] == cfg.grpo.updates_per_step
        # the dry run's count per step is what the trainer reports (one function counts both)
        per_step = run_cost(cfg, model.cfg, 16)[method]
        per_step = per_step["forward_passes_per_task"] // (per_step.get("iterations") or per_step["steps"])
        assert rows[1]["forward_passes"] == per_step


def test_preset_values_follow_the_seeds_brief():
    p1, p2, qiu = (build_config(p) for p in ("paper1", "paper2", "qiu"))
    assert (p1.es.sigma, p1.es.alpha, p1.es.member_temperature, p1.es.member_top_p) == (1.5e-3, 7.5e-4, 1.0, 0.95)
    assert p1.grpo.batch_size == 504 and p1.grpo.learning_rate == 3e-6 and p1.grpo.std_ddof == 1
    assert p1.sequence == ("countdown", "math", "chemistry", "boolq") and p1.task_kwargs["style"] == "boxed"
    assert build_config("paper1", ["task=math"]).task_kwargs["stratify_per_level"] == 40
    # restating a preset's own task keeps its kwargs (style, data, splits: the prompt and reward)
    assert build_config("qiu", ["task=countdown"]).task_kwargs == qiu.task_kwargs
    assert build_config("cpu-quick", ["task=arithmetic"]).task_kwargs == build_config("cpu-quick").task_kwargs
    assert (p2.es.sigma, p2.es.alpha, p2.es.member_temperature, p2.es_iterations) == (1e-3, 5e-4, 0.0, 500)
    assert p2.grpo.updates_per_step == 7 and p2.grpo.kl_estimator == "low_var_kl" and p2.grpo.beta == 1e-3
    # verl v0.6.1 defaults the scripts leave alone: AdamW decay 0.01, dual clip 3.0, grad clip 1.0
    assert (p2.grpo.weight_decay, p2.grpo.clip_ratio_c, p2.grpo.max_grad_norm) == (0.01, 3.0, 1.0)
    assert p1.grpo.clip_ratio_c is None  # paper 1 is TRL's loss: no dual clip
    assert qiu.task_kwargs["style"] == "qiu" and qiu.task_kwargs["splits"]["test"] == "countdown.json[-2000:]"
    assert set(PRESETS) == {"cpu-quick", "study", "tiny", "paper1", "paper2", "qiu"}
    # the seeds' 1,024-token presets compact rows that stopped (chosen per call from the last lengths)
    assert p1.decode_compaction == p2.decode_compaction == qiu.decode_compaction == 2
    assert build_config("cpu-quick").decode_compaction == 0


def test_dry_run_counts_and_memory(data_root, capsys):
    from experiments.sequential import main

    main(["--dry-run", "--preset", "paper1", "--set", "model=tiny-random-llama", "--set", f"data_root={data_root}",
          "--set", 'task_kwargs.splits={"train": "train[0:3]", "test": "train[3:6]"}', "--out", data_root + "/../dry"])
    out = capsys.readouterr().out
    assert "== countdown" in out and "== boolq" in out and "6,000 completions/iteration" in out and "504 completions/step" in out
    assert "wall time (upper bound from a measured probe)" in out
    qwen3_4b = {"arch": "qwen3", "vocab_size": 151936, "hidden_size": 2560, "intermediate_size": 9728,
                "num_layers": 36, "num_heads": 32, "num_kv_heads": 8, "head_dim": 128, "tie_embeddings": True}
    from esjax.models.config import ModelConfig

    c = run_cost(build_config("paper1"), ModelConfig(**qwen3_4b), prompt_tokens=100, n_devices=4)
    assert c["parameters"] == ModelConfig(**qwen3_4b).param_count() and 4.0e9 < c["parameters"] < 4.1e9
    # ES: generation only; GRPO (μ = 1, one update): rollout, learner, reference scoring (KL tracked)
    assert c["es"]["forward_passes_per_task"] == 600_000 and c["grpo"]["forward_passes_per_task"] == 504 * 3 * 80
    assert c["grpo"]["backward_passes_per_task"] == 504 * 80 and c["context_problem"] is None
    assert c["es"]["memory_per_device"]["params"] == 4 * c["parameters"]
    # KV cache of one ES chunk: 2 · L · rows · K · (P + M) · Dh · 4 bytes
    assert c["es"]["memory_per_device"]["kv_cache"] == 2 * 36 * 200 * 8 * (100 + 1024) * 128 * 4
    assert model_config("tiny-random-qwen3").arch == "qwen3"


def test_sequential_stage_restarts_the_schedule_and_keeps_the_moments():
    cfg = GRPOConfig(learning_rate=1.0, lr_schedule="linear", total_steps=4)
    params = {"w": jnp.ones(3)}
    tx = make_optimizer(cfg)
    state = init_state(params, jax.random.key(0), cfg)
    opt = state.opt_state
    for _ in range(4):
        _, opt = tx.update({"w": jnp.ones(3)}, opt, params)
    fresh = restart_schedule(opt)
    counts = lambda o, typ: [s.count for s in jax.tree.leaves(o, is_leaf=lambda s: isinstance(s, typ)) if isinstance(s, typ)]  # noqa: E731
    assert [int(c) for c in counts(opt, optax.ScaleByScheduleState)] == [4]
    assert [int(c) for c in counts(fresh, optax.ScaleByScheduleState)] == [0]
    assert [int(c) for c in counts(fresh, optax.ScaleByAdamState)] == [4]  # AdamW state carried (bias correction too)
    u_end, _ = tx.update({"w": jnp.ones(3)}, opt, params)
    u_new, _ = tx.update({"w": jnp.ones(3)}, fresh, params)
    assert float(jnp.abs(u_end["w"]).max()) == 0.0 and float(jnp.abs(u_new["w"]).max()) > 0.5


def test_pass_counts_follow_the_passes_each_completion_makes():
    """paper2/qiu: 6,000 completions per step in 7 mini-batches (μ = 1): each completion is generated,
    scored once for old log-probs, once by the reference and once (forward + backward) by the learner,
    whatever the number of mini-batches; the ES KL penalty scores every completion with the base model."""
    from esjax.cost import pass_counts

    for preset in ("paper2", "qiu"):
        cfg = build_config(preset)
        c = run_cost(cfg, model_config("tiny-random-llama"), prompt_tokens=100)["grpo"]
        assert cfg.grpo.updates_per_step == 7 and c["completions_per_step"] == 6000
        assert c["forward_passes_per_step"] == 6000 * 4 and c["backward_passes_per_step"] == 6000
        assert c["forward_passes_per_task"] == 6000 * 4 * cfg.grpo_steps
        assert c["backward_passes_per_task"] == 6000 * cfg.grpo_steps
    two_passes = GRPOConfig(group_size=4, prompts_per_step=4, mini_batch_prompts=2, num_inner_updates=2)
    assert pass_counts("grpo", 16, two_passes) == {"forward_passes": 16 * (1 + 2 + 1), "backward_passes": 32}
    assert pass_counts("grpo", 16, GRPOConfig(group_size=4, prompts_per_step=4), reference=True) == \
        {"forward_passes": 16 * 3, "backward_passes": 16}
    es = build_config("paper1", ["es.kl_penalty=0.1"]).es
    assert pass_counts("es", 100, es) == {"forward_passes": 200, "backward_passes": 0}


def test_dry_run_flags_a_prompt_beyond_the_model_context():
    from esjax.cost import format_cost

    cfg = build_config("tiny", ["max_new_tokens=100"])
    mcfg = model_config("tiny-random-llama").replace(max_position_embeddings=512)
    fits = run_cost(cfg, mcfg, prompt_tokens=100, longest_prompt=412)  # padded 416 + 100 > 512
    assert fits["context_problem"] is not None and "416 padded" in fits["context_problem"]
    assert "exceed the model context of 512 tokens by 4" in fits["context_problem"]
    assert format_cost(fits).startswith("WARNING: the longest prompt (412 tokens")
    assert run_cost(cfg, mcfg, prompt_tokens=100, longest_prompt=408)["context_problem"] is None  # 408 + 100 fits
    alone = run_cost(cfg, mcfg, prompt_tokens=600)["context_problem"]  # the typical prompt, when no longest given
    assert "alone exceeds the model context of 512" in alone


def test_dry_run_checks_the_eval_tasks_prompts_with_their_own_budget(capsys):
    """The training task fits; the eval task's 3,000-token budget does not (tiny model: 2,048 positions)."""
    from experiments.cli import dry_run

    rep = dry_run(build_config("tiny", ["eval_max_new_tokens=3000"]), ["lowercase"])
    assert rep["lowercase"]["cost"]["context_problem"].startswith("eval task 'arithmetic': the longest prompt")
    assert "WARNING: eval task 'arithmetic'" in capsys.readouterr().out
    assert dry_run(build_config("tiny"), ["lowercase"])["lowercase"]["cost"]["context_problem"] is None
