"""Run by tests/test_sharded.py under `torchrun --standalone --nproc_per_node 2` (gloo, CPU).

One launch trains the shipped tiny model under DDP, FSDP2 or DeepSpeed ZeRO-3 and rank 0
writes `result.json` in the output folder: the world, the sharding evidence, the checksum of
the full parameters after each step, and for rlsd every read of the teacher snapshot (its
`synced_at`, how far its full parameters are from the policy's at that step and at the step of
the read) and its log-probs on a fixed batch.

    sharded_train.py MODE ALGORITHM MODEL OUT [--steps N] [--save-steps N] [--resume CKPT]
                     [--peft]
"""

from __future__ import annotations

import argparse
import json
import os

import torch
from _sharded import checksum, full_parameters, max_abs_diff, prepare_mode, sharding
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from rlsd import RLSDConfig, RLSDTrainer
from rlsd.data import to_dataset
from rlsd.tasks import get_task, make_rows
from rlsd.verifiers import get_verifier

TASK = "arithmetic"


def fixed_batch(tokenizer, template: str):
    """Teacher inputs for 8 held-out problems with their reference solutions as the
    completions: `(input_ids, attention_mask, logits_to_keep, completion_mask)`."""
    from rlsd.teacher import teacher_input_ids

    rows = make_rows(get_task(TASK).problems("eval", 8, 0))
    completions = [
        tokenizer(r["privileged_context"], add_special_tokens=False)["input_ids"] for r in rows
    ]
    width = max(map(len, completions))
    completion_ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    completion_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, ids in enumerate(completions):
        completion_ids[i, : len(ids)], completion_mask[i, : len(ids)] = torch.tensor(ids), 1
    ids, mask = teacher_input_ids(tokenizer, rows, completion_ids, completion_mask, template)
    return ids, mask, width, completion_mask


