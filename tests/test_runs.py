"""Run bookkeeping (esjax.runs, esjax.checkpoint, esjax.config, experiments.cli): a rerun resumes only a
matching config, checkpoints are verified with fallback to the previous good step, non-finite values are
rejected in configs and stop a run, all JSON is strict, runs carry a completion status that the report
checks, data overlap and too-small splits are refused before any work, and CLI errors are one line.

Most tests drive ``run_method`` with a fake learner (ES update θ += α, constant evaluation), so they
exercise the real bookkeeping (orbax, files, statuses) in seconds without a model."""
import glob
import json
import math
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from esjax import runs
from esjax.checkpoint import RunCheckpointer
from esjax.config import build_config, from_dict
from esjax.grpo.step import GRPOConfig
from esjax.tasks import get_task
from esjax.tasks.base import DatasetError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")


def tiny(*overrides):
    return build_config("tiny", ["eval_tasks=arithmetic", "es_iterations=3", "use_mesh=false", *overrides])


class FakeModel:
    params = {"b": jnp.zeros(2), "w": jnp.zeros((2, 3))}
    cfg = tokenizer = None


def strict_json(text):
    def refuse(c):
        raise ValueError(f"bare {c} in JSON")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def fake(monkeypatch):
    """ES iterations add α to every param (NaN at ``nan_at``; ``raise_at`` raises ``exc``); evaluation is constant."""
    ctl = {"nan_at": None, "raise_at": None, "exc": None}

    def make_es_iteration(model_cfg, tokenizer, task, cfg, max_new, batch, mesh=None, base_params=None):
        def iterate(state, examples, key):
            t = int(state.iteration) + 1
            if ctl["raise_at"] == t:
                raise ctl["exc"]
            step = math.nan if ctl["nan_at"] == t else cfg.alpha
            params = jax.tree.map(lambda p: p + step, state.params)
            n = sum(x.size for x in jax.tree.leaves(params))
            return state.replace(params=params, iteration=state.iteration + 1), {
                "update_norm": abs(step) * math.sqrt(n) if step == step else math.nan, "reward_mean": 0.5,
                "train_accuracy": 0.5, "completions": len(examples) * cfg.population_size, "backward_passes": 0}
        return iterate

    monkeypatch.setattr(runs, "make_es_iteration", make_es_iteration)
    monkeypatch.setattr(runs, "evaluate_all", lambda params, model, cfg, max_new, lengths=None: {f"eval/{cfg.task}/accuracy": 0.25})
    return ctl


def run(cfg, out, logs=None):
    return runs.run_method(cfg, "es", str(out), FakeModel(), progress=False,
                           log=(logs.append if logs is not None else lambda s: None))


def steps(out):
    return sorted(int(os.path.basename(p)) for p in glob.glob(os.path.join(str(out), "es", "ckpt", "[0-9]*")))


def test_rerun_with_another_config_is_refused_and_a_longer_one_extends(tmp_path, fake):
    s = run(tiny(), tmp_path)
    assert s["status"] == "complete" and steps(tmp_path) == [3]  # a finished run keeps one checkpoint
    saved = open(tmp_path / "es" / "config.json").read()
    with pytest.raises(ValueError, match=r"es\.sigma: 0\.05 -> 0\.1.*another --out folder, or delete"):
        run(tiny("es.sigma=0.1"), tmp_path)
    with pytest.raises(ValueError, match=r"eval_tasks: \[\"arithmetic\"\] -> \[\]"):
        run(tiny("eval_tasks="), tmp_path)
    assert open(tmp_path / "es" / "config.json").read() == saved  # nothing touched before the check
    logs = []  # GRPO's settings do not concern the ES run; a longer run extends it from its checkpoint
    s = run(tiny("grpo.learning_rate=0.5", "es_iterations=5"), tmp_path, logs)
    assert any("resumed from iteration 3" in m for m in logs) and s["status"] == "complete"
    assert [r["iteration"] for r in runs.read_metrics(str(tmp_path / "es"))] == [0, 1, 2, 3, 4, 5]
    assert steps(tmp_path) == [5]
    assert json.load(open(tmp_path / "es" / "config.json"))["es_iterations"] == 5
    restored = RunCheckpointer(str(tmp_path / "es" / "ckpt")).restore(
        runs.es_init(FakeModel.params, jax.random.key(0), tiny().es), log=None)
    assert float(restored[1].params["w"][0, 0]) == pytest.approx(5 * 0.05)
    with pytest.raises(ValueError, match="iteration 5, past es_iterations=4"):
        run(tiny("es_iterations=4"), tmp_path)


