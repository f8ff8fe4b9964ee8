"""Run settings wired end to end on the tiny random model: ``compute_dtype`` reaches the loaded model,
``logger=tensorboard`` writes the metrics rows as TensorBoard scalars in a real run."""
import glob
import os

import jax
import pytest

from esjax import evaluation, runs
from esjax.config import build_config
from esjax.models.registry import load_model
from esjax.tensorboard import read_events


def test_bfloat16_compute_dtype_and_decode_settings_reach_the_model_and_a_run_completes(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"RunConfig.compute_dtype must be one of \('float32', 'bfloat16', 'float16'\), "
                                         r"got 'bf16'"):
        build_config("tiny", ["compute_dtype=bf16"])
    with pytest.raises(ValueError, match=r"RunConfig.decode_steps_per_loop must be >= 1, got 0"):
        build_config("tiny", ["decode_steps_per_loop=0"])
    with pytest.raises(ValueError, match=r"RunConfig.decode_cache_block must be >= 0, got -1"):
        build_config("tiny", ["decode_cache_block=-1"])
    cfg = build_config("tiny", ["compute_dtype=bfloat16", "es_iterations=1", "eval_size=2", "use_mesh=false", "eval_tasks=",
                                "logger=tensorboard", "decode_steps_per_loop=2", "decode_cache_block=3"])
    loaded, trained, evaluated = [], [], []
    real = runs.load_model

    def spy(*a, **k):
        loaded.append(real(*a, **k))
        return loaded[-1]

    def record_model_cfg(fn, sink):  # fn(model_cfg, ...) that first notes the model config it was given
        return lambda model_cfg, *a, **k: (sink.append(model_cfg), fn(model_cfg, *a, **k))[1]
    monkeypatch.setattr(runs, "load_model", spy)
    monkeypatch.setattr(runs, "make_es_iteration", record_model_cfg(runs.make_es_iteration, trained))
    monkeypatch.setattr(evaluation, "make_generate", record_model_cfg(evaluation.make_generate, evaluated))
    s = runs.run_method(cfg, "es", str(tmp_path), None, progress=False, log=lambda m: None)
    assert len(loaded) == 1 and loaded[0].cfg.compute_dtype == "bfloat16" and loaded[0].cfg.param_dtype == "float32"
    # the members and the evaluations decode 2 tokens per loop iteration and read the cache in blocks of 3
    # (4 with 2 per iteration)
    settings = lambda c: (c.compute_dtype, c.decode_steps_per_loop, c.decode_cache_block)  # noqa: E731
    assert [settings(c) for c in trained] == [("bfloat16", 2, 3)]
    assert evaluated and {settings(c) for c in evaluated} == {("bfloat16", 2, 3)}
    assert s["status"] == "complete" and s["iterations"] == 1 and s["update_norm"] > 0
    rows = runs.read_metrics(str(tmp_path / "es"))
    ev = read_events(glob.glob(os.path.join(str(tmp_path), "es", "tensorboard", "events.out.tfevents.*"))[0])
    assert [e["step"] for e in ev[1:]] == [r["iteration"] for r in rows] == [0, 1]
    assert ev[2]["scalars"]["update_norm"] == pytest.approx(rows[1]["update_norm"], rel=1e-6)
    assert ev[2]["scalars"]["eval/lowercase/accuracy"] == rows[1]["eval/lowercase/accuracy"]
    # a run may resume with other decode settings (same tokens); a handed model decodes with the run's
    other = build_config("tiny", ["compute_dtype=bfloat16", "es_iterations=1", "eval_size=2", "use_mesh=false",
                                  "eval_tasks=", "logger=tensorboard"])
    assert runs.config_changes(cfg.to_dict(), other.to_dict(), "es") == []
    handed = runs.run_model(load_model("tiny-random-llama", compute_dtype="bfloat16"), cfg)
    assert (handed.cfg.decode_steps_per_loop, handed.cfg.decode_cache_block) == (2, 3)
    # a model loaded in another compute dtype than the config's is refused (the config would misreport the run)
    fp32 = load_model("tiny-random-llama")
    with pytest.raises(ValueError, match=r"the model computes in float32 but the run config says "
                                         r"compute_dtype=bfloat16"):
        runs.run_method(cfg, "es", str(tmp_path / "other"), fp32, progress=False, log=lambda m: None)


def test_dry_run_checks_the_longest_prompt_of_the_train_pool_and_the_test_examples(tmp_path, capsys):
    import shutil

    from experiments.cli import dry_run

    data = tmp_path / "gsm8k"
    data.mkdir()
    shutil.copy(os.path.join(os.path.dirname(__file__), "fixtures", "gsm8k", "train.jsonl"), data / "train.jsonl")
    long_q = "Count the apples. " * 700  # ~2,800 tokens: beyond the tiny model's 2,048-token context
    (data / "test.jsonl").write_text('{"question": "2 + 2?", "answer": "#### 4"}\n'
                                     + '{"question": "%s", "answer": "#### 1"}\n' % long_q)
    cfg = build_config("tiny", ["task=gsm8k", f"task_kwargs.path={data}", "eval_tasks=", "eval_size=2"])
    report = dry_run(cfg, ("gsm8k",), probe=True)["gsm8k"]["cost"]
    assert report["longest_prompt"] > 2048 > 4 * report["prompt_tokens"]  # the mean over train prompts is short
    assert "WARNING: the longest prompt" in capsys.readouterr().out
    dry_run(cfg, ("gsm8k",), probe=False)
    assert "256 tokens assumed" in capsys.readouterr().out


def test_runs_use_the_compilation_cache_the_environment_names(monkeypatch):
    """``experiments.cli`` keeps compiled programs in ~/.cache/esjax/jax, unless JAX_COMPILATION_CACHE_DIR
    (and JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS) say otherwise: it used to overwrite them, so a
    cluster's shared cache was ignored by every run."""
    from experiments.cli import use_compilation_cache

    saved = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    try:
        monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/shared/jax-cache")
        monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
        jax.config.update("jax_compilation_cache_dir", "/shared/jax-cache")
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
        use_compilation_cache()
        assert jax.config.jax_compilation_cache_dir == "/shared/jax-cache"
        assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.5
        monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
        monkeypatch.delenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")
        use_compilation_cache()
        assert jax.config.jax_compilation_cache_dir == os.path.join(os.path.expanduser("~"), ".cache", "esjax", "jax")
        assert jax.config.jax_persistent_cache_min_compile_time_secs == 2.0
    finally:
        jax.config.update("jax_compilation_cache_dir", saved[0])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", saved[1])
