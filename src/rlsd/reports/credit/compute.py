"""The credit page's numbers: sample a group per problem, verify it, and compute RLSD's
per-token credit exactly as the trainer does for one rollout batch (spec sections 1-2).

Simplifications, and why:
- One problem at a time: its `G` samples share one student prompt and one teacher prompt, so
  no prompt padding is needed and the plain forward's positions are those of generation.
- Log-probs come from the plain model forward (`log_softmax(logits / temperature)` at the
  sampled tokens, float32), not TRL's fused path; the sampling policy is the scored policy,
  so `logp_student` is the spec's rollout-time log-prob.
- A `None` reward (an unscorable completion) becomes NaN, hence `A = 0`, as in the trainer.
- Rows with images (TRL's `image` / `images` columns) need a vision-language model and its
  processor as `tokenizer`. Sampling gets the processor's image tensors (the image token
  suppressed, as TRL generates); the student and the teacher forward each get the image
  fields of their own prompts, rendered once per response (`G` copies), so every model family
  gets the layout its processor makes. The images never enter the records.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from rlsd.evaluation import (
    RewardFn,
    prompt_batch,
    sample_completions,
    sampling_mode,
    score_completions,
)
from rlsd.objectives import group_advantages, rlsd_stats, rlsd_token_advantages
from rlsd.prompts import TOKEN_TYPE_INPUTS, example_images, left_pad, privileged_or_none
from rlsd.teacher.prompt import DEFAULT_TEACHER_TEMPLATE, teacher_prompt_batch

W_LOG_CAP = 30.0  # raw w is stored as exp(min(x, 30)) so the JSON stays finite (as rlsd_stats)


def _forward_images(fields: dict[str, Any], T: int, device: torch.device) -> dict[str, Any]:
    """A processor's image fields of `[B, P]` prompts as forward kwargs of `[B, P + T]` inputs:
    `num_images` dropped, per-token fields left-padded like the ids (when lists) and extended
    with zeros over the `T` response positions (as TRL does)."""
    out: dict[str, Any] = {}
    for key, value in fields.items():
        if key == "num_images":
            continue
        if key in TOKEN_TYPE_INPUTS:
            types = value if isinstance(value, torch.Tensor) else left_pad(value, 0)[0]
            value = torch.cat([types, types.new_zeros((types.size(0), T))], dim=1)
        out[key] = value.to(device) if isinstance(value, torch.Tensor) else value
    return out


def _image_token_ids(model) -> list[int]:
    """The image placeholder token(s) a VLM's config names: sampling must never emit them (the
    forward would then count more image tokens than images)."""
    config = model.config
    ids = {getattr(config, key, None) for key in ("image_token_id", "image_token_index")}
    return sorted(i for i in ids if isinstance(i, int))


def _sampled_logps(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    T: int,
    temperature: float,
    images: dict[str, Any] | None = None,
) -> torch.Tensor:
    """`[B, T]` float32 log-probs of the last `T` ids of `input_ids` `[B, P + T]`; `images`:
    the forward's image kwargs for these rows (`_forward_images`)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, **(images or {})).logits
    logits = logits[:, -T - 1 : -1].float()  # position P - 1 + t predicts completion token t
    if temperature > 0:
        logits = logits / temperature
    logp = torch.log_softmax(logits, dim=-1)
    return logp.gather(-1, input_ids[:, -T:, None]).squeeze(-1)


