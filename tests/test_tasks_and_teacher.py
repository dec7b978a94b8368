"""Built-in tasks (deterministic, correct, held out) and the teacher's prompt."""

import torch

from rlsd.models import build_tokenizer
from rlsd.rewards import fail_safe
from rlsd.tasks import get_task, make_rows
from rlsd.teacher import DEFAULT_TEACHER_TEMPLATE, fill_template, teacher_input_ids, teacher_prompt


def _eval_arith(question: str) -> int:
    return eval(question[2:-1])  # noqa: S307 - our own generated "a+b-c" strings


def test_arithmetic_solutions_are_correct_and_splits_deterministic():
    task = get_task("arithmetic")
    train, again = task.problems("train", 500, 3), task.problems("train", 500, 3)
    assert train == again and train != task.problems("train", 500, 4)
    for p in train:
        assert int(p.answer) == _eval_arith(p.question)
        assert p.solution.endswith(f";A:{p.answer}")
        assert len(p.solution.split(";")) == p.question.count("+") + p.question.count("-") + 1
    eval_questions = {p.question for p in task.problems("eval", 1000, 3)}
    assert not eval_questions & {p.question for p in train}


def test_counting_solutions_are_correct():
    for p in get_task("counting").problems("train", 300, 0):
        target, rest = p.question[2:].split("|")
        word, minus = rest[:-1].split("-")
        assert int(p.answer) == word.count(target) - int(minus) >= 0
        assert p.solution.startswith("".join(f"{c}" for c in word[:1]))


def test_rows_and_privileged_option():
    problems = get_task("arithmetic").problems("eval", 3, 0)
    rows = make_rows(problems)
    assert rows[0]["privileged_context"] == problems[0].solution
    assert make_rows(problems, "answer")[0]["privileged_context"] == f"A:{problems[0].answer}"
    assert rows[0]["prompt"] == [{"role": "user", "content": problems[0].question}]


def test_teacher_prompt_chat_text_and_explicit():
    example = {
        "prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "What is {x}?"}],
        "answer": "42",
    }
    prompt = teacher_prompt(example)
    assert prompt[0] == {"role": "system", "content": "S"}
    assert prompt[1]["content"] == fill_template(DEFAULT_TEACHER_TEMPLATE, "What is {x}?", "42")
    assert "Here is a reference solution:\n42" in prompt[1]["content"]  # falls back to `answer`
    assert example["prompt"][1]["content"] == "What is {x}?"  # the student's prompt untouched
    text = teacher_prompt(
        {"prompt": "Q", "privileged_context": "R", "answer": "A"},
        "<{privileged}|{question}>",
        "Box it.",
    )
    assert text == "<R|Q>\nBox it."
    assert teacher_prompt({"prompt": "Q", "answer": "1", "teacher_prompt": "T"}) == "T"


def test_teacher_ids_append_completion_ids_unchanged():
    tok = build_tokenizer()
    rows = [
        {"prompt": [{"role": "user", "content": "Q:1+2="}], "privileged_context": "1+2=3;A:3"},
        {"prompt": [{"role": "user", "content": "Q:10+20+3="}], "privileged_context": "A:33"},
    ]
    completion_ids = torch.tensor([[20, 21, 22], [23, 24, tok.pad_token_id]])
    completion_mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    ids, mask = teacher_input_ids(
        tok, rows, completion_ids, completion_mask, "R:{privileged}\n{question}"
    )
    assert torch.equal(ids[:, -3:], completion_ids) and torch.equal(mask[:, -3:], completion_mask)
    assert tok.decode(ids[0, :-3], skip_special_tokens=True) == "R:1+2=3;A:3\nQ:1+2="
    assert mask[1, 0] == 0 and ids[1, 0] == tok.pad_token_id  # left padding of the shorter prompt


def test_fail_safe_reward_counts_and_scores_failures():
    def flaky(prompts, completions, **kwargs):
        return [1.0 / (len(c) - 3) for c in completions]  # raises on 3-character completions

    safe = fail_safe(flaky)
    assert safe.__name__ == "flaky"
    assert safe(prompts=["p"] * 3, completions=["abcd", "abc", "abcde"]) == [1.0, 0.0, 0.5]
    assert safe.pop_failures() == {"exception": 1}
    assert safe.pop_failures() == {"exception": 0}
    excluded = fail_safe(flaky, on_error=None)
    assert excluded(prompts=["p"], completions=["abc"]) == [None]


def test_paths_task_reference_is_one_valid_order():
    orders_differ = 0
    for p in get_task("paths").problems("train", 300, 0):
        terms = sorted(int(x) for x in p.question[2:-1].split("+"))
        steps = p.solution.split(";")[:-1]
        used = [int(steps[0].split("+")[0])] + [int(s.split("+")[1].split("=")[0]) for s in steps]
        assert sorted(used) == terms and int(p.answer) == sum(terms)
        orders_differ += used != [int(x) for x in p.question[2:-1].split("+")]
    assert orders_differ > 100  # the reference often takes another order than the question's
