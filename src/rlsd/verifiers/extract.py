"""Answer extraction shared by every verifier.

A completion (a string, or a TRL conversational list of messages) is turned into text with
`completion_text`, then `extract_answer` tries a list of extractors in order and returns the
first that finds something. Each extractor takes the *last* occurrence by default (models
often restate intermediate results before the final one); `which="first"` takes the first.

Extractors (the names used in `order`):

| name          | finds                                                                  |
|---------------|------------------------------------------------------------------------|
| `boxed`       | `\\boxed{...}` / `\\fbox{...}`, nested braces balanced                   |
| `answer_tag`  | `<answer>...</answer>`                                                 |
| `marker`      | `A: 13`, `Answer: 13`, `Final answer: 13`, `the answer is 13` (one line) |
| `fenced`      | a fenced code block (any language, or those in `languages`)            |
| `last_line`   | the last non-empty line                                                |
| `last_number` | the last number (`-1,234.5`, `3/4`, `1e-3`)                            |
| `whole`       | the whole text, stripped                                               |

Simplifications: the `marker` for the built-in arithmetic task is `A:` at the start of a line or
after `;` / `,` / whitespace (so `7+3=10;A:10` works but `AA:1` does not); it runs to the end
of the line, and a trailing `;` is dropped. Unbalanced `\\boxed{` is ignored rather than guessed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, Literal

from rlsd.prompts import completion_text

__all__ = ["completion_text", "extract_answer"]

Which = Literal["last", "first"]

DEFAULT_ORDER: tuple[str, ...] = ("boxed", "answer_tag", "marker", "last_line")

_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_FENCE_RE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_MARKER_RE = re.compile(
    r"(?:(?:^|(?<=[\s;,]))A\s*:|(?i:\b(?:final\s+answer|answer)\s*(?::|is\b)))[ \t]*([^\n]*)",
    re.MULTILINE,
)
_NUMBER_RE = re.compile(
    r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?(?:/\d+)?|"
    r"[-+]?\.\d+(?:[eE][-+]?\d+)?"
)


def _pick(items: Sequence[str], which: Which) -> str | None:
    if not items:
        return None
    return items[-1] if which == "last" else items[0]


def find_boxed(text: str, which: Which = "last") -> str | None:
    """Content of `\\boxed{...}` (or `\\fbox{...}`) with nested braces balanced."""
    found = []
    for match in _BOXED_RE.finditer(text):
        depth, start = 1, match.end()
        i = start
        while i < len(text) and depth:
            ch = text[i]
            if ch == "\\" and i + 1 < len(text):  # skip escaped braces like \{ \}
                i += 2
                continue
            depth += {"{": 1, "}": -1}.get(ch, 0)
            i += 1
        if depth == 0:
            found.append(text[start : i - 1].strip())
    return _pick(found, which)


def find_tag(text: str, tag: str = "answer", which: Which = "last") -> str | None:
    """Content of `<tag>...</tag>` (case-insensitive tag name)."""
    pattern = re.compile(rf"<{re.escape(tag)}>(.*?)</{re.escape(tag)}>", re.DOTALL | re.IGNORECASE)
    return _pick([m.group(1).strip() for m in pattern.finditer(text)], which)


def find_fenced(
    text: str, languages: Sequence[str] | None = None, which: Which = "last"
) -> str | None:
    """Body of a fenced code block; `languages` filters by the info string (`""` = unlabelled).

    An unterminated final fence (a truncated completion) still counts.
    """
    blocks = []
    for match in _FENCE_RE.finditer(text):
        lang = match.group(1).lower()
        if languages is None or lang in languages:
            blocks.append(match.group(2).strip("\n"))
    return _pick(blocks, which)


def find_marker(text: str, which: Which = "last") -> str | None:
    """The rest of the line after `A:` / `Answer:` / `Final answer:` / `the answer is`."""
    values = []
    for match in _MARKER_RE.finditer(text):
        value = match.group(1).strip().rstrip(";").strip()
        if value:
            values.append(value)
    return _pick(values, which)


def last_line(text: str, which: Which = "last") -> str | None:
    """The last (or first) non-empty line, stripped."""
    return _pick([line.strip() for line in text.splitlines() if line.strip()], which)


def find_number(text: str, which: Which = "last") -> str | None:
    """The last (or first) number-looking token: `-1,234.5`, `3/4`, `1e-3`, `.5`."""
    return _pick(_NUMBER_RE.findall(text), which)


def whole(text: str, which: Which = "last") -> str | None:
    """The whole text, stripped (None when empty)."""
    return text.strip() or None


def _answer_tag(text: str, which: Which = "last") -> str | None:
    return find_tag(text, "answer", which)


def _any_fence(text: str, which: Which = "last") -> str | None:
    return find_fenced(text, None, which)


EXTRACTORS: dict[str, Callable[[str, Which], str | None]] = {
    "boxed": find_boxed,
    "answer_tag": _answer_tag,
    "marker": find_marker,
    "fenced": _any_fence,
    "last_line": last_line,
    "last_number": find_number,
    "whole": whole,
}


def check_order(order: Sequence[str]) -> tuple[str, ...]:
    """Validate an extractor order early, with a message that lists the valid names."""
    if isinstance(order, str):
        order = (order,)
    unknown = [name for name in order if name not in EXTRACTORS]
    if unknown:
        raise ValueError(f"unknown extractor(s) {unknown}; choose from {sorted(EXTRACTORS)}")
    return tuple(order)


def extract_answer(
    completion: Any, order: Sequence[str] = DEFAULT_ORDER, which: Which = "last"
) -> str | None:
    """The answer in `completion`: the first extractor of `order` that finds something.

    Example: `extract_answer("7+3=10;10-5=5;A:5")` -> `"5"`;
    `extract_answer("so \\boxed{\\frac{1}{2}}.")` -> `"\\frac{1}{2}"`.
    """
    text = completion_text(completion)
    for name in check_order(order):
        value = EXTRACTORS[name](text, which)
        if value is not None and value != "":
            return value
    return None
