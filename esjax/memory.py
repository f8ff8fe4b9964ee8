"""Peak resident memory of this process, per phase: Linux's high-water mark ``VmHWM``, which writing ``5``
to ``/proc/self/clear_refs`` resets to the current resident size. Elsewhere (no /proc) both are no-ops
and the peak is ``None``."""
from __future__ import annotations

from typing import Optional


def reset_peak() -> bool:
    """Start a new peak measurement; False where the system does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_gb() -> Optional[float]:
    """Peak resident memory (GB, 1e9 bytes) since the last :func:`reset_peak` (or process start)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return None
