"""`math`: symbolic equivalence of the answer and the reference with `math-verify`.

math-verify parses LaTeX and plain expressions into sympy (fractions, roots, sets, intervals,
matrices; units such as `\\text{ cm}` are stripped) and compares them. Its own timeout uses
SIGALRM, which only works in the main thread of the main interpreter, so here it is disabled
(`parsing_timeout=None`, `timeout_seconds=None`) and the deadline is enforced instead by
running every item in a `pool.ProcessPool` worker that is killed when it overruns: this works
from any thread or process, and a sympy blow-up cannot stall the batch.

Answer: if `extract` (default `boxed`, `answer_tag`, `marker`) finds one, it is parsed as
`\\boxed{answer}`; otherwise (or if that parse is empty) math-verify searches the whole
completion itself. Reference (`answer` column): parsed as `\\boxed{reference}` unless it
already has `$` or `\\boxed`. A reference math-verify cannot parse is a failure (exception),
not a silent 0. A list of references accepts any of them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import lru_cache, partial
from typing import Any

from math_verify import parse, verify

from rlsd.verifiers.base import RewardFunction
from rlsd.verifiers.exact import references
from rlsd.verifiers.extract import Which, check_order, extract_answer
from rlsd.verifiers.pool import Backend

MATH_ORDER: tuple[str, ...] = ("boxed", "answer_tag", "marker")

# math-verify warns that the (SIGALRM) timeout is disabled; the pool enforces it instead.
logging.getLogger("math_verify").setLevel(logging.ERROR)


def _parse(text: str) -> list[Any]:
    return parse(text, parsing_timeout=None)


@lru_cache(maxsize=4096)
def parse_reference(reference: str) -> list[Any]:
    """math-verify's parse of a reference answer (cached: references repeat across a group)."""
    text = reference.strip()
    parsed = [] if ("$" in text or "\\boxed" in text) else _parse("\\boxed{" + text + "}")
    if not parsed:
        parsed = _parse(text)
    if not parsed:
        raise ValueError(f"math-verify cannot parse the reference answer {reference!r}")
    return parsed


def parse_prediction(completion: str, order: Sequence[str], which: Which) -> list[Any]:
    """math-verify's parse of the completion's answer (see the module docstring)."""
    answer = extract_answer(completion, order, which) if order else None
    if answer is not None:
        inner = answer.strip().strip("$").strip()
        parsed = _parse("\\boxed{" + inner + "}")
        if parsed:
            return parsed
    return _parse(completion)


def score_math(
    completion: str,
    row: dict[str, Any],
    *,
    order: Sequence[str] = MATH_ORDER,
    which: Which = "last",
    float_rounding: int = 6,
    strict: bool = True,
) -> float:
    """1.0 when the completion's answer is equivalent to one of the row's references."""
    golds = [parse_reference(str(ref)) for ref in references(row.get("answer"))]
    prediction = parse_prediction(completion, order, which)
    if not prediction:
        return 0.0
    for gold in golds:
        if verify(
            gold, prediction, float_rounding=float_rounding, strict=strict, timeout_seconds=None
        ):
            return 1.0
    return 0.0


def math_verifier(
    *,
    extract: Sequence[str] = MATH_ORDER,
    which: Which = "last",
    float_rounding: int = 6,
    strict: bool = True,
    backend: Backend = "process",
    timeout: float = 10.0,
    **options: Any,
) -> RewardFunction:
    """The `math` reward function (process pool, `timeout` seconds per item by default).

    `strict=False` lets math-verify accept e.g. `x=5` for `5`; `extract=()` leaves answer
    finding entirely to math-verify. Other `options` go to `RewardFunction`.
    """
    score = partial(
        score_math,
        order=check_order(extract) if extract else (),
        which=which,
        float_rounding=float_rounding,
        strict=strict,
    )
    return RewardFunction(
        "math",
        score,
        columns=("answer",),
        backend=backend,
        timeout=timeout,
        **options,  # type: ignore[arg-type]
    )
