"""`format`: a reward for answering in the expected format, kept separate from correctness.

The paper gives the `<answer>` format a weight of 0.1 next to the correctness reward; with
TRL that is `reward_funcs=[get_verifier("math"), get_verifier("format")]` and
`reward_weights=[1.0, 0.1]`.

Default check: exactly one non-empty `<answer>...</answer>` (tag configurable) with only
whitespace after it; `think=True` also requires a `<think>...</think>` block before it.
`pattern=` replaces all of that by a regex that must match the whole stripped completion
(e.g. `r"(?:[^;]*;)*A:-?\\d+"` for the arithmetic task).
"""

from __future__ import annotations

import re
from functools import partial
from typing import Any

from rlsd.verifiers.base import RewardFunction


def score_format(
    completion: str,
    row: dict[str, Any],
    *,
    tag: str = "answer",
    think: bool = False,
    pattern: str | None = None,
) -> float:
    """1.0 when the completion follows the format."""
    text = completion.strip()
    if pattern is not None:
        return float(re.fullmatch(pattern, text, re.DOTALL) is not None)
    opens = len(re.findall(rf"<{re.escape(tag)}>", text))
    closes = len(re.findall(rf"</{re.escape(tag)}>", text))
    match = re.search(rf"<{re.escape(tag)}>(.*?)</{re.escape(tag)}>\s*\Z", text, re.DOTALL)
    if opens != 1 or closes != 1 or match is None or not match.group(1).strip():
        return 0.0
    if think and not re.search(r"<think>.*?</think>", text[: match.start()], re.DOTALL):
        return 0.0
    return 1.0


def format_reward(
    *, tag: str = "answer", think: bool = False, pattern: str | None = None, **options: Any
) -> RewardFunction:
    """The `format` reward function (weight it with TRL's `reward_weights`, e.g. 0.1)."""
    if pattern is not None:
        re.compile(pattern)
    score = partial(score_format, tag=tag, think=think, pattern=pattern)
    return RewardFunction("format", score, **options)
