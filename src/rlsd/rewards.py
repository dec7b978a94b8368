"""Reward functions that never stop a run, and the one way their failures are counted.

Every reward function rlsd builds or wraps counts the items it could not score in a
`FailureCounts` and exposes the same interface:

- `fn.failures`: cumulative counts per kind (`timeout`, `exception`, `crash`);
- `fn.pop_failures()`: the counts since the previous call, every kind included (zeros too).
  `RLSDTrainer.log` calls it at each logging step and logs `verifiers/<name>/<kind>`;
- `fn.reset_failures()`: the cumulative counts, then all set back to zero;
- `fn.last_errors`: the last 20 messages.

`rlsd.verifiers` reward functions count their own failures (timeouts, crashed workers and
exceptions of their per-item scorers). `fail_safe(fn)` wraps any other TRL reward function:
when the batch call raises, each item is scored alone; an item that still raises scores
`on_error` (0.0, i.e. failed; or None to exclude it from the group baseline, which TRL
supports) and counts as an `exception`. Functions that already count (they have
`pop_failures`) and async functions are returned unwrapped.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

logger = logging.getLogger(__name__)

FAILURE_KINDS: tuple[str, ...] = ("timeout", "exception", "crash")


class FailureCounts:
    """Failure counts of one reward function: cumulative, since the last pop, last messages.

    `totals` is a live dict (updated in place), so it can be handed out as `fn.failures`.
    """

    def __init__(self, kinds: Sequence[str] = FAILURE_KINDS, keep_errors: int = 20) -> None:
        self.kinds = tuple(kinds)
        self.totals: dict[str, int] = dict.fromkeys(self.kinds, 0)
        self.last_errors: deque[str] = deque(maxlen=keep_errors)
        self._since_pop: dict[str, int] = dict.fromkeys(self.kinds, 0)
        self._lock = threading.Lock()

    def add(self, kind: str, error: str = "", count: int = 1) -> None:
        """Count `count` failures of `kind` (one of `kinds`), remembering `error`."""
        if kind not in self.totals:
            raise ValueError(f"unknown failure kind {kind!r}; expected one of {self.kinds}")
        with self._lock:
            self.totals[kind] += count
            self._since_pop[kind] += count
            if error:
                self.last_errors.append(f"{kind}: {error}")

    def pop(self) -> dict[str, int]:
        """Counts since the previous `pop`, every kind included."""
        with self._lock:
            counts = dict(self._since_pop)
            self._since_pop = dict.fromkeys(self.kinds, 0)
        return counts

    def reset(self) -> dict[str, int]:
        """The cumulative counts; then every count is zero again."""
        with self._lock:
            counts = dict(self.totals)
            for kind in self.kinds:
                self.totals[kind] = 0
            self._since_pop = dict.fromkeys(self.kinds, 0)
        return counts


def fail_safe(fn: Callable, on_error: float | None = 0.0) -> Callable:
    """Wrap a TRL reward function `fn(prompts, completions, **columns) -> list[float | None]`."""
    if callable(getattr(fn, "pop_failures", None)):
        return fn  # counts its own failures (rlsd.verifiers, or already wrapped)
    if inspect.iscoroutinefunction(fn):
        return fn  # TRL awaits these itself; wrapping would hide that they are async
    counts = FailureCounts(("exception",))

    @functools.wraps(fn)
    def wrapped(prompts: Any = None, completions: Any = None, **kwargs: Any) -> list[float | None]:
        n = len(completions)
        try:
            batch = list(fn(prompts=prompts, completions=completions, **kwargs))
            if len(batch) != n:
                raise ValueError(f"returned {len(batch)} rewards for {n} completions")
            return batch
        except Exception as batch_error:  # noqa: BLE001 - a reward must never stop training
            logger.warning(
                "reward function %s raised on a batch: %r", wrapped.__name__, batch_error
            )
        rewards: list[float | None] = []
        for i in range(n):  # score items alone: one bad item must not fail its batch
            columns = {
                k: [v[i]] if isinstance(v, list) and len(v) == n else v for k, v in kwargs.items()
            }
            prompt = [prompts[i]] if isinstance(prompts, list) and len(prompts) == n else prompts
            try:
                value = fn(prompts=prompt, completions=[completions[i]], **columns)[0]
            except Exception as exc:  # noqa: BLE001
                counts.add("exception", f"{type(exc).__name__}: {exc}"[:500])
                value = on_error
            rewards.append(value)
        return rewards

    fields: dict[str, Any] = {
        "failure_counts": counts,
        "failures": counts.totals,
        "last_errors": counts.last_errors,
        "pop_failures": counts.pop,
        "reset_failures": counts.reset,
    }
    for name, value in fields.items():
        setattr(wrapped, name, value)
    return wrapped
