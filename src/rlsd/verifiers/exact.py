"""`exact`: normalised string match between the extracted answer and the `answer` column.

Normalisation (applied to both sides): strip, drop surrounding `$...$`, collapse runs of
whitespace to one space, drop trailing periods, and, when the whole string is a plain decimal
integer, canonicalise it (`"+13"`, `"013"` and `"13"` are equal; `"-0"` equals `"0"`).
Case-sensitive unless `case_sensitive=False`.

Deliberate choice: `exact` keeps string semantics beyond integers. `"13.0"` does not equal
`"13"`, `"1/2"` does not equal `"0.5"`: use `numeric` (tolerance) or `math` (symbolic) for that.
The `answer` column may be a list of accepted answers; matching any one scores 1.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import partial
from typing import Any

from rlsd.verifiers.base import RewardFunction
from rlsd.verifiers.extract import DEFAULT_ORDER, Which, check_order, extract_answer

_INTEGER_RE = re.compile(r"[+-]?\d+")


def normalize(text: Any, case_sensitive: bool = True) -> str:
    """The canonical form `exact` compares (see the module docstring)."""
    s = str(text).strip()
    if len(s) >= 2 and s.startswith("$") and s.endswith("$"):
        s = s.strip("$").strip()
    s = re.sub(r"\s+", " ", s).rstrip(".").rstrip()
    if _INTEGER_RE.fullmatch(s):
        s = str(int(s))
    return s if case_sensitive else s.casefold()


def references(value: Any, column: str = "answer") -> list[Any]:
    """The accepted reference answers of a row (a value or a list of values)."""
    if value is None:
        raise ValueError(f"row has no '{column}' value (None); fill the '{column}' column")
    return list(value) if isinstance(value, (list, tuple)) else [value]


def score_exact(
    completion: str,
    row: dict[str, Any],
    *,
    order: Sequence[str] = DEFAULT_ORDER,
    which: Which = "last",
    case_sensitive: bool = True,
) -> float:
    """1.0 when the extracted answer normalises to one of the row's `answer` values."""
    refs = {normalize(r, case_sensitive) for r in references(row.get("answer"))}
    answer = extract_answer(completion, order, which)
    if answer is None:
        return 0.0
    return float(normalize(answer, case_sensitive) in refs)


def exact_verifier(
    *,
    extract: Sequence[str] = DEFAULT_ORDER,
    which: Which = "last",
    case_sensitive: bool = True,
    **options: Any,
) -> RewardFunction:
    """The `exact` reward function; `options` go to `RewardFunction` (e.g. `failure_score`)."""
    score = partial(
        score_exact, order=check_order(extract), which=which, case_sensitive=case_sensitive
    )
    return RewardFunction("exact", score, columns=("answer",), **options)
