"""Two real processes on a CPU (torchrun, gloo): 2 RLSD steps with gradients all-reduced.

Note: `accelerate launch --num_processes 2 --cpu` silently starts one process here; torchrun
really starts two."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_two_process_cpu_run_runs_the_same_teacher_forwards_on_every_rank(tiny_path, tmp_path):
    script = Path(__file__).with_name("dist_train.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
        tiny_path,
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["pid"] != ranks[1]["pid"] and ranks[0]["backend"] == "gloo"
    assert [r["steps"] for r in ranks] == [2, 2]
    assert ranks[0]["moved"] > 0  # trained
    # each rank saw different samples, yet every rank ran the same teacher forwards: the rows
    # to score are topped up to the most any rank needs (the collectives stay matched)
    assert all(a != b for a, b in zip(ranks[0]["prompts"], ranks[1]["prompts"]))
    assert ranks[0]["scored"] == ranks[1]["scored"] and ranks[0]["scored"]
