"""The console of `rlsd train`: one progress bar with a few numbers, TRL's metric dicts only
with --print_metrics (they always reach metrics.jsonl)."""

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from rlsd.callbacks import ConsoleCallback

LOGS = [
    {"step": 0, "eval/accuracy": 0.25},  # a held-out evaluation, before the first step
    {"loss": 0.01, "reward": 0.5, "rlsd/lambda": 0.49, "step_time": 1.234, "entropy": 0.2},
    {"train_runtime": 12.0, "train_loss": 0.01},  # the end-of-training summary
]


def _replay(callback: ConsoleCallback, disable_tqdm: bool) -> None:
    args = SimpleNamespace(disable_tqdm=disable_tqdm)
    state = SimpleNamespace(is_world_process_zero=True, global_step=0, max_steps=20)
    callback.on_train_begin(args, state, None)
    for logs in LOGS:
        if "loss" in logs:
            state.global_step = 1
            callback.on_step_end(args, state, None)
        callback.on_log(args, state, None, logs=dict(logs))
    callback.on_train_end(args, state, None)


def test_the_bar_shows_a_few_numbers_and_no_dict(capsys):
    _replay(ConsoleCallback(), disable_tqdm=False)
    out, err = capsys.readouterr()
    assert out == "" and "'loss'" not in err and "entropy" not in err
    assert "1/20" in err and "reward 0.500, held-out 0.250, lambda 0.490, s/step 1.23" in err


def test_without_a_bar_one_line_per_log(capsys):
    _replay(ConsoleCallback(), disable_tqdm=True)
    assert capsys.readouterr().out.splitlines() == [
        "step 0/20: held-out 0.250",
        "step 1/20: reward 0.500, held-out 0.250, lambda 0.490, s/step 1.23",
    ]


def test_full_prints_every_dict_as_trl_does(capsys):
    _replay(ConsoleCallback(full=True), disable_tqdm=True)
    out = capsys.readouterr().out
    assert "{'loss': '0.01', 'reward': '0.5'" in out and "'train_runtime': '12'" in out


@pytest.mark.slow
def test_train_for_20_steps_prints_no_metric_dict_and_under_20_kb(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "rlsd.cli", "train", "--max_steps", "20"]
    small = ["--per_device_train_batch_size", "32", "--num_train", "320", "--num_eval", "32"]
    done = subprocess.run(
        [*cmd, *small, "--output_dir", str(tmp_path / "run")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        timeout=600,
    )
    console = done.stdout.decode()
    assert done.returncode == 0, console[-3000:]
    assert len(done.stdout) < 10_000, console  # TRL's dicts made it ~36 KB
    assert "{'loss':" not in console and "'reward':" not in console
    # no other library's notices: DeepSpeed's CPU fallback, transformers' unused generation flags
    assert "[WARNING]" not in console and "[transformers]" not in console, console[-3000:]
    assert "20/20" in console and "reward " in console and "held-out " in console
    assert "held-out accuracy (sampled, 32 problems)" in console
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 21))  # all logged

    loud = subprocess.run(
        [*cmd[:-1], "2", *small, "--output_dir", str(tmp_path / "loud"), "--print_metrics"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert loud.returncode == 0, loud.stderr[-3000:]
    assert (loud.stdout + loud.stderr).count("{'loss':") == 2
