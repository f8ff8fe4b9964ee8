"""Hugging Face checkpoint directories ⇄ esjax params.

A checkpoint directory holds ``config.json`` and either ``model.safetensors`` or sharded
``model-XXXXX-of-YYYYY.safetensors`` files listed in ``model.safetensors.index.json``. The mapping between
HF tensor names and esjax leaves is the declarative table :data:`HF_LAYER_TABLE` (per layer) and
:data:`HF_GLOBAL_TABLE`; HF stores linear weights as (out, in), esjax as (in, out), hence ``transpose``.
The same tables drive :func:`save_hf_checkpoint`, so an esjax model exports back to a directory that
``transformers`` loads; given the model's tokenizer it saves that too (``tokenizer.json``,
``tokenizer_config.json``, the chat template), so the export loads again as ``hf:<dir>``.
:func:`load_hf_tokenizer` refuses a directory without tokenizer files in one line naming what is missing.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Optional, Tuple

import numpy as np

from esjax.models.config import ModelConfig, RopeScaling
from esjax.models.decoder import check_params, param_shapes

HF_LAYER_TABLE: Tuple[Tuple[str, str, bool], ...] = (  # (name under model.layers.{i}., leaf, transpose?)
    ("input_layernorm.weight", "attn_norm", False),
    ("self_attn.q_proj.weight", "wq", True),
    ("self_attn.k_proj.weight", "wk", True),
    ("self_attn.v_proj.weight", "wv", True),
    ("self_attn.o_proj.weight", "wo", True),
    ("self_attn.q_proj.bias", "bq", False),
    ("self_attn.k_proj.bias", "bk", False),
    ("self_attn.v_proj.bias", "bv", False),
    ("self_attn.q_norm.weight", "q_norm", False),
    ("self_attn.k_norm.weight", "k_norm", False),
    ("post_attention_layernorm.weight", "mlp_norm", False),
    ("mlp.gate_proj.weight", "w_gate", True),
    ("mlp.up_proj.weight", "w_up", True),
    ("mlp.down_proj.weight", "w_down", True),
)
HF_GLOBAL_TABLE: Tuple[Tuple[str, str, bool], ...] = (  # (HF name, leaf, transpose?)
    ("model.embed_tokens.weight", "embed", False),
    ("model.norm.weight", "final_norm", False),
    ("lm_head.weight", "lm_head", True),
)
# files from which transformers builds a tokenizer: any one of these vocabularies suffices
TOKENIZER_VOCAB_FILES = (("tokenizer.json",), ("tokenizer.model",), ("vocab.json", "merges.txt"), ("vocab.txt",))
MODEL_TYPES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}
HF_ARCH_CLASS = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


def config_from_hf(hf: dict, source: str = "config.json", **overrides) -> ModelConfig:
    """Build a :class:`ModelConfig` from an HF ``config.json`` dict (transformers 4.x or 5.x layout)."""
    model_type = hf.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"{source}: unknown architecture model_type={model_type!r}; supported: {sorted(MODEL_TYPES)}")

    def need(key):
        if key not in hf:
            raise ValueError(f"{source}: missing required key {key!r}")
        return hf[key]

    rope = dict(hf.get("rope_parameters") or {})
    legacy = hf.get("rope_scaling") or {}
    rope = {**legacy, **rope}
    theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    scaling = None
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type == "llama3":
        scaling = RopeScaling(float(rope["factor"]), float(rope["low_freq_factor"]),
                              float(rope["high_freq_factor"]), int(rope["original_max_position_embeddings"]))
    elif rope_type not in ("default", None):
        raise ValueError(f"{source}: unsupported rope type {rope_type!r} (supported: default, llama3)")
    eos = _eos_ids(hf.get("eos_token_id"))
    heads = int(need("num_attention_heads"))
    hidden = int(need("hidden_size"))
    if model_type == "llama" and (hf.get("attention_bias") or hf.get("mlp_bias")):
        raise ValueError(f"{source}: llama with attention_bias/mlp_bias is not supported")
    kw = dict(
        arch=MODEL_TYPES[model_type], vocab_size=int(need("vocab_size")), hidden_size=hidden,
        intermediate_size=int(need("intermediate_size")), num_layers=int(need("num_hidden_layers")),
        num_heads=heads, num_kv_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=int(hf.get("head_dim") or hidden // heads), rope_theta=float(theta),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)), tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        max_position_embeddings=int(hf.get("max_position_embeddings", 2048)), rope_scaling=scaling,
        eos_token_ids=eos, pad_token_id=int(hf.get("pad_token_id") or (eos[0] if eos else 0)))
    kw.update(overrides)
    return ModelConfig(**kw)


def _safetensor_files(path: str):
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        files = sorted(set(weight_map.values()))
    else:
        files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    if not files:
        raise FileNotFoundError(f"{path}: no *.safetensors weights found")
    for f in files:
        if not os.path.exists(os.path.join(path, f)):
            raise FileNotFoundError(f"{path}: shard {f} listed in the index is missing")
    return [os.path.join(path, f) for f in files]


def read_safetensors(path: str) -> Dict[str, np.ndarray]:
    """All tensors of a checkpoint directory as float32 numpy arrays, with clear errors on corruption."""
    from safetensors import SafetensorError, safe_open

    tensors = {}
    for file in _safetensor_files(path):
        try:
            with safe_open(file, framework="numpy") as f:
                for name in f.keys():
                    tensors[name] = f.get_tensor(name)
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"{file}: corrupt or truncated safetensors file ({e})") from e
        except TypeError:  # bfloat16 is not a numpy dtype: go through torch-free raw parsing
            tensors.update(_read_bf16_safetensors(file))
    return tensors


def _read_bf16_safetensors(file: str) -> Dict[str, np.ndarray]:
    """Parse a safetensors file by hand (header + raw buffers); upcasts BF16 to float32."""
    with open(file, "rb") as f:
        raw = f.read()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    base = 8 + n
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        lo, hi = meta["data_offsets"]
        if base + hi > len(raw):
            raise ValueError(f"{file}: corrupt or truncated safetensors file (tensor {name} runs past the end)")
        buf = raw[base + lo:base + hi]
        dt = meta["dtype"]
        if dt == "BF16":
            arr = (np.frombuffer(buf, np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(buf, {"F32": np.float32, "F16": np.float16, "F64": np.float64}[dt])
        out[name] = arr.reshape(meta["shape"])
    return out


def params_from_hf_tensors(tensors: Dict[str, np.ndarray], cfg: ModelConfig, source: str) -> dict:
    """Map HF tensor names to the stacked esjax params pytree (float32 numpy)."""
    shapes = param_shapes(cfg)

    def take(name):
        if name not in tensors:
            raise ValueError(f"{source}: missing tensor {name!r}")
        return np.asarray(tensors[name], np.float32)

    layers = []
    for i in range(cfg.num_layers):
        layer = {}
        for hf_name, leaf, transpose in HF_LAYER_TABLE:
            if leaf in shapes["layers"][i]:
                t = take(f"model.layers.{i}.{hf_name}")
                layer[leaf] = t.T if transpose else t
        layers.append(layer)
    params = {"layers": layers}
    for hf_name, leaf, transpose in HF_GLOBAL_TABLE:
        if leaf in shapes:
            t = take(hf_name)
            params[leaf] = t.T if transpose else t
    check_params(params, cfg, source)
    return params


def _read_json(file: str) -> dict:
    with open(file) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{file}: invalid JSON ({e})") from e


def _eos_ids(value) -> tuple:
    return tuple(int(x) for x in value) if isinstance(value, (list, tuple)) else (() if value is None else (int(value),))


def read_hf_config(path: str, **config_overrides) -> ModelConfig:
    """The ModelConfig of a local HF directory, from its config.json (no weights read). Generation stops at
    config.json's EOS ids and at those of ``generation_config.json`` too, as transformers' ``generate`` and
    vLLM do: Qwen2.5-Instruct's config.json names only <|im_end|> (151645), its generation config also
    <|endoftext|> (151643), and a completion decoded past that token had its trailing text scored."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint directory not found: {path}")
    cfg_file = os.path.join(path, "config.json")
    if not os.path.exists(cfg_file):
        raise FileNotFoundError(f"{path}: missing config.json")
    hf = _read_json(cfg_file)
    gen_file = os.path.join(path, "generation_config.json")
    if os.path.exists(gen_file) and "eos_token_ids" not in config_overrides:
        own = _eos_ids(hf.get("eos_token_id"))
        more = [i for i in _eos_ids(_read_json(gen_file).get("eos_token_id")) if i not in own]
        if more:  # appended: the pad-id fallback (the first EOS id) stays config.json's
            hf = {**hf, "eos_token_id": [*own, *more]}
    return config_from_hf(hf, cfg_file, **config_overrides)


