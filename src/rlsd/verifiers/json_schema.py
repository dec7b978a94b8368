"""`json_schema`: the completion's JSON validates against the row's JSON Schema.

Columns: `schema` (a dict, or a JSON string) and, optionally, `expected`: a dict of field
values the JSON must also contain, keyed by a field name or a dotted path (`"user.name"`,
`"items.0.id"`). Reward 1.0 when the JSON is valid and every expected value matches, else 0;
with `partial=True`, the mean of [valid] and each [field matches].

JSON: the last ```json fenced block, else any fenced block, else `<answer>`, else the whole
completion; if that does not parse, the span from the first `{` / `[` to the last `}` / `]`.

Guards: text longer than `max_chars` (default 100,000) or nested deeper than `max_depth`
(default 64, counted by a linear scan before `json.loads`, so Python's recursion limit is
never reached) scores 0 without being parsed. Validators are cached per schema; a schema that
is itself invalid is a verifier failure (exception), not a 0.
"""

from __future__ import annotations

import json
from functools import lru_cache
from functools import partial as bind
from typing import Any

from jsonschema import FormatChecker
from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for

from rlsd.verifiers.base import RewardFunction
from rlsd.verifiers.extract import find_fenced, find_tag

_MISSING = object()


def json_depth(text: str) -> int:
    """Maximum nesting depth of brackets outside JSON strings (a linear scan)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _candidates(completion: str) -> list[str]:
    found = [
        find_fenced(completion, ("json", "jsonc")),
        find_fenced(completion),
        find_tag(completion, "answer"),
        completion,
    ]
    texts = [t.strip() for t in found if t and t.strip()]
    starts = [i for i in (completion.find("{"), completion.find("[")) if i >= 0]
    end = max(completion.rfind("}"), completion.rfind("]"))
    if starts and end > min(starts):
        texts.append(completion[min(starts) : end + 1])
    return texts


def parse_json(completion: str, max_chars: int = 100_000, max_depth: int = 64) -> Any:
    """The first candidate that parses within the limits, or `_MISSING`."""
    for text in _candidates(completion):
        if len(text) > max_chars or json_depth(text) > max_depth:
            continue
        try:
            return json.loads(text)
        except (ValueError, RecursionError):
            continue
    return _MISSING


@lru_cache(maxsize=256)
def _validator(schema_json: str, format_check: bool) -> Any:
    schema = json.loads(schema_json)
    cls = validator_for(schema)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        raise ValueError(f"the row's 'schema' is not a valid JSON Schema: {exc.message}") from exc
    return cls(schema, format_checker=FormatChecker() if format_check else None)


def _as_json_value(value: Any, column: str) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"'{column}' is a string but not JSON: {exc}") from exc
    return value


def lookup(instance: Any, path: str) -> Any:
    """`instance["a"]["b"][0]` for path `"a.b.0"`; an exact key wins over a dotted path."""
    if isinstance(instance, dict) and path in instance:
        return instance[path]
    value = instance
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif (
            isinstance(value, list)
            and part.lstrip("-").isdigit()
            and -len(value) <= int(part) < len(value)
        ):
            value = value[int(part)]
        else:
            return _MISSING
    return value


def score_json(
    completion: str,
    row: dict[str, Any],
    *,
    partial_credit: bool = False,
    format_check: bool = False,
    max_chars: int = 100_000,
    max_depth: int = 64,
) -> float:
    """Schema validity (and expected field values) of the completion's JSON."""
    schema = _as_json_value(row.get("schema"), "schema")
    if not isinstance(schema, (dict, bool)):
        raise ValueError(f"'schema' must be a JSON Schema object, got {type(schema).__name__}")
    validator = _validator(json.dumps(schema, sort_keys=True), format_check)
    expected = _as_json_value(row.get("expected"), "expected") or {}
    if not isinstance(expected, dict):
        raise ValueError("'expected' must be a dict of field -> value")
    instance = parse_json(completion, max_chars, max_depth)
    if instance is _MISSING:
        return 0.0
    checks = [validator.is_valid(instance)]
    checks += [lookup(instance, str(k)) == v for k, v in expected.items()]
    if partial_credit:
        return sum(checks) / len(checks)
    return float(all(checks))


def json_schema_verifier(
    *,
    partial: bool = False,
    format_check: bool = False,
    max_chars: int = 100_000,
    max_depth: int = 64,
    **options: Any,
) -> RewardFunction:
    """The `json_schema` reward function; `partial=True` gives partial credit,
    `format_check=True` enforces `"format"` keywords. Other options go to `RewardFunction`.
    """
    score = bind(
        score_json,
        partial_credit=partial,
        format_check=format_check,
        max_chars=max_chars,
        max_depth=max_depth,
    )
    return RewardFunction("json_schema", score, columns=("schema",), **options)
