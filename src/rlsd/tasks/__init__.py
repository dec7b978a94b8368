"""Built-in verifiable tasks: deterministic train/eval splits with reference solutions.

Every task produces rows in rlsd's dataset format (see `rlsd.data`):

- `prompt`: chat messages `[{"role": "user", "content": ...}]` (the student sees only this),
- `answer`: the final answer, checked by the `exact` verifier,
- `privileged_context`: the reference worked solution (or the final answer only, with
  `privileged="answer"`), shown to the self-teacher and never to the student.

The tasks are sized for the tiny shipped model: they need several written steps, so credit
assignment matters, while staying learnable by a 1M-parameter character-level model on a CPU.
`counting_visual` adds an `image` column (a PIL image) and an image part to the prompt (TRL's
vision-language conventions); its model is `rlsd.models.tiny_vlm`.
"""

from __future__ import annotations

from rlsd.tasks.base import Problem, Task, make_rows, privileged_text
from rlsd.tasks.counting_visual import CountingVisualTask
from rlsd.tasks.sql import SqlTask
from rlsd.tasks.tasks import ArithmeticTask, CountingTask, MixedTask, PathsTask

TASKS: dict[str, type[Task]] = {
    "arithmetic": ArithmeticTask,
    "counting": CountingTask,
    "paths": PathsTask,
    "mixed": MixedTask,
    "sql": SqlTask,  # text-to-SQL over the shipped database; rules in its documents
    "counting_visual": CountingVisualTask,  # images: needs a vision-language model
}


def get_task(name: str) -> Task:
    """Return a built-in task by name (`arithmetic`, `counting`, `paths`, `mixed`, `sql` or
    `counting_visual`)."""
    if name not in TASKS:
        raise ValueError(f"Unknown built-in task {name!r}; choose one of {sorted(TASKS)}.")
    return TASKS[name]()


__all__ = ["TASKS", "Problem", "Task", "get_task", "make_rows", "privileged_text"]
