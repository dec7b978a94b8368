"""`json_schema`: validation, expected fields, partial credit and parsing guards."""

import json

import pytest

from rlsd.verifiers import get_verifier
from rlsd.verifiers.json_schema import json_depth, lookup, parse_json

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


def test_parse_json_candidates_and_guards():
    assert parse_json('```json\n{"a": 1}\n```') == {"a": 1}
    assert parse_json('Sure! {"a": [1, 2]} hope that helps') == {"a": [1, 2]}
    assert json_depth('{"a": "[[[[", "b": [[1]]}') == 3
    assert parse_json("[" * 100 + "]" * 100) is not None and parse_json("[" * 65 + "]" * 65)
    assert lookup({"u": {"n": ["x", "y"]}}, "u.n.1") == "y"
    assert lookup({"a.b": 1}, "a.b") == 1


def test_valid_invalid_and_expected_fields():
    fn = get_verifier("json_schema")
    completions = [
        '{"name": "Bo", "age": 3, "tags": ["x"]}',
        '{"name": "Bo", "age": -1}',  # minimum violated
        '{"name": "Bo", "age": "3"}',  # wrong type
        '{"name": "Bo", "age": 3, "extra": 1}',  # additionalProperties
        '{"name": "Al", "age": 3}',  # valid, wrong expected value
        "not json",
    ]
    n = len(completions)
    rewards = fn(None, completions, schema=[json.dumps(SCHEMA)] * n, expected=[{"name": "Bo"}] * n)
    assert rewards == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert fn.score_one('{"name": "Al", "age": 3}', schema=SCHEMA) == 1.0


def test_partial_credit():
    fn = get_verifier("json_schema", partial=True)
    expected = {"name": "Bo", "age": 3}
    assert fn.score_one('{"name": "Bo", "age": 3}', schema=SCHEMA, expected=expected) == 1.0
    assert fn.score_one('{"name": "Bo", "age": 4}', schema=SCHEMA, expected=expected) == (
        pytest.approx(2 / 3)
    )
    assert fn.score_one('{"name": "Bo", "age": "3"}', schema=SCHEMA, expected=expected) == (
        pytest.approx(1 / 3)
    )


def test_invalid_schema_is_a_failure():
    fn = get_verifier("json_schema")
    assert fn.score_one("{}", schema={"type": "no-such-type"}) == 0.0
    assert fn.failures["exception"] == 1
