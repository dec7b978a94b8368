"""`math`: math-verify equivalences, near misses, and the thread-safe deadline."""

import threading

import pytest

from rlsd.verifiers import get_verifier
from rlsd.verifiers.math_equiv import parse_reference, score_math

CASES = [
    (r"The answer is \boxed{0.5}", r"\frac12", 1.0),
    ("<answer>1/2</answer>", "0.5", 1.0),
    (r"A: \frac{2}{4}", "1/2", 1.0),
    (r"\boxed{\{2, 1\}}", r"\{1,2\}", 1.0),
    (r"\boxed{(0, 1]}", "(0,1]", 1.0),
    (r"\boxed{[0,1]}", "(0,1)", 0.0),  # closed vs open interval
    (r"\boxed{5\text{ cm}}", "5", 1.0),  # units stripped
    (r"\boxed{(x+1)^2}", "x^2+2x+1", 1.0),
    (r"\boxed{\frac{1}{\sqrt 2}}", r"\sqrt{2}/2", 1.0),
    (r"\boxed{0.3333}", "1/3", 0.0),  # near miss
    (r"\boxed{6}", "5", 0.0),
    ("no answer at all", "5", 0.0),
]


@pytest.mark.parametrize("completion,reference,expected", CASES)
def test_math_equivalences_inline(completion, reference, expected):
    assert score_math(completion, {"answer": reference}) == expected


def test_math_pool_batch_and_list_references():
    fn = get_verifier("math", workers=2)
    completions = [c for c, _, _ in CASES]
    assert fn(None, completions, answer=[r for _, r, _ in CASES]) == [e for _, _, e in CASES]
    assert fn.score_one(r"\boxed{-2}", answer=["2", "-2"]) == 1.0
    assert fn.failures == {"timeout": 0, "exception": 0, "crash": 0}


def test_math_unparseable_reference_is_a_failure():
    with pytest.raises(ValueError, match="cannot parse"):
        parse_reference("")
    fn = get_verifier("math", backend="inline")
    assert fn(None, [r"\boxed{1}"], answer=[""]) == [0.0]
    assert fn.failures["exception"] == 1


def test_math_works_outside_the_main_thread():
    fn = get_verifier("math", backend="inline")
    out: list = []
    worker = threading.Thread(target=lambda: out.append(fn(None, [r"\boxed{3}"], answer=["3"])))
    worker.start()
    worker.join()
    assert out == [[1.0]]


def test_math_hung_item_times_out_without_stalling_the_batch():
    fn = get_verifier("math", workers=2, timeout=1.5)
    slow = r"\boxed{(x+1)^{3000} - (x+3)^{3000}}"
    rewards = fn(None, [slow, "A: 5", r"\boxed{7}"], answer=["(x+2)^{3000}", "5", "7"])
    assert rewards == [0.0, 1.0, 1.0]
    assert fn.failures["timeout"] == 1
