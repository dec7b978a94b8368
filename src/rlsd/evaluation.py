"""Held-out evaluation: sampled accuracy, greedy accuracy, pass@k and the leakage rate.

Generation uses the plain transformers `generate` on the policy (no privileged context: this
is what the student sees at test time), batched with left padding. A sample counts as correct
when its reward reaches `success_threshold` (1.0 for the binary verifiers). pass@k uses the
unbiased estimator of Chen et al. (2021): `1 - C(n - c, k) / C(n, k)` per problem.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from rlsd.objectives import leak_flags
from rlsd.prompts import completion_text, is_conversational, tokenize_prompts

RewardFn = Callable[..., list[float | None]]


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: Sequence[Any],
    num_samples: int = 1,
    temperature: float = 1.0,
    max_new_tokens: int = 40,
    batch_size: int = 256,
    seed: int | None = None,
) -> list[list[str]]:
    """`num_samples` completions for each prompt (`temperature == 0` means greedy).

    With a `seed`, sampling is reproducible and leaves the caller's random state (CPU and
    the model's accelerator) untouched, so evaluating mid-training does not change training."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        out = _generate_batches(
            model, tokenizer, prompts, num_samples, temperature, max_new_tokens, batch_size, device
        )
    model.train(was_training)
    return out


def _generate_batches(
    model, tokenizer, prompts, num_samples, temperature, max_new_tokens, batch_size, device
) -> list[list[str]]:
    prompt_ids = tokenize_prompts(tokenizer, list(prompts))
    out: list[list[str]] = []
    pad_id = tokenizer.pad_token_id
    per_batch = max(1, batch_size // num_samples)
    for start in range(0, len(prompt_ids), per_batch):
        chunk = prompt_ids[start : start + per_batch]
        width = max(len(ids) for ids in chunk)
        input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, ids in enumerate(chunk):  # left padding: the prompt ends where generation starts
            input_ids[i, width - len(ids) :] = torch.tensor(ids)
            attention_mask[i, width - len(ids) :] = 1
        sampling = temperature > 0
        generated = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=sampling,
            temperature=temperature if sampling else None,
            top_p=1.0,
            top_k=0,
            num_return_sequences=num_samples,
            pad_token_id=pad_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        texts = tokenizer.batch_decode(generated[:, width:], skip_special_tokens=True)
        out.extend(texts[i : i + num_samples] for i in range(0, len(texts), num_samples))
    return out


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with `c` correct out of `n` samples."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def evaluate(
    model,
    tokenizer,
    rows: Sequence[dict[str, Any]],
    reward_fn: RewardFn,
    num_samples: int = 1,
    temperature: float = 1.0,
    max_new_tokens: int = 40,
    ks: Sequence[int] = (1,),
    greedy: bool = True,
    success_threshold: float = 1.0,
    batch_size: int = 256,
    seed: int = 0,
    return_samples: bool = False,
) -> dict[str, Any]:
    """Accuracy metrics of `model` on `rows` (dataset rows with `prompt` and the verifier's
    columns). Keys: `accuracy` (sampled, mean over all samples), `greedy_accuracy`,
    `pass@k` for each k <= num_samples, `leak_rate` (when rows carry privileged context),
    `reward_mean`, `num_problems`."""
    prompts = [row["prompt"] for row in rows]
    columns = {k: [row.get(k) for row in rows] for k in rows[0] if k != "prompt"} if rows else {}

    def score(completions_per_prompt: list[list[str]]) -> list[list[float]]:
        flat_prompts, flat_completions, flat_columns = [], [], {k: [] for k in columns}
        for i, completions in enumerate(completions_per_prompt):
            for text in completions:
                flat_prompts.append(prompts[i])
                # conversational prompts get conversational completions, as in TRL
                flat_completions.append(
                    [{"role": "assistant", "content": text}]
                    if is_conversational(prompts[i])
                    else text
                )
                for k in columns:
                    flat_columns[k].append(columns[k][i])
        rewards = reward_fn(prompts=flat_prompts, completions=flat_completions, **flat_columns)
        rewards = [0.0 if r is None else float(r) for r in rewards]
        n = len(completions_per_prompt[0]) if completions_per_prompt else 0
        return [rewards[i * n : (i + 1) * n] for i in range(len(completions_per_prompt))]

    metrics: dict[str, Any] = {"num_problems": len(rows)}
    samples = generate(
        model, tokenizer, prompts, num_samples, temperature, max_new_tokens, batch_size, seed
    )
    rewards = score(samples)
    correct = [[r >= success_threshold for r in rs] for rs in rewards]
    total = max(1, len(rows) * num_samples)
    metrics["accuracy"] = sum(map(sum, correct)) / total
    metrics["reward_mean"] = sum(map(sum, rewards)) / total
    for k in ks:
        if k <= num_samples:
            metrics[f"pass@{k}"] = sum(pass_at_k(num_samples, sum(c), k) for c in correct) / max(
                1, len(rows)
            )
    privileged = [row.get("privileged_context") or row.get("answer") for row in rows]
    if any(p for p in privileged):
        flags = leak_flags(
            [completion_text(s) for ss in samples for s in ss],
            [p for p in privileged for _ in range(num_samples)],
        )
        metrics["leak_rate"] = sum(flags) / max(1, len(flags))
    if greedy:
        greedy_samples = generate(model, tokenizer, prompts, 1, 0.0, max_new_tokens, batch_size)
        greedy_rewards = score(greedy_samples)
        metrics["greedy_accuracy"] = sum(r[0] >= success_threshold for r in greedy_rewards) / max(
            1, len(rows)
        )
    if return_samples:
        metrics["samples"] = [
            {"prompt": prompts[i], "completions": samples[i], "rewards": rewards[i]}
            for i in range(len(rows))
        ]
    return metrics
