"""Model hyper-parameters for the Llama / Qwen2 / Qwen3 decoder family.

One frozen dataclass describes every supported architecture; the differences are flags:

| arch  | q/k/v bias | per-head q/k RMSNorm | typical tie |
|-------|------------|----------------------|-------------|
| llama | no         | no                   | either      |
| qwen2 | yes        | no                   | small: yes  |
| qwen3 | no         | yes                  | small: yes  |
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import jax.numpy as jnp

ARCHITECTURES = ("llama", "qwen2", "qwen3")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
DECODE_ATTENTION = ("xla", "pallas")  # implementations of a decode step's attention (ModelConfig.decode_attention)
REMAT = ("none", "dots", "full")  # what a differentiated forward keeps per block for its backward (ModelConfig.remat)


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama-3 style frequency-dependent RoPE scaling (``rope_type == "llama3"``)."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    arch: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_embeddings: bool = True
    max_position_embeddings: int = 2048
    rope_scaling: Optional[RopeScaling] = None
    eos_token_ids: Tuple[int, ...] = ()
    pad_token_id: int = 0
    param_dtype: str = "float32"
    compute_dtype: str = "float32"
    # how the decode loop runs (esjax.sampling.generate's defaults; the same tokens whatever they are):
    # tokens per while_loop iteration, the KV-cache block the loop reads up to (0 = the whole cache), and
    # at how many of the blocks' boundaries greedy decoding halves the batch to the rows still running
    decode_steps_per_loop: int = 1
    decode_cache_block: int = 256
    decode_compaction: int = 0
    # the decode step's attention: "xla" (einsums, every backend) or "pallas" (one fused kernel per layer
    # that reads only the filled cache slots: esjax.models.decode_attention; GPU, interpret mode on CPU)
    decode_attention: str = "xla"
    # what a differentiated forward (the GRPO learner's) keeps per transformer block for the backward pass
    # (esjax.models.decoder.REMAT_POLICIES): "none" every activation; "dots" the outputs of the weight
    # matmuls only (the rest recomputed: no extra GEMM); "full" the block's input only (its forward runs
    # again in the backward: +1 forward of FLOPs). The same gradients; memory for longer / larger micro-batches
    remat: str = "none"

    def __post_init__(self):
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.arch!r}; supported: {ARCHITECTURES}")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "head_dim", "max_position_embeddings"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"ModelConfig.{name} must be positive, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        for name, least in (("decode_steps_per_loop", 1), ("decode_cache_block", 0), ("decode_compaction", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < least:
                raise ValueError(f"ModelConfig.{name} must be an integer >= {least}, got {v!r}")
        if self.decode_attention not in DECODE_ATTENTION:
            raise ValueError(f"ModelConfig.decode_attention={self.decode_attention!r}; choose one of {DECODE_ATTENTION}")
        if self.remat not in REMAT:
            raise ValueError(f"ModelConfig.remat={self.remat!r}; choose one of {REMAT}")
        if self.decode_attention == "pallas":  # the kernel's tiles; Pallas is imported only when chosen
            from esjax.models.decode_attention import check_head_dim
            check_head_dim(self.head_dim)
        for name in ("param_dtype", "compute_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ValueError(f"ModelConfig.{name}={getattr(self, name)!r}; choose one of {sorted(DTYPES)}")

    @property
    def qkv_bias(self) -> bool:
        return self.arch == "qwen2"

    @property
    def qk_norm(self) -> bool:
        return self.arch == "qwen3"

    @property
    def dtype(self):
        return DTYPES[self.compute_dtype]

    def replace(self, **kw) -> "ModelConfig":
        return dataclasses.replace(self, **kw)

    def param_count(self, count_tied_twice: bool = False) -> int:
        """Number of scalar parameters d (tied embedding once unless ``count_tied_twice``)."""
        d, f, v = self.hidden_size, self.intermediate_size, self.vocab_size
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        layer = d * q + 2 * d * kv + q * d + 3 * d * f + 2 * d
        if self.qkv_bias:
            layer += q + 2 * kv
        if self.qk_norm:
            layer += 2 * self.head_dim
        head = v * d if (not self.tie_embeddings or count_tied_twice) else 0
        return self.num_layers * layer + v * d + d + head
