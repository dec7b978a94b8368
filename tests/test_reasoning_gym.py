"""`rg:<dataset>` tasks: reasoning-gym generators as built-in tasks, their scorer as the `rg`
verifier, the disjoint split, the configuration errors, and two training steps on the tiny
model through the whole path (dataset, verifier, teacher prompt, metrics)."""

import json

import pytest
import yaml

from rlsd.cli import main, parse_train_args, resolve_task
from rlsd.data import UserError
from rlsd.tasks import get_task, make_rows
from rlsd.tasks.reasoning_gym import INSTRUCTION, ReasoningGymTask
from rlsd.teacher import DEFAULT_TEACHER_TEMPLATE, teacher_prompt
from rlsd.verifiers import get_verifier
from rlsd.verifiers.reasoning_gym import parse_answer

SUMS = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2}


def _score(verifier, row, completions):
    columns = {k: [v] * len(completions) for k, v in row.items() if k != "prompt"}
    return verifier(None, completions, **columns)


def test_rows_are_chat_rows_routed_to_the_generator_scorer():
    task = get_task("rg:chain_sum", SUMS)
    assert isinstance(task, ReasoningGymTask) and task.name == "rg:chain_sum"
    (row,) = make_rows(task.problems("train", 1, seed=0), "answer")
    example, reply, message = row["prompt"]  # one worked turn of the format, then the question
    assert message["role"] == "user" and message["content"].endswith("\n\n" + INSTRUCTION)
    assert (example["role"], reply["role"]) == ("user", "assistant")
    assert example["content"].endswith(INSTRUCTION) and reply["content"].startswith("<answer>")
    held_out = {p.question for p in task.problems("eval", 200, seed=0)}
    assert example["content"] not in held_out
    assert row["verifier"] == "rg" and row["rg_dataset"] == "chain_sum"
    assert json.loads(row["rg_config"]) == SUMS
    assert row["privileged_context"] == row["answer"]  # chain_sum has no worked solution
    assert task.privileged_kinds == ("answer",) and task.train_defaults == {"privileged": "answer"}
    assert task.teacher_template == DEFAULT_TEACHER_TEMPLATE
    # the teacher sees the question, its instruction and the reference, in the spec's template
    filled = teacher_prompt(row, task.teacher_template)[-1]["content"]
    assert filled.startswith(message["content"])
    assert f"Here is a reference solution:\n{row['answer']}\n" in filled


def test_the_scorer_on_hand_written_answers():
    task = get_task("rg:chain_sum", SUMS)
    (row,) = make_rows(task.problems("eval", 1, seed=3), "answer")
    right, wrong = row["answer"], str(int(row["answer"]) + 1)
    strict = get_verifier("rg")
    completions = [
        f"<answer>{right}</answer>",
        f"I think so.\n<answer> {right} </answer>",  # spaces inside the tags are stripped
        f"<answer>{wrong}</answer> no, <answer>{right}</answer>",  # the last tag counts
        f"<answer>{wrong}</answer>",
        f"The answer is {right}.",  # no tags: strict reads nothing
        "",
    ]
    assert _score(strict, row, completions) == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    lenient = get_verifier("rg", lenient=True)
    assert _score(lenient, row, [f"The answer is {right}.", f"so {wrong}"]) == [1.0, 0.0]
    assert parse_answer("x <answer>7</answer>") == "7" and parse_answer("7") is None
    # a worked-solution generator: gsm_symbolic has `solution` as a privileged kind
    gsm = get_task("rg:gsm_symbolic")
    assert gsm.privileged_kinds == ("solution", "answer") and gsm.train_defaults == {}
    (g,) = make_rows(gsm.problems("train", 1, seed=0), "solution")
    solution = g["privileged_context"]
    assert len(solution) > len(g["answer"]) and g["answer"] in solution
    assert _score(strict, g, [f"<answer>{g['answer']}</answer>"]) == [1.0]


def test_split_is_disjoint_and_deterministic_for_every_seed():
    task = get_task("rg:chain_sum", SUMS)
    for seed in (0, 1):
        train = {p.question for p in task.problems("train", 300, seed)}
        held_out = {p.question for p in task.problems("eval", 200, seed)}
        assert len(train) == 300 and len(held_out) == 200 and not train & held_out
    first = [p.question for p in task.problems("eval", 20, 0)]
    assert first == [p.question for p in task.problems("eval", 20, 0)]
    assert first != [p.question for p in task.problems("eval", 20, 1)]
    tiny = get_task("rg:chain_sum", {"min_terms": 2, "max_terms": 2, "max_digits": 1})
    with pytest.raises(ValueError, match="only .* distinct eval problems found, 300 asked"):
        tiny.problems("eval", 300, 0)


@pytest.mark.parametrize(
    "name, config, message",
    [
        ("rg:nope", None, "unknown reasoning-gym dataset 'nope'; choose one of: ab, "),
        ("rg:chain_sum", {"terms": 2}, "unknown task_config key(s) ['terms']; its keys are"),
        ("rg:chain_sum", {"min_terms": 0}, "the generator refuses task_config"),
        ("nope", None, "unknown task 'nope'; choose one of arithmetic"),
        ("mixed", {"a": 1}, "takes no task_config"),
    ],
)
def test_bad_task_names_and_configs_are_one_line_errors(name, config, message):
    with pytest.raises(ValueError) as error:
        get_task(name, config)
    assert message in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(UserError, match="choose one of|task_config|refuses"):
        resolve_task(name, json.dumps(config) if config else None)


def test_task_config_from_yaml_mapping_and_from_json_flag(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"task": "rg:chain_sum", "task_config": SUMS}))
    script, _, _ = parse_train_args([str(cfg)])
    assert resolve_task(script.task, script.task_config).config == SUMS
    script, _, _ = parse_train_args(["--task", "rg:chain_sum", "--task_config", json.dumps(SUMS)])
    assert resolve_task(script.task, script.task_config).config == SUMS


@pytest.mark.slow
def test_an_rg_task_trains_two_steps_on_the_tiny_model(tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--task", "rg:chain_sum", "--task_config", json.dumps(SUMS)]
    argv += ["--max_steps", "2", "--num_train", "32", "--num_eval", "8", "--eval_every", "0"]
    argv += ["--per_device_train_batch_size", "16", "--max_completion_length", "16"]
    argv += ["--rlsd_skip_zero_advantage", "False", "--output_dir", str(out)]  # teacher runs
    assert main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["script"]["privileged"] == "answer"  # the task's default, without solutions
    assert config["config"]["teacher_template"] == DEFAULT_TEACHER_TEMPLATE
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [s for s in steps if "loss" in s]
    assert len(train) == 2
    for step in train:
        assert "rewards/routed/mean" in step and step["verifiers/routed/rg/exception"] == 0
        assert step["time/teacher"] > 0 and "rlsd/delta_mean" in step
    evals = [s for s in steps if "eval/accuracy" in s]
    assert len(evals) == 2  # before and after, on the rg verifier