STATE = {"w": jnp.arange(1000, dtype=jnp.float32), "k": jax.random.key(0), "n": jnp.zeros((), jnp.int32)}


def _biggest(step_dir):
    files = [p for p in glob.glob(os.path.join(step_dir, "state", "**"), recursive=True) if os.path.isfile(p)]
    return max(files, key=os.path.getsize)


def _flip(d):
    p = _biggest(d)
    b = bytearray(open(p, "rb").read())
    b[100:140] = bytes(x ^ 0xFF for x in b[100:140])
    open(p, "wb").write(b)


def _truncate(d):
    p = _biggest(d)
    b = open(p, "rb").read()
    open(p, "wb").write(b[:len(b) // 2])


CORRUPTIONS = {
    "overwritten bytes": (_flip, "checksum mismatch|could not read"),
    "truncated data": (_truncate, "could not read"),
    "missing manifest": (lambda d: os.remove(os.path.join(d, "state", "manifest.ocdbt")), "could not read"),
    "garbage metadata": (lambda d: open(os.path.join(d, "state", "_METADATA"), "w").write("garbage{"), "could not read"),
    "edited record": (lambda d: open(os.path.join(d, "record", "metadata"), "w").write('{"history": [9]}'), "checksum mismatch"),
    "no checksum file": (lambda d: os.remove(os.path.join(d, "esjax_checksum.json")), "no readable esjax_checksum.json"),
}


@pytest.mark.parametrize("damage", sorted(CORRUPTIONS))
def test_damaged_checkpoint_falls_back_to_the_previous_verified_step(tmp_path, damage, capsys):
    ck = RunCheckpointer(str(tmp_path))
    for s in (1, 2):
        ck.save(s, {**STATE, "w": STATE["w"] + s}, {"history": [s]})
    ck.close()
    corrupt, reason = CORRUPTIONS[damage]
    corrupt(str(tmp_path / "2"))
    ck = RunCheckpointer(str(tmp_path))
    capsys.readouterr()
    step, state, record = ck.restore(STATE)  # logs with print by default
    assert (step, float(state["w"][0]), record) == (1, 1.0, {"history": [1]})
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 1 and "restored verified step 1" in out and "step 2: " in out and not err
    assert re.search(reason, out), out
    ck.save(2, {**STATE, "w": STATE["w"] + 7}, {"history": [7]})  # the run continues past the bad step
    step, state, _ = ck.restore(STATE)
    assert (step, float(state["w"][0])) == (2, 7.0)
    ck.close()


def test_non_finite_or_misshapen_checkpoints_are_refused_with_every_reason(tmp_path):
    ck = RunCheckpointer(str(tmp_path))
    ck.save(1, {**STATE, "w": STATE["w"].at[3].set(jnp.nan)}, {"history": [1]})
    ck.save(2, {**STATE, "w": STATE["w"].at[5].set(jnp.inf)}, {"history": [2]})
    with pytest.raises(RuntimeError, match=r"no usable checkpoint in .*step 2: leaf \['w'\] holds non-finite.*"
                                           r"step 1: leaf \['w'\] holds non-finite.*Delete that folder"):
        ck.restore(STATE)
    ck.save(3, STATE, {"history": [3]})
    wide = {**STATE, "w": jnp.zeros(1001, jnp.float32)}
    with pytest.raises(RuntimeError, match=r"step 3: .*(1001|1000)"):
        ck.restore(wide)
    ck.close()


def test_non_finite_update_stops_the_run_keeping_the_last_good_checkpoint(tmp_path, fake):
    fake["nan_at"] = 2
    with pytest.raises(RuntimeError, match=r"iteration 2 turned non-finite \(update_norm=nan.*last good checkpoint "
                                           r"\(iteration 1\) is kept"):
        run(tiny(), tmp_path)
    summary = strict_json(open(tmp_path / "es" / "summary.json").read())
    assert summary["status"] == "failed" and summary["last_checkpoint"] == 1 and "non-finite" in summary["error"]
    rows = [strict_json(line) for line in open(tmp_path / "es" / "metrics.jsonl")]
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    assert rows[2]["update_norm"] is None and set(rows[2]["non_finite"]) == {"update_norm", "update_norm_from_base"}
    assert steps(tmp_path) == [1] and not os.path.exists(tmp_path / "es" / "params")
    state = RunCheckpointer(str(tmp_path / "es" / "ckpt")).restore(
        runs.es_init(FakeModel.params, jax.random.key(0), tiny().es), log=None)[1]
    assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(state.params))


@pytest.mark.parametrize("key", ["learning_rate", "max_grad_norm", "adam_eps", "beta", "clip_eps", "temperature",
                                 "top_p", "clip_eps_high", "weight_decay"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_grpo_settings_are_rejected_by_name(key, value):
    with pytest.raises(ValueError, match=f"GRPOConfig.{key} must be a finite number"):
        GRPOConfig(**{key: value})


def test_non_finite_or_mistyped_run_settings_are_rejected_by_name():
    for key in ("train_pool", "eval_size", "es_iterations", "probe_size"):
        d = tiny().to_dict()
        d[key] = math.nan
        with pytest.raises(ValueError, match=f"RunConfig.{key} must be an integer"):
            from_dict(d)
    d = tiny().to_dict()
    d["grpo"]["learning_rate"] = math.inf
    with pytest.raises(ValueError, match="learning_rate"):
        from_dict(d)
    with pytest.raises(ValueError, match=r"--set grpo.learning_rate=nan: expected a finite number"):
        build_config("tiny", ["grpo.learning_rate=nan"])


def test_one_data_file_as_both_splits_is_refused(tmp_path):
    path = os.path.join(FIX, "gsm8k", "train.jsonl")  # 24 rows
    with pytest.raises(DatasetError, match=r"task 'gsm8k': the train split 'train' and the test split 'test' both "
                                           r"read rows 0\.\.23 \(24 of 24\) of .*train\.jsonl"):
        get_task("gsm8k", path=path).check_disjoint()
    with pytest.raises(DatasetError, match=r"rows 14\.\.19 \(6 of 24\)"):
        get_task("gsm8k", path=path, splits={"train": "x[0:20]", "test": "x[-10:]"}).check_disjoint()
    carved = get_task("gsm8k", path=path, splits={"train": "x[0:20]", "test": "x[20:]"})
    carved.check_disjoint()
    assert len(carved.examples("train", 99)) == 20 and len(carved.examples("test", 99)) == 4
    get_task("gsm8k", path=os.path.join(FIX, "gsm8k")).check_disjoint()  # separate files
    get_task("chemistry", path=os.path.join(FIX, "chemistry")).check_disjoint()  # carves its one split itself
    cfg = tiny("task=gsm8k", f"task_kwargs.path={path}")
    with pytest.raises(DatasetError, match="task 'gsm8k'"):
        runs.run_method(cfg, "es", str(tmp_path), None, progress=False, log=lambda s: None)
    assert not os.path.exists(tmp_path / "es")  # refused before any work


@pytest.mark.parametrize("spec,n", [("train[0:0]", 0), ("train[0:3]", 3)])
def test_too_small_train_split_is_refused_before_any_work(tmp_path, spec, n):
    cfg = tiny("task=gsm8k", f"task_kwargs.path={os.path.join(FIX, 'gsm8k')}",
               'task_kwargs.splits={"train": "%s", "test": "test"}' % spec)
    with pytest.raises(ValueError, match=rf"task 'gsm8k': the train split has {n} examples? .*fewer than the 4 "
                                         rf"prompts of one iteration \(es_batch=4\)"):
        runs.run_method(cfg, "es", str(tmp_path), None, progress=False, log=lambda s: None)
    assert not os.path.exists(tmp_path / "es")


def test_status_marks_complete_incomplete_and_failed_runs_and_the_report_refuses_unfinished(tmp_path, fake):
    from esjax.analysis.report import analyze

    fake.update(raise_at=2, exc=KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        run(tiny(), tmp_path)
    assert strict_json(open(tmp_path / "es" / "summary.json").read())["status"] == "incomplete"
    with pytest.raises(ValueError, match=r"run .*es is not complete \(status incomplete\)"):
        analyze(str(tmp_path), tiny(), FakeModel())
    fake.update(raise_at=3, exc=OSError("disk full"))
    with pytest.raises(OSError):
        run(tiny(), tmp_path)
    s = strict_json(open(tmp_path / "es" / "summary.json").read())
    assert s["status"] == "failed" and s["error"] == "OSError: disk full"
    with pytest.raises(ValueError, match=r"status failed: OSError: disk full"):
        analyze(str(tmp_path), tiny(), FakeModel())
    fake.update(raise_at=None)
    assert run(tiny(), tmp_path)["status"] == "complete"
    with pytest.raises(ValueError, match=r"run .*grpo is not complete \(status missing\)"):
        analyze(str(tmp_path), tiny(), FakeModel())


def test_config_errors_name_the_key_and_suggest_the_nearest():
    with pytest.raises(ValueError, match=r"--set es.population_size=abc: expected an integer, got 'abc'"):
        build_config("tiny", ["es.population_size=abc"])
    with pytest.raises(ValueError, match=r"unknown config key 'es.sgima'; did you mean es.sigma\? \(valid es.\* keys: "
                                         r"es.population_size, es.sigma"):
        build_config("tiny", ["es.sgima=1"])
    with pytest.raises(ValueError, match=r"unknown config key 'grpo_step'; did you mean grpo_steps"):
        build_config("tiny", ["grpo_step=1"])
    assert build_config("tiny", ["eval_tasks="]).eval_tasks == ()


def test_command_line_errors_are_one_line_unless_traceback_is_asked(tmp_path):
    cmd = [sys.executable, "-m", "experiments.single_task", "--preset", "tiny", "--out", str(tmp_path),
           "--set", "es.population_size=abc"]
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu", ESJAX_TRACEBACK="")
    short = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    lines = short.stderr.strip().splitlines()
    assert short.returncode == 1 and len(lines) == 1, short.stderr
    assert lines[0].startswith("error: --set es.population_size=abc: expected an integer, got 'abc'") and "--traceback" in lines[0]
    full = subprocess.run(cmd + ["--traceback"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert full.returncode == 1 and "Traceback (most recent call last)" in full.stderr


def test_tensorboard_logger_mirrors_the_metrics_rows_on_every_exit_path(tmp_path, fake, monkeypatch):
    from esjax.tensorboard import read_events

    with pytest.raises(ValueError, match=r"RunConfig.logger must be one of \('jsonl', 'tensorboard'\), got 'tb'"):
        tiny("logger=tb")
    monkeypatch.setattr(runs, "evaluate_all", lambda params, model, cfg, max_new, lengths=None: {
        f"eval/{cfg.task}/accuracy": 0.25, f"eval/{cfg.task}/correct": [1, 0, 0, 0]})
    writers = []

    class Spy(runs.EventWriter):
        def __init__(self, logdir):
            super().__init__(logdir)
            writers.append(self)
    monkeypatch.setattr(runs, "EventWriter", Spy)

    def events(out):
        files = glob.glob(os.path.join(str(out), "es", "tensorboard", "events.out.tfevents.*"))
        assert len(files) == 1, files  # a resumed run rewrites the history: one file, no duplicate steps
        ev = read_events(files[0])
        assert ev[0]["file_version"] == "brain.Event:2"
        return ev[1:]

    run(tiny(), tmp_path)  # jsonl only: no tensorboard folder
    assert not os.path.exists(tmp_path / "es" / "tensorboard")
    run(tiny("logger=tensorboard"), tmp_path)  # the logger may change on resume: the whole history is written
    run(tiny("logger=tensorboard", "es_iterations=5"), tmp_path)  # extends the run
    rows = runs.read_metrics(str(tmp_path / "es"))
    ev = events(tmp_path)
    assert [e["step"] for e in ev] == [r["iteration"] for r in rows] == [0, 1, 2, 3, 4, 5]
    for e, r in zip(ev, rows):  # every number of the row, as float32; the per-problem list only in metrics.jsonl
        want = {k: v for k, v in r.items() if k != "iteration" and not isinstance(v, list)}
        assert set(e["scalars"]) == set(want) and "eval/lowercase/correct" not in e["scalars"]
        assert all(e["scalars"][k] == pytest.approx(v, rel=1e-6) for k, v in want.items())
    assert "update_norm" in ev[1]["scalars"] and "eval/lowercase/accuracy" in ev[0]["scalars"]
    assert rows[0]["eval/lowercase/correct"] == rows[5]["eval/lowercase/correct"] == [1, 0, 0, 0]
    fake["nan_at"] = 2
    with pytest.raises(RuntimeError, match="turned non-finite"):
        run(tiny("logger=tensorboard"), tmp_path / "nan")
    ev = events(tmp_path / "nan")
    assert [e["step"] for e in ev] == [0, 1, 2] and math.isnan(ev[2]["scalars"]["update_norm"])
    fake.update(nan_at=None, raise_at=2, exc=OSError("disk full"))
    with pytest.raises(OSError):
        run(tiny("logger=tensorboard"), tmp_path / "err")
    assert len(writers) == 4 and all(w._f.closed for w in writers)


def test_grpo_reference_model_is_an_explicit_setting_not_the_probe_size(tmp_path, monkeypatch):
    from esjax.cost import run_cost
    from esjax.models.registry import model_config

    refs = []

    def make_grpo_iteration(model_cfg, tokenizer, task, cfg, max_new, ref_params=None, mesh=None, donate_state=False):
        refs.append(ref_params)
        return lambda state, examples: (state.replace(step=state.step + 1), {"loss": 0.0, "completions": 8})
    monkeypatch.setattr(runs, "make_grpo_iteration", make_grpo_iteration)
    monkeypatch.setattr(runs, "evaluate_all", lambda params, model, cfg, max_new, lengths=None: {f"eval/{cfg.task}/accuracy": 0.25})
    cases = {"probe_size=0": True, "grpo.track_kl=false": False, "grpo.track_kl=false,grpo.beta=0.1": True}
    mcfg = model_config("tiny-random-llama")
    for i, (overrides, reference) in enumerate(cases.items()):
        cfg = tiny("grpo_steps=1", *overrides.split(","))
        runs.run_method(cfg, "grpo", str(tmp_path / str(i)), FakeModel(), progress=False, log=lambda s: None)
        assert (refs[-1] is FakeModel.params) == reference, overrides
        n = cfg.grpo.group_size * cfg.grpo.prompts_per_step  # generation, learner, and the reference if scored
        assert run_cost(cfg, mcfg, 16)["grpo"]["forward_passes_per_step"] == n * (2 + reference), overrides
    with pytest.raises(ValueError, match="--set grpo.track_kl=maybe: expected true or false"):
        tiny("grpo.track_kl=maybe")


def test_a_run_written_before_a_setting_existed_resumes_with_its_default(tmp_path, fake):
    run(tiny(), tmp_path)
    path = tmp_path / "es" / "config.json"
    old = json.load(open(path))
    for key in ("compute_dtype", "logger"):
        del old[key]
    del old["grpo"]["track_kl"]
    json.dump(old, open(path, "w"))
    logs = []
    assert run(tiny("es_iterations=4"), tmp_path, logs)["status"] == "complete"
    assert any("resumed from iteration 3" in m for m in logs)
    json.dump({**old, "compute_dtype": "bfloat16"}, open(path, "w"))
    with pytest.raises(ValueError, match=r'compute_dtype: "bfloat16" -> "float32"'):
        run(tiny("es_iterations=5"), tmp_path)


def test_grpo_settings_no_update_reads_may_change_on_resume():
    """grpo.total_steps is read by the linear schedule only: with a constant learning rate on both sides a
    run may be extended (grpo_steps and total_steps raised together); with a linear one, or a changed
    schedule, it is the learning-rate curve that changed, and resuming is refused. A warmup is read by both
    schedules. Likewise grpo.track_kl while β = 0 on both sides."""
    from esjax.runs import config_changes

    old = tiny("grpo_steps=4", "grpo.total_steps=4").to_dict()
    assert config_changes(old, tiny("grpo_steps=9", "grpo.total_steps=9").to_dict(), "grpo") == []
    assert config_changes(old, tiny("grpo_steps=4", "grpo.total_steps=4", "grpo.warmup_steps=2").to_dict(),
                          "grpo") == ["grpo.warmup_steps: 0 -> 2"]
    lin = tiny("grpo_steps=4", "grpo.total_steps=4", "grpo.lr_schedule=linear").to_dict()
    assert config_changes(lin, tiny("grpo_steps=9", "grpo.total_steps=9", "grpo.lr_schedule=linear").to_dict(),
                          "grpo") == ["grpo.total_steps: 4 -> 9"]
    assert config_changes(old, tiny("grpo_steps=4", "grpo.total_steps=4", "grpo.lr_schedule=linear").to_dict(),
                          "grpo") == ['grpo.lr_schedule: "constant" -> "linear"']
    # track_kl only logs the KL while β = 0; with a KL penalty the reference model is learned from
    assert config_changes(old, tiny("grpo_steps=4", "grpo.total_steps=4", "grpo.track_kl=false").to_dict(), "grpo") == []
    kl = tiny("grpo_steps=4", "grpo.total_steps=4", "grpo.beta=0.1").to_dict()
    assert config_changes(kl, tiny("grpo_steps=4", "grpo.total_steps=4", "grpo.beta=0.1", "grpo.track_kl=false").to_dict(),
                          "grpo") == ["grpo.track_kl: true -> false"]
