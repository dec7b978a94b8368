"""Run by tests/test_distributed.py under `torchrun --nproc_per_node 2` (gloo, CPU).

Trains RLSD for 2 steps on the built-in task, then each rank writes its world size, a
checksum of its parameters, whether the weights moved, and per generation batch how many rows
its teacher scored and its first prompt."""

import json
import os
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlsd import RLSDConfig, RLSDTrainer
from rlsd.data import to_dataset
from rlsd.tasks import get_task, make_rows
from rlsd.verifiers import get_verifier


def main(model_path: str, out_dir: str) -> None:
    task = get_task("arithmetic")
    config = RLSDConfig(
        output_dir=out_dir,
        per_device_train_batch_size=16,
        num_generations=8,
        max_steps=2,
        max_completion_length=task.max_completion_length,
        learning_rate=1e-3,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        teacher_template=task.teacher_template,
        seed=0,
    )
    model = AutoModelForCausalLM.from_pretrained(model_path)
    initial = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    trainer = RLSDTrainer(
        model=model,
        reward_funcs=get_verifier("exact"),
        args=config,
        train_dataset=to_dataset(make_rows(task.problems("train", 128, 0))),
        processing_class=AutoTokenizer.from_pretrained(model_path),
    )
    scored, prompts = [], []  # per generation batch: rows the teacher scored, first prompt
    score_batch = trainer.teacher_scorer.score_batch

    def recording(inputs, output, rows, contexts=None):
        scored.append(len(rows))
        prompts.append(str(inputs[0]["prompt"]))
        return score_batch(inputs, output, rows, contexts)

    trainer.teacher_scorer.score_batch = recording
    trainer.train()
    final = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    rank = trainer.accelerator.process_index
    result = {
        "rank": rank,
        "world_size": trainer.accelerator.num_processes,
        "backend": str(torch.distributed.get_backend())
        if torch.distributed.is_initialized()
        else None,
        "steps": trainer.state.global_step,
        "checksum": float(final.double().sum()),
        "moved": float((final - initial).abs().max()),
        "pid": os.getpid(),
        "scored": scored,
        "prompts": prompts,
    }
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
