"""esjax.memory: per-phase peak resident memory (Linux VmHWM, reset through /proc/self/clear_refs)."""
import json
import sys

import pytest

from esjax.memory import live_array_gb


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
def test_peak_follows_an_allocation_and_resets():
    """In a fresh process: the peak of a long test session's process also moves with whatever its other
    threads allocate and free meanwhile (in a parallel test worker the peak once stayed at 5.5 GB through
    the reset)."""
    import subprocess

    code = """
import json, numpy as np
from esjax.memory import peak_gb, reset_peak
ok = reset_peak()
before = peak_gb()
a = np.ones(100_000_000 // 8)  # 0.1 GB touched
a[::512] = 2.0
grown = peak_gb()
del a
reset_peak()
print(json.dumps([ok, before, grown, peak_gb()]))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ok, before, grown, after = json.loads(proc.stdout)
    assert ok
    assert grown - before == pytest.approx(0.1, abs=0.03)
    assert after < grown - 0.05  # the freed block is no longer in the peak


def test_live_arrays_count_what_is_referenced():
    import jax.numpy as jnp

    before = live_array_gb()
    x = jnp.ones((25_000_000,), jnp.float32)  # 0.1 GB
    assert live_array_gb() - before == pytest.approx(0.1, abs=1e-6)
    del x
    assert live_array_gb() == pytest.approx(before, abs=1e-6)


def test_release_keeps_programs_working_and_memory_readable():
    import jax
    import jax.numpy as jnp

    from esjax.memory import release, resident_gb

    f = jax.jit(lambda x: jnp.tanh(x) * 2)
    x = jnp.arange(8.0)
    before = f(x)
    release()  # drops the compiled program: the next call compiles again
    assert f._cache_size() == 0
    assert jnp.array_equal(f(x), before) and f._cache_size() == 1
    assert resident_gb() > 0



_FRAGMENT = """
import sys, numpy as np
from esjax.memory import resident_gb, trim
big = np.ones(16 << 17); del big                # a freed 16 MB buffer raises glibc's dynamic mmap threshold
bufs = [np.ones(3 << 17) for _ in range(300)]   # 300 x 3 MB (layer-sized buffers), touched
keep = bufs[-1]; del bufs                       # all freed but the last, which pins the heap's top
if sys.argv[1] == "1":
    assert trim()
print(resident_gb())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_trim_returns_freed_layer_sized_buffers_to_the_system():
    """Freed 3 MB buffers stay resident in glibc's heap (0.9 GB here) until trim() hands them back."""
    import subprocess

    rss = [float(subprocess.run([sys.executable, "-c", _FRAGMENT, flag], capture_output=True, text=True,
                                check=True).stdout) for flag in ("0", "1")]
    assert rss[0] > 0.8 and rss[1] < 0.2, rss
