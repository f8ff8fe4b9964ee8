"""``cpu-quick``: the README's main job. SmolLM2-135M on 2 CPU cores, ES (low-rank, EGGROLL) and GRPO,
minutes each, on 2-digit arithmetic (the base model's accuracy is ~17 %, so both methods can move it)."""
PRESET = dict(
    task="arithmetic", task_kwargs={"kinds": ["add", "sub", "mul"], "digits": 2},
    eval_tasks=("arithmetic-word",), train_pool=64, es_batch=16, es_iterations=10, grpo_steps=10, max_new_tokens=16,
    eval_size=64, probe_size=8, checkpoint_every=10,  # one orbax save per method (a save of 1.6 GB costs minutes here)
    # σ: below ~3e-3 no member's greedy answer changes (zero fitness variance), above ~1e-2 members
    # collapse; embedding/head excluded as in EGGROLL (their noise shifts every logit by σ‖h‖).
    es=dict(population_size=8, sigma=4e-3, alpha=2e-3, antithetic=True, noise="lowrank", rank=1,
            param_filter="^layers/"),
    # GRPO rollouts at T = 0.6: at T = 1 the 135M model's samples are right ~4 % of the time (greedy: 17 %), most
    # groups have zero reward variance and lr 1.5e-5 / 2.5e-5 left accuracy flat / lower; T = 0.6, lr 2e-5 moved it
    grpo=dict(group_size=6, prompts_per_step=4, learning_rate=2e-5, total_steps=10, beta=0.0, temperature=0.6))
