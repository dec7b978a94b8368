"""One way to count reward failures: `FailureCounts` behind every rlsd reward function.

`RLSDTrainer.log` logs `fn.pop_failures()` as `verifiers/<name>/<kind>`; these tests pin that
interface for the verifiers, the routed reward and `fail_safe` wrappers of user functions.
"""

import pytest

from rlsd.rewards import FAILURE_KINDS, FailureCounts, fail_safe
from rlsd.verifiers import get_verifier, register_verifier

ZERO = dict.fromkeys(FAILURE_KINDS, 0)


def test_failure_counts_pop_reset_and_live_totals():
    counts = FailureCounts()
    totals = counts.totals
    counts.add("timeout", "no result within 1s")
    counts.add("crash", count=2)
    assert counts.pop() == {"timeout": 1, "exception": 0, "crash": 2}
    assert counts.pop() == ZERO
    counts.add("exception", "ValueError: x")
    assert totals == {"timeout": 1, "exception": 1, "crash": 2}  # the same dict, updated
    assert list(counts.last_errors) == ["timeout: no result within 1s", "exception: ValueError: x"]
    assert counts.reset() == {"timeout": 1, "exception": 1, "crash": 2}
    assert totals == ZERO and counts.pop() == ZERO
    with pytest.raises(ValueError, match="unknown failure kind"):
        counts.add("oops")


def test_verifier_counts_and_pops_and_ignores_log_metric():
    logged = []
    fn = get_verifier("exact")
    rewards = fn(None, ["A:1", "A:1"], answer=[None, "1"], log_metric=lambda *a: logged.append(a))
    assert rewards == [0.0, 1.0]
    assert logged == []  # failures reach the logs one way: the trainer's pop_failures
    assert fn.pop_failures() == {"timeout": 0, "exception": 1, "crash": 0}
    assert fn.pop_failures() == ZERO
    assert fn.failures["exception"] == 1 and "exception" in fn.last_errors[-1]
    assert fn.reset_failures()["exception"] == 1 and fn.failures == ZERO


def test_routed_pops_totals_and_per_route_counts():
    fn = get_verifier("routed")
    with pytest.warns(UserWarning, match="unknown verifier"):
        fn(None, ["A:1", "A:1", "x"], answer=[None, "1", "x"], verifier=["exact", "exact", "?"])
    assert fn.pop_failures() == {
        "timeout": 0,
        "exception": 2,  # the exact row without an answer, and the unknown route
        "crash": 0,
        "exact/timeout": 0,
        "exact/exception": 1,
        "exact/crash": 0,
    }
    assert fn.pop_failures()["exception"] == 0 and fn.failures["exception"] == 2
    assert fn.reset_failures()["exception"] == 2 and fn.failures == ZERO


def test_fail_safe_counts_the_same_way_and_keeps_counting_functions():
    def flaky(prompts, completions, **kwargs):
        return [1.0 / (len(c) - 3) for c in completions]  # raises on 3-character completions

    safe = fail_safe(flaky)
    assert safe(prompts=["p"] * 3, completions=["abcd", "abc", "abcde"]) == [1.0, 0.0, 0.5]
    assert safe.pop_failures() == {"exception": 1} and safe.pop_failures() == {"exception": 0}
    assert safe.failures == {"exception": 1} and "ZeroDivisionError" in safe.last_errors[-1]
    assert fail_safe(safe) is safe
    verifier = get_verifier("exact")
    assert fail_safe(verifier) is verifier


def test_registered_plain_function_is_made_fail_safe():
    def plain(prompts, completions, **kwargs):
        if "boom" in completions:
            raise RuntimeError("boom")
        return [1.0] * len(completions)

    register_verifier("plain_for_test", lambda **kw: plain)
    fn = get_verifier("routed")
    assert fn(None, ["ok", "boom"], verifier=["plain_for_test"] * 2) == [1.0, 0.0]
    assert fn.pop_failures()["plain_for_test/exception"] == 1
