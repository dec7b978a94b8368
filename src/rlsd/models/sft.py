"""Warm-start the tiny model by supervised fine-tuning on a built-in task (`rlsd sft`).

The RL stage needs a model that is right sometimes (roughly 20-50% sampled accuracy) so that
groups of samples disagree and GRPO has a signal, and whose self-teacher uses the reference
it is shown, as a pretrained LLM would. A model trained from scratch must learn the latter:
most of the SFT data (`teacher_fraction`, default 0.7) is in the self-teacher's format,
prompt plus reference solution then the solution (a fifth of those show only the final answer
as the reference, so the `privileged="answer"` option is meaningful too; a task with more
kinds, `sql`, spreads that fifth over all of them). A task whose questions are few enough to
memorise (`sql`: 127) would teach the self-teacher to recall rather than read, so there its
self-teacher examples are asked under rules drawn at random (`Task.counterfactual`,
`counterfactual_fraction`), which only the reference tells. Copying is learned
later than one might think (an induction-head transition), so SFT stops at the first
evaluation where the student's sampled accuracy has reached `target_accuracy` AND the
teacher's (with the reference) has reached `teacher_target`, or at `max_steps`.

A plain PyTorch loop (not TRL's SFTTrainer): the model is tiny, the loop is 30 lines, and it
runs in a few CPU minutes. The loss is on the solution tokens and the final EOS only.

A task with images (`counting_visual`) warm-starts the tiny vision-language model instead
(`run_vlm_sft`, which `run_sft` calls for it): the same recipe, with the examples going
through the `LlavaProcessor` (the image in both formats; the self-teacher's prompt is the one
`rlsd.teacher.teacher_prompt` builds, the image part first and then the filled template).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from rlsd.evaluation import evaluate
from rlsd.models import tiny_vlm
from rlsd.models.tiny import build_model, build_tokenizer
from rlsd.tasks import Task, get_task, make_rows, problem_privileged
from rlsd.teacher import fill_template, teacher_prompt
from rlsd.verifiers import reward_funcs_for


@dataclass
class SFTArgs:
    """`rlsd sft`'s fields: what to warm-start on and when to stop (see the module docstring)."""

    output_dir: str = field(
        default="tiny-sft", metadata={"help": "Folder where the warm-started model is saved."}
    )
    task: str = field(default="mixed", metadata={"help": "Built-in task to warm-start on."})
    num_train: int = field(default=50_000, metadata={"help": "Training problems generated."})
    num_eval: int = field(
        default=500, metadata={"help": "Held-out problems of the stopping evaluation."}
    )
    batch_size: int = field(default=64, metadata={"help": "Examples per optimiser step."})
    learning_rate: float = field(default=2e-3, metadata={"help": "AdamW learning rate."})
    max_steps: int = field(
        default=5000, metadata={"help": "Stop here if the targets are not reached before."}
    )
    eval_every: int = field(
        default=250, metadata={"help": "Evaluate the stopping rule every N steps."}
    )
    target_accuracy: float = field(
        default=0.3,
        metadata={
            "help": "Stop once the student's sampled held-out accuracy reaches this (and the "
            "teacher's reaches teacher_target): right sometimes, so that GRPO groups disagree."
        },
    )
    teacher_target: float = field(
        default=0.85,
        metadata={
            "help": "The self-teacher's sampled accuracy (shown the reference) that stopping "
            "also requires: the teacher must read its reference."
        },
    )
    teacher_fraction: float = field(
        default=0.7,
        metadata={
            "help": "Share of the examples in the self-teacher's format (prompt plus reference, "
            "then the solution)."
        },
    )
    seed: int = field(default=0, metadata={"help": "Problems, initialisation and order seed."})
    max_positions: int = field(
        default=256,
        metadata={
            "help": "Positions of the model built (the sql task's self-teacher needs about "
            "400: use 512)."
        },
    )
    num_problems: int = field(
        default=0,
        metadata={
            "help": "Distinct training problems SFT sees (0: all num_train). The sql task's "
            "pool is small (127): SFT on part of it leaves problems the model has not memorised "
            "for the RL stage."
        },
    )
    counterfactual_fraction: float = field(
        default=1.0,
        metadata={
            "help": "Of the self-teacher-format examples, the share asked under other rules than "
            "the task's (Task.counterfactual, where the task has them: sql), whose solution only "
            "the reference tells: the self-teacher learns to read it instead of recalling."
        },
    )


