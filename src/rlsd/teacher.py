"""The self-teacher: privileged prompts, the weight snapshot and its refresh (spec section 4).

The teacher is the policy's own network shown privileged context `r` (a reference solution,
an internal document): `logp_T[t] = log pi_teacher(y_t | x, r, y_<t)`. This module builds the
teacher's prompt ids and owns the teacher's weights:

- `teacher_sync_steps = N > 1`: a frozen copy of the policy, refreshed every N optimiser steps
  (the paper: 10);
- `0`: the copy is never refreshed (the fixed initial policy, as the OPSD paper does);
- `1`: the live policy weights, without a copy (cheapest in memory).

With PEFT the snapshot is of the adapter only: a second adapter `rlsd_teacher` on the same
base model, selected for the teacher's forward.

Privileged text only ever enters the teacher's prompt ids; it is never added to the student
prompt and is not logged unless the user asks (`log_privileged`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from rlsd.prompts import Prompt, is_conversational, tokenize_prompts

# The spec's default template (section 4), editable through `RLSDConfig.teacher_template`.
DEFAULT_TEACHER_TEMPLATE = (
    "{question}\n\nHere is a reference solution:\n{privileged}\n\n"
    "After understanding the reference solution, please try to solve this problem using your "
    "own approach below."
)
TEACHER_ADAPTER = "rlsd_teacher"


def fill_template(template: str, question: str, privileged: str, instruction: str = "") -> str:
    """The teacher's user text: the template with `{question}` and `{privileged}` filled, then
    the task's own answer-format instruction (if any). Uses `str.replace`, not `format`, so
    braces in questions and references (LaTeX, JSON, code) need no escaping."""
    text = template.replace("{question}", question).replace("{privileged}", privileged)
    return text + (f"\n{instruction}" if instruction else "")


def privileged_text(example: Mapping[str, Any]) -> str:
    """The example's privileged context: `privileged_context`, falling back to `answer`."""
    for key in ("privileged_context", "answer"):
        value = example.get(key)
        if value is not None and str(value).strip():
            return str(value)
    raise ValueError(
        "The teacher needs privileged context: this example has neither a non-empty "
        "`privileged_context` nor an `answer` column (or give a whole `teacher_prompt`)."
    )


def teacher_prompt(
    example: Mapping[str, Any], template: str = DEFAULT_TEACHER_TEMPLATE, instruction: str = ""
) -> Prompt:
    """The teacher's prompt for one dataset example, in the same form as the student's.

    An explicit `teacher_prompt` column wins. Otherwise, for chat prompts the last user
    message's content becomes the filled template (earlier messages, e.g. a system prompt,
    are kept); for text prompts the whole text is the question."""
    explicit = example.get("teacher_prompt")
    if explicit:
        return explicit
    prompt = example["prompt"]
    privileged = privileged_text(example)
    if is_conversational(prompt):
        last_user = max(i for i, m in enumerate(prompt) if m.get("role") == "user")
        message = dict(prompt[last_user])
        message["content"] = fill_template(
            template, str(message["content"]), privileged, instruction
        )
        return [*prompt[:last_user], message, *prompt[last_user + 1 :]]
    return fill_template(template, str(prompt), privileged, instruction)


def teacher_input_ids(
    tokenizer,
    examples: Sequence[Mapping[str, Any]],
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    template: str = DEFAULT_TEACHER_TEMPLATE,
    instruction: str = "",
    max_prompt_length: int | None = None,
    **chat_template_kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`[B, P_T + T]` ids and attention mask: teacher prompts (left-padded) followed by the
    student's sampled completion ids unchanged (`[B, T]`, right-padded, never re-tokenised).

    The last `T` positions line up with the completion exactly as in the student's input, so
    TRL's `logits_to_keep = T` scores the same tokens under both contexts. A too-long teacher
    prompt keeps its last `max_prompt_length` tokens (the end holds the question)."""
    prompts = [teacher_prompt(ex, template, instruction) for ex in examples]
    ids = tokenize_prompts(tokenizer, prompts, **chat_template_kwargs)
    if max_prompt_length is not None:
        ids = [x[-max_prompt_length:] for x in ids]
    width = max(len(x) for x in ids)
    device = completion_ids.device
    prompt_ids = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)
    prompt_mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, x in enumerate(ids):
        prompt_ids[i, width - len(x) :] = torch.tensor(x, dtype=torch.long)
        prompt_mask[i, width - len(x) :] = 1
    input_ids = torch.cat([prompt_ids.to(device), completion_ids], dim=1)
    attention_mask = torch.cat(
        [prompt_mask.to(device), completion_mask.to(prompt_mask.dtype).to(device)], 1
    )
    return input_ids, attention_mask
