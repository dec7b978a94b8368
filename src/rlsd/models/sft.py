"""Warm-start the tiny model by supervised fine-tuning on a built-in task (`rlsd sft`).

The RL stage needs a model that is right sometimes (roughly 20-50% sampled accuracy) so that
groups of samples disagree and GRPO has a signal. We stop SFT early, as soon as the sampled
held-out accuracy reaches `target_accuracy`.

Part of the SFT data (`teacher_fraction`, default one half) is in the self-teacher's format,
prompt plus reference solution then the solution: a pretrained LLM knows how to use a
reference it is shown; a model trained from scratch must learn it, or its self-teacher would
carry no information. A fifth of those teacher examples show only the final answer as the
reference, so the `privileged="answer"` option is meaningful too.

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
from rlsd.verifiers import get_verifier


@dataclass
class SFTArgs:
    output_dir: str = "tiny-sft"
    task: str = "mixed"
    num_train: int = 50_000
    num_eval: int = 500
    batch_size: int = 64
    learning_rate: float = 2e-3
    max_steps: int = 6000
    eval_every: int = 250
    target_accuracy: float = 0.3
    teacher_fraction: float = 0.5
    seed: int = 0


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
    for p in task.problems("train", args.num_train, args.seed):
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
    model = build_model(tokenizer, seed=args.seed)
    task = get_task(args.task)
    examples = build_examples(args, tokenizer)
    eval_rows = make_rows(task.problems("eval", args.num_eval, args.seed))
    reward_fn = get_verifier("exact")
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.0)
    rng = random.Random(args.seed + 1)
    history, started, accuracy, step = [], time.time(), 0.0, 0
    model.train()
    for step in range(1, args.max_steps + 1):
        batch = _batch(rng.sample(examples, args.batch_size), tokenizer.pad_token_id)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % args.eval_every == 0 or step == args.max_steps:
            metrics = evaluate(
                model,
                tokenizer,
                eval_rows,
                reward_fn,
                max_new_tokens=task.max_completion_length,
                greedy=False,
                seed=args.seed,
            )
            accuracy = metrics["accuracy"]
            history.append({"step": step, "loss": loss.item(), "accuracy": accuracy})
            log(f"sft step {step}: loss {loss.item():.3f} sampled accuracy {accuracy:.3f}")
            if accuracy >= args.target_accuracy:
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
        "seconds": round(time.time() - started, 1),
        "history": history,
    }
    (out / "sft_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
