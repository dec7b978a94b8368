"""`get_verifier` names and import paths, `routed`, the format reward, TRL integration."""

import pytest

from rlsd.verifiers import RewardFunction, get_verifier, register_verifier


def first_char_scorer(completion, row):
    """A custom per-item scorer used through an import path."""
    if completion == "boom":
        raise RuntimeError("boom")
    return float(completion[:1] == row["answer"])


def test_import_path_wraps_a_scorer_fail_safe():
    fn = get_verifier(f"{__name__}:first_char_scorer")
    assert fn.__name__ == "first_char_scorer"
    assert fn(None, ["abc", "xbc", "boom"], answer=["a"] * 3) == [1.0, 0.0, 0.0]
    assert fn.failures["exception"] == 1
    with pytest.raises(ValueError, match="unknown verifier"):
        get_verifier("nope")
    with pytest.raises(ValueError, match="has no attribute"):
        get_verifier(f"{__name__}:missing")


def test_register_and_route_per_row():
    register_verifier("first_char", lambda **kw: RewardFunction("first_char", first_char_scorer))
    fn = get_verifier("routed", options={"numeric": {"rel_tol": 0.1}})
    completions = ["A:13", "A:10.5", "abc", "A:1", "x"]
    columns = {
        "verifier": ["exact", "numeric", "first_char", "no-such-verifier", None],
        "answer": ["13", "10", "a", "1", "x"],
    }
    with pytest.warns(UserWarning):
        rewards = fn(None, completions, **columns)
    assert rewards == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert fn.failures["exception"] == 2
    assert get_verifier("auto", default="exact")(None, ["A:2"], answer=["2"]) == [1.0]


def test_format_reward():
    fn = get_verifier("format")
    completions = [
        "<think>x</think><answer>5</answer>",
        "<answer>5</answer> then more text",
        "<answer> </answer>",
        "<answer>1</answer><answer>2</answer>",
        "A:5",
    ]
    assert fn(None, completions) == [1.0, 0.0, 0.0, 0.0, 0.0]
    with_think = get_verifier("format", think=True)
    assert with_think(None, ["<answer>5</answer>", "<think>a</think> <answer>5</answer>"]) == [
        0.0,
        1.0,
    ]
    arithmetic = get_verifier("format", pattern=r"(?:[^;]*;)*A:-?\d+")
    assert arithmetic(None, ["7+3=10;10-5=5;A:5", "A:", "5"]) == [1.0, 0.0, 0.0]


def test_called_with_trl_keyword_arguments():
    """TRL passes prompts, completions, completion_ids, every dataset column and extras."""
    fn = get_verifier("exact")
    prompts = [[{"role": "user", "content": "7+3?"}]] * 2
    completions = [
        [{"role": "assistant", "content": "A:10"}],
        [{"role": "assistant", "content": "A:9"}],
    ]
    rewards = fn(
        prompts=prompts,
        completions=completions,
        completion_ids=[[1], [2]],
        answer=["10", "10"],
        difficulty=[1, 2],
        trainer_state=object(),
        log_extra=lambda *a: None,
        log_metric=lambda *a: None,
    )
    assert rewards == [1.0, 0.0]
