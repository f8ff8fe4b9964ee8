"""GRPO step time: esjax (rollout and learner timed separately) vs TRL ``GRPOTrainer`` on CPU, same model
(SmolLM2-135M float32), same prompts, group size, lengths and batch, measured side by side in one run.
Needs ``pip install trl`` (a benchmark-only dependency).

    python -m experiments.bench_grpo [--prompts 4] [--group 8] [--new 32] [--steps 3]
"""
from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from esjax.grpo.step import GRPOConfig, init_state
from esjax.grpo.trainer import make_grpo_iteration
from esjax.models.registry import load_model
from esjax.tasks import get_task


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--new", type=int, default=32)
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args(argv)
    model = load_model()
    task = get_task("arithmetic")
    exs = task.examples("train", args.prompts * (args.steps + 1), 0)
    cfg = GRPOConfig(group_size=args.group, prompts_per_step=args.prompts, learning_rate=1e-6, beta=0.0)
    it = make_grpo_iteration(model.cfg, model.tokenizer, task, cfg, args.new)
    state = init_state(model.params, jax.random.key(0), cfg)
    state, _ = it(state, exs[:args.prompts])  # compile
    ours = []
    for s in range(1, args.steps + 1):
        state, m = it(state, exs[s * args.prompts:(s + 1) * args.prompts])
        ours.append((m["time_generate"], m["time_reward"] + m["time_update"]))
    roll, learn = np.mean(ours, 0)

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig as TRLConfig
    from trl import GRPOTrainer

    from esjax.models.hf import save_hf_checkpoint

    # the same dequantised weights as a plain float32 HF checkpoint (transformers refuses to train a GGUF load)
    hf_dir = "/tmp/esjax-bench-smollm2-hf"
    save_hf_checkpoint(jax.tree.map(np.asarray, model.params), model.cfg, hf_dir)
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    data = Dataset.from_list([{"prompt": task.messages(e), "answer": e.answer} for e in exs])

    def reward(completions, answer, **_):
        from esjax.tasks.base import Example
        return [task.reward(c[0]["content"] if isinstance(c, list) else c, Example("x", "", a)).value
                for c, a in zip(completions, answer)]

    class Timer(TrainerCallback):
        def __init__(self):
            self.times, self.t0 = [], None

        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter() - self.t0)

    timer = Timer()
    targs = TRLConfig(output_dir="/tmp/esjax-bench-trl", per_device_train_batch_size=args.prompts * args.group,
                      num_generations=args.group, max_completion_length=args.new, learning_rate=1e-6, beta=0.0,
                      max_steps=args.steps + 1, logging_steps=1000, report_to="none", use_cpu=True, bf16=False,
                      gradient_checkpointing=False, save_strategy="no", temperature=1.0, loss_type="grpo")
    GRPOTrainer(model=hf, reward_funcs=reward, args=targs, train_dataset=data, processing_class=model.tokenizer,
                callbacks=[timer]).train()
    trl_step = float(np.mean(timer.times[1:]))
    ours_step = roll + learn
    print(f"SmolLM2-135M float32, {args.prompts} prompts x G={args.group}, {args.new} new tokens, one update per batch")
    print(f"esjax GRPO step: {ours_step:.2f} s (rollout {roll:.2f} s, rewards + learner {learn:.2f} s)")
    print(f"TRL GRPOTrainer step: {trl_step:.2f} s ({torch.get_num_threads()} torch threads)")
    print(f"ratio TRL / esjax step time: {trl_step / ours_step:.2f}x")


if __name__ == "__main__":
    main()
