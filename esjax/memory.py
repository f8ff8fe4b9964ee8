"""Peak resident memory of this process, per phase: Linux's high-water mark ``VmHWM``, which writing ``5``
to ``/proc/self/clear_refs`` resets to the current resident size. Elsewhere (no /proc) both are no-ops
and the peak is ``None``. :func:`live_array_gb` says how much of the resident memory is JAX arrays still
referenced (the rest: compiled programs, allocator caches, Python). :func:`trim` hands freed heap pages back
between training steps."""
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


def _status_gb(field: str) -> Optional[float]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return None


def peak_gb() -> Optional[float]:
    """Peak resident memory (GB, 1e9 bytes) since the last :func:`reset_peak` (or process start)."""
    return _status_gb("VmHWM")


def resident_gb() -> Optional[float]:
    """Resident memory now (GB, 1e9 bytes)."""
    return _status_gb("VmRSS")


def live_array_gb() -> float:
    """GB (1e9 bytes) held by JAX arrays that are still alive (``jax.live_arrays``), all devices."""
    import jax

    return sum(x.nbytes for x in jax.live_arrays()) / 1e9


def release() -> None:
    """Hand memory a finished phase no longer needs back to the system: collect unreachable Python objects,
    drop JAX's compiled-program caches (later calls recompile, from the persistent compilation cache
    where one is set) and ask glibc to return freed heap pages (``malloc_trim``; a no-op elsewhere)."""
    import gc

    import jax

    gc.collect()
    jax.clear_caches()
    gc.collect()
    trim()


def trim() -> bool:
    """Return the heap's freed pages to the system (glibc ``malloc_trim(0)``; False elsewhere). XLA on CPU
    allocates with malloc, and the buffers a training step frees (per-layer weights, gradients, optimizer
    moments: a few MB each) stay resident, fragmented across malloc's arenas, while the next step
    allocates anew: cpu-quick's GRPO phase grew 1.3 GB per step to 8.9 GB with 2.2 GB of live arrays.
    ``esjax.runs`` trims after every training step (≈ 4 GB between GRPO steps). Serving large buffers
    with mmap instead (``mallopt(M_MMAP_THRESHOLD, 1 MB)``) bounded the peak as well but made the ES phase
    24 % slower (fresh pages for every program run)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        return True
    except (OSError, AttributeError):
        return False
