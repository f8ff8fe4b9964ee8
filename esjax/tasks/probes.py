"""Prior-ability probes: the fixed off-task prompt set that KL drift and forgetting are measured on.

:data:`GENERAL_PROMPTS` are everyday instruction prompts unrelated to every training task; the analysis
adds held-out prompts of the *other* tasks with :func:`probe_sets`.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

from esjax.tasks.base import Example, Task, get_task

GENERAL_PROMPTS = (
    "Give me three tips for staying healthy.",
    "What is the capital of France?",
    "Write a short poem about the ocean.",
    "Explain what a noun is.",
    "Translate 'good morning' into Spanish.",
    "Name three primary colors.",
    "Describe a cat in one sentence.",
    "What is photosynthesis?",
    "Suggest a name for a pet dog.",
    "Why is the sky blue?",
    "List two benefits of reading books.",
    "What does a doctor do?",
    "Write a friendly greeting for a new neighbor.",
    "Summarize the story of Cinderella in one sentence.",
    "What is the opposite of 'hot'?",
    "How many days are in a week?",
    "Give an example of a fruit that is yellow.",
    "What is the boiling point of water in Celsius?",
    "Explain why exercise is important.",
    "What are clouds made of?",
    "Write a sentence using the word 'bright'.",
    "Who wrote 'Romeo and Juliet'?",
    "What is the largest planet in our solar system?",
    "Describe your ideal weekend.",
)


def general_examples(n: int = len(GENERAL_PROMPTS)) -> List[Example]:
    return [Example(f"general/{i}", p, None) for i, p in enumerate(GENERAL_PROMPTS[:n])]


class GeneralChat(Task):
    """The off-task chat prompt set (no reward: it is only scored by KL drift)."""

    name = "general"
    max_new_tokens = 32

    def examples(self, split: str, n: int, seed: int = 0) -> List[Example]:
        return general_examples(n)


def probe_sets(task_names: Sequence[str], n: int, task_kwargs: Dict[str, dict] = None, seed: int = 12345):
    """{name: (task, examples)} for the general chat set and a held-out 'probe' split of each task."""
    task_kwargs = task_kwargs or {}
    out = {"general": (GeneralChat(), general_examples(n))}
    for name in task_names:
        task = get_task(name, **task_kwargs.get(name, {}))
        out[name] = (task, task.examples("probe", n, seed))
    return out
