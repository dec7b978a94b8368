"""Held-out evaluation (sampled accuracy, greedy accuracy, pass@k, the leakage rate), and the
sampling and scoring helpers it shares with the credit page (`rlsd.reports.credit`).

Generation uses the plain transformers `generate` on the policy (no privileged context: this
is what the student sees at test time), batched with left padding, with pure temperature
sampling (`top_p = 1`, `top_k = 0`, as TRL's defaults). A completion ends at its first EOS,
which its mask includes and its text drops, as TRL masks and decodes completions. Rewards are
asked for as TRL asks: one call with the prompts, the completions (conversational for
conversational prompts) and each row's other columns repeated per completion. A sample counts
as correct when its reward reaches `success_threshold` (1.0 for the binary verifiers); an
unscorable one (`None`) counts as 0. pass@k uses the unbiased estimator of Chen et al. (2021):
`1 - C(n - c, k) / C(n, k)` per problem.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch

from rlsd.objectives import leak_flags
from rlsd.prompts import (
    TOKEN_TYPE_INPUTS,
    completion_text,
    example_images,
    is_conversational,
    left_pad,
    privileged_or_none,
    render_prompts,
    tokenize_prompts,
)

RewardFn = Callable[..., list[float | None]]


class Completions(NamedTuple):
    """`num_samples` sampled completions of each of `B` prompts, prompt-major (`N = B * n`)."""

    ids_NT: torch.Tensor  # long: the generated ids, padded after the first EOS
    mask_NT: torch.Tensor  # long: 1 up to and including the first EOS
    texts: list[str]  # [N]: decoded up to the first EOS, special tokens skipped


@contextmanager
def sampling_mode(model, seed: int | None = None) -> Iterator[None]:
    """`model` in eval mode and, with a `seed`, a seeded fork of the RNG (CPU and the model's
    accelerator), so sampling is reproducible and leaves the caller's random state untouched
    (evaluating mid-training does not change training). Restores the train/eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            yield
    finally:
        model.train(was_training)


def _completion_mask(completion_ids_NT: torch.Tensor, eos_token_id: int | None) -> torch.Tensor:
    """`[N, T]` long: 1 up to and including the first EOS (as TRL masks completions)."""
    if eos_token_id is None:
        return torch.ones_like(completion_ids_NT)
    is_eos = completion_ids_NT == eos_token_id
    after_eos = (is_eos.long().cumsum(dim=1) - is_eos.long()) > 0  # strictly after the first
    return (~after_eos).long()


@torch.no_grad()
def sample_completions(
    model,
    tokenizer,
    input_ids_BP: torch.Tensor,
    attention_mask_BP: torch.Tensor,
    num_samples: int,
    temperature: float,
    max_new_tokens: int,
    **image_inputs: Any,
) -> Completions:
    """`num_samples` completions of each left-padded prompt (`temperature == 0`: greedy).
    `image_inputs`: the processor's image tensors for these prompts (`pixel_values`, ...)."""
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor's own tokenizer
    sampling = temperature > 0
    # greedy takes no sampling flags (transformers warns about each one given)
    flags = {"temperature": temperature, "top_p": 1.0, "top_k": 0} if sampling else {}
    generated = model.generate(
        input_ids=input_ids_BP,
        attention_mask=attention_mask_BP,
        max_new_tokens=max_new_tokens,
        do_sample=sampling,
        **flags,
        num_return_sequences=num_samples,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **image_inputs,
    )
    ids_NT = generated[:, input_ids_BP.shape[1] :]
    mask_NT = _completion_mask(ids_NT, tokenizer.eos_token_id)
    lengths = mask_NT.sum(dim=1).tolist()
    texts = tokenizer.batch_decode(
        [ids[:n].tolist() for ids, n in zip(ids_NT, lengths, strict=True)],
        skip_special_tokens=True,
    )
    return Completions(ids_NT, mask_NT, list(texts))


