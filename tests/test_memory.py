"""esjax.memory: per-phase peak resident memory (Linux VmHWM, reset through /proc/self/clear_refs)."""
import sys

import numpy as np
import pytest

from esjax.memory import peak_gb, reset_peak


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
def test_peak_follows_an_allocation_and_resets():
    assert reset_peak()
    before = peak_gb()
    a = np.ones(100_000_000 // 8)  # 0.1 GB touched
    a[::512] = 2.0
    grown = peak_gb()
    del a
    assert grown - before == pytest.approx(0.1, abs=0.03)
    reset_peak()
    assert peak_gb() < grown - 0.05  # the freed block is no longer in the peak
