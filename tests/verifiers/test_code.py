"""`code`: asserts and stdin/stdout tests, partial credit, all-or-nothing."""

import pytest

from rlsd.verifiers import get_verifier
from rlsd.verifiers.code import extract_program, parse_tests

ADD_TESTS = ["assert add(1, 2) == 3", "assert add(0, 0) == 0", "assert add(-1, 1) == 0"]


def test_extract_program_prefers_python_fence():
    text = "Plan:\n```text\nnot code\n```\n```python\ndef f(): pass\n```"
    assert extract_program(text) == "def f(): pass"
    assert extract_program("<answer>x = 1</answer>") == "x = 1"
    assert extract_program("x = 2") == "x = 2"


def test_parse_tests_forms():
    assert parse_tests('["assert True"]') == ["assert True"]
    assert parse_tests("assert 1\n\nassert 2") == ["assert 1", "assert 2"]
    with pytest.raises(ValueError):
        parse_tests([])
    with pytest.raises(ValueError):
        parse_tests(["assert 1", {"input": "", "output": ""}])


def test_asserts_fraction_and_all_or_nothing():
    fn = get_verifier("code")
    completions = [
        "```python\ndef add(a, b):\n    return a + b\n```",
        "def add(a, b):\n    return a * b",  # passes only add(0, 0)
        "def add(a, b) return",  # syntax error
    ]
    rewards = fn(None, completions, tests=[ADD_TESTS] * 3)
    assert rewards == [1.0, pytest.approx(1 / 3), 0.0]
    strict = get_verifier("code", all_or_nothing=True)
    assert strict(None, completions[:2], tests=[ADD_TESTS] * 2) == [1.0, 0.0]


def test_stdio_pairs_and_output_normalisation():
    fn = get_verifier("code")
    tests = [{"input": "1 2\n", "output": "3"}, {"input": "5 5", "output": "10\n\n"}]
    good = "a, b = map(int, input().split())\nprint(a + b)   "
    reads_fd0 = "import sys\nprint(sum(map(int, open(0).read().split())))"
    wrong = "print(3)"
    crashes = "print(3)\nraise SystemExit(1)"
    assert fn(None, [good, reads_fd0, wrong, crashes], tests=[tests] * 4) == [1.0, 1.0, 0.5, 0.0]


def test_slow_test_fails_but_others_count():
    fn = get_verifier("code", time_limit=0.5)
    program = "def f(x):\n    while x == 0:\n        pass\n    return x"
    tests = ["assert f(1) == 1", "assert f(0) == 0", "assert f(2) == 2"]
    assert fn.score_one(program, tests=tests) == pytest.approx(2 / 3)
