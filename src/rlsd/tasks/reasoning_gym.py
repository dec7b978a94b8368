"""`rg:<dataset>`: the procedural tasks of reasoning-gym as built-in tasks, for chat models.

reasoning-gym (PyPI `reasoning-gym`, Apache-2.0) has 106 offline generators, each with its own
scorer (`dataset.score_answer(answer, entry)`). `get_task("rg:chain_sum", {"min_terms": 2})`
wraps one of them as a `Task`:

- **the generator's configuration** is its config dataclass's fields (`min_terms`, ...): an
  unknown key, or one the generator refuses (its own `validate`), is a one-line error. `seed`
  and `size` are rlsd's (`--seed`, `--num_train`), not the generator's.
- **the split**: a question is held out when a hash of its text falls in one bucket of
  `HELD_OUT_BUCKETS` (a quarter), as the sql task splits its combinations, so the two splits
  are disjoint for every seed and every size; a split's problems are the generator's items
  at indices drawn from that split's RNG (the built-in tasks' seed offsets), distinct
  questions only, skipping the other split's. The seed chooses the problems, not the split.
- **the prompt** is a chat row: one worked turn of the format (a training item of the same
  generator as a user message, its answer inside the tags as the assistant's reply), then the
  question, a blank line and `INSTRUCTION` (answer inside `<answer></answer>`), which the `rg`
  verifier parses before the scorer sees it. The example turn is there because a small
  instruct model rarely follows the instruction alone (SmolLM2-135M: 0% of its sampled answers
  in tags without it, 21% with it; docs/results.md section 7).
- **the verifier** (`rlsd.verifiers.reasoning_gym`, the row's `verifier` column is `rg`) scores
  the text inside the last `<answer>...</answer>` with the generator's own `score_answer`. It
  regenerates the item from the row's `rg_dataset`, `rg_config` (JSON) and `rg_index` columns,
  so the scorer sees the exact entry and its metadata, whatever the data file's format.
- **the privileged kinds**: `answer` (the generator's answer, as text) and, where the
  generator's metadata has a worked solution (`answer_cot`, `solution`, ...), `solution`.
  Without one, `rlsd train --task rg:...` defaults to `--privileged answer`.
- **the teacher template** is the spec's English one (`DEFAULT_TEACHER_TEMPLATE`): these
  tasks are for pretrained chat models, not the character-level tiny model.

Simplification: a small configuration space (two one-digit terms: about 200 questions) holds
fewer distinct problems than may be asked; drawing stops with an error that says how many
were found and to widen the configuration.
"""

from __future__ import annotations

import dataclasses
import json
import random
import zlib
from functools import lru_cache
from typing import Any

from rlsd.tasks.base import Problem, Task
from rlsd.teacher.prompt import DEFAULT_TEACHER_TEMPLATE

PREFIX = "rg:"
INSTRUCTION = "Give only the final answer inside <answer></answer>."
# Fields of the generators' config dataclasses that rlsd sets itself.
_RLSD_FIELDS = ("seed", "size")
# Metadata keys that hold a worked solution, in the order they are looked for.
_SOLUTION_KEYS = ("answer_cot", "solution", "cot", "reasoning")
# The generator's own seed: fixed, the split comes from the indices drawn (`sample`).
_GENERATOR_SEED = 0
# The generator's size: indices are drawn below it (some generators index lists of that size).
GENERATOR_SIZE = 100_000
HELD_OUT_BUCKETS = 4  # a question is held out when crc32(question) % 4 == 0
_SPLIT_SEED = {"train": 0, "eval": 1_000_003}  # as `rlsd.tasks.base`
_EXAMPLE_SEED = 12345


def dataset_names() -> list[str]:
    """The names reasoning-gym registers (`rg:<name>` tasks)."""
    return sorted(_factory().DATASETS)


def _factory():
    try:
        import reasoning_gym.factory as factory
    except ImportError as e:  # a dependency of rlsd: only a broken install gets here
        raise ValueError("rg: tasks need reasoning-gym: `pip install reasoning-gym==0.1.25`") from e
    return factory


def config_fields(dataset: str) -> list[str]:
    """The configuration keys `dataset`'s generator takes (its config dataclass's fields)."""
    _, config_cls = _factory().DATASETS[dataset]
    return [f.name for f in dataclasses.fields(config_cls) if f.name not in _RLSD_FIELDS]


