"""`code`: the completion's Python program run against the row's tests in the sandbox.

Program: the last fenced block labelled python/py/python3 (or unlabelled), else the last
fenced block of any language, else `<answer>...</answer>`, else the whole completion.

Tests (`tests` column; a list, or a JSON string of one):
- assert statements (strings): the program is executed once as module `solution`, then each
  test in its namespace, with `time_limit` seconds each (an overrunning test fails and the next
  one runs);
- `{"input": ..., "output": ...}` pairs (also `stdin` / `stdout`): the program runs once per
  pair as `__main__` with that stdin; it passes when it exits without an exception and its
  stdout equals the expected output up to trailing whitespace on each line and trailing blank
  lines.

Reward: the fraction of tests passed, or with `all_or_nothing=True` 1.0 only when all pass.
Every run is a separate sandboxed process (see `rlsd.verifiers.sandbox`); the batch runs on
the thread backend, because each item only waits on its own subprocess, which enforces its
own wall, CPU and memory limits. A program that loops, crashes or blows a limit fails its
tests (a normal 0, not a verifier failure); a sandbox that cannot start is a failure.
"""

from __future__ import annotations

import json
from dataclasses import replace
from functools import partial
from typing import Any

from rlsd.verifiers import sandbox
from rlsd.verifiers.base import RewardFunction
from rlsd.verifiers.extract import find_fenced, find_tag
from rlsd.verifiers.pool import Backend

PYTHON_FENCES: tuple[str, ...] = ("python", "py", "python3", "")


def extract_program(completion: str) -> str:
    """The Python source in a completion (see the module docstring)."""
    return (
        find_fenced(completion, PYTHON_FENCES)
        or find_fenced(completion)
        or find_tag(completion, "answer")
        or completion
    )


def parse_tests(tests: Any) -> list[Any]:
    """The row's tests as a list of assert strings or input/output dicts."""
    if isinstance(tests, str):
        try:
            tests = json.loads(tests)
        except json.JSONDecodeError:
            tests = [line for line in tests.splitlines() if line.strip()]
    if not isinstance(tests, (list, tuple)) or not tests:
        raise ValueError(f"'tests' must be a non-empty list of asserts or io pairs, got {tests!r}")
    kinds = {isinstance(t, dict) for t in tests}
    if len(kinds) != 1 or not all(isinstance(t, (str, dict)) for t in tests):
        raise ValueError("'tests' must be all assert strings or all {'input', 'output'} dicts")
    return list(tests)


def _normalize_output(text: str) -> str:
    return "\n".join(line.rstrip() for line in str(text).splitlines()).rstrip("\n")


def _pair(test: dict[str, Any]) -> tuple[str, str]:
    stdin = test.get("input", test.get("stdin", ""))
    expected = test.get("output", test.get("stdout"))
    if expected is None:
        raise ValueError(f"io test {test!r} has no 'output'")
    return str(stdin), str(expected)


def score_code(
    completion: str,
    row: dict[str, Any],
    *,
    all_or_nothing: bool = False,
    time_limit: float = 2.0,
    limits: sandbox.Limits | None = None,
) -> float:
    """Fraction of the row's tests the completion's program passes."""
    tests = parse_tests(row.get("tests"))
    limits = limits or sandbox.Limits()
    program = extract_program(completion)
    passed = 0
    if isinstance(tests[0], str):
        run_limits = replace(
            limits,
            wall_s=1.0 + time_limit * (len(tests) + 1),
            cpu_s=int(1 + time_limit * (len(tests) + 1)),
        )
        result = sandbox.run(
            program, mode="asserts", tests=tests, per_test_s=time_limit, limits=run_limits
        )
        if not result.started:
            raise RuntimeError(f"sandbox did not start: {result.stderr[-500:]}")
        passed = sum(1 for line in result.reports if line.startswith("test ") and line[-1] == "1")
    else:
        run_limits = replace(limits, wall_s=1.0 + time_limit, cpu_s=int(1 + time_limit))
        for test in tests:
            stdin, expected = _pair(test)
            result = sandbox.run(program, mode="stdio", stdin=stdin, limits=run_limits)
            if not result.started:
                raise RuntimeError(f"sandbox did not start: {result.stderr[-500:]}")
            ok = "done" in result.reports and (
                _normalize_output(result.stdout) == _normalize_output(expected)
            )
            passed += ok
            if all_or_nothing and not ok:
                return 0.0
    if all_or_nothing:
        return float(passed == len(tests))
    return passed / len(tests)


def code_verifier(
    *,
    all_or_nothing: bool = False,
    time_limit: float = 2.0,
    memory_mb: int = 512,
    nproc: int = 16,
    file_size_mb: int = 16,
    disk_mb: int = 64,
    backend: Backend = "thread",
    timeout: float = 600.0,
    **options: Any,
) -> RewardFunction:
    """The `code` reward function.

    `time_limit` is seconds per test; `memory_mb`, `nproc` and `file_size_mb` are the
    sandbox's RLIMIT_AS, RLIMIT_NPROC and RLIMIT_FSIZE; `disk_mb` is the size of each of its
    private tmpfs (working folder, /tmp, /dev/shm; with bubblewrap). `timeout` is only a
    backstop: the sandbox's own limits end every run. Other `options` go to `RewardFunction`.
    """
    if time_limit <= 0:
        raise ValueError(f"time_limit must be > 0 seconds, got {time_limit}")
    limits = sandbox.Limits(
        memory_mb=memory_mb, nproc=nproc, file_size_mb=file_size_mb, disk_mb=disk_mb
    )
    score = partial(score_code, all_or_nothing=all_or_nothing, time_limit=time_limit, limits=limits)
    return RewardFunction(
        "code",
        score,
        columns=("tests",),
        backend=backend,
        timeout=timeout,
        **options,  # type: ignore[arg-type]
    )
