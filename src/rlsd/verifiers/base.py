"""`RewardFunction`: a per-item scorer turned into a fail-safe TRL reward function.

A verifier is a picklable function `score(completion_text, row) -> float | None`, where `row`
holds this item's dataset columns (plus `prompt`). `RewardFunction` wraps it as the callable
TRL expects, `fn(prompts, completions, **columns) -> list[float | None]`, and adds the
reliability contract:

- it never raises for a bad item: an exception, a timeout or a crashed worker scores that one
  completion `failure_score` (0.0, or None to exclude it from the advantage) and is counted
  the one way rlsd counts reward failures (`rlsd.rewards.FailureCounts`): `fn.failures`
  (cumulative), `fn.pop_failures()` (since the last call; `RLSDTrainer` logs it as
  `verifiers/<name>/<kind>`), `fn.reset_failures()` and `fn.last_errors`;
- a missing dataset column *is* raised (a configuration error on the first step, with the fix);
- items are scored on the backend from `pool.run_batch` with a per-item deadline.

A wrong answer is not a failure: the model's bad SQL or failing code scores 0 normally. The
failure counts are for the cases where the verifier could not judge.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from rlsd.rewards import FailureCounts
from rlsd.verifiers.extract import completion_text
from rlsd.verifiers.pool import Backend, Outcome, run_batch

Score = Callable[[str, dict[str, Any]], "float | None"]

# Keyword arguments TRL passes that are not dataset columns.
_TRL_EXTRAS = ("trainer_state", "log_extra", "log_metric", "completion_ids", "environments")


class RewardFunction:
    """A TRL reward function: `fn(prompts, completions, **columns) -> list[float | None]`.

    Args:
        name: the reward's name (TRL uses `__name__` for its metric names).
        score: `score(completion_text, row) -> float | None`, picklable for `"process"`.
        columns: dataset columns every row must have (checked once per call).
        backend: `"inline"`, `"thread"` or `"process"` (see `rlsd.verifiers.pool`).
        workers: parallel workers for thread/process backends (None: half the CPUs, <= 8).
        timeout: per-item deadline in seconds (enforced by the thread/process backends).
        failure_score: what a failed item scores: 0.0 (default) or None (TRL then ignores it).
    """

    def __init__(
        self,
        name: str,
        score: Score,
        *,
        columns: Sequence[str] = (),
        backend: Backend = "inline",
        workers: int | None = None,
        timeout: float = 10.0,
        failure_score: float | None = 0.0,
    ) -> None:
        if backend not in ("inline", "thread", "process"):
            raise ValueError(f"backend must be 'inline', 'thread' or 'process', not {backend!r}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.__name__ = name
        self.score = score
        self.columns = tuple(columns)
        self.backend: Backend = backend
        self.workers = workers
        self.timeout = timeout
        self.failure_score = failure_score
        self.failure_counts = FailureCounts()
        self.failures = self.failure_counts.totals  # live: cumulative counts per kind
        self.last_errors = self.failure_counts.last_errors

    def __repr__(self) -> str:
        return f"RewardFunction({self.__name__!r}, backend={self.backend!r})"

    def rows(
        self, n: int, prompts: Sequence[Any] | None, columns: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """Split TRL's column lists into one dict per completion."""
        missing = [c for c in self.columns if c not in columns]
        if missing:
            raise ValueError(
                f"reward '{self.__name__}' needs dataset column(s) {missing} but got "
                f"{sorted(k for k in columns if k not in _TRL_EXTRAS)}; add them to the dataset "
                "(TRL passes every dataset column to reward functions) or pick another verifier"
            )
        per_row = {
            key: value
            for key, value in columns.items()
            if key not in _TRL_EXTRAS and isinstance(value, (list, tuple)) and len(value) == n
        }
        rows = [{key: value[i] for key, value in per_row.items()} for i in range(n)]
        if prompts is not None and len(prompts) == n:
            for row, prompt in zip(rows, prompts, strict=True):
                row.setdefault("prompt", prompt)
        return rows

    def __call__(
        self,
        prompts: Sequence[Any] | None = None,
        completions: Sequence[Any] | None = None,
        **columns: Any,
    ) -> list[float | None]:
        if completions is None:
            raise ValueError(f"reward '{self.__name__}' was called without completions")
        rows = self.rows(len(completions), prompts, columns)
        items = [(completion_text(c), row) for c, row in zip(completions, rows, strict=True)]
        outcomes = run_batch(
            self.score, items, backend=self.backend, workers=self.workers, timeout=self.timeout
        )
        return self.collect(outcomes)

    def collect(self, outcomes: Sequence[Outcome]) -> list[float | None]:
        """Turn outcomes into rewards, counting failures."""
        rewards: list[float | None] = []
        for outcome in outcomes:
            if outcome.failure is None and outcome.value is not None:
                value = float(outcome.value)
                if math.isfinite(value):
                    rewards.append(value)
                    continue
                outcome = Outcome(failure="exception", error=f"non-finite score {value}")
            if outcome.failure is None:  # the scorer itself chose None: exclude, no failure
                rewards.append(None)
                continue
            self.failure_counts.add(outcome.failure, outcome.error)
            rewards.append(self.failure_score)
        return rewards

    def score_one(self, completion: Any, **row: Any) -> float | None:
        """Score a single completion with the given row values (handy in tests and REPLs)."""
        return self(prompts=None, completions=[completion], **{k: [v] for k, v in row.items()})[0]

    def pop_failures(self) -> dict[str, int]:
        """Failure counts per kind since the previous call (what the trainer logs)."""
        return self.failure_counts.pop()

    def reset_failures(self) -> dict[str, int]:
        """Return the cumulative failure counts and set them back to zero."""
        return self.failure_counts.reset()