def prompt_batch(
    tokenizer, prompts: Sequence[Any], images: Sequence[list | None] | None = None
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Left-padded `[B, P]` ids and mask of `prompts`, and, for prompts with images (a
    processor as `tokenizer`), the image tensors its forward and `generate` take."""
    if images is not None and any(images):
        ids, fields = render_prompts(tokenizer, list(prompts), list(images))
        fields.pop("num_images", None)
        for key in TOKEN_TYPE_INPUTS:  # per token: pad like the ids
            if key in fields:
                fields[key] = left_pad(fields[key], 0)[0]
    else:
        ids, fields = tokenize_prompts(tokenizer, list(prompts)), {}
    pad_id = getattr(tokenizer, "tokenizer", tokenizer).pad_token_id
    input_ids, attention_mask = left_pad(ids, pad_id)
    return input_ids, attention_mask, fields


def score_completions(
    reward_fn: RewardFn, rows: Sequence[dict[str, Any]], texts_per_row: Sequence[Sequence[str]]
) -> list[list[float | None]]:
    """Rewards of each row's completions (`None`: unscorable), from one call of `reward_fn`
    made as TRL makes it: conversational prompts get conversational completions, and every
    column of the first row but `prompt` is passed, one value per completion."""
    keys = [k for k in rows[0] if k != "prompt"] if rows else []
    prompts: list[Any] = []
    completions: list[Any] = []
    columns: dict[str, list[Any]] = {k: [] for k in keys}
    for row, texts in zip(rows, texts_per_row, strict=True):
        conversational = is_conversational(row["prompt"])
        for text in texts:
            prompts.append(row["prompt"])
            completions.append([{"role": "assistant", "content": text}] if conversational else text)
            for k in keys:
                columns[k].append(row.get(k))
    rewards = list(reward_fn(prompts=prompts, completions=completions, **columns))
    if len(rewards) != len(completions):
        raise ValueError(
            f"the reward function returned {len(rewards)} rewards for {len(completions)} "
            "completions: it must return one reward (or None) per completion"
        )
    out, start = [], 0
    for texts in texts_per_row:
        out.append(rewards[start : start + len(texts)])
        start += len(texts)
    return out


def generate(
    model,
    tokenizer,
    prompts: Sequence[Any],
    num_samples: int = 1,
    temperature: float = 1.0,
    max_new_tokens: int = 40,
    batch_size: int = 256,
    seed: int | None = None,
    images: Sequence[list | None] | None = None,
) -> list[list[str]]:
    """`num_samples` completion texts for each prompt (`temperature == 0` means greedy);
    `images`: each prompt's images (TRL's conventions), for a vision-language model whose
    processor is given as `tokenizer`.

    With a `seed`, sampling is reproducible and leaves the caller's random state (CPU and
    the model's accelerator) untouched, so evaluating mid-training does not change training."""
    device = next(model.parameters()).device
    per_batch = max(1, batch_size // num_samples)
    out: list[list[str]] = []
    with sampling_mode(model, seed):
        for start in range(0, len(prompts), per_batch):
            chunk_images = None if images is None else images[start : start + per_batch]
            input_ids, attention_mask, image_inputs = prompt_batch(
                tokenizer, prompts[start : start + per_batch], chunk_images
            )
            texts = sample_completions(
                model,
                tokenizer,
                input_ids.to(device),
                attention_mask.to(device),
                num_samples,
                temperature,
                max_new_tokens,
                **{k: v.to(device) for k, v in image_inputs.items()},
            ).texts
            out.extend(texts[i : i + num_samples] for i in range(0, len(texts), num_samples))
    return out


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with `c` correct out of `n` samples."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def context_beyond_answer(row: dict[str, Any]) -> str | None:
    """The row's privileged context without its own reference answer, when the answer is a
    program the student is meant to write (the `sql` task's gold query: 8 characters or more,
    found in the context); else the context itself.

    `leak_rate` flags a response sharing 40 characters with the privileged context, so where
    the context holds the gold query a correct response counts as a leak. `context_leak_rate`
    applies the same test (copied spans, phrases naming the reference) to what is left:
    retrieved documents, schema notes, rules, i.e. the material the student never sees."""
    privileged = privileged_or_none(row)
    answer = row.get("answer")
    if isinstance(privileged, str) and isinstance(answer, str) and len(answer) >= 8:
        if answer in privileged:
            return privileged.replace(answer, "\n")  # no span may join the two sides
    return privileged


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
    `context_leak_rate` (when the context holds the reference program: see
    `context_beyond_answer`), `reward_mean`, `num_problems`."""
    prompts = [row["prompt"] for row in rows]
    images = [example_images(row) for row in rows]
    images_or_none = images if any(images) else None

    def score(completions_per_prompt: list[list[str]]) -> list[list[float]]:
        rewards = score_completions(reward_fn, rows, completions_per_prompt)
        return [[0.0 if r is None else float(r) for r in rs] for rs in rewards]

    metrics: dict[str, Any] = {"num_problems": len(rows)}
    samples = generate(
        model,
        tokenizer,
        prompts,
        num_samples,
        temperature,
        max_new_tokens,
        batch_size,
        seed,
        images_or_none,
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
    responses = [completion_text(s) for ss in samples for s in ss]
    privileged = [privileged_or_none(row) for row in rows]
    contexts = [context_beyond_answer(row) for row in rows]
    for key, sources, wanted in (
        ("leak_rate", privileged, any(p for p in privileged)),
        ("context_leak_rate", contexts, contexts != privileged),
    ):
        if wanted:
            flags = leak_flags(responses, [c for c in sources for _ in range(num_samples)])
            metrics[key] = sum(flags) / max(1, len(flags))
    if greedy:
        greedy_samples = generate(
            model, tokenizer, prompts, 1, 0.0, max_new_tokens, batch_size, images=images_or_none
        )
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
