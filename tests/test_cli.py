"""The `rlsd` command: train writes a complete run folder, YAML + overrides resolve as in TRL,
eval reports accuracy and pass@k, sft rebuilds a loadable model; user errors exit 2 with one
message (the traceback only with --debug); every command has --help; a killed and resumed run
logs each step once; privileged text reaches the run folder only with --log_privileged;
importing rlsd.cli changes nothing global."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from rlsd.cli import COMMANDS, main, parse_train_args
from rlsd.data import DataError, UserError

pytestmark = pytest.mark.slow
ENV = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")


def test_yaml_then_flags_override(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"algorithm": "grpo", "learning_rate": 3e-5, "task": "counting"}))
    script, config, model = parse_train_args([str(cfg), "--learning_rate", "2e-5"])
    assert (config.algorithm, config.learning_rate, script.task) == ("grpo", 2e-5, "counting")
    assert config.max_steps == 150 and config.per_device_train_batch_size == 128  # CPU defaults
    assert config.output_dir.startswith("runs/grpo-counting-")


def test_train_writes_the_run_folder_then_eval_reads_it(tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        "train",
        "--max_steps",
        "3",
        "--per_device_train_batch_size",
        "32",
        "--num_train",
        "64",
        "--num_eval",
        "32",
        "--eval_every",
        "2",
        "--save_steps",
        "2",
        "--output_dir",
        str(out),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "held-out accuracy (sampled, 32 problems)" in printed and "before ->" in printed
    for name in (
        "config.json",
        "metrics.jsonl",
        "samples.jsonl",
        "curves.png",
        "summary.json",
        "checkpoint-2",
        "final",
    ):
        assert (out / name).exists(), name
    assert (out / "checkpoint-2" / "rlsd_teacher" / "state.json").exists()
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["algorithm"] == "rlsd" and config["script"]["task"] == "mixed"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval/accuracy" in r] == [0, 2, 3]
    assert any("rlsd/lambda" in r for r in records)
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert samples and all("privileged" not in json.dumps(s) for s in samples)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and 0.0 <= summary["accuracy_after"] <= 1.0

    metrics_path = tmp_path / "eval.json"
    assert (
        main(
            [
                "eval",
                str(out / "final"),
                "--num_eval",
                "16",
                "--num_samples",
                "4",
                "--output",
                str(metrics_path),
            ]
        )
        == 0
    )
    metrics = json.loads(metrics_path.read_text())
    assert metrics["num_problems"] == 16 and {"accuracy", "pass@1", "pass@4", "leak_rate"} <= set(
        metrics
    )
    assert metrics["pass@1"] <= metrics["pass@4"]


def test_train_on_a_user_file_and_bad_data_stops_before_training(tmp_path):
    rows = [
        {
            "prompt": [{"role": "user", "content": f"Q:{i}+1="}],
            "answer": str(i + 1),
            "privileged_context": f"{i}+1={i + 1};A:{i + 1}",
        }
        for i in range(8)
    ]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--dataset_path",
                str(data),
                "--max_steps",
                "1",
                "--per_device_train_batch_size",
                "16",
                "--output_dir",
                str(out),
                "--teacher_template",
                "R:{privileged}\n{question}",
            ]
        )
        == 0
    )
    assert json.loads((out / "summary.json").read_text())["steps"] == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": [{"role": "user", "content": "Q"}]}) + "\n")
    never = tmp_path / "never"
    assert main(["train", "--dataset_path", str(bad), "--output_dir", str(never)]) == 2
    assert not never.exists()
    with pytest.raises(DataError, match=r"bad.jsonl: row 1: column 'answer' is missing"):
        main(["--debug", "train", "--dataset_path", str(bad), "--output_dir", str(never)])


def test_sft_rebuilds_a_loadable_model(tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "tiny"
    assert (
        main(
            [
                "sft",
                "--output_dir",
                str(out),
                "--num_train",
                "400",
                "--num_eval",
                "16",
                "--max_steps",
                "20",
                "--eval_every",
                "10",
                "--batch_size",
                "16",
            ]
        )
        == 0
    )
    summary = json.loads((out / "sft_summary.json").read_text())
    assert summary["steps"] == 20 and [h["step"] for h in summary["history"]] == [10, 20]
    assert summary["history"][-1]["loss"] < 3.0  # learning, from ~4.6 (uniform over 100 chars)
    AutoModelForCausalLM.from_pretrained(out)


def test_seeded_evaluation_is_reproducible_and_leaves_the_rng_alone(tiny_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlsd.evaluation import generate

    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    tok = AutoTokenizer.from_pretrained(tiny_path)
    prompts = [[{"role": "user", "content": "Q:3+4-2="}]] * 4
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    first = generate(model, tok, prompts, num_samples=2, seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert generate(model, tok, prompts, num_samples=2, seed=7) == first


# ------------------------------------------------------------------------ user errors, help
def _rlsd(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rlsd.cli", *args],
        capture_output=True,
        text=True,
        env=env or ENV,
        timeout=timeout,
    )


def test_a_bad_data_file_exits_2_without_a_traceback(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "Q"}) + "\n" + "{not json\n")
    quiet = _rlsd("train", "--dataset_path", str(bad), "--output_dir", str(tmp_path / "o"))
    assert quiet.returncode == 2, quiet.stderr
    assert "Traceback" not in quiet.stdout + quiet.stderr
    assert quiet.stderr.startswith("rlsd train: error: ") and "bad.jsonl: row 1" in quiet.stderr
    assert "line 2" in quiet.stderr and len(quiet.stderr.splitlines()) <= 5
    loud = _rlsd("train", "--dataset_path", str(bad), "--debug")
    assert loud.returncode == 1 and "Traceback" in loud.stderr and "DataError" in loud.stderr
    env = dict(ENV, RLSD_DEBUG="1")
    assert "Traceback" in _rlsd("train", "--dataset_path", str(bad), env=env).stderr


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--max_stepz", "3"], "unknown argument(s): --max_stepz 3 (did you mean"),
        (["train", "missing.yaml"], "missing.yaml: no such file"),
        (["train", "--algorithm", "nope"], "algorithm must be one of"),
        (["train", "--per_device_train_batch_size", "7"], "must be divisible by num_generations"),
        (["train", "--task", "nope"], "unknown task 'nope'; choose one of arithmetic"),
        (["train", "--task", "rg:nope"], "unknown reasoning-gym dataset 'nope'; choose one of: ab"),
        (
            ["train", "--task", "rg:chain_sum", "--task_config", '{"terms": 2}'],
            "unknown task_config key(s) ['terms']; its keys are ['min_terms'",
        ),
        (["train", "--task", "rg:chain_sum", "--task_config", "[2]"], "must be a JSON object"),
        (
            ["eval", "--task", "rg:chain_sum", "--task_config", '{"x": 1}'],
            "unknown task_config key(s) ['x']",
        ),
        (["train", "--task", "rg:chain_sum", "--privileged", "solution"], "has answer"),
        (["train", "--model_name_or_path", "./no/such/model"], "model './no/such/model'"),
        (["train", "--reward_funcs", "nope"], "--reward_funcs nope: not one of exact, numeric"),
        (["train", "--reward_funcs", "no_module:f"], "cannot import module 'no_module'"),
        (
            ["eval", "--model_name_or_path", "./no/such/model", "--num_eval", "4"],
            "model './no/such/model'",
        ),
        (["compare", "--variants", "x="], "unknown variant 'x'"),
        (["eval", "--dataset_path", "missing.jsonl"], "missing.jsonl: no such file"),
    ],
)
def test_user_errors_exit_2_with_one_message(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RLSD_DEBUG", raising=False)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rlsd {argv[0]}: error: ") and message in err, err
    assert "Traceback" not in err and not (tmp_path / "runs").exists()
    with pytest.raises(UserError):
        main(["--debug", *argv])


def test_bad_flags_exit_2_through_argparse(capsys):
    for argv in (["bogus"], [], ["eval", "--num_generations", "x"], ["credit", "--seed", "1.5"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2, argv
    assert "invalid int value: '1.5'" in capsys.readouterr().err


def test_every_command_has_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    printed = capsys.readouterr().out
    assert all(f"    {name} " in printed for name in COMMANDS), printed
    helps = {}
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exit_:
            main([name, "--help"])
        assert exit_.value.code == 0
        helps[name] = capsys.readouterr().out
        assert f"usage: rlsd {name}" in helps[name], name
    train_help = helps["train"]
    for flag in ("--rlsd_lambda", "--teacher_sync_steps", "--learning_rate", "--num_generations"):
        assert flag in train_help  # RLSDConfig, GRPOConfig, TrainingArguments fields
    assert "--model_name_or_path" in train_help and "--print_metrics" in train_help


def test_importing_the_cli_changes_nothing_global():
    code = (
        "import os, warnings\n"
        "env, filters = dict(os.environ), list(warnings.filters)\n"
        "import rlsd.cli\n"
        "assert dict(os.environ) == env, set(os.environ) ^ set(env)\n"
        "assert warnings.filters == filters, 'warnings filters changed'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV)
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------------------- resume, privacy
def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _checkpoint_steps(folder: Path) -> list[int]:
    return sorted(
        int(p.name.split("-")[1])
        for p in folder.glob("checkpoint-*")
        if (p / "trainer_state.json").exists()
    )


def test_a_killed_and_resumed_run_logs_each_step_once(tmp_path):
    out = tmp_path / "run"
    argv = [
        "train",
        "--max_steps", "10",
        "--per_device_train_batch_size", "16",
        "--num_train", "160",
        "--num_eval", "16",
        "--eval_every", "2",
        "--save_steps", "4",
        "--output_dir", str(out),
    ]  # fmt: skip
    cmd = [sys.executable, "-m", "rlsd.cli", *argv]
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env=ENV, start_new_session=True
    )
    try:  # kill it once a training step is logged past its latest checkpoint
        deadline = time.time() + 300
        while time.time() < deadline and first.poll() is None:
            saved = _checkpoint_steps(out)
            metrics = out / "metrics.jsonl"
            logged = [r["step"] for r in _jsonl(metrics) if "loss" in r] if metrics.exists() else []
            if saved and logged and logged[-1] > saved[-1]:
                break
            time.sleep(0.05)
        assert first.poll() is None, "the run ended before it could be killed"
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    checkpoint = _checkpoint_steps(out)[-1]
    logged = [r["step"] for r in _jsonl(out / "metrics.jsonl") if "loss" in r]
    assert checkpoint == 4 and max(logged) > checkpoint  # rows that the resume must drop

    # Without --output_dir: a resumed run goes on in its checkpoint's folder.
    resumed = _rlsd(*argv[:-2], "--resume_from_checkpoint", str(out / f"checkpoint-{checkpoint}"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    records = _jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 11))
    assert [r["step"] for r in records if "eval/accuracy" in r] == [0, 2, 4, 6, 8, 10]
    times = [r["time"] for r in records]
    assert times == sorted(times)  # the clock goes on from the checkpoint's rows
    sample_steps = [s["step"] for s in _jsonl(out / "samples.jsonl")]
    assert sample_steps == sorted(sample_steps) and set(sample_steps) == set(range(1, 11))
    assert all(sample_steps.count(step) == sample_steps.count(1) for step in range(1, 11))
    summary = json.loads((out / "summary.json").read_text())
    step0 = next(r for r in records if "eval/accuracy" in r)
    assert summary["steps"] == 10 and summary["accuracy_before"] == step0["eval/accuracy"]


CANARY = "CANARY-7f3e91 the heron files its report at midnight"


def test_privileged_text_reaches_the_run_folder_only_with_log_privileged(tmp_path):
    rows = [
        {
            "prompt": [{"role": "user", "content": f"Q:{i}+1="}],
            "answer": str(i + 1),
            "privileged_context": f"{i}+1={i + 1};A:{i + 1} {CANARY}",
        }
        for i in range(8)
    ]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def train(out: Path, *extra: str) -> dict[str, int]:
        argv = [
            "train",
            "--dataset_path", str(data),
            "--eval_dataset_path", str(data),
            "--max_steps", "2",
            "--save_steps", "1",
            "--per_device_train_batch_size", "16",
            "--teacher_template", "R:{privileged}\n{question}",
            "--output_dir", str(out),
            *extra,
        ]  # fmt: skip
        assert main(argv) == 0
        assert (out / "checkpoint-2" / "trainer_state.json").exists()
        assert len(_jsonl(out / "samples.jsonl")) == 8  # 4 per step: written, canary or not
        found = {}
        for path in out.rglob("*"):
            if path.is_file():
                count = path.read_bytes().count(CANARY.encode())
                if count:
                    found[str(path.relative_to(out))] = count
        return found

    assert train(tmp_path / "private") == {}
    logged = train(tmp_path / "logged", "--log_privileged", "True")
    assert set(logged) == {"samples.jsonl"}
    samples = _jsonl(tmp_path / "logged" / "samples.jsonl")
    assert samples and all(CANARY in s["privileged_context"] for s in samples)
    for sample in samples:  # each sample carries its own prompt's privileged text
        question = sample["prompt"][0]["content"]  # Q:i+1=
        i = int(question[2:-3])
        assert sample["privileged_context"].startswith(f"{i}+1={i + 1};")


def test_eval_greedy_false_skips_the_greedy_pass(tmp_path, capsys):
    """`--eval_greedy false`: the held-out evaluation samples only (no `eval/greedy_accuracy`),
    and the closing line says nothing about greedy accuracy."""
    from rlsd.cli import main

    out = tmp_path / "run"
    argv = ["train", "--max_steps", "1", "--per_device_train_batch_size", "16"]
    argv += ["--num_train", "16", "--num_eval", "8", "--eval_every", "0"]
    argv += ["--eval_greedy", "false", "--save_strategy", "no", "--output_dir", str(out)]
    assert main(argv) == 0
    evals = [r for r in _jsonl(out / "metrics.jsonl") if "eval/accuracy" in r]
    assert [r["step"] for r in evals] == [0, 1]
    assert not any("eval/greedy_accuracy" in r for r in evals)
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("held-out")]
    assert line.startswith("held-out accuracy (sampled, 8 problems)") and "greedy" not in line
    summary = json.loads((out / "summary.json").read_text())
    assert summary["greedy_before"] is None and summary["accuracy_before"] is not None
