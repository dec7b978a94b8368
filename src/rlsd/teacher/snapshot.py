"""The teacher's weights: build, sync, save into and load from checkpoints (spec section 4).

`teacher_sync_steps = N > 1`: a frozen copy refreshed after the update of every optimiser step
`k` with `k % N == 0` (the released code; `TeacherSyncCallback`); `0`: never refreshed (the
initial policy, as the OPSD paper does); `1`: the live policy weights, without a copy. With
PEFT the snapshot is a second adapter, `rlsd_teacher`, on the same base model (every LoRA
layer kind, embeddings included). Under DeepSpeed ZeRO-3 and FSDP2 every copy goes through full
(gathered) parameters, so a snapshot never holds the empty tensors of a partition; FSDP1 is
refused with the way to FSDP2. The teacher always runs in eval mode.
"""

from __future__ import annotations

import copy
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

TEACHER_ADAPTER = "rlsd_teacher"
TEACHER_STATE_DIR = "rlsd_teacher"
# The adapter's name as one segment of a PEFT parameter name: in the middle for LoRA's linear
# layers (`...q_proj.lora_A.rlsd_teacher.weight`), last for its embedding ParameterDicts
# (`...embed_tokens.lora_embedding_A.rlsd_teacher`).
_ADAPTER_SEGMENT = re.compile(rf"(?<=\.){TEACHER_ADAPTER}(?=\.|$)")


def is_teacher_parameter(name: str) -> bool:
    """Whether a parameter name belongs to the teacher adapter (any LoRA layer kind)."""
    return _ADAPTER_SEGMENT.search(name) is not None


def policy_parameter_name(name: str) -> str:
    """The policy's (`default` adapter's) parameter that a teacher-adapter parameter mirrors."""
    return _ADAPTER_SEGMENT.sub("default", name)


