"""`numeric`: the extracted number equals the `answer` column within a tolerance.

`parse_number` reads plain numbers (`-1,234.5`, `1e-3`, `.5`), fractions (`3/4`, `\\frac{3}{4}`,
`\\dfrac34` is not supported: braces are required), percentages (`50%` is 50, not 0.5),
currency signs (`$12`, `\\$12`) and a leading `x =`. When the extracted answer is not a number
by itself (`"about 42 apples"`), its last number is used.

Equality is `math.isclose(value, reference, rel_tol=1e-6, abs_tol=1e-9)` by default. The
`answer` column may be a number, a numeric string, or a list of accepted values.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from fractions import Fraction
from functools import partial
from typing import Any

from rlsd.verifiers.base import RewardFunction
from rlsd.verifiers.exact import references
from rlsd.verifiers.extract import Which, check_order, extract_answer, find_number

NUMERIC_ORDER: tuple[str, ...] = ("boxed", "answer_tag", "marker", "last_number")

_PLAIN_RE = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?", re.IGNORECASE)
_FRAC_RE = re.compile(r"([-+]?)\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}")


def parse_number(text: Any) -> float | None:
    """A float from a numeric answer string, or None when it is not one number."""
    if isinstance(text, bool):
        return None
    if isinstance(text, (int, float)):
        return float(text)
    if text is None:
        return None
    s = str(text).strip().strip("$").strip()
    s = re.sub(r"^[a-zA-Z]\s*=\s*", "", s)  # "x = 5"
    s = s.replace("\\$", "").replace("\\!", "").replace("\\,", "").replace("\\%", "%")
    s = re.sub(r"\\(?:text|mathrm)\{\s*\}", "", s).strip().rstrip(".").strip()
    s = s.lstrip("$€£").rstrip("%").strip()
    if re.fullmatch(r"[-+]?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    s = s.replace(" ", "")
    frac = _FRAC_RE.fullmatch(s)
    if frac:
        num, den = parse_number(frac.group(2)), parse_number(frac.group(3))
        if num is None or den is None or den == 0:
            return None
        return (-1 if frac.group(1) == "-" else 1) * num / den
    if _PLAIN_RE.fullmatch(s):
        return float(s)
    if "/" in s:
        num_text, _, den_text = s.partition("/")
        if _PLAIN_RE.fullmatch(num_text) and _PLAIN_RE.fullmatch(den_text):
            try:
                return float(Fraction(num_text) / Fraction(den_text))
            except (ValueError, ZeroDivisionError):
                return None
    return None


def score_numeric(
    completion: str,
    row: dict[str, Any],
    *,
    order: Sequence[str] = NUMERIC_ORDER,
    which: Which = "last",
    rel_tol: float = 1e-6,
    abs_tol: float = 1e-9,
) -> float:
    """1.0 when the extracted number is close to one of the row's `answer` values."""
    refs = []
    for ref in references(row.get("answer")):
        value = parse_number(ref)
        if value is None:
            raise ValueError(f"'answer' value {ref!r} is not a number; use 'exact' or 'math'")
        refs.append(value)
    candidate = extract_answer(completion, order, which)
    if candidate is None:
        return 0.0
    value = parse_number(candidate)
    if value is None:
        value = parse_number(find_number(candidate))
    if value is None or not math.isfinite(value):
        return 0.0
    return float(any(math.isclose(value, r, rel_tol=rel_tol, abs_tol=abs_tol) for r in refs))


def numeric_verifier(
    *,
    extract: Sequence[str] = NUMERIC_ORDER,
    which: Which = "last",
    rel_tol: float = 1e-6,
    abs_tol: float = 1e-9,
    **options: Any,
) -> RewardFunction:
    """The `numeric` reward function; `options` go to `RewardFunction`."""
    score = partial(
        score_numeric, order=check_order(extract), which=which, rel_tol=rel_tol, abs_tol=abs_tol
    )
    return RewardFunction("numeric", score, columns=("answer",), **options)
