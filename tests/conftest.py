"""Test session set-up: 8 forced host devices (multi-device code runs on this CPU), highest matmul precision
and shared fixtures. ``JAX_PLATFORMS=cuda pytest ...`` runs the suite on a GPU."""
import atexit
import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One compilation cache for the whole suite, fresh each time (so timings are a clean checkout's): many tests
# compile the same programs from new closures (a tiny run's iteration, a generation), and XLA's compile is
# most of a CPU test's time. Created by the first process that loads this file (pytest-xdist's controller:
# its workers and every subprocess a test starts inherit the variable) and removed when that process exits.
# Every program is kept (no minimum compile time). A JAX_COMPILATION_CACHE_DIR set outside is used as is.
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="esjax-tests-jax-cache-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"

import jax  # noqa: E402
import pytest  # noqa: E402

# Precision policy (esjax.models.precision): tests compare float32 logits with references, so they ask for
# exact float32 matmuls; a no-op on CPU, it keeps TF32 (GPU) and bf16 passes (TPU) out of those comparisons.
jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="session")
def tokenizer():
    from esjax.models.registry import smollm2_tokenizer

    return smollm2_tokenizer()


@pytest.fixture(scope="session")
def smollm2():
    from esjax.models.registry import load_model

    return load_model()


def pytest_report_header(config):
    return f"jax {jax.__version__}, devices: {jax.device_count()}"
