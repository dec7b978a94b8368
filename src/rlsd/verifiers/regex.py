"""`regex`: the extracted answer matches a regular expression.

The pattern is the `pattern=` option, or else each row's `answer` column. By default the
extracted answer must match the whole pattern (`re.fullmatch`); `search=True` instead searches
the whole completion text. Compiled patterns are cached.

Python's `re` has no timeout and this verifier runs inline: a pattern with catastrophic
backtracking can stall scoring. Inputs are capped at `max_chars` (default 20,000) to bound it;
use `backend="process"` for untrusted patterns to get a killable per-item deadline.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache, partial
from typing import Any

from rlsd.verifiers.base import RewardFunction
from rlsd.verifiers.extract import DEFAULT_ORDER, Which, check_order, extract_answer


@lru_cache(maxsize=1024)
def _compile(pattern: str, flags: int) -> re.Pattern[str]:
    return re.compile(pattern, flags)


def score_regex(
    completion: str,
    row: dict[str, Any],
    *,
    pattern: str | None = None,
    search: bool = False,
    flags: int = 0,
    order: Sequence[str] = DEFAULT_ORDER,
    which: Which = "last",
    max_chars: int = 20_000,
) -> float:
    """1.0 when the answer (or, with `search`, the completion) matches the pattern."""
    source = pattern if pattern is not None else row.get("answer")
    if not isinstance(source, str):
        raise ValueError(
            f"regex needs a pattern= option or a string 'answer' column, got {source!r}"
        )
    compiled = _compile(source, flags)
    if search:
        return float(compiled.search(completion[-max_chars:]) is not None)
    answer = extract_answer(completion, order, which)
    if answer is None or len(answer) > max_chars:
        return 0.0
    return float(compiled.fullmatch(answer) is not None)


def regex_verifier(
    *,
    pattern: str | None = None,
    search: bool = False,
    flags: int = 0,
    extract: Sequence[str] = DEFAULT_ORDER,
    which: Which = "last",
    max_chars: int = 20_000,
    **options: Any,
) -> RewardFunction:
    """The `regex` reward function; `options` go to `RewardFunction`."""
    if pattern is not None:
        _compile(pattern, flags)  # fail early on a bad pattern
    score = partial(
        score_regex,
        pattern=pattern,
        search=search,
        flags=flags,
        order=check_order(extract),
        which=which,
        max_chars=max_chars,
    )
    columns = () if pattern is not None else ("answer",)
    return RewardFunction("regex", score, columns=columns, **options)
