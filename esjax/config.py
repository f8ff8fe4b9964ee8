"""Typed run configuration, presets and command-line overrides.

``RunConfig`` nests :class:`~esjax.es.step.ESConfig` and :class:`~esjax.grpo.step.GRPOConfig`; every run
writes the resolved config next to its results. Override any field with dotted keys::

    --set es.sigma=0.002 --set grpo.learning_rate=1e-5 --set task_kwargs.digits=1 --set es_iterations=20
    --set eval_task_kwargs.mmlu.path=/data/mmlu --set data_root=/data/esjax

Presets live in :mod:`esjax.presets`, one module each, every value cited to its source.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import typing
from typing import Any, Dict, Optional, Tuple

from esjax.es.step import ESConfig
from esjax.grpo.step import GRPOConfig
from esjax.models.config import DECODE_ATTENTION, REMAT, ModelConfig
from esjax.presets import load_presets


LOGGERS = ("jsonl", "tensorboard")
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    model: str = "smollm2-135m-instruct"
    task: str = "arithmetic"
    task_kwargs: Dict[str, Any] = dataclasses.field(default_factory=dict)
    eval_tasks: Tuple[str, ...] = ()  # other tasks whose accuracy tracks forgetting
    eval_task_kwargs: Dict[str, Any] = dataclasses.field(default_factory=dict)  # {task name: kwargs}
    sequence: Tuple[str, ...] = ()  # the continual-learning task order of experiments.sequential
    data_root: str = ""  # relative task ``path`` values are resolved against it
    model_root: str = ""  # relative ``hf:`` / ``gguf:`` model paths are resolved against it
    seed: int = 0
    train_pool: int = 200  # training examples (the seeds use a fixed 200)
    es_batch: int = 200  # prompts per ES iteration (fitness = mean reward over them)
    es_iterations: int = 100
    grpo_steps: int = 80
    max_new_tokens: int = 0  # 0 = the task's default
    eval_max_new_tokens: int = 0  # generation budget of the other (eval) tasks; 0 = each task's default
    eval_size: int = 200
    eval_every: int = 0  # 0 = only before and after training
    probe_size: int = 16  # off-task prompts per probe set for KL drift
    checkpoint_every: int = 10
    use_mesh: bool = True  # shard over all local/global devices
    logger: str = "jsonl"  # "jsonl": metrics.jsonl only; "tensorboard": also <run>/tensorboard/ event files
    compute_dtype: str = "float32"  # activations, KV cache, decode weights (esjax.models.precision); θ stays fp32
    # the decode loop (esjax.sampling.generate): tokens per while_loop iteration (k > 1 pays the loop
    # condition once per k tokens), the KV-cache block the loop reads up to (0 = the whole cache every
    # step), and at how many block boundaries greedy decoding continues on the halves of the batch that
    # hold rows still running (0 = never; rows stopped at EOS stop costing row-steps). The same tokens
    # whatever they are (log-probs to float rounding, so a near-tie could flip), so a run may resume with others
    decode_steps_per_loop: int = ModelConfig.decode_steps_per_loop  # the defaults live on ModelConfig
    decode_cache_block: int = ModelConfig.decode_cache_block
    decode_compaction: int = ModelConfig.decode_compaction
    decode_attention: str = ModelConfig.decode_attention  # "xla" | "pallas" (the fused GPU kernel; same function)
    remat: str = ModelConfig.remat  # the GRPO learner's activation memory: "none" | "dots" | "full" (same gradients)
    es: ESConfig = dataclasses.field(default_factory=ESConfig)
    grpo: GRPOConfig = dataclasses.field(default_factory=GRPOConfig)

    def __post_init__(self):
        for f in dataclasses.fields(self):  # types first: NaN / inf / strings are named, not compared
            v = getattr(self, f.name)
            if f.type == "int" and (isinstance(v, bool) or not isinstance(v, int)):
                raise ValueError(f"RunConfig.{f.name} must be an integer, got {v!r}")
            if f.type == "bool" and not isinstance(v, bool):
                raise ValueError(f"RunConfig.{f.name} must be true or false, got {v!r}")
            if f.type == "str" and not isinstance(v, str):
                raise ValueError(f"RunConfig.{f.name} must be a string, got {v!r}")
        for name in ("train_pool", "es_batch", "eval_size", "checkpoint_every", "decode_steps_per_loop"):
            if getattr(self, name) < 1:
                raise ValueError(f"RunConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("es_iterations", "grpo_steps", "eval_every", "probe_size", "max_new_tokens", "eval_max_new_tokens",
                     "decode_cache_block", "decode_compaction"):
            if getattr(self, name) < 0:
                raise ValueError(f"RunConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.logger not in LOGGERS:
            raise ValueError(f"RunConfig.logger must be one of {LOGGERS}, got {self.logger!r}")
        if not isinstance(self.grpo.track_kl, bool):
            raise ValueError(f"GRPOConfig.track_kl must be true or false, got {self.grpo.track_kl!r}")
        if self.decode_attention not in DECODE_ATTENTION:
            raise ValueError(f"RunConfig.decode_attention must be one of {DECODE_ATTENTION}, got {self.decode_attention!r}")
        if self.remat not in REMAT:
            raise ValueError(f"RunConfig.remat must be one of {REMAT}, got {self.remat!r}")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"RunConfig.compute_dtype must be one of {COMPUTE_DTYPES}, got {self.compute_dtype!r}")
        if self.es_batch > self.train_pool or self.grpo.prompts_per_step > self.train_pool:
            raise ValueError(f"es_batch ({self.es_batch}) and grpo.prompts_per_step ({self.grpo.prompts_per_step}) "
                             f"cannot exceed train_pool ({self.train_pool})")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def model_settings(self) -> dict:
        """The :class:`~esjax.models.config.ModelConfig` fields a run sets: how its model computes and decodes."""
        return {"compute_dtype": self.compute_dtype, "decode_steps_per_loop": self.decode_steps_per_loop,
                "decode_cache_block": self.decode_cache_block, "decode_compaction": self.decode_compaction,
                "decode_attention": self.decode_attention, "remat": self.remat}

    def model_spec(self) -> str:
        """``model`` with a relative ``hf:``/``gguf:`` path resolved against ``model_root``."""
        kind, _, path = self.model.partition(":")
        if path and self.model_root and not os.path.isabs(path):
            return f"{kind}:{os.path.abspath(os.path.join(self.model_root, path))}"
        return self.model

    def kwargs_for(self, name: str) -> dict:
        """Task kwargs of ``name`` (``task_kwargs`` for the trained task, else ``eval_task_kwargs[name]``),
        with a relative ``path`` resolved against ``data_root``."""
        kw = dict(self.task_kwargs if name == self.task else self.eval_task_kwargs.get(name, {}))
        if self.data_root and isinstance(kw.get("path"), str) and not os.path.isabs(kw["path"]):
            kw["path"] = os.path.abspath(os.path.join(self.data_root, kw["path"]))
        return kw


def from_dict(d: dict) -> RunConfig:
    d = dict(d)
    d["es"] = ESConfig(**d.get("es", {}))
    d["grpo"] = GRPOConfig(**d.get("grpo", {}))
    d["eval_tasks"] = tuple(d.get("eval_tasks", ()))
    d["sequence"] = tuple(d.get("sequence", ()))
    return RunConfig(**d)


PRESETS: Dict[str, dict] = load_presets()


def _coerce(value: str, typ):
    origin = typing.get_origin(typ)
    if typ is bool:
        if value.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"expected true or false, got {value!r}")
        return value.lower() in ("true", "1")
    if typ is int:
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"expected an integer, got {value!r}") from None
    if typ is float:
        try:
            x = float(value)
        except ValueError:
            raise ValueError(f"expected a number, got {value!r}") from None
        if not math.isfinite(x):
            raise ValueError(f"expected a finite number, got {value!r}")
        return x
    if typ is str:
        return value
    if origin is typing.Union and type(None) in typing.get_args(typ):
        return None if value.lower() == "none" else _coerce(value, [a for a in typing.get_args(typ) if a is not type(None)][0])
    if value[:1] in "[{\"" or value in ("true", "false", "null") or value[:1].isdigit():
        try:
            return json.loads(value)
        except ValueError as e:
            raise ValueError(f"expected JSON, got {value!r} ({e})") from None
    return value


def _valid_keys(hints: dict) -> list:
    """Every ``--set`` key of the config (task kwargs keys are free-form: shown as ``task_kwargs.<key>``)."""
    keys = [k for k in hints[""] if k not in ("es", "grpo")]
    keys += [f"{sec}.{k}" for sec in ("es", "grpo") for k in hints[sec]]
    keys += ["task_kwargs.<key>", "eval_task_kwargs.<task>.<key>"]
    return keys


def _unknown(key: str, hints: dict) -> ValueError:
    """An error for an unknown key: the nearest valid keys, and the valid keys of its section."""
    valid = _valid_keys(hints)
    near = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
    section = key.split(".")[0] if "." in key and key.split(".")[0] in ("es", "grpo") else ""
    listed = [k for k in valid if k.startswith(section + ".")] if section else [k for k in valid if "." not in k or "<" in k]
    hint = f"; did you mean {' or '.join(near)}?" if near else ""
    return ValueError(f"unknown config key {key!r}{hint} (valid{' ' + section + '.*' if section else ''} keys: "
                      f"{', '.join(listed)})")


def build_config(preset: Optional[str] = None, overrides=(), base: Optional[dict] = None) -> RunConfig:
    """Preset (or defaults) + ``key=value`` overrides → validated RunConfig. Unknown keys are errors that
    suggest the nearest valid keys; a value that does not parse names its key."""
    if preset is not None and preset not in PRESETS:
        near = difflib.get_close_matches(preset, PRESETS, n=1)
        raise ValueError(f"unknown preset {preset!r}{'; did you mean ' + near[0] + '?' if near else ''} "
                         f"(choose from {sorted(PRESETS)})")
    d = json.loads(json.dumps(base if base is not None else PRESETS.get(preset, {})))
    hints = {"": typing.get_type_hints(RunConfig), "es": typing.get_type_hints(ESConfig),
             "grpo": typing.get_type_hints(GRPOConfig)}
    new_task = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == "task"]
    if new_task and new_task[-1] != d.get("task", RunConfig.task):
        # the preset's task kwargs belong to the preset's task (restating it keeps them); a sequence preset
        # knows the others
        d["task_kwargs"] = dict(d.get("eval_task_kwargs", {}).get(new_task[-1], {}))
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        parts = key.split(".")
        try:
            if parts[0] in ("es", "grpo") and len(parts) == 2:
                if parts[1] not in hints[parts[0]]:
                    raise _unknown(key, hints)
                d.setdefault(parts[0], {})[parts[1]] = _coerce(value, hints[parts[0]][parts[1]])
            elif parts[0] == "task_kwargs" and len(parts) == 2:
                d.setdefault("task_kwargs", {})[parts[1]] = _coerce(value, Any)
            elif parts[0] == "eval_task_kwargs" and len(parts) == 3:  # eval_task_kwargs.<task>.<key>=value
                d.setdefault("eval_task_kwargs", {}).setdefault(parts[1], {})[parts[2]] = _coerce(value, Any)
            elif len(parts) == 1 and key in hints[""] and key not in ("es", "grpo"):
                typ = hints[""][key]
                if typing.get_origin(typ) is tuple:
                    items = value.split(",") if value else []
                    if any(not v for v in items):
                        raise ValueError(f"empty item in the list {value!r}")
                    d[key] = tuple(items)
                elif typing.get_origin(typ) is dict:
                    d[key] = _coerce(value, Any)
                else:
                    d[key] = _coerce(value, typ)
            else:
                raise _unknown(key, hints)
        except ValueError as e:
            if str(e).startswith("unknown config key"):
                raise
            raise ValueError(f"--set {key}={value}: {e}") from None
    try:
        return from_dict(d)
    except TypeError as e:
        raise ValueError(f"bad configuration: {e}") from None
