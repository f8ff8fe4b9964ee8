"""Multi-host path: 2 processes on 127.0.0.1 (2 forced CPU devices each, one 4-device mesh through
``jax.distributed``) run 2 ES iterations and 1 GRPO step; both end with bit-identical params, equal to a
single process driving the same 4-device mesh (ES bit for bit; GRPO up to the order of the cross-process
gradient all-reduce, which gloo sums differently from the in-process reduction)."""
import os
import socket
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "multihost_worker.py")


def _env(devices, **extra):
    # no compilation cache the environment names: processes of one distributed run would write and read its
    # entries at once
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESJAX_") and k != "JAX_COMPILATION_CACHE_DIR"}
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu", **extra)
    return env


def test_two_processes_match_one(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    multi, single = tmp_path / "multi", tmp_path / "single"
    multi.mkdir()
    single.mkdir()
    procs = [subprocess.Popen([sys.executable, WORKER, str(multi)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env=_env(2, ESJAX_COORDINATOR=f"127.0.0.1:{port}", ESJAX_NUM_PROCESSES="2",
                                       ESJAX_PROCESS_ID=str(i))) for i in range(2)]
    ref = subprocess.run([sys.executable, WORKER, str(single)], cwd=ROOT, env=_env(4), capture_output=True, text=True,
                         timeout=600)
    logs = [p.communicate(timeout=600)[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), logs
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert "process 0/2 devices 4" in logs[0] and "process 1/2 devices 4" in logs[1]
    p0, p1, one = (np.load(f) for f in (multi / "0.npz", multi / "1.npz", single / "0.npz"))
    assert sorted(p0) == sorted(one) and any(k.startswith("es/") for k in p0) and any(k.startswith("grpo/") for k in p0)
    for k in p0:
        np.testing.assert_array_equal(p0[k], p1[k])  # every host holds the same params
        if k.startswith("base/"):
            continue
        assert not np.array_equal(p0[k], p0["base/" + k.split("/")[1]]), k  # both methods moved every leaf
        if k.startswith("es/"):
            np.testing.assert_array_equal(p0[k], one[k])  # only seeds and rewards crossed hosts
        else:
            np.testing.assert_allclose(p0[k], one[k], rtol=0, atol=2e-6)