def skip_teacher_parameters(named: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
    """`(name, tensor)` pairs without the teacher adapter's: for weight pushes to vLLM, which
    knows the policy's names only (TRL strips PEFT's `modules_to_save.default.` and skips
    `lora_` names, so `...modules_to_save.rlsd_teacher.weight` would otherwise be sent)."""
    return ((name, value) for name, value in named if not is_teacher_parameter(name))


def _is_dtensor(t: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - old torch
        return False
    return isinstance(t, DTensor)


@contextmanager
def _gathered(params: list[torch.nn.Parameter], modifier_rank: int | None = None):
    """Full parameters for the duration of the block under DeepSpeed ZeRO-3 (a collective:
    every rank must enter it); a no-op otherwise. With `modifier_rank`, that rank's writes
    reach every rank's partition when the block ends."""
    if params and hasattr(params[0], "ds_id"):  # partitioned by ZeRO-3
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank):
            yield
    else:
        yield


def _full_value(param: Any) -> torch.Tensor:
    """The whole tensor of a (possibly FSDP-sharded) parameter, on every rank."""
    return param.full_tensor() if _is_dtensor(param) else param.data


def _write(param: Any, value: torch.Tensor) -> None:
    """Copy a full tensor into a (possibly FSDP-sharded) parameter."""
    if _is_dtensor(param):
        from torch.distributed.tensor import distribute_tensor

        local = distribute_tensor(
            value.to(param.device, param.dtype), param.device_mesh, param.placements
        )
        param.data.copy_(local)
    else:
        param.data.copy_(value.to(param.device, param.dtype))


def _is_rank_zero() -> bool:
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


_GATHER_BLOCK = 64  # parameters gathered at a time under ZeRO-3 (bounds peak memory)


def _copy_parameters(pairs: list[tuple[torch.nn.Parameter, torch.nn.Parameter]]) -> None:
    """`target <- source` for each pair, through full parameters (ZeRO-3, FSDP, plain)."""
    for start in range(0, len(pairs), _GATHER_BLOCK):
        block = pairs[start : start + _GATHER_BLOCK]
        sources = [s for s, _ in block]
        targets = [t for _, t in block]
        with _gathered(sources), _gathered(targets, modifier_rank=0), torch.no_grad():
            for source, target in block:
                _write(target, _full_value(source))


def cast_lm_head_to_fp32(model) -> None:
    """The LM head in float32, as TRL's `cast_lm_head_to_fp32` does for the policy: float32
    weights and projection; with tied embeddings, the embedding output keeps the model's dtype."""
    original = model.lm_head.weight.dtype
    lm_head = model.lm_head.float()
    model.lm_head = lm_head

    def forward(hidden_states: torch.Tensor) -> torch.Tensor:
        bias = None if lm_head.bias is None else lm_head.bias.float()
        return torch.nn.functional.linear(hidden_states.float(), lm_head.weight.float(), bias)

    lm_head.forward = forward
    if model.config.tie_word_embeddings:
        model.get_input_embeddings().register_forward_hook(
            lambda module, args, output: output.to(original)
        )


class TeacherSnapshot:
    """The teacher's weights: one of

    - `"live"`: the policy itself (`teacher_sync_steps=1`), nothing copied;
    - `"adapter"`: under PEFT, a second adapter `rlsd_teacher` holding a copy of the policy's
      adapter, switched on for the teacher's forward;
    - `"copy"`: a frozen copy of the policy (prepared like TRL's reference model: ZeRO-3 and
      FSDP shard it too);
    - `"separate"`: the separate teacher of `opd`, loaded from its own path, never synced.

    `sync()` copies the policy into the snapshot through full parameters (a collective under
    ZeRO-3 and FSDP: every rank calls it, as the trainer's callback does), `save()` and
    `load()` put the snapshot into a checkpoint folder and back. `synced_at` is the optimiser
    step of the last sync (0: the initial policy)."""

    def __init__(
        self,
        args,
        accelerator,
        model: Callable[[], Any],
        temperature: float = 1.0,
        deepspeed: bool = False,
        fsdp: bool = False,
    ) -> None:
        """`args`: the `RLSDConfig`; `model()`: the policy as the trainer holds it now (wrapped
        or not); `temperature`: the sampling temperature (the fused LM head's); `deepspeed` /
        `fsdp`: whether the run is sharded that way (the copy is then prepared likewise)."""
        from accelerate.utils import is_peft_model

        self.args = args
        self.accelerator = accelerator
        self._model = model
        self.temperature = temperature
        self.deepspeed = deepspeed
        self.fsdp = fsdp
        self.sync_steps = int(args.teacher_sync_steps or 0)
        self.synced_at = 0
        policy = self._policy()
        if args.spec.separate_teacher:
            self.kind = "separate"
        elif self.sync_steps == 1:
            self.kind = "live"
        elif is_peft_model(policy):
            self.kind = "adapter"
        else:
            self.kind = "copy"
        if self.kind in ("copy", "adapter") and fsdp and _fsdp_version(accelerator) == 1:
            raise ValueError(
                "The teacher snapshot does not support FSDP1 (its sync, save and load need full "
                "parameters, which FSDP1's flat shards do not give): use FSDP2 "
                "(`accelerate launch --use_fsdp --fsdp_version 2 ...`, or `fsdp_version: 2` in "
                "the accelerate config), DeepSpeed ZeRO-3, or `--teacher_sync_steps 1` (the live "
                "policy, no snapshot)."
            )
        self.model = None
        # Building draws random initial weights (overwritten by the first sync): keep the
        # global RNG as it was, so the run samples as it would with any other teacher kind.
        with torch.random.fork_rng(devices=[]):
            if self.kind == "separate":
                self.model = self._prepare(self._load_separate(args, policy), args)
            elif self.kind == "copy":
                self.model = self._prepare(self._new_copy(policy), args)
            elif self.kind == "adapter":
                self._add_adapter(policy)
        if self.kind in ("copy", "adapter"):
            self.sync(step=0)

    # -------------------------------------------------------------------------- build
    def _policy(self):
        return self.accelerator.unwrap_model(self._model())

    def _load_separate(self, args, policy):
        from transformers import AutoModelForCausalLM

        teacher = AutoModelForCausalLM.from_pretrained(
            args.teacher_model_name_or_path, dtype=policy.dtype
        )
        if teacher.config.vocab_size != policy.config.vocab_size:
            raise ValueError(
                "The opd teacher must share the student's tokenizer: vocab sizes differ "
                f"({teacher.config.vocab_size} vs {policy.config.vocab_size})."
            )
        return teacher

    @staticmethod
    def _new_copy(policy):
        """An empty model of the policy's class (a causal LM or a vision-language model);
        `sync()` fills it with the policy's full parameters, so no checkpoint path is needed
        (also under ZeRO-3, where `_from_config` partitions it, and FSDP)."""
        return type(policy)._from_config(copy.deepcopy(policy.config), dtype=policy.dtype)

    def _prepare(self, teacher, args):
        """Frozen, eval mode, no dropout, the policy's LM-head settings, then distributed like
        TRL's reference model."""
        from trl.trainer.utils import add_fused_lm_head, disable_dropout_in_model

        teacher.requires_grad_(False)
        teacher.eval()
        disable_dropout_in_model(teacher)
        if args.cast_lm_head_to_fp32:
            cast_lm_head_to_fp32(teacher)
        add_fused_lm_head(
            teacher, temperature=self.temperature, cast_lm_head_to_fp32=args.cast_lm_head_to_fp32
        )
        if self.deepspeed:
            from trl.models.utils import prepare_deepspeed

            return prepare_deepspeed(teacher, self.accelerator)
        if self.fsdp:
            from trl.models.utils import prepare_fsdp

            return prepare_fsdp(teacher, self.accelerator)
        return self.accelerator.prepare_model(teacher, evaluation_mode=True)

    def _add_adapter(self, policy) -> None:
        """The `rlsd_teacher` adapter: the policy's adapter config, frozen, and with its LoRA
        dropout removed (TRL disabled dropout before this adapter existed)."""
        policy.add_adapter(TEACHER_ADAPTER, policy.peft_config["default"])
        for name, module in policy.named_modules():
            if name.endswith(f"lora_dropout.{TEACHER_ADAPTER}"):
                module.p = 0.0
        for name, param in policy.named_parameters():
            if is_teacher_parameter(name):
                param.requires_grad_(False)
        # add_adapter may switch the active adapter; the policy trains `default`.
        policy.set_adapter("default")

    # --------------------------------------------------------------------------- use
    @contextmanager
    def forward_context(self):
        """`(model)` to run the teacher's forward with: eval mode (no dropout), and the
        teacher adapter switched on under PEFT; the policy's mode is restored after."""
        if self.kind in ("copy", "separate"):
            yield self.model
            return
        model = self._model()
        was_training = model.training
        model.eval()
        try:
            if self.kind == "adapter":
                from trl.trainer.utils import use_adapter

                with use_adapter(self._policy(), TEACHER_ADAPTER):
                    yield model
            else:
                yield model
        finally:
            model.train(was_training)

    # ------------------------------------------------------------------ the weights
    def _pairs(self) -> list[tuple[torch.nn.Parameter, torch.nn.Parameter]]:
        """(policy parameter, teacher parameter) for every parameter the snapshot holds."""
        if self.kind == "adapter":
            params = dict(self._policy().named_parameters())
            return [
                (params[policy_parameter_name(n)], p)
                for n, p in params.items()
                if is_teacher_parameter(n)
            ]
        if self.kind == "copy":
            source = dict(self._policy().named_parameters())
            target = self.accelerator.unwrap_model(self.model)
            return [(source[n], p) for n, p in target.named_parameters()]
        return []

    def _named(self) -> list[tuple[str, torch.nn.Parameter]]:
        if self.kind == "adapter":
            return [(n, p) for n, p in self._policy().named_parameters() if is_teacher_parameter(n)]
        if self.kind == "copy":
            return list(self.accelerator.unwrap_model(self.model).named_parameters())
        return []

    def sync(self, step: int) -> None:
        """Copy the policy (or its adapter) into the snapshot; every rank calls it."""
        if self.kind in ("copy", "adapter"):
            _copy_parameters(self._pairs())
        self.synced_at = step

    def maybe_sync(self, step: int) -> bool:
        """The released code's schedule: after the update of step `k`, sync if `k % N == 0`
        (N = `teacher_sync_steps` > 1), whether or not the teacher ran at that step."""
        if self.sync_steps > 1 and step > 0 and step % self.sync_steps == 0:
            self.sync(step)
            return True
        return False

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The snapshot's full tensors on CPU, on every rank (a collective under ZeRO-3 and
        FSDP). Empty for the live policy and the separate opd teacher (nothing to save)."""
        named = self._named()
        out: dict[str, torch.Tensor] = {}
        for start in range(0, len(named), _GATHER_BLOCK):
            block = named[start : start + _GATHER_BLOCK]
            with _gathered([p for _, p in block]), torch.no_grad():
                for name, param in block:
                    out[name] = _full_value(param).detach().cpu().clone().contiguous()
        return out

    def save(self, folder: str | Path) -> None:
        """Write the snapshot into `folder` (rank 0 writes; every rank must call it)."""
        from safetensors.torch import save_file

        tensors = self.full_state_dict()
        if not _is_rank_zero():
            return
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if tensors:
            save_file(tensors, str(folder / "model.safetensors"))
        state = {"kind": self.kind, "synced_at": self.synced_at}
        (folder / "state.json").write_text(json.dumps(state) + "\n")

    def load(self, folder: str | Path) -> None:
        """Restore a snapshot written by `save` (every rank reads the files)."""
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / "state.json").exists():
            return
        state = json.loads((folder / "state.json").read_text())
        self.synced_at = int(state.get("synced_at", state.get("teacher_synced_at", 0)))
        if not (folder / "model.safetensors").exists() or self.kind not in ("copy", "adapter"):
            return
        tensors = load_file(str(folder / "model.safetensors"))
        named = self._named()
        missing = [n for n, _ in named if n not in tensors]
        if missing:
            raise ValueError(
                f"{folder / 'model.safetensors'}: the teacher snapshot lacks {len(missing)} of "
                f"this model's parameters (first: {missing[0]!r}); it was saved from another "
                "model or PEFT setup."
            )
        for start in range(0, len(named), _GATHER_BLOCK):
            block = named[start : start + _GATHER_BLOCK]
            with _gathered([p for _, p in block], modifier_rank=0), torch.no_grad():
                for name, param in block:
                    _write(param, tensors[name])


def _fsdp_version(accelerator) -> int:
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    return int(getattr(plugin, "fsdp_version", 1) or 1) if plugin is not None else 0


class TeacherSyncCallback(TrainerCallback):
    """Refresh the teacher after the update of every optimiser step `k` with
    `k % teacher_sync_steps == 0` (the released code), whether or not the teacher ran; the
    seconds a sync takes count as teacher time in `timings`."""

    def __init__(self, snapshot: TeacherSnapshot, timings: dict[str, float]):
        self.snapshot = snapshot
        self.timings = timings

    def on_step_end(self, args, state, control, **kwargs):
        start = time.perf_counter()
        if self.snapshot.maybe_sync(state.global_step):
            self.timings["teacher"] = self.timings.get("teacher", 0.0) + time.perf_counter() - start
