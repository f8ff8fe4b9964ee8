"""``qiu``: "Evolution Strategies at Scale" (Qiu et al. 2025, VsonicV/es-fine-tuning-paper @523afc8), the
common ancestor, docs/protocols.md#a1–#a2, #b3, #c1, #g3.

Countdown with the raw TinyZero string (no chat template, ending ``<think>``), the first 200 items of
``countdown.json`` for training and the last 2,000 for test (``--eval_offset -2000``); N 30, σ 1e-3,
α 5e-4, greedy members, 500 iterations, 0.1·format + 1.0·answer. Qiu reports many models; the preset
names Qwen2.5-1.5B-Instruct (``--set model=hf:...`` for the others). The RL baselines' (β, lr) were
grid-searched per model (their Table 3, not recovered): the GRPO block is a group-30 starting point.

Which of Qiu's two scripts: the accelerated one (``es_fine-tuning_countdown_accl.py``: vLLM at temperature
0, each row's ``context`` as the prompt, the completion alone scored), which paper 2 builds on. The
original HF script (``countdown/es_fine-tuning_countdown.py``) differs in two ways esjax does not
reproduce: ``model.generate(do_sample=False)`` applies the checkpoint's generation-config repetition
penalty (1.1 for Qwen2.5-1.5B-Instruct, prompt tokens included), and it scores the decoded prompt +
completion, so the prompt's own ``<think> </think>`` / ``<answer>`` tags feed the format reward.
"""
PRESET = dict(
    model="hf:Qwen2.5-1.5B-Instruct",
    task="countdown",
    task_kwargs={"style": "qiu", "path": "countdown", "order": "file",
                 "splits": {"train": "countdown.json[0:200]", "test": "countdown.json[-2000:]"}},
    train_pool=200, es_batch=200, es_iterations=500, grpo_steps=500, max_new_tokens=1024, eval_size=2000,
    decode_compaction=2,  # rows that stopped (EOS) stop costing row-steps; the same tokens (esjax.sampling)
    eval_every=50, checkpoint_every=50, probe_size=16,
    es=dict(population_size=30, sigma=1e-3, alpha=5e-4, shaping="zscore", antithetic=False, noise="full",
            member_temperature=0.0),
    grpo=dict(group_size=30, prompts_per_step=200, mini_batch_prompts=32, learning_rate=5e-6, total_steps=500,
              beta=0.0, loss_aggregation="token_mean"),
)
