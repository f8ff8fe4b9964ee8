"""Test session set-up: 8 forced host devices (multi-device code runs on this CPU) and shared fixtures."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402


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
