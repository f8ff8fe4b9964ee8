"""Exact resume after kill -9: a run killed mid-way and started again with the same command logs the same
metrics as the uninterrupted run and keeps one verified checkpoint once complete (ES and GRPO, tiny model,
each in its own processes)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from esjax.runs import read_metrics, strip_timing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _single_task(out, method, extra=()):
    cmd = [sys.executable, "-m", "experiments.single_task", "--preset", "tiny", "--method", method, "--out", out,
           "--no-progress", "--set", "es_iterations=5", "--set", "grpo_steps=4", *extra]
    return subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, XLA_FLAGS=""), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


@pytest.mark.parametrize("method", ["es", "grpo"])
def test_resume_after_kill_9_reproduces_the_uninterrupted_run(tmp_path, method):
    ref = _single_task(str(tmp_path / "ref"), method)
    assert ref.wait(timeout=600) == 0, ref.stdout.read().decode()[-2000:]
    victim = _single_task(str(tmp_path / "killed"), method)
    log = tmp_path / "killed" / method / "metrics.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline:  # kill -9 once iteration 2 is logged (checkpoints every iteration)
        if log.exists() and len(log.read_text().splitlines()) >= 3:
            break
        time.sleep(0.2)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert len(log.read_text().splitlines()) < 5 + 1  # really interrupted
    resumed = _single_task(str(tmp_path / "killed"), method)
    out = resumed.communicate(timeout=600)[0].decode()
    assert resumed.returncode == 0, out[-2000:]
    assert "resumed from iteration" in out
    assert "restored verified step" in out
    a = strip_timing(read_metrics(str(tmp_path / "ref" / method)))
    b = strip_timing(read_metrics(str(tmp_path / "killed" / method)))
    assert a == b
    n = 5 if method == "es" else 4
    assert json.load(open(tmp_path / "killed" / method / "summary.json"))["status"] == "complete"
    assert sorted(os.listdir(tmp_path / "killed" / method / "ckpt")) == [str(n)]  # one checkpoint kept once finished
