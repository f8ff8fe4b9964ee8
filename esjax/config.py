"""Typed run configuration, presets and command-line overrides.

``RunConfig`` nests :class:`~esjax.es.step.ESConfig` and :class:`~esjax.grpo.step.GRPOConfig`; every run
writes the resolved config next to its results. Override any field with dotted keys::

    --set es.sigma=0.002 --set grpo.learning_rate=1e-5 --set task_kwargs.digits=1 --set es_iterations=20
"""
from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any, Dict, Optional, Tuple

from esjax.es.step import ESConfig
from esjax.grpo.step import GRPOConfig


@dataclasses.dataclass(frozen=True)
class RunConfig:
    model: str = "smollm2-135m-instruct"
    task: str = "arithmetic"
    task_kwargs: Dict[str, Any] = dataclasses.field(default_factory=dict)
    eval_tasks: Tuple[str, ...] = ()  # other tasks whose accuracy tracks forgetting
    eval_task_kwargs: Dict[str, Any] = dataclasses.field(default_factory=dict)
    seed: int = 0
    train_pool: int = 200  # training examples (the seeds use a fixed 200)
    es_batch: int = 200  # prompts per ES iteration (fitness = mean reward over them)
    es_iterations: int = 100
    grpo_steps: int = 80
    max_new_tokens: int = 0  # 0 = the task's default
    eval_size: int = 200
    eval_every: int = 0  # 0 = only before and after training
    probe_size: int = 16  # off-task prompts per probe set for KL drift
    checkpoint_every: int = 10
    use_mesh: bool = True  # shard over all local/global devices
    es: ESConfig = dataclasses.field(default_factory=ESConfig)
    grpo: GRPOConfig = dataclasses.field(default_factory=GRPOConfig)

    def __post_init__(self):
        for name in ("train_pool", "es_batch", "eval_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"RunConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("es_iterations", "grpo_steps", "eval_every", "probe_size", "max_new_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"RunConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.es_batch > self.train_pool or self.grpo.prompts_per_step > self.train_pool:
            raise ValueError(f"es_batch ({self.es_batch}) and grpo.prompts_per_step ({self.grpo.prompts_per_step}) "
                             f"cannot exceed train_pool ({self.train_pool})")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def from_dict(d: dict) -> RunConfig:
    d = dict(d)
    d["es"] = ESConfig(**d.get("es", {}))
    d["grpo"] = GRPOConfig(**d.get("grpo", {}))
    d["eval_tasks"] = tuple(d.get("eval_tasks", ()))
    return RunConfig(**d)


PRESETS: Dict[str, dict] = {
    # The README's main job: SmolLM2-135M on 2 CPU cores, ES (low-rank, EGGROLL) and GRPO, minutes each.
    "cpu-quick": dict(
        task="arithmetic", task_kwargs={"kinds": ["add", "sub", "mul"], "digits": 2},
        eval_tasks=("arithmetic-word",), train_pool=64, es_batch=16, es_iterations=10, grpo_steps=10, max_new_tokens=16,
        eval_size=64, probe_size=8, checkpoint_every=5,
        # σ: below ~3e-3 no member's greedy answer changes (zero fitness variance), above ~1e-2 members
        # collapse; embedding/head excluded as in EGGROLL (their noise shifts every logit by σ‖h‖).
        es=dict(population_size=8, sigma=4e-3, alpha=2e-3, antithetic=True, noise="lowrank", rank=1,
                param_filter="^layers/"),
        grpo=dict(group_size=6, prompts_per_step=4, learning_rate=1.5e-5, total_steps=10, beta=0.0)),
    # Test preset: tiny random model, toy digit reward, seconds.
    "tiny": dict(
        model="tiny-random-llama", task="lowercase", eval_tasks=("arithmetic",), train_pool=8, es_batch=4,
        es_iterations=3, grpo_steps=3, max_new_tokens=6, eval_size=8, probe_size=4, checkpoint_every=1,
        es=dict(population_size=4, sigma=0.05, alpha=0.05, noise="full"),
        grpo=dict(group_size=4, prompts_per_step=2, learning_rate=1e-3, total_steps=3, beta=0.0)),
}


def _coerce(value: str, typ):
    origin = typing.get_origin(typ)
    if typ is bool:
        if value.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"expected a boolean, got {value!r}")
        return value.lower() in ("true", "1")
    if typ in (int, float, str):
        return typ(value)
    if origin is typing.Union and type(None) in typing.get_args(typ):
        return None if value.lower() == "none" else _coerce(value, [a for a in typing.get_args(typ) if a is not type(None)][0])
    return json.loads(value) if value[:1] in "[{\"" or value in ("true", "false", "null") or value[:1].isdigit() else value


def build_config(preset: Optional[str] = None, overrides=(), base: Optional[dict] = None) -> RunConfig:
    """Preset (or defaults) + ``key=value`` overrides → validated RunConfig. Unknown keys are errors."""
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    d = json.loads(json.dumps(base if base is not None else PRESETS.get(preset, {})))
    hints = {"": typing.get_type_hints(RunConfig), "es": typing.get_type_hints(ESConfig),
             "grpo": typing.get_type_hints(GRPOConfig)}
    if any(o.split("=", 1)[0] == "task" for o in overrides):
        d["task_kwargs"] = {}  # the preset's task kwargs belong to the preset's task
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        parts = key.split(".")
        if parts[0] in ("es", "grpo") and len(parts) == 2:
            if parts[1] not in hints[parts[0]]:
                raise ValueError(f"unknown config key {key!r}")
            d.setdefault(parts[0], {})[parts[1]] = _coerce(value, hints[parts[0]][parts[1]])
        elif parts[0] in ("task_kwargs", "eval_task_kwargs") and len(parts) >= 2:
            d.setdefault(parts[0], {})[".".join(parts[1:])] = _coerce(value, Any)
        elif len(parts) == 1 and key in hints[""]:
            typ = hints[""][key]
            d[key] = tuple(value.split(",")) if typing.get_origin(typ) is tuple else _coerce(value, typ)
        else:
            raise ValueError(f"unknown config key {key!r}")
    try:
        return from_dict(d)
    except TypeError as e:
        raise ValueError(f"bad configuration: {e}") from None
