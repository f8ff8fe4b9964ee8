"""``paper1``: "Matching Accuracy, Different Geometry" (code Bhoy1/ESvsGRPO @43eed8c), docs/protocols.md#a–#d.

Sequential Countdown → MATH → SciKnowEval-Chemistry → BoolQ (§D.1) on Qwen3-4B-Instruct-2507, one cycle,
no replay, no KL penalty. Text vs code (§J): σ/α follow the text (1.5e-3 / 7.5e-4; the measured norms
support it), the repo's 1e-3 / 5e-4 is ``--set es.sigma=1e-3 --set es.alpha=5e-4``; the GRPO lr follows
the per-task config (3e-6), the text's 1e-5 is ``--set grpo.learning_rate=1e-5``. ES(300) is
``--set es_iterations=300``. Data (under ``data_root``): HF datasets exported to parquet/JSONL or
``save_to_disk`` folders named below. Hold-outs MMLU / IFEval: ``--set eval_tasks=...,mmlu,ifeval`` with
``eval_task_kwargs.mmlu.path=...`` where the data is given (their code is not released, §C.7).
"""
TASKS = ("countdown", "math", "chemistry", "boolq")  # §D.1 order
TASK_KWARGS = {
    # §C.1: Jiayi-Pan/Countdown-Tasks-3to4 split "train" in dataset order, rows [0,200) train, [200,2200) test;
    # boxed answer, binary reward, no format reward
    "countdown": {"style": "boxed", "path": "countdown-tasks-3to4", "order": "file",
                  "splits": {"train": "train[0:200]", "test": "train[200:2200]"}},
    # §C.3: nlile/hendrycks-MATH-benchmark; train 40 per level (first in order), test MATH-500 (first 500)
    "math": {"path": "hendrycks-math-benchmark", "prompt": "boxed", "reward": "paper1", "stratify_per_level": 40,
             "order": "file", "splits": {"train": "train", "test": "test[0:500]"}},
    # §C.5: SciKnowEval v2 test, Chemistry 4-choice MCQ, random.seed(42) shuffle, 200 train / 2000 test,
    # the lenient lowercase-letter fallback of the extractor kept
    "chemistry": {"path": "sciknoweval", "lenient_fallback": True, "train_size": 200},
    # §C.6: google/boolq, first 200 of train, first 2000 of validation
    "boolq": {"path": "boolq", "order": "file"},
}
PRESET = dict(
    model="hf:Qwen3-4B-Instruct-2507",  # §D.1 configs/sequential/qwen_{es,grpo}.json
    task="countdown", task_kwargs=TASK_KWARGS["countdown"], sequence=TASKS,
    eval_tasks=TASKS[1:], eval_task_kwargs=TASK_KWARGS,
    train_pool=200,  # train_size 200 (§A.2 table, "Batch per member")
    es_batch=200,  # batch_size 200 = the whole train set every iteration (§A.2)
    es_iterations=100,  # num_iterations 100 per task (§D.1); ES(300) as an override
    grpo_steps=80,  # ⌊40000/504⌋ = 79 scheduled steps, the loop runs an 80th at lr 0 (§B.1)
    max_new_tokens=1024, eval_max_new_tokens=1024,  # max_tokens 1024 for members, rollouts and eval (§A.2, §B.1, §D.1)
    eval_size=2000,  # test cap 2,000 (MATH: its split holds 500) (§D.1)
    decode_compaction=2,  # rows that stopped (EOS) stop costing row-steps: members, rollouts, evaluation
    probe_size=16, checkpoint_every=10,
    es=dict(population_size=30,  # §A.2
            sigma=1.5e-3, alpha=7.5e-4,  # text values (§A.2, §J); code: 1e-3 / 5e-4
            shaping="zscore", antithetic=False, noise="full",
            member_temperature=1.0, member_top_p=0.95,  # members sample (es.py:183-193)
            correlated_noise=False),  # the seeds' seed-per-tensor noise is `--set es.correlated_noise=true` (§A.3)
    grpo=dict(group_size=8,  # K 8
              prompts_per_step=63,  # 21 per GPU × 3 GPUs → 504 completions per step
              learning_rate=3e-6,  # per-task config (text: 1e-5)
              lr_schedule="linear", total_steps=79, warmup_steps=0,  # linear decay to 0 per task
              weight_decay=0.0, adam_b1=0.9, adam_b2=0.999, adam_eps=1e-8, max_grad_norm=1.0,
              beta=0.0, kl_estimator="k3",  # kl_coef 0, k3 tracked on the rollouts
              clip_eps=0.2, loss_aggregation="seq_mean_token_mean", scale_rewards="group", std_ddof=1,
              adv_eps=1e-6, num_inner_updates=1, temperature=1.0, top_p=0.95),
)
