"""Test session set-up: 8 forced host devices (multi-device code runs on this CPU), highest matmul precision
and shared fixtures. ``JAX_PLATFORMS=cuda pytest ...`` runs the suite on a GPU."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

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
