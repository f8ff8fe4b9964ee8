"""``paper2``: "ES lead to catastrophic forgetting" (code akshat57/es-catastrophic @565029a), docs/protocols.md
#a2, #b2, #c1–#c4, #c7, #d2.

Qwen2.5-1.5B-Instruct fine-tuned on Countdown only (Llama-3.2-1B-Instruct: ``--set
model=hf:Llama-3.2-1B-Instruct``), forgetting read off HellaSwag along the run (checkpoints every 50 ES
iterations). GSM8K / MATH / OlympiadBench runs: ``--set task=gsm8k`` etc. (their "####" prompt and
exact-string reward are preset below). Text vs code (§J): the reward is 0.1·format + **1.0**·answer
(code; the text says 0.9: ``--set task_kwargs.answer_weight=0.9``). MMLU (optional flag in the seed):
``--set eval_tasks=hellaswag,mmlu --set eval_task_kwargs.mmlu.path=mmlu``.
"""
HASHMARK = {"reward": "string_match", "order": "file"}
TASK_KWARGS = {
    # §C.1: countdown.json (first 200 train) and verl test.parquet (500 rows); Qiu's string as the user message
    "countdown": {"style": "paper2", "path": "countdown", "order": "file",
                  "splits": {"train": "countdown.json[0:200]", "test": "test.parquet"},
                  "format_weight": 0.1, "answer_weight": 1.0},
    # §C.2–C.4: verl parquet train (200) / test, "####" suffix, exact string match
    "gsm8k": {"path": "gsm8k", **HASHMARK},
    "math": {"path": "math", "prompt": "hashmark", **HASHMARK},
    "olympiadbench": {"path": "olympiadbench", "order": "file"},
    # §C.7: every 10th validation item (all 1,005, whatever eval_size), endings shuffled with seed 42, greedy 10 tokens
    "hellaswag": {"path": "hellaswag", "stride": 10, "shuffle_seed": 42, "every_item": True},
    # §C.7: 500 random test items, 5-shot from the subject's dev set, argmax over letter log-probs
    "mmlu": {"path": "mmlu", "shots": 5, "order": "shuffle"},
}
PRESET = dict(
    model="hf:Qwen2.5-1.5B-Instruct",
    task="countdown", task_kwargs=TASK_KWARGS["countdown"],
    eval_tasks=("hellaswag",), eval_task_kwargs=TASK_KWARGS,
    train_pool=200, es_batch=200,  # all 200 training prompts every iteration (§A.2)
    es_iterations=500,  # --num_iterations 500
    grpo_steps=500,  # total_epochs 500, one step per epoch; the paper stops at a plateau (§B.2)
    max_new_tokens=1024, eval_size=500,  # Countdown test 500, greedy 1024 (§D.2); HellaSwag its own 10 tokens
    decode_compaction=2,  # rows that stopped (EOS) stop costing row-steps; the same tokens (esjax.sampling)
    eval_every=50, checkpoint_every=50,  # --save_model_every 50 (§D.2)
    probe_size=16,
    es=dict(population_size=30, sigma=1e-3, alpha=5e-4,  # hard-coded (l.841-842)
            shaping="zscore", antithetic=False, noise="full",
            member_temperature=0.0),  # temperature 0.0: greedy members
    grpo=dict(group_size=30,  # rollout.n 30, "to mimic the 30 mutations"
              prompts_per_step=200, mini_batch_prompts=32,  # train_batch 200, ppo_mini_batch 32 → 7 updates
              learning_rate=1e-6, lr_schedule="constant", total_steps=500,
              beta=0.001, kl_estimator="low_var_kl",  # use_kl_loss, kl_loss_coef 0.001, low_var_kl
              clip_eps=0.2, clip_ratio_c=3.0,  # verl defaults: clip 0.2, dual clip 3.0 (actor.yaml)
              loss_aggregation="token_mean",  # verl's token-mean (see below)
              std_ddof=1, adv_eps=1e-6,  # torch.std (unbiased) + 1e-6 (core_algos)
              weight_decay=0.01,  # verl's AdamW default (optim/fsdp.yaml), not overridden by the scripts
              max_grad_norm=1.0, temperature=1.0, top_p=1.0),
)
# verl v0.6.1 (the release of the seed's date; its README says only "install VeRL") read for each value above.
# Known differences that remain, all in how verl slices the batch rather than in the loss:
# - verl's token-mean is per micro-batch of 4 sequences (length-balanced and length-sorted across its two
#   GPUs), scaled by 1/accumulation steps; esjax weighs every token of a mini-batch alike (token_mean).
# - verl's 7th mini-batch (8 of 200 prompts) keeps the full mini-batch's 1/accumulation scale, so it
#   moves about a quarter as far; esjax normalises it as a full one.
