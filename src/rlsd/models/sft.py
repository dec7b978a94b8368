"""Warm-start the tiny model by supervised fine-tuning on a built-in task (`rlsd sft`).

The RL stage needs a model that is right sometimes (roughly 20-50% sampled accuracy) so that
groups of samples disagree and GRPO has a signal, and whose self-teacher uses the reference
it is shown, as a pretrained LLM would. A model trained from scratch must learn the latter:
most of the SFT data (`teacher_fraction`, default 0.7) is in the self-teacher's format,
prompt plus reference solution then the solution (a fifth of those show only the final answer
as the reference, so the `privileged="answer"` option is meaningful too). Copying is learned
later than one might think (an induction-head transition), so SFT stops at the first
evaluation where the student's sampled accuracy has reached `target_accuracy` AND the
teacher's (with the reference) has reached `teacher_target`, or at `max_steps`.

A plain PyTorch loop (not TRL's SFTTrainer): the model is tiny, the loop is 30 lines, and it
runs in a few CPU minutes. The loss is on the solution tokens and the final EOS only.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from rlsd.evaluation import evaluate
from rlsd.models.tiny import build_model, build_tokenizer
from rlsd.tasks import get_task, make_rows
from rlsd.teacher import fill_template
from rlsd.verifiers import reward_funcs_for


@dataclass
class SFTArgs:
    output_dir: str = "tiny-sft"
    task: str = "mixed"
    num_train: int = 50_000
    num_eval: int = 500
    batch_size: int = 64
    learning_rate: float = 2e-3
    max_steps: int = 5000
    eval_every: int = 250
    target_accuracy: float = 0.3
    teacher_target: float = 0.85
    teacher_fraction: float = 0.7
    seed: int = 0
    max_positions: int = 256  # the sql task's self-teacher needs about 400: use 512


def _example(tokenizer, prompt_text: str, target: str) -> tuple[list[int], list[int]]:
    prompt_ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt_text}], add_generation_prompt=True, tokenize=True
    )
    if isinstance(prompt_ids, dict) or hasattr(prompt_ids, "keys"):
        prompt_ids = prompt_ids["input_ids"]
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return list(prompt_ids) + target_ids, [-100] * len(prompt_ids) + target_ids


def build_examples(args: SFTArgs, tokenizer) -> list[tuple[list[int], list[int]]]:
    """Tokenised (input_ids, labels) pairs, student and teacher format mixed."""
    task = get_task(args.task)
    rng = random.Random(args.seed)
    examples = []
    problems = task.problems("train", args.num_train, args.seed)
    # a task with fewer distinct problems than `num_train` (sql) repeats them, each time in a
    # format drawn anew
    for i in range(args.num_train):
        p = problems[i % len(problems)]
        prompt = p.question
        if rng.random() < args.teacher_fraction:
            reference = p.solution if rng.random() < 0.8 else f"A:{p.answer}"
            prompt = fill_template(task.teacher_template, p.question, reference)
        examples.append(_example(tokenizer, prompt, p.solution))
    return examples


def _batch(examples, pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(examples):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        attention_mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def run_sft(args: SFTArgs, log=print) -> dict:
    """Train from scratch until `target_accuracy`; save an HF model folder; return a summary."""
    torch.manual_seed(args.seed)
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, max_positions=args.max_positions, seed=args.seed)
    task = get_task(args.task)
    examples = build_examples(args, tokenizer)
    eval_rows = make_rows(task.problems("eval", args.num_eval, args.seed))
    teacher_rows = [  # the same problems, prompted as the self-teacher sees them
        {
            **row,
            "prompt": [
                {
                    "role": "user",
                    "content": fill_template(
                        task.teacher_template,
                        row["prompt"][0]["content"],
                        row["privileged_context"],
                    ),
                }
            ],
        }
        for row in eval_rows[: max(1, args.num_eval // 2)]
    ]
    reward_fn = reward_funcs_for(eval_rows, ["exact"])[0]  # a `verifier` column routes (sql)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.0)
    rng = random.Random(args.seed + 1)
    history, started, accuracy, teacher_accuracy, step = [], time.time(), 0.0, 0.0, 0
    model.train()
    for step in range(1, args.max_steps + 1):
        batch = _batch(rng.sample(examples, args.batch_size), tokenizer.pad_token_id)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % args.eval_every == 0 or step == args.max_steps:
            accuracy, teacher_accuracy = (
                evaluate(
                    model,
                    tokenizer,
                    rows,
                    reward_fn,
                    max_new_tokens=task.max_completion_length,
                    greedy=False,
                    seed=args.seed,
                )["accuracy"]
                for rows in (eval_rows, teacher_rows)
            )
            history.append(
                {
                    "step": step,
                    "loss": loss.item(),
                    "accuracy": accuracy,
                    "teacher_accuracy": teacher_accuracy,
                }
            )
            log(
                f"sft step {step}: loss {loss.item():.3f} sampled accuracy {accuracy:.3f} "
                f"(teacher with the reference {teacher_accuracy:.3f})"
            )
            if accuracy >= args.target_accuracy and teacher_accuracy >= args.teacher_target:
                break
    model.eval()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    summary = {
        "args": asdict(args),
        "steps": step,
        "sampled_accuracy": accuracy,
        "teacher_accuracy": teacher_accuracy,
        "seconds": round(time.time() - started, 1),
        "history": history,
    }
    (out / "sft_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
