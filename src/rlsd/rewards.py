"""Fail-safe reward functions: a reward function that raises never kills a run.

`fail_safe(fn)` wraps a user's TRL reward function. When the batch call raises, each item is
scored alone; an item that still raises scores `on_error` (0.0, i.e. failed; or None to
exclude it from the group baseline, which TRL supports) and is counted; the trainer logs the
count as `verifiers/<name>/exception`. `rlsd.verifiers` reward functions are fail-safe by
construction (and log their own `verifiers/<name>/<timeout|exception|crash>` counts), so they
are returned unwrapped.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections import Counter
from collections.abc import Callable

logger = logging.getLogger(__name__)


def fail_safe(fn: Callable, on_error: float | None = 0.0) -> Callable:
    """Wrap a TRL reward function `fn(prompts, completions, **columns) -> list[float | None]`."""
    from rlsd.verifiers import RewardFunction, RoutedReward

    if isinstance(fn, (RewardFunction, RoutedReward)) or getattr(fn, "_rlsd_fail_safe", False):
        return fn
    if inspect.iscoroutinefunction(fn):
        return fn  # TRL awaits these itself; wrapping would hide that they are async
    counts: Counter[str] = Counter()

    @functools.wraps(fn)
    def wrapped(prompts=None, completions=None, **kwargs):
        n = len(completions)
        try:
            rewards = list(fn(prompts=prompts, completions=completions, **kwargs))
            if len(rewards) != n:
                raise ValueError(f"returned {len(rewards)} rewards for {n} completions")
            return rewards
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
            except Exception:  # noqa: BLE001
                counts["exception"] += 1
                value = on_error
            rewards.append(value)
        return rewards

    def pop_failures() -> dict[str, int]:
        """Failures since the last call."""
        out = dict(counts)
        counts.clear()
        return out

    wrapped._rlsd_fail_safe = True  # type: ignore[attr-defined]
    wrapped.pop_failures = pop_failures  # type: ignore[attr-defined]
    return wrapped