def _teacher_logps(
    model,
    tokenizer,
    rows: list[dict[str, Any]],
    completion_ids_GT: torch.Tensor,
    mask_GT: torch.Tensor,
    template: str,
    instruction: str,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`[G, T]` teacher log-probs of the sampled ids under each row's teacher prompt, and the
    `[G, P' + T]` ids scored."""
    text_tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    device, T = completion_ids_GT.device, completion_ids_GT.shape[1]
    prompts, _, fields = teacher_prompt_batch(tokenizer, rows, template, instruction)
    prompt_ids, prompt_mask = left_pad(prompts, text_tokenizer.pad_token_id)
    ids = torch.cat([prompt_ids.to(device), completion_ids_GT], 1)
    mask = torch.cat([prompt_mask.to(device), mask_GT], 1)
    images = _forward_images(fields, T, device)
    return _sampled_logps(model, ids, mask, T, temperature, images), ids


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def is_mixed(record: dict[str, Any]) -> bool:
    """Whether a problem's rewards differ within its group, i.e. some response has `A != 0`
    and so gets a gradient and a credit to show."""
    return any(s["advantage"] != 0 for s in record["samples"])


@torch.no_grad()
def compute_credit(
    model,
    tokenizer,
    rows: Sequence[dict[str, Any]],
    reward_fn: RewardFn,
    group_size: int = 8,
    lam: float = 0.5,
    eps_w: float = 0.2,
    temperature: float = 1.0,
    teacher_template: str = DEFAULT_TEACHER_TEMPLATE,
    max_new_tokens: int = 40,
    seed: int = 0,
    teacher_instruction: str = "",
    negative_only: bool = False,
    success_threshold: float = 1.0,
    control_privileged: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Sample `group_size` responses per row and compute RLSD's per-token credit.

    Returns one record per row, in the rows' order: `index`, `prompt` (the student's prompt
    text), `privileged`, `teacher_prompt` (the teacher's prompt text, decoded from its ids),
    `answer`, and `samples`, each with `text`, `reward` (None when unscorable), `advantage`
    (`A`), `correct` (`reward >= success_threshold`), and per token (`L` real tokens, EOS
    included): `tokens`, `token_ids`, `logp_student`, `logp_teacher`, `delta`, `log_ratio`
    (`sign(A) * delta`), `w` (raw, capped at e^30), `w_clip`, `a_hat` and `credit`
    (`A_hat / A`, None when `A = 0`). Sampling is that of `rlsd.evaluation`, seeded with
    `seed`; `model` is left in its previous train/eval mode and the caller's RNG untouched.

    Rows with images (an `image` or `images` column, chat prompts with image parts) need a
    vision-language `model` and its processor as `tokenizer`; their records also say
    `num_images` (0 for text rows). The images themselves are not in the records.

    `control_privileged` (one text per row, e.g. another row's reference: `rlsd probe`) also
    scores every response with the teacher shown that text instead of the row's own, the same
    ids appended: each sample then has `logp_teacher_control` too.
    """
    if control_privileged is not None and len(control_privileged) != len(rows):
        raise ValueError(
            f"control_privileged has {len(control_privileged)} texts for {len(rows)} rows"
        )
    with_images = [i for i, row in enumerate(rows) if example_images(row)]
    if with_images and not hasattr(tokenizer, "image_processor"):
        raise ValueError(
            f"row {with_images[0]} has images, but {type(tokenizer).__name__} is a text "
            "tokenizer: give a vision-language model with its processor (AutoProcessor)."
        )
    text_tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor's own tokenizer
    device = next(model.parameters()).device
    records: list[dict[str, Any]] = []
    with sampling_mode(model, seed):
        for index, row in enumerate(rows):
            images = example_images(row)
            prompt_ids, prompt_mask, image_fields = prompt_batch(
                tokenizer, [row["prompt"]], None if images is None else [images]
            )
            extra: dict[str, Any] = {}
            if images:
                extra["suppress_tokens"] = _image_token_ids(model)
            sampled = sample_completions(
                model,
                tokenizer,
                prompt_ids.to(device),
                prompt_mask.to(device),
                group_size,
                temperature,
                max_new_tokens,
                **{k: v.to(device) for k, v in image_fields.items()},
                **extra,
            )
            completion_ids_GT, mask_GT = sampled.ids_NT, sampled.mask_NT
            P, T = prompt_ids.shape[1], completion_ids_GT.shape[1]
            scored = score_completions(reward_fn, [row], [sampled.texts])[0]
            rewards_G = [float("nan") if r is None else float(r) for r in scored]
            adv_G = group_advantages(rewards_G, group_size).to(device)

            # The student's forward: the prompt rendered G times, so the image fields are
            # those of a G-row batch whatever the model family's layout.
            group_images = None if images is None else [images] * group_size
            student_prompt, _, student_fields = prompt_batch(
                tokenizer, [row["prompt"]] * group_size, group_images
            )
            student_ids = torch.cat([student_prompt.to(device), completion_ids_GT], 1)
            student_mask = torch.cat([torch.ones_like(student_ids[:, :P]), mask_GT], 1)
            logp_s_GT = _sampled_logps(
                model,
                student_ids,
                student_mask,
                T,
                temperature,
                _forward_images(student_fields, T, device),
            )
            # The teacher's: the same images, its own prompt (the privileged text added), the
            # sampled ids appended unchanged.
            scored_ids = (completion_ids_GT, mask_GT, teacher_template, teacher_instruction)
            logp_t_GT, teacher_ids = _teacher_logps(
                model, tokenizer, [row] * group_size, *scored_ids, temperature
            )
            logp_control_GT = None
            if control_privileged is not None:  # the same ids, another privileged text
                control_row = {**row, "privileged_context": control_privileged[index]}
                logp_control_GT = _teacher_logps(
                    model, tokenizer, [control_row] * group_size, *scored_ids, temperature
                )[0]
            a_hat_GT = rlsd_token_advantages(
                adv_G, logp_s_GT, logp_t_GT, mask_GT, lam, eps_w, negative_only
            )

            samples = []
            for g in range(group_size):
                n = int(mask_GT[g].sum())
                ids = completion_ids_GT[g, :n].tolist()
                samples.append(
                    {
                        "text": sampled.texts[g],
                        "reward": _finite(rewards_G[g]),
                        "advantage": float(adv_G[g]),
                        "correct": bool(rewards_G[g] >= success_threshold),
                        "tokens": [text_tokenizer.decode([i]) for i in ids],
                        "token_ids": ids,
                        **_token_credit(
                            float(adv_G[g]),
                            logp_s_GT[g, :n].tolist(),
                            logp_t_GT[g, :n].tolist(),
                            a_hat_GT[g, :n].tolist(),
                            eps_w,
                            negative_only,
                        ),
                    }
                )
                if logp_control_GT is not None:
                    samples[-1]["logp_teacher_control"] = logp_control_GT[g, :n].tolist()
            teacher_prompt_len = teacher_ids.shape[1] - T
            records.append(
                {
                    "index": len(records),
                    "prompt": text_tokenizer.decode(prompt_ids[0], skip_special_tokens=True),
                    "privileged": privileged_or_none(row),
                    "teacher_prompt": text_tokenizer.decode(
                        teacher_ids[0, :teacher_prompt_len], skip_special_tokens=True
                    ),
                    "num_images": len(images or []),
                    "answer": None if row.get("answer") is None else str(row.get("answer")),
                    "samples": samples,
                }
            )
    return records


def _token_credit(
    adv: float,
    logp_student: list[float],
    logp_teacher: list[float],
    a_hat: list[float],
    eps_w: float,
    negative_only: bool,
) -> dict[str, list]:
    """One response's per-token numbers, from its `A`, its two log-prob lists and `A_hat`."""
    lo, hi = math.log1p(-eps_w), math.log1p(eps_w)
    reweighted = adv != 0 and not (negative_only and adv > 0)
    sign = math.copysign(1.0, adv) if reweighted else 0.0
    delta = [t - s for s, t in zip(logp_student, logp_teacher, strict=True)]
    log_ratio = [sign * d for d in delta]
    return {
        "logp_student": logp_student,
        "logp_teacher": logp_teacher,
        "delta": delta,
        "log_ratio": log_ratio,
        "w": [math.exp(min(x, W_LOG_CAP)) for x in log_ratio],
        "w_clip": [math.exp(min(max(x, lo), hi)) for x in log_ratio],
        "a_hat": a_hat,
        "credit": [a / adv if adv != 0 else None for a in a_hat],
    }


def summarize(
    records: Sequence[dict[str, Any]], lam: float, eps_w: float, negative_only: bool = False
) -> dict[str, float]:
    """`rlsd_stats` (spec section 6) over every sample of `records` (keys without the
    `rlsd/` prefix), plus counts.

    `clip_ratio` is the share of reweighted tokens (responses with `A != 0`) whose raw `w`
    lies outside `[1 - eps_w, 1 + eps_w]`, `clip_ratio_all` the same share of all response
    tokens (the paper's denominator); `adv_hat_over_adv` the mean `|A_hat| / |A|` over tokens
    of responses with `A != 0`; `mixed_groups` the number of problems with mixed rewards."""
    samples = [s for r in records for s in r["samples"]]
    if not samples:
        return {"num_problems": len(records), "num_samples": 0}
    T = max(1, max(len(s["token_ids"]) for s in samples))
    shape = (len(samples), T)
    logp_s, logp_t = torch.zeros(shape), torch.zeros(shape)
    mask = torch.zeros(shape)
    for i, s in enumerate(samples):
        n = len(s["token_ids"])
        logp_s[i, :n] = torch.tensor(s["logp_student"])
        logp_t[i, :n] = torch.tensor(s["logp_teacher"])
        mask[i, :n] = 1
    adv = torch.tensor([s["advantage"] for s in samples])
    stats = rlsd_stats(adv, logp_s, logp_t, mask, lam, eps_w, negative_only)
    out = {k.removeprefix("rlsd/"): v for k, v in stats.items()}
    out["clip_ratio"] = out["clip_low_ratio_reweighted"] + out["clip_high_ratio_reweighted"]
    out["clip_ratio_all"] = out["clip_low_ratio_all"] + out["clip_high_ratio_all"]
    out.update(
        num_problems=len(records),
        num_samples=len(samples),
        num_tokens=int(mask.sum()),
        accuracy=sum(s["correct"] for s in samples) / len(samples),
        mixed_groups=sum(is_mixed(r) for r in records),
    )
    return out
