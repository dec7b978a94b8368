"""Sharded training on two CPU processes (torchrun, gloo): FSDP2 and DeepSpeed ZeRO-3 against
plain DDP.

Each launch of tests/sharded_train.py costs about 10 s before training starts, so one launch
does several checks and writes them to `result.json`; the tests read that. Every sharded
result first shows that the parameters really were sharded (accelerate silently falls back
to DDP on a CPU without the tricks in tests/_sharded.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).with_name("sharded_train.py")
DISTRIBUTED_TYPE = {"fsdp2": "DistributedType.FSDP", "zero3": "DistributedType.DEEPSPEED"}


def launch(model: str, out: Path, mode: str, algorithm: str, *flags: str) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    cmd += ["2", str(SCRIPT), mode, algorithm, model, str(out), *flags]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return json.loads((out / "result.json").read_text())


def assert_sharded(result: dict, mode: str) -> None:
    assert result["world_size"] == 2 and result["backend"] == "gloo"
    assert result["distributed_type"] == DISTRIBUTED_TYPE[mode]
    # every parameter of the tiny model is big enough to be split across the two ranks
    assert result["sharding"]["sharded"] == result["sharding"]["total"] > 0


def assert_same_run(result: dict, reference: dict, steps=None) -> None:
    """The full-parameter checksum after each optimiser step equals the reference run's, up
    to float reduction order: 1e-3 of how far training moved it (measured: ~1e-4 of it)."""
    ref = {int(s): v for s, v in reference["step_checksums"].items()}
    got = {int(s): v for s, v in result["step_checksums"].items()}
    moved = abs(ref[max(ref)] - ref[min(ref)])
    assert moved > 0.1  # trained
    for step in steps or sorted(ref):
        assert got[step] == pytest.approx(ref[step], abs=1e-3 * moved), (step, got, ref)


@pytest.fixture(scope="module")
def ddp_grpo(tiny_path, tmp_path_factory):
    return launch(tiny_path, tmp_path_factory.mktemp("ddp-grpo"), "ddp", "grpo", "--steps", "3")


@pytest.mark.parametrize("mode", ["fsdp2", "zero3"])
def test_grpo_under_sharding_equals_ddp(mode, tiny_path, tmp_path, ddp_grpo):
    result = launch(tiny_path, tmp_path, mode, "grpo", "--steps", "3")
    assert_sharded(result, mode)
    assert ddp_grpo["sharding"]["sharded"] == 0 and ddp_grpo["world_size"] == 2
    assert result["steps"] == 3 and result["teacher"] == []
    assert_same_run(result, ddp_grpo)