def load_hf_checkpoint(path: str, **config_overrides):
    """Load (params, cfg) from a local HF directory. Params are numpy float32 (cast later)."""
    cfg = read_hf_config(path, **config_overrides)
    return params_from_hf_tensors(read_safetensors(path), cfg, path), cfg


def config_to_hf(cfg: ModelConfig) -> dict:
    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling is not None:
        s = cfg.rope_scaling
        rope.update(rope_type="llama3", factor=s.factor, low_freq_factor=s.low_freq_factor,
                    high_freq_factor=s.high_freq_factor, original_max_position_embeddings=s.original_max_position_embeddings)
    out = dict(model_type=cfg.arch, architectures=[HF_ARCH_CLASS[cfg.arch]], vocab_size=cfg.vocab_size,
               hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
               num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
               num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, rms_norm_eps=cfg.rms_norm_eps,
               tie_word_embeddings=cfg.tie_embeddings, max_position_embeddings=cfg.max_position_embeddings,
               rope_parameters=rope, rope_theta=cfg.rope_theta, hidden_act="silu",
               eos_token_id=list(cfg.eos_token_ids) or None, pad_token_id=cfg.pad_token_id, dtype="float32")
    if cfg.arch == "llama":
        out.update(attention_bias=False, mlp_bias=False)
    return out


