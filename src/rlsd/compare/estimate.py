"""The wall-time estimate `rlsd compare` prints before it starts (measured cost model)."""

from __future__ import annotations

import os
from typing import Any

# Cost model of `estimate_seconds`, measured with the shipped tiny model, OMP_NUM_THREADS=1,
# on this project's 2-core CPU with one other process running (benchmarks/cost.py): a GRPO
# step of 128 completions took 0.95-1.1 s (completions of ~22 tokens; 1.3 s leaves room for
# longer ones), the teacher's extra cost per step is each algorithm's `teacher_cost` in
# `rlsd.config.ALGORITHM_SPECS`, a held-out evaluation (sampled + greedy) 3 s per 500 problems,
# and start-up plus the final save ~8 s.
STEP_S_PER_128 = 1.3
EVAL_S_PER_PROBLEM = 0.007
STARTUP_S = 8.0
# Steps and evaluations cost `(completion_length / 40) ** LENGTH_EXPONENT` times more: fitted
# to the sql compare of docs/results.md (176-token cap, 118 tokens written on average; 36 runs
# of 30 steps of 32 completions, 4 evaluations of 47 x 4 samples) on the idle CPU, two runs at
# a time: 35 minutes measured, 38 estimated. (A square, fitted to the same compare beside
# other jobs, said 96 minutes.)
LENGTH_EXPONENT = 1.35


def estimate_seconds(
    variants: dict[str, dict[str, Any]],
    seeds: int,
    max_steps: int,
    num_eval: int,
    eval_every: int,
    batch: int = 128,
    jobs: int = 1,
    completion_length: int = 40,
    eval_samples: int = 1,
) -> float:
    """Wall-time estimate of a compare (the cost model above; `jobs` up to the core count).

    Step and evaluation costs scale with `(completion_length / 40) ** LENGTH_EXPONENT` (7.4x
    for the sql task's 176 tokens, see above); the evaluations also with `eval_samples`.

    Per run: startup + steps x step cost (x (1 + the algorithm's teacher_cost) while the
    teacher runs: every step for opsd/grpo_opsd and constant-lambda rlsd, the first decay
    steps for rlsd)
    + evaluations (before, every `eval_every` steps, after) x num_eval x per-problem cost.
    """
    from rlsd.config import ALGORITHM_SPECS

    length = max(1.0, completion_length / 40) ** LENGTH_EXPONENT
    step_s = STEP_S_PER_128 * batch / 128 * length
    # Before the first step, every `eval_every` steps, and after the last (if not just done).
    evals = 2 if not eval_every else 1 + max_steps // eval_every + bool(max_steps % eval_every)
    total = 0.0
    for flags in variants.values():
        spec = ALGORITHM_SPECS[flags.get("algorithm", "rlsd")]
        teacher_steps = max_steps if spec.distills else 0
        if spec.reweights:  # the teacher runs while lambda > 0
            decay = int(flags.get("rlsd_lambda_decay_steps", 50))
            teacher_steps = max_steps if decay == 0 else min(max_steps, decay - 1)
        run = STARTUP_S + max_steps * step_s + teacher_steps * step_s * spec.teacher_cost
        total += seeds * (run + evals * num_eval * eval_samples * length * EVAL_S_PER_PROBLEM)
    return total / max(1, min(jobs, os.cpu_count() or 1))


def _task_completion_length(task: str) -> int:
    from rlsd.tasks import TASKS

    return TASKS[task].max_completion_length if task in TASKS else 40


def _flag_string(flags: list[str], name: str) -> str | None:
    """The last value given to `--name` in `flags` (None: not given)."""
    value = None
    for i, flag in enumerate(flags):
        if flag == f"--{name}" and i + 1 < len(flags):
            value = flags[i + 1]
        elif flag.startswith(f"--{name}="):
            value = flag.split("=", 1)[1]
    return value


def _flag_value(flags: list[str], name: str, default: int) -> int:
    value = default
    for i, flag in enumerate(flags):
        if flag == f"--{name}" and i + 1 < len(flags):
            value = int(flags[i + 1])
        elif flag.startswith(f"--{name}="):
            value = int(flag.split("=", 1)[1])
    return value
