"""Tasks register themselves by name on import; ``get_task(name, **kw)`` builds one."""
from esjax.tasks import arithmetic, countdown, gsm8k, math, toy  # noqa: F401  (registration)
from esjax.tasks.base import Example, Reward, Task, encode_prompts, get_task, task_names  # noqa: F401
