"""``tiny``: the test preset. Tiny random model, toy lowercase reward, seconds."""
PRESET = dict(
    model="tiny-random-llama", task="lowercase", eval_tasks=("arithmetic",), train_pool=8, es_batch=4,
    es_iterations=3, grpo_steps=3, max_new_tokens=6, eval_size=8, probe_size=4, checkpoint_every=1,
    es=dict(population_size=4, sigma=0.05, alpha=0.05, noise="full"),
    grpo=dict(group_size=4, prompts_per_step=2, learning_rate=1e-3, total_steps=3, beta=0.0))
