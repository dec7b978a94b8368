"""The `Task` interface shared by the built-in tasks."""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

# Compact teacher template for the built-in tasks. The spec's English template works too,
# but for a character-level model it would triple the teacher's input length. The question
# stays last so that the student and teacher contexts end identically (`...=`) and the
# sampled response continues both in the same way.
TASK_TEACHER_TEMPLATE = "R:{privileged}\n{question}"

# Seeds of the two splits are derived from the user's seed with disjoint offsets, and
# training problems that also occur in the eval split are dropped, so the held-out set
# is truly held out.
_SPLIT_OFFSET = {"train": 0, "eval": 1_000_003}


@dataclass(frozen=True)
class Problem:
    question: str  # what the student sees, e.g. "Q:7+3-5+8="
    solution: str  # the worked reference solution, ending with "A:<answer>"
    answer: str
    # The picture the question is about (a PIL image), for visual tasks: the row gets an
    # `image` column and the prompt an image part before the question, as TRL's VLM path
    # expects. None for text tasks.
    image: Any = None
    # More columns of the problem's row, e.g. the `sql` task's `database` and `verifier`.
    columns: dict[str, Any] = field(default_factory=dict, hash=False)
    # More kinds of privileged context than the two every task has ("solution", "answer"),
    # by name, e.g. the `sql` task's gold query alone ("sql") or its rules alone ("rules").
    # A kind named here overrides the default one ("answer" is the sql task's query result).
    privileged: dict[str, str] = field(default_factory=dict, hash=False)
    # Chat turns before the question (e.g. a worked example of the answer format, as the
    # `rg:` tasks have); the question is always the last user message.
    turns_before: list[dict[str, Any]] = field(default_factory=list, hash=False)


class Task(ABC):
    """A generator of verifiable problems with worked reference solutions."""

    name: str = "task"
    max_completion_length: int = 40
    teacher_template: str = TASK_TEACHER_TEMPLATE
    has_images: bool = False  # rows carry an `image` column: a vision-language model is needed
    # The shipped model `rlsd train/eval/credit --task NAME` use without `--model_name_or_path`
    # (a folder name under `rlsd/models/`, see `rlsd.models.default_model_path`).
    default_model: str = "tiny"
    # `rlsd train --task NAME` flags that differ from the CPU defaults (`rlsd.cli`), any
    # `rlsd train` field by name, each used unless the command line or the YAML file sets it
    # (`max_completion_length` always follows the task's own, above).
    train_defaults: dict[str, Any] = {}
    # What `--privileged` may choose for this task (see `problem_privileged`).
    privileged_kinds: tuple[str, ...] = ("solution", "answer")

    @abstractmethod
    def sample(self, rng: random.Random) -> Problem:
        """Draw one problem."""

    def counterfactual(self, rng: random.Random) -> Problem | None:
        """A training question asked under other rules than the task's own, so that only its
        reference tells the solution, or None where the task has no such rules (the default).
        `rlsd sft` shows some in the self-teacher's format: a tiny model that could memorise
        every answer learns there to read the reference it is shown."""
        return None

    def key(self, problem: Problem) -> str:
        """What makes two problems the same (for distinct draws and the held-out split): the
        question; a visual task, whose question text repeats, adds what it drew."""
        return problem.question

    def problems(self, split: str, n: int, seed: int = 0) -> list[Problem]:
        """`n` distinct problems of `split` ("train" or "eval"), deterministic in `seed`."""
        if split not in _SPLIT_OFFSET:
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        held_out: set[str] = set()
        if split == "train":
            held_out = {self.key(p) for p in self.problems("eval", 1000, seed)}
        rng = random.Random(seed * 7919 + _SPLIT_OFFSET[split])
        out: list[Problem] = []
        seen: set[str] = set()
        attempts = 0
        while len(out) < n:
            attempts += 1
            if attempts > 50 * n + 10_000:
                raise ValueError(f"{self.name}: cannot draw {n} distinct problems for {split!r}")
            p = self.sample(rng)
            key = self.key(p)
            if key in seen or key in held_out:
                continue
            seen.add(key)
            out.append(p)
        return out


def problem_privileged(problem: Problem, kind: str = "solution") -> str:
    """The self-teacher's privileged context of `problem`: its worked `solution`, its final
    `answer` (`A:<answer>`), or a task-specific kind (`Problem.privileged`)."""
    if kind in problem.privileged:
        return problem.privileged[kind]
    if kind == "solution":
        return problem.solution
    if kind == "answer":
        return f"A:{problem.answer}"
    kinds = sorted({"solution", "answer", *problem.privileged})
    raise ValueError(f"privileged must be one of {kinds}, got {kind!r}")


def make_rows(problems: list[Problem], privileged: str = "solution") -> list[dict]:
    """Dataset rows for `problems`; `privileged` is "solution" (default), "answer" or a kind
    of the task's own (`Task.privileged_kinds`, e.g. the sql task's "sql" and "rules").

    A problem with an image gets TRL's VLM row: an `image` column and the prompt's content as
    parts, `[{"type": "image"}, {"type": "text", "text": question}]`."""
    if not problems and privileged not in ("solution", "answer"):
        raise ValueError(f"privileged must be 'solution' or 'answer', got {privileged!r}")
    rows = []
    for p in problems:
        content: Any = p.question
        if p.image is not None:
            content = [{"type": "image"}, {"type": "text", "text": p.question}]
        row = {
            "prompt": [*p.turns_before, {"role": "user", "content": content}],
            "answer": p.answer,
            "privileged_context": problem_privileged(p, privileged),
        }
        if p.image is not None:
            row["image"] = p.image
        row.update(p.columns)
        rows.append(row)
    return rows
