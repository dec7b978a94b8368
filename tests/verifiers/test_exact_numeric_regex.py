"""`exact`, `numeric` and `regex`: tricky equivalences and near misses."""

import re

import pytest

from rlsd.verifiers import get_verifier
from rlsd.verifiers.exact import normalize
from rlsd.verifiers.numeric import parse_number


def test_exact_normalisation_choices():
    assert normalize("  +013. ") == "13"
    assert normalize("$x  y$") == "x y"
    assert normalize("13.0") != normalize("13")  # string semantics beyond integers
    assert normalize("Paris", case_sensitive=False) == "paris"


def test_exact_reward_function_shapes_and_name():
    fn = get_verifier("exact")
    assert fn.__name__ == "exact"
    completions = [
        "7+3=10;10-5=5;5+8=13;A:13",
        [{"role": "assistant", "content": "A: 013"}],
        "A:14",
        "A:13.0",
        "",
    ]
    assert fn(["p"] * 5, completions, answer=["13"] * 5) == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert fn.failures == {"timeout": 0, "exception": 0, "crash": 0}


def test_exact_case_and_alternatives():
    strict, loose = get_verifier("exact"), get_verifier("exact", case_sensitive=False)
    assert strict.score_one("Answer: paris", answer="Paris") == 0.0
    assert loose.score_one("Answer: paris", answer="Paris") == 1.0
    assert strict.score_one(r"\boxed{B}", answer=["A", "B"]) == 1.0


def test_exact_missing_column_raises_with_fix_and_none_row_is_failure():
    fn = get_verifier("exact")
    with pytest.raises(ValueError, match="needs dataset column"):
        fn(["p"], ["A:1"], solution=["1"])
    assert fn(None, ["A:1", "A:1"], answer=[None, "1"]) == [0.0, 1.0]
    assert fn.failures["exception"] == 1
    excluded = get_verifier("exact", failure_score=None)
    assert excluded(None, ["A:1"], answer=[None]) == [None]


@pytest.mark.parametrize(
    "text,value",
    [
        ("1,234", 1234.0),
        ("-3/4", -0.75),
        (r"\frac{1}{8}", 0.125),
        ("$12", 12.0),
        ("50%", 50.0),
        ("x = 2.5", 2.5),
        ("1e-3", 0.001),
        (".5", 0.5),
        ("1,23", None),
        ("3/0", None),
        ("abc", None),
    ],
)
def test_parse_number(text, value):
    assert parse_number(text) == value


def test_numeric_tolerance_and_near_misses():
    fn = get_verifier("numeric")
    assert fn.score_one(r"so \boxed{\frac{1}{3}}", answer="0.333333333") == 1.0
    assert fn.score_one("A:0.3333", answer="1/3") == 0.0  # outside 1e-6 relative
    assert get_verifier("numeric", rel_tol=1e-3).score_one("A:0.3333", answer="1/3") == 1.0
    assert fn.score_one("about 42 apples", answer=42) == 1.0
    assert fn.score_one("A: 13.0", answer="13") == 1.0
    assert fn.score_one("A: 1300", answer="13") == 0.0
    assert fn.score_one("no number here", answer="13") == 0.0
    assert fn.score_one("A: inf", answer="13") == 0.0


def test_regex_fullmatch_search_and_row_patterns():
    fn = get_verifier("regex", pattern=r"\d{3}-\d{4}")
    assert fn.score_one("A: 555-1234") == 1.0
    assert fn.score_one("A: 555-12345") == 0.0
    searching = get_verifier("regex", pattern=r"hello", search=True, flags=re.IGNORECASE)
    assert searching.score_one("well, HELLO there") == 1.0
    per_row = get_verifier("regex")
    assert per_row(None, ["A:cat", "A:dog"], answer=["c.t", "c.t"]) == [1.0, 0.0]
    with pytest.raises(re.error):
        get_verifier("regex", pattern="(")
