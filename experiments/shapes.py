"""Real model architectures by name, for benchmarks and compile proxies on random weights of real shapes
(no checkpoint needed: a device call carries at most 64 MiB)."""
from __future__ import annotations

from esjax.models.config import ModelConfig
from esjax.models.registry import TINY_PRESETS

SHAPES = {
    # Qwen/Qwen2.5-1.5B-Instruct config.json
    "qwen2.5-1.5b": dict(arch="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_layers=28,
                         num_heads=12, num_kv_heads=2, head_dim=128, rope_theta=1e6, rms_norm_eps=1e-6,
                         tie_embeddings=True, max_position_embeddings=32768, pad_token_id=151643),
    # HuggingFaceTB/SmolLM2-135M-Instruct config.json
    "smollm2-135m": dict(arch="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
                         num_heads=9, num_kv_heads=3, head_dim=64, rope_theta=1e5, rms_norm_eps=1e-5,
                         tie_embeddings=True, max_position_embeddings=8192, pad_token_id=2),
    "tiny": TINY_PRESETS["tiny-random-llama"],
}


def shape_config(name: str, compute_dtype: str = "bfloat16") -> ModelConfig:
    """The architecture ``name`` with EOS disabled (every row decodes its whole budget)."""
    if name not in SHAPES:
        raise ValueError(f"unknown shapes {name!r}; choose from {sorted(SHAPES)}")
    return ModelConfig(**{**SHAPES[name], "eos_token_ids": (), "compute_dtype": compute_dtype})
