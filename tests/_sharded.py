"""Test helpers: make accelerate really shard on a CPU, and read full parameters back.

Stock accelerate (1.15) silently falls back to plain DDP for FSDP on a CPU and sees a world
of one for DeepSpeed (see the measurements in /work/shared/notes/sharded-cpu.md). The tricks
below prepare accelerate's shared state by hand before the config is built; they reach into
accelerate internals, so they live here, in the tests, never in the library, and the dev
extra pins accelerate and deepspeed.

Every function that reads parameters is a collective under sharding: call it on all ranks.
"""

from __future__ import annotations

import os
from typing import Any

import torch

MODES = ("ddp", "fsdp2", "zero3")

ZERO3_CONFIG = {
    "zero_optimization": {
        "stage": 3,
        # a tiny model's parameters are all under the default threshold and stay whole
        "stage3_param_persistence_threshold": 0,
    },
    "train_micro_batch_size_per_gpu": "auto",
    "train_batch_size": "auto",
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "bf16": {"enabled": False},
    "fp16": {"enabled": False},
}


def prepare_mode(mode: str) -> dict[str, Any]:
    """Set accelerate's shared state up for `mode` and return the config fields that select
    it. Call once per process, before building the `RLSDConfig`."""
    from accelerate import PartialState
    from accelerate.utils import DistributedType

    if mode == "ddp":
        return {"use_cpu": True}
    if mode == "fsdp2":
        # A multi-GPU state with the FSDP plugin becomes FSDP; gloo still does the collectives.
        state = PartialState(cpu=True)
        state.distributed_type = DistributedType.MULTI_GPU
        return {
            "use_cpu": True,
            "fsdp": "full_shard auto_wrap",
            "fsdp_config": {"version": 2, "reshard_after_forward": True},
            "accelerator_config": {"use_configured_state": True},
        }
    if mode == "zero3":
        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        PartialState(backend="gloo")
        return {
            "deepspeed": ZERO3_CONFIG,
            "use_cpu": False,
            "accelerator_config": {"use_configured_state": True},
        }
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def _local(param: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return param.to_local() if isinstance(param, DTensor) else param


def sharding(model: torch.nn.Module) -> dict[str, int]:
    """How many parameters this rank holds only a part of (FSDP2 DTensor shards, ZeRO-3
    partitions), out of how many. Local: no collective."""
    sharded = 0
    params = list(model.parameters())
    for p in params:
        if hasattr(p, "ds_tensor"):  # ZeRO-3 partition
            sharded += p.ds_tensor.numel() < p.ds_numel
        else:
            sharded += _local(p).numel() < p.numel()
    return {"sharded": sharded, "total": len(params)}


def full_parameters(model: torch.nn.Module, only: str | None = None) -> dict[str, torch.Tensor]:
    """Every (named) parameter whole, as CPU float tensors, on every rank (a collective).
    `only` keeps the names that contain it (e.g. a PEFT adapter's name)."""
    params = {n: p for n, p in model.named_parameters() if only is None or only in n}
    if any(hasattr(p, "ds_tensor") for p in model.parameters()):
        import deepspeed

        # gather every parameter of the model so all ranks run the same collectives
        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            return {n: p.detach().cpu().float().clone() for n, p in params.items()}
    from torch.distributed.tensor import DTensor

    out = {}
    for n, p in model.named_parameters():
        whole = p.full_tensor() if isinstance(p, DTensor) else p
        if n in params:
            out[n] = whole.detach().cpu().float().clone()
    return out


def checksum(tensors: dict[str, torch.Tensor]) -> float:
    """The sum of all entries, in float64."""
    return float(sum(t.double().sum() for t in tensors.values()))


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest entry-wise difference over the names both hold (the caller checks the names);
    infinite where shapes differ (a shard or an empty partition against a full tensor)."""
    shared = [n for n in a if n in b]
    if any(a[n].shape != b[n].shape for n in shared):
        return float("inf")
    return max((float((a[n] - b[n]).abs().max()) for n in shared), default=float("inf"))
