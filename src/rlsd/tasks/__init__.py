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

from typing import Any

from rlsd.tasks.base import Problem, Task, make_rows, problem_privileged
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


def task_names() -> list[str]:
    """What `--task` accepts: the built-in names and the `rg:<dataset>` family."""
    return [*TASKS, "rg:<dataset>"]


def get_task(name: str, config: dict[str, Any] | None = None) -> Task:
    """A built-in task by name (`arithmetic`, `counting`, `paths`, `mixed`, `sql`,
    `counting_visual`) or a reasoning-gym generator, `rg:<dataset>`, with its generator
    configuration `config` (`--task_config`; the built-in tasks take none). One-line
    `ValueError`s that list the choices."""
    if name.startswith("rg:"):
        from rlsd.tasks.reasoning_gym import ReasoningGymTask

        return ReasoningGymTask(name[3:], config)
    if name not in TASKS:
        raise ValueError(
            f"unknown task {name!r}; choose one of {', '.join(task_names())} (e.g. rg:chain_sum)"
        )
    if config:
        raise ValueError(f"task {name!r} takes no task_config (only rg:<dataset> tasks do)")
    return TASKS[name]()


__all__ = ["TASKS", "Problem", "Task", "get_task", "make_rows", "problem_privileged", "task_names"]