class Probe(TrainerCallback):
    """Reads, on every rank (the reads are collectives under sharding), the policy's full
    parameters when training begins and after each optimiser step, the teacher snapshot's full
    parameters at the same moments (whenever this callback runs relative to the trainer's own
    sync, a record pairs the snapshot with its `synced_at`), and the teacher's log-probs on
    the fixed batch when training begins (after a resume has loaded the checkpoint), at each
    save and at the end."""

    def __init__(self, peft: bool):
        self.peft = peft
        self.trainer: RLSDTrainer | None = None
        self.batch = None
        self.policy_at: dict[int, dict[str, torch.Tensor]] = {}
        self.teacher_records: list[dict] = []
        self.teacher_logps_at: dict[str, list] = {}

    def policy(self, adapter_only: bool = False) -> dict[str, torch.Tensor]:
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        return full_parameters(model, ".default." if adapter_only else None)

    def read(self, step: int, key: str | None = None) -> None:
        self.policy_at[step] = self.policy(adapter_only=self.peft)
        teacher = getattr(self.trainer, "teacher", None)
        if teacher is None:
            return
        tensors = teacher.full_state_dict()  # a collective: every rank calls it
        if self.peft:  # the teacher adapter's names, mapped to the policy adapter's
            tensors = {n.replace(".rlsd_teacher.", ".default."): t for n, t in tensors.items()}
        tensors = {n: t.float() for n, t in tensors.items()}
        self.teacher_records.append(
            {"step": step, "synced_at": teacher.synced_at, "tensors": tensors}
        )
        if key is not None and self.batch is not None:
            ids, mask, width, completion_mask = self.batch
            logps = self.trainer.teacher_logps(ids, mask, width)
            self.teacher_logps_at[key] = (logps.float().cpu() * completion_mask).tolist()

    def on_train_begin(self, args, state, control, **kwargs):
        self.read(state.global_step, f"begin-{state.global_step}")

    def on_step_end(self, args, state, control, **kwargs):
        self.read(state.global_step)

    def on_save(self, args, state, control, **kwargs):
        self.read(state.global_step, f"save-{state.global_step}")

    def teacher_summary(self) -> list[dict]:
        """Per record: the snapshot against the policy at its `synced_at` (equal after a
        sync) and against the policy of the moment (different once the policy moved on)."""
        out = []
        for record in self.teacher_records:
            tensors, synced = record["tensors"], self.policy_at.get(record["synced_at"])
            now = self.policy_at[record["step"]]
            out.append(
                {
                    "step": record["step"],
                    "synced_at": record["synced_at"],
                    "names": sorted(tensors) == sorted(now),
                    "shapes": all(tensors[n].shape == now[n].shape for n in now if n in tensors),
                    "diff_to_synced": None if synced is None else max_abs_diff(tensors, synced),
                    "diff_to_now": max_abs_diff(tensors, now),
                }
            )
        return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("ddp", "fsdp2", "zero3"))
    parser.add_argument("algorithm", choices=("grpo", "rlsd"))
    parser.add_argument("model")
    parser.add_argument("out")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--save-steps", type=int, default=0)
    parser.add_argument("--resume", default=None)
    parser.add_argument("--peft", action="store_true")
    parser.add_argument("--eval", action="store_true", help="held-out evaluation every 2 steps")
    opts = parser.parse_args()

    mode_fields = prepare_mode(opts.mode)
    task = get_task(TASK)
    config = RLSDConfig(
        output_dir=opts.out,
        algorithm=opts.algorithm,
        teacher_sync_steps=2,
        per_device_train_batch_size=16,
        num_generations=8,
        max_steps=opts.steps,
        max_completion_length=task.max_completion_length,
        learning_rate=1e-3,
        logging_steps=1,
        report_to="none",
        save_strategy="steps" if opts.save_steps else "no",
        save_steps=opts.save_steps or 500,
        teacher_template=task.teacher_template,
        seed=0,
        bf16=False,  # float32 everywhere: CPU autocast and FSDP's mixed precision round apart
        **mode_fields,
    )
    model = AutoModelForCausalLM.from_pretrained(opts.model)
    tokenizer = AutoTokenizer.from_pretrained(opts.model)
    peft_config = None
    if opts.peft:
        from peft import LoraConfig

        peft_config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    probe = Probe(peft=opts.peft)
    trainer = RLSDTrainer(
        model=model,
        reward_funcs=get_verifier("exact"),
        args=config,
        train_dataset=to_dataset(make_rows(task.problems("train", 128, 0))),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[probe],
    )
    probe.trainer = trainer
    evaluation = None
    if opts.eval:  # the held-out evaluation of `rlsd train`, on a few problems
        from rlsd.callbacks import HeldOutEvalCallback

        rows = make_rows(task.problems("eval", 8, 0))
        evaluation = HeldOutEvalCallback(
            trainer, rows, get_verifier("exact"), every=2, max_new_tokens=8
        )
        trainer.add_callback(evaluation)
    if opts.algorithm == "rlsd":
        probe.batch = fixed_batch(tokenizer, task.teacher_template)
    trainer.train(resume_from_checkpoint=opts.resume)

    accelerator = trainer.accelerator
    policy = accelerator.unwrap_model(trainer.model)
    probe.read(trainer.state.global_step, f"end-{trainer.state.global_step}")
    result = {
        "world_size": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "backend": str(torch.distributed.get_backend()),
        "steps": trainer.state.global_step,
        "sharding": sharding(policy),
        "checksum": checksum(probe.policy()),
        "step_checksums": {s: checksum(p) for s, p in probe.policy_at.items()},
        "log_history": trainer.state.log_history,
        "teacher": probe.teacher_summary(),
        "teacher_logps": probe.teacher_logps_at,
        "eval": evaluation.history if evaluation is not None else None,
    }
    if accelerator.is_main_process:
        with open(os.path.join(opts.out, "result.json"), "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main()