def missing_tokenizer(path: str) -> Optional[str]:
    """None if the HF directory ``path`` holds a tokenizer vocabulary (:data:`TOKENIZER_VOCAB_FILES`), else a
    one-line message naming the directory, the files looked for and the ways out."""
    if any(all(os.path.exists(os.path.join(path, f)) for f in group) for group in TOKENIZER_VOCAB_FILES):
        return None
    wanted = " or ".join(" + ".join(g) for g in TOKENIZER_VOCAB_FILES)
    return (f"{path}: no tokenizer files (looked for {wanted}, with tokenizer_config.json for the chat template); "
            f"copy them from the base model's directory, or export with save_hf_checkpoint(..., tokenizer=tok)")


def load_hf_tokenizer(path: str):
    """The tokenizer of the HF directory ``path``; FileNotFoundError (:func:`missing_tokenizer`) when it
    has no tokenizer files, instead of an error from deep inside transformers."""
    from transformers import AutoTokenizer

    problem = missing_tokenizer(path) if os.path.isdir(path) else f"checkpoint directory not found: {path}"
    if problem:
        raise FileNotFoundError(problem)
    return AutoTokenizer.from_pretrained(path)


def save_hf_checkpoint(params: dict, cfg: ModelConfig, path: str, tokenizer=None) -> None:
    """Write ``config.json`` + ``model.safetensors`` (float32) that transformers loads as the same model,
    and, given ``tokenizer`` (a transformers tokenizer, e.g. ``Model.tokenizer``), its files
    (``tokenizer.save_pretrained``); without one the directory loads as weights only
    (:func:`load_hf_tokenizer` then names the missing files)."""
    from safetensors.numpy import save_file

    check_params(params, cfg)
    os.makedirs(path, exist_ok=True)
    tensors = {}
    for i, layer in enumerate(params["layers"]):
        for hf_name, leaf, transpose in HF_LAYER_TABLE:
            if leaf in layer:
                t = np.asarray(layer[leaf], np.float32)
                tensors[f"model.layers.{i}.{hf_name}"] = np.ascontiguousarray(t.T if transpose else t)
    for hf_name, leaf, transpose in HF_GLOBAL_TABLE:
        if leaf in params:
            t = np.asarray(params[leaf], np.float32)
            tensors[hf_name] = np.ascontiguousarray(t.T if transpose else t)
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config_to_hf(cfg), f, indent=2)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