@lru_cache(maxsize=64)
def generator(dataset: str, config_json: str = "{}") -> Any:
    """The reasoning-gym dataset object for `dataset` and its configuration (a JSON object,
    so that it can key the cache and travel in a dataset column); one-line errors."""
    factory = _factory()
    if dataset not in factory.DATASETS:
        raise ValueError(
            f"unknown reasoning-gym dataset {dataset!r}; choose one of: "
            + ", ".join(dataset_names())
        )
    config = json.loads(config_json) if config_json else {}
    if not isinstance(config, dict):
        raise ValueError(f"rg:{dataset}: the task config must be a JSON object, got {config!r}")
    fields = config_fields(dataset)
    unknown = sorted(set(config) - set(fields))
    if unknown:
        raise ValueError(
            f"rg:{dataset}: unknown task_config key(s) {unknown}; its keys are {fields}"
        )
    dataset_cls, config_cls = factory.DATASETS[dataset]
    try:
        cfg = config_cls(**config, seed=_GENERATOR_SEED, size=GENERATOR_SIZE)
        if hasattr(cfg, "validate"):
            cfg.validate()
        return dataset_cls(config=cfg)
    except (AssertionError, ValueError, TypeError) as e:
        message = " ".join(str(e).split()) or type(e).__name__
        raise ValueError(
            f"rg:{dataset}: the generator refuses task_config {config}: {message}"
        ) from e


def worked_solution(entry: dict[str, Any]) -> str | None:
    """The worked solution in a generator item's metadata, if it has one."""
    metadata = entry.get("metadata") or {}
    for key in _SOLUTION_KEYS:
        value = metadata.get(key)
        if isinstance(value, str) and value.strip():
            return value
    return None


class ReasoningGymTask(Task):
    """One reasoning-gym generator as a `Task` (see the module docstring)."""

    max_completion_length = 64
    teacher_template = DEFAULT_TEACHER_TEMPLATE

    def __init__(self, dataset: str, config: dict[str, Any] | None = None):
        self.dataset = dataset
        self.config = dict(config or {})
        self.config_json = json.dumps(self.config, sort_keys=True)
        self.generator = generator(dataset, self.config_json)  # fails early on a bad config
        self.name = PREFIX + dataset
        probe = self.generator[0]
        self.has_solution = worked_solution(probe) is not None
        self._example: list[dict[str, str]] | None = None
        self.privileged_kinds = ("solution", "answer") if self.has_solution else ("answer",)
        self.train_defaults = {} if self.has_solution else {"privileged": "answer"}

    def entry(self, index: int) -> dict[str, Any]:
        return self.generator[index]

    @staticmethod
    def is_held_out(problem: Problem) -> bool:
        return zlib.crc32(problem.question.encode()) % HELD_OUT_BUCKETS == 0

    def problems(self, split: str, n: int, seed: int = 0) -> list[Problem]:
        """`n` distinct problems of `split` ("train" or "eval"), deterministic in `seed`."""
        if split not in _SPLIT_SEED:
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        rng = random.Random(seed * 7919 + _SPLIT_SEED[split])
        out: list[Problem] = []
        seen: set[str] = set()
        for _ in range(50 * n + 10_000):
            if len(out) == n:
                return out
            p = self.sample(rng)
            if p.question in seen or self.is_held_out(p) != (split == "eval"):
                continue
            seen.add(p.question)
            out.append(p)
        if len(out) == n:
            return out
        raise ValueError(
            f"{self.name} {self.config}: only {len(out)} distinct {split} problems found, "
            f"{n} asked; widen the task_config or ask for fewer"
        )

    def example_turn(self) -> list[dict[str, str]]:
        """The worked turn before every question: the first training-split item of a fixed
        draw, asked with the instruction and answered inside the tags."""
        if self._example is None:
            rng = random.Random(_EXAMPLE_SEED)
            while True:
                entry = self.entry(rng.randrange(GENERATOR_SIZE))
                question = f"{entry['question'].strip()}\n\n{INSTRUCTION}"
                if zlib.crc32(question.encode()) % HELD_OUT_BUCKETS:  # a training question
                    break
            self._example = [
                {"role": "user", "content": question},
                {"role": "assistant", "content": f"<answer>{entry['answer']}</answer>"},
            ]
        return self._example

    def sample(self, rng: random.Random) -> Problem:
        index = rng.randrange(GENERATOR_SIZE)
        entry = self.entry(index)
        answer = str(entry["answer"])
        solution = worked_solution(entry)
        return Problem(
            question=f"{entry['question'].strip()}\n\n{INSTRUCTION}",
            # Without a worked solution, `solution` is not one of `privileged_kinds`.
            solution=solution if solution is not None else answer,
            answer=answer,
            turns_before=self.example_turn(),
            columns={
                "verifier": "rg",
                "rg_dataset": self.dataset,
                "rg_config": self.config_json,
                "rg_index": index,
            },
            privileged={"answer": answer},  # the answer as the generator gives it
        )


def parse_task_config(value: Any, source: str = "--task_config") -> dict[str, Any]:
    """`--task_config` as a dict: a JSON object on the command line, or a YAML mapping."""
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        return dict(value)
    try:
        parsed = json.loads(str(value))
    except json.JSONDecodeError as e:
        raise ValueError(f"{source} must be a JSON object, e.g. '{{\"min_terms\": 2}}': {e}") from e
    if not isinstance(parsed, dict):
        raise ValueError(f"{source} must be a JSON object, e.g. '{{\"min_terms\": 2}}'")
    return parsed
