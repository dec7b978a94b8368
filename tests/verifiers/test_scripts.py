"""Verifiers in real user programs: a script with and without the main guard, `python -c`, and
`torchrun` all get correct rewards, and nothing prints a traceback.

Each case runs a real interpreter in a subprocess (the failure this guards against, workers
re-running an unguarded `__main__`, cannot be seen from inside pytest).
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

BODY = """
import json, os
from rlsd.verifiers import get_verifier

math_fn = get_verifier("math")
code_fn = get_verifier("code")
result = {
    "rank": os.environ.get("RANK", "-"),
    "math": math_fn(None, [r"so \\boxed{\\frac{1}{2}}", r"\\boxed{3}"], answer=["0.5", "2"]),
    "code": code_fn(
        None,
        ["def add(a, b):\\n    return a + b", "def add(a, b):\\n    return a - b"],
        tests=[["assert add(1, 2) == 3", "assert add(2, 2) == 4"]] * 2,
    ),
    "failures": [math_fn.failures, code_fn.failures],
}
print("RLSD-RESULT " + json.dumps(result), flush=True)
"""
GUARDED = (
    "def main():\n" + textwrap.indent(BODY, "    ") + "\n\nif __name__ == '__main__':\n    main()\n"
)
NO_FAILURES = {"timeout": 0, "exception": 0, "crash": 0}


def run_user_program(args: list[str], cwd, timeout: float = 180) -> list[dict]:
    """Run `python <args>`; check it succeeded without a traceback; return its result lines."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Traceback" not in output and "bootstrapping phase" not in output, output
    lines = [line for line in done.stdout.splitlines() if line.startswith("RLSD-RESULT ")]
    return [json.loads(line.removeprefix("RLSD-RESULT ")) for line in lines]


def check(result: dict) -> None:
    assert result["math"] == [1.0, 0.0]
    assert result["code"] == [1.0, 0.0]
    assert result["failures"] == [NO_FAILURES, NO_FAILURES]


@pytest.mark.parametrize("source", [BODY, GUARDED], ids=["no-main-guard", "main-guard"])
def test_script(tmp_path, source):
    (tmp_path / "train.py").write_text(source)
    [result] = run_user_program(["train.py"], tmp_path)
    check(result)


def test_python_dash_c(tmp_path):
    [result] = run_user_program(["-c", BODY], tmp_path)
    check(result)


def test_torchrun_two_processes(tmp_path):
    (tmp_path / "train.py").write_text(BODY)
    args = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "train.py"]
    results = run_user_program(args, tmp_path, timeout=300)
    assert sorted(r["rank"] for r in results) == ["0", "1"]
    for result in results:
        check(result)
