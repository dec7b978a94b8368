"""Fail-safe reward functions: a reward function that raises never kills a run.

`fail_safe(fn)` wraps a TRL reward function. When the batch call raises, each item is scored
alone; an item that still raises scores `on_error` (0.0, i.e. failed; or None to exclude it
from the group baseline, which TRL supports) and is counted under `exception`. Failure counts
reported by the function itself (the `failures` mapping of `rlsd.verifiers` reward functions:
timeouts, crashes, ...) are passed through. The trainer logs both as `reward_failures/<reason>`.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)


def _item(value: Any, i: int) -> Any:
    return value[i] if isinstance(value, (list, tuple)) else value


def fail_safe(fn: Callable, on_error: float | None = 0.0) -> Callable:
    """Wrap a TRL reward function `fn(prompts, completions, **columns) -> list[float | None]`."""
    if getattr(fn, "_rlsd_fail_safe", False) or inspect.iscoroutinefunction(fn):
        return fn
    counts: Counter[str] = Counter()
    reported: Counter[str] = Counter()

    @functools.wraps(fn)
    def wrapped(prompts=None, completions=None, **kwargs):
        n = len(completions)
        try:
            rewards = list(fn(prompts=prompts, completions=completions, **kwargs))
            if len(rewards) != n:
                raise ValueError(f"returned {len(rewards)} rewards for {n} completions")
            return rewards
        except Exception as batch_error:  # noqa: BLE001 - a reward must never stop training
            logger.warning("reward function %s raised on a batch: %r", wrapped.__name__, batch_error)
        rewards: list[float | None] = []
        for i in range(n):
            item_kwargs = {k: _item(v, i) if isinstance(v, list) and len(v) == n else v for k, v in kwargs.items()}
            try:
                value = fn(prompts=[_item(prompts, i)], completions=[completions[i]], **{
                    k: [v] if isinstance(kwargs[k], list) and len(kwargs[k]) == n else v
                    for k, v in item_kwargs.items()
                })[0]
            except Exception:  # noqa: BLE001
                counts["exception"] += 1
                value = on_error
            rewards.append(value)
        return rewards

    def pop_failures() -> dict[str, int]:
        """Failures since the last call: this wrapper's and the function's own counters."""
        out = dict(counts)
        counts.clear()
        inner = getattr(fn, "failures", None)
        if isinstance(inner, dict):
            for reason, total in inner.items():
                delta = int(total) - reported[reason]
                reported[reason] = int(total)
                if delta:
                    out[reason] = out.get(reason, 0) + delta
        return out

    wrapped._rlsd_fail_safe = True  # type: ignore[attr-defined]
    wrapped.pop_failures = pop_failures  # type: ignore[attr-defined]
    return wrapped