def _optimizer_step(model, optimizer, loss) -> None:
    """Backward, clip the gradient norm at 1.0, step, clear the gradients."""
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _sampled_accuracies(model, processing_class, splits, reward_fn, task, seed) -> list[float]:
    """Sampled accuracy (one seeded sample per problem) on each split of rows."""
    return [
        evaluate(
            model,
            processing_class,
            rows,
            reward_fn,
            max_new_tokens=task.max_completion_length,
            greedy=False,
            seed=seed,
        )["accuracy"]
        for rows in splits
    ]


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
    problems = task.problems("train", args.num_problems or args.num_train, args.seed)
    counterfactuals = (
        args.counterfactual_fraction > 0 and task.counterfactual(random.Random(0)) is not None
    )
    # a task with fewer distinct problems than `num_train` (sql) repeats them, each time in a
    # format drawn anew
    for i in range(args.num_train):
        p = problems[i % len(problems)]
        prompt = p.question
        if rng.random() < args.teacher_fraction:
            # the worked solution four times in five, else another kind the task offers (drawn
            # only when there are several: the other tasks' data, and the shipped tiny model
            # rebuilt from it, stay as they were)
            others = [k for k in task.privileged_kinds if k != "solution"]
            kind = "solution" if rng.random() < 0.8 else others[0]
            if kind != "solution" and len(others) > 1:
                kind = rng.choice(others)
            if counterfactuals and kind != "answer" and rng.random() < args.counterfactual_fraction:
                p = task.counterfactual(rng)  # a result alone cannot tell other rules' query
            prompt = fill_template(task.teacher_template, p.question, problem_privileged(p, kind))
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
    """Train from scratch until `target_accuracy`; save an HF model folder; return a summary.
    A task with images trains the tiny vision-language model (`run_vlm_sft`)."""
    if get_task(args.task).has_images:
        return run_vlm_sft(args, log)
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
        _optimizer_step(model, optimizer, loss)
        if step % args.eval_every == 0 or step == args.max_steps:
            accuracy, teacher_accuracy = _sampled_accuracies(
                model, tokenizer, (eval_rows, teacher_rows), reward_fn, task, args.seed
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


# --------------------------------------------------------------- vision-language (images)
def _vlm_teacher_row(task: Task, row: dict, privileged: str) -> dict:
    """`row` prompted as the self-teacher sees it (image part, then the filled template)."""
    return {**row, "prompt": teacher_prompt(row, task.teacher_template, privileged=privileged)}


def vlm_batch(processor, rows: list[dict], targets: list[str]) -> dict[str, torch.Tensor]:
    """The processor's inputs for `rows` (prompt + image) followed by `targets` and the EOS,
    left-padded, with `labels` on the target tokens and the EOS only."""
    tokenizer = processor.tokenizer
    prompts = processor.apply_chat_template(
        [row["prompt"] for row in rows], add_generation_prompt=True, tokenize=False
    )
    ends = [t + tokenizer.eos_token for t in targets]
    batch = processor(
        images=[[row["image"]] for row in rows],
        text=[p + e for p, e in zip(prompts, ends, strict=True)],
        return_tensors="pt",
        padding=True,
    )
    labels = torch.full_like(batch["input_ids"], -100)
    for i, end in enumerate(ends):  # left padding: each target is the last tokens of its row
        n = len(tokenizer(end, add_special_tokens=False)["input_ids"])
        labels[i, -n:] = batch["input_ids"][i, -n:]
    batch["labels"] = labels
    return dict(batch)


def run_vlm_sft(args: SFTArgs, log=print) -> dict:
    """`run_sft` for a task with images: warm-start `rlsd.models.tiny_vlm` from scratch.

    Each example is a training problem in the student's format or (`teacher_fraction`) the
    self-teacher's, whose reference is the worked solution or, one time in five, the final
    answer only; the target is the worked solution. Stops at the first evaluation where the
    student's sampled accuracy has reached `target_accuracy` and the teacher's (with the
    worked solution) `teacher_target`, or at `max_steps`."""
    torch.manual_seed(args.seed)
    task = get_task(args.task)
    processor = tiny_vlm.build_processor()
    model = tiny_vlm.build_model(processor, seed=args.seed)  # 512 positions (max_positions: text)
    train_rows = make_rows(task.problems("train", args.num_train, args.seed))
    eval_rows = make_rows(task.problems("eval", args.num_eval, args.seed))
    teacher_rows = [  # the same problems, prompted as the self-teacher sees them
        _vlm_teacher_row(task, row, row["privileged_context"])
        for row in eval_rows[: max(1, args.num_eval // 2)]
    ]
    reward_fn = reward_funcs_for(eval_rows, ["exact"])[0]
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.0)
    rng = random.Random(args.seed + 1)
    history: list[dict] = []
    started, accuracy, teacher_accuracy, step = time.time(), 0.0, 0.0, 0
    model.train()
    for step in range(1, args.max_steps + 1):
        rows, targets = [], []
        for i in rng.sample(range(len(train_rows)), args.batch_size):
            row = train_rows[i]
            solution = row["privileged_context"]
            if rng.random() < args.teacher_fraction:
                reference = solution if rng.random() < 0.8 else f"A:{row['answer']}"
                row = _vlm_teacher_row(task, row, reference)
            rows.append(row)
            targets.append(solution)
        loss = model(**vlm_batch(processor, rows, targets)).loss
        _optimizer_step(model, optimizer, loss)
        if step % args.eval_every == 0 or step == args.max_steps:
            accuracy, teacher_accuracy = _sampled_accuracies(
                model, processor, (eval_rows, teacher_rows), reward_fn, task, args.seed
            )
            history.append(
                {
                    "step": step,
                    "loss": loss.item(),
                    "accuracy": accuracy,
                    "teacher_accuracy": teacher_accuracy,
                    "seconds": round(time.time() - started, 1),
                }
            )
            log(
                f"sft step {step}: loss {loss.item():.3f} sampled accuracy {accuracy:.3f} "
                f"(teacher with the reference {teacher_accuracy:.3f}) "
                f"{time.time() - started:.0f}s"
            )
            if accuracy >= args.target_accuracy and teacher_accuracy >= args.teacher_target:
                break
    model.eval()
    seconds = round(time.time() - started, 1)
    greedy = evaluate(  # its sampled half repeats the last evaluation's (same seed)
        model,
        processor,
        eval_rows,
        reward_fn,
        max_new_tokens=task.max_completion_length,
        seed=args.seed,
    )["greedy_accuracy"]
    tiny_vlm.save(model, processor, args.output_dir)
    summary = {
        "args": asdict(args),
        "steps": step,
        "sampled_accuracy": accuracy,
        "greedy_accuracy": greedy,
        "teacher_accuracy": teacher_accuracy,
        "seconds": seconds,
        "history": history,
    }
    (Path(args.output_dir) / "sft_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
