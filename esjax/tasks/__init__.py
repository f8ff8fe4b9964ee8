"""Tasks register themselves by name on import; ``get_task(name, **kw)`` builds one."""
from esjax.tasks import (arithmetic, boolq, chemistry, countdown, gsm8k, hellaswag, ifeval, math, mmlu,  # noqa: F401
                         olympiadbench, prior, toy)  # (registration)
from esjax.tasks.base import Example, Reward, Task, encode_prompts, get_task, task_names  # noqa: F401
