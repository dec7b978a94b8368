"""Answer extraction: each extractor, the order, and TRL completion shapes."""

import pytest

from rlsd.verifiers.extract import (
    check_order,
    completion_text,
    extract_answer,
    find_boxed,
    find_fenced,
    find_marker,
    find_number,
    find_tag,
    last_line,
)


def test_boxed_nested_braces_and_last_wins():
    text = r"first \boxed{1} then \boxed{\frac{1}{\sqrt{2}}} done"
    assert find_boxed(text) == r"\frac{1}{\sqrt{2}}"
    assert find_boxed(text, which="first") == "1"
    assert find_boxed(r"\fbox{a \{b\} c}") == r"a \{b\} c"
    assert find_boxed(r"\boxed{unbalanced") is None


def test_answer_tag_and_fenced():
    assert find_tag("<think>x</think><answer> 42 </answer>") == "42"
    assert find_tag("<ANSWER>a</ANSWER> <answer>b</answer>") == "b"
    text = "```python\nprint(1)\n```\ntext\n```sql\nSELECT 1\n```"
    assert find_fenced(text) == "SELECT 1"
    assert find_fenced(text, languages=["python", "py"]) == "print(1)"
    assert find_fenced("```\nraw\n```", languages=[""]) == "raw"
    assert find_fenced("```python\ntruncated(") == "truncated("


def test_marker_for_arithmetic_task():
    assert find_marker("7+3=10;10-5=5;5+8=13;A:13") == "13"
    assert find_marker("A: 3\nthen Answer: 4.") == "4."
    assert find_marker("The final answer is 12") == "12"
    assert find_marker("AA:1") is None
    assert extract_answer("7+3=10;10-5=5;5+8=13;A:13") == "13"


def test_order_last_line_and_number():
    assert last_line("a\n\n b \n\n") == "b"
    assert find_number("got -1,234.5 then 3/4 ok") == "3/4"
    assert find_number("no digits") is None
    text = r"<answer>5</answer> and \boxed{6}"
    assert extract_answer(text) == "6"
    assert extract_answer(text, order=("answer_tag", "boxed")) == "5"
    assert extract_answer("line one\nline two") == "line two"
    assert extract_answer("", order=("whole",)) is None
    with pytest.raises(ValueError, match="unknown extractor"):
        check_order(("boxed", "nope"))


def test_completion_text_shapes():
    conv = [{"role": "assistant", "content": "A:7"}]
    assert completion_text(conv) == "A:7"
    parts = [{"role": "assistant", "content": [{"type": "text", "text": "x"}, {"text": "y"}]}]
    assert completion_text(parts) == "xy"
    assert completion_text(None) == ""
    assert extract_answer(conv) == "7"
