"""Throughput of each verifier on this machine: items per second, single and pooled.

Run: `OMP_NUM_THREADS=1 python benchmarks/verifiers.py [--scale 1.0]`. "single" scores the
batch with one worker (inline for the cheap verifiers, which is how they run by default);
"pooled" uses as many workers as CPUs on the verifier's parallel backend (process pool for
the pure-Python ones, threads driving sandbox subprocesses for code, threads for SQL). The
first call of each configuration is a warm-up (pool start, math-verify import) and not timed.
Measured, never asserted.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from rlsd.verifiers import get_verifier

SQL_DB = """
CREATE TABLE emp(id INTEGER, name TEXT, dept TEXT, salary REAL);
INSERT INTO emp VALUES (1, 'ann', 'eng', 100), (2, 'bob', 'eng', 90), (3, 'cid', 'ops', 90);
"""
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}

# name -> (single-run options, pooled options, completions, columns, batch size)
CASES: dict[str, tuple[dict, dict, list[str], dict[str, list[Any]], int]] = {
    "exact": ({}, {"backend": "process"}, ["7+3=10;10-5=5;A:5", "A:6"], {"answer": ["5"]}, 2000),
    "numeric": (
        {},
        {"backend": "process"},
        [r"\boxed{\frac{1}{2}}", "0.49"],
        {"answer": ["0.5"]},
        2000,
    ),
    "regex": (
        {"pattern": r"\d+"},
        {"pattern": r"\d+", "backend": "process"},
        ["A:12", "A:x"],
        {},
        2000,
    ),
    "format": ({}, {"backend": "process"}, ["<answer>5</answer>", "5"], {}, 2000),
    "math": (
        {"workers": 1},
        {},
        [r"\boxed{\frac{2}{4}}", r"the answer is $\sqrt{2}/2$"],
        {"answer": ["1/2"]},
        200,
    ),
    "json_schema": (
        {},
        {"backend": "process"},
        ['{"name": "a", "age": 3}', '{"name": 1}'],
        {"schema": [SCHEMA]},
        1000,
    ),
    "sql": (
        {"workers": 1},
        {},
        ["SELECT name FROM emp WHERE salary < 100", "SELECT 1"],
        {"answer": ["SELECT name FROM emp WHERE salary = 90"], "database": [SQL_DB]},
        500,
    ),
    "code": (
        {"workers": 1},
        {},
        ["def add(a, b):\n    return a + b", "def add(a, b): return 0"],
        {"tests": [["assert add(1, 2) == 3", "assert add(2, 2) == 4"]]},
        40,
    ),
}


def items_per_second(
    fn: Any, completions: list[str], columns: dict[str, list[Any]], n: int
) -> float:
    batch = [completions[i % len(completions)] for i in range(n)]
    cols = {k: [v[0]] * n for k, v in columns.items()}
    fn(None, batch[: min(n, 8)], **{k: v[: min(n, 8)] for k, v in cols.items()})  # warm-up
    start = time.perf_counter()
    fn(None, batch, **cols)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply batch sizes")
    args = parser.parse_args()
    cpus = len(os.sched_getaffinity(0))
    print(
        f"{'verifier':<12} {'batch':>6} {'single items/s':>15} {'pooled items/s':>15}  "
        f"(pooled = {cpus} workers)"
    )
    for name, (single_opts, pooled_opts, completions, columns, size) in CASES.items():
        n = max(4, int(size * args.scale))
        single = items_per_second(get_verifier(name, **single_opts), completions, columns, n)
        pooled_fn = get_verifier(name, **{"workers": cpus, **pooled_opts})
        pooled = items_per_second(pooled_fn, completions, columns, n)
        print(f"{name:<12} {n:>6} {single:>15.1f} {pooled:>15.1f}")


if __name__ == "__main__":
    main()
