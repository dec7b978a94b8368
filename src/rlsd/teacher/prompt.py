"""The teacher's prompt (spec section 4): the template filled with the row's question and
privileged context, rendered as TRL renders the student's prompt.

The spec's template (or the task's, or a whole `teacher_prompt` column) becomes the last user
message; earlier messages (a system prompt) and image parts stay. Rendering is the student's
(`rlsd.prompts.render_prompts`): the same chat template, tools and multimodal normalisation,
and the same images, given as `image` / `images` columns or inline in the messages. Over
`teacher_max_prompt_length` the privileged text alone is cut, from its end, with a marker; the
template, system prompt, question, images and response are never cut, and a row that cannot
fit raises an error naming it by its question, never by its privileged text.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from rlsd.prompts import (
    Prompt,
    content_text,
    example_images,
    is_conversational,
    left_pad,
    privileged_text,
    render_prompts,
)

# The spec's default template (section 4), editable through `RLSDConfig.teacher_template`.
DEFAULT_TEACHER_TEMPLATE = (
    "{question}\n\nHere is a reference solution:\n{privileged}\n\n"
    "After understanding the reference solution, please try to solve this problem using your "
    "own approach below."
)

DEFAULT_TRUNCATION_MARKER = " [...]"


def fill_template(template: str, question: str, privileged: str, instruction: str = "") -> str:
    """The teacher's user text: the template with `{question}` and `{privileged}` filled, then
    the task's own answer-format instruction (if any). Uses `str.replace`, not `format`, so
    braces in questions and references (LaTeX, JSON, code) need no escaping."""
    text = template.replace("{question}", question).replace("{privileged}", privileged)
    return text + (f"\n{instruction}" if instruction else "")


def teacher_prompt(
    example: Mapping[str, Any],
    template: str = DEFAULT_TEACHER_TEMPLATE,
    instruction: str = "",
    privileged: str | None = None,
) -> Prompt:
    """The teacher's prompt for one dataset example, in the same form as the student's.

    An explicit `teacher_prompt` column wins. Otherwise, for chat prompts the last user
    message's content becomes the filled template (earlier messages, e.g. a system prompt,
    are kept); for text prompts the whole text is the question. `privileged` replaces the
    example's privileged text (the truncated version, for instance)."""
    explicit = example.get("teacher_prompt")
    if explicit:
        return explicit
    prompt = example["prompt"]
    if privileged is None:
        privileged = privileged_text(example)
    if is_conversational(prompt):
        last_user = max(i for i, m in enumerate(prompt) if m.get("role") == "user")
        message = dict(prompt[last_user])
        content = message["content"]
        filled = fill_template(template, content_text(content), privileged, instruction)
        if isinstance(content, list):  # image parts stay where they were; the text is filled
            first_text = next(
                (i for i, part in enumerate(content) if part.get("type") == "text"), len(content)
            )
            parts = [part for part in content if part.get("type") != "text"]
            parts.insert(min(first_text, len(parts)), {"type": "text", "text": filled})
            message["content"] = parts
        else:
            message["content"] = filled
        return [*prompt[:last_user], message, *prompt[last_user + 1 :]]
    return fill_template(template, str(prompt), privileged, instruction)


def _question_of(example: Mapping[str, Any]) -> str:
    """A short, non-privileged name for a row in error messages: its question."""
    prompt: Any = example.get("prompt", "")
    if is_conversational(prompt):
        prompt = next((m.get("content") for m in reversed(prompt) if m.get("role") == "user"), "")
    text = " ".join(content_text(prompt).split())
    return text if len(text) <= 80 else text[:77] + "..."


def _fit_privileged(
    tokenizer,
    example: Mapping[str, Any],
    ids: list[int],
    budget: int,
    render: Callable[[str], list[int]],
    marker: str,
    row: int,
) -> list[int]:
    """Cut the privileged text's last tokens (adding `marker`) until the prompt fits `budget`.

    Tokenisation is not additive at the seam, so the cut is refined: each round removes as
    many privileged tokens as the prompt is still over, until it fits."""
    if example.get("teacher_prompt"):
        raise ValueError(
            f"Teacher prompt of row {row} (question: {_question_of(example)!r}) has {len(ids)} "
            f"tokens, over teacher_max_prompt_length={budget}, and it is an explicit "
            "`teacher_prompt`, whose privileged part rlsd cannot tell apart: shorten it or raise "
            "teacher_max_prompt_length."
        )
    privileged_ids = tokenizer(privileged_text(example), add_special_tokens=False)["input_ids"]
    keep = len(privileged_ids) - (len(ids) - budget)
    while keep > 0:
        cut = tokenizer.decode(privileged_ids[:keep], skip_special_tokens=False) + marker
        ids = render(cut)
        if len(ids) <= budget:
            return ids
        keep -= len(ids) - budget
    bare = len(render(marker.strip()))
    raise ValueError(
        f"Teacher prompt of row {row} (question: {_question_of(example)!r}) cannot fit "
        f"teacher_max_prompt_length={budget}: the template, question and system prompt alone "
        f"take {bare} tokens. Raise teacher_max_prompt_length (never cut: question, template)."
    )


def teacher_prompt_batch(
    processing_class,
    examples: Sequence[Mapping[str, Any]],
    template: str = DEFAULT_TEACHER_TEMPLATE,
    instruction: str = "",
    max_prompt_length: int | None = None,
    marker: str = DEFAULT_TRUNCATION_MARKER,
    **chat_template_kwargs,
) -> tuple[list[list[int]], int, dict[str, Any]]:
    """Token ids of each example's teacher prompt, how many had their privileged text cut, and,
    for a batch with images (TRL's `image` / `images` columns, or image parts inline in the
    messages), the processor's image fields (`pixel_values`, `image_grid_thw`, ..., and
    `num_images` per row; per-token fields such as `token_type_ids` as unpadded lists). The
    teacher sees the same images as the student. `chat_template_kwargs` go to the chat
    template as TRL passes them (`tools`, `chat_template` and the trainer's own kwargs).

    A prompt over `max_prompt_length` tokens keeps the template, system prompt, question and
    images whole and loses the end of its privileged text (spec section 4)."""
    row_images = [example_images(ex) for ex in examples]
    images = row_images if any(row_images) else None
    prompts = [teacher_prompt(ex, template, instruction) for ex in examples]
    ids, fields = render_prompts(processing_class, prompts, images, **chat_template_kwargs)
    has_images = bool(fields.get("num_images"))
    truncated = 0
    if max_prompt_length is None:
        return ids, truncated, fields
    for i, ex in enumerate(examples):
        if len(ids[i]) <= max_prompt_length:
            continue

        def render(privileged: str, i=i, ex=ex) -> list[int]:
            prompts[i] = teacher_prompt(ex, template, instruction, privileged=privileged)
            row = None if images is None else [images[i]]
            return render_prompts(processing_class, [prompts[i]], row, **chat_template_kwargs)[0][0]

        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        ids[i] = _fit_privileged(tokenizer, ex, ids[i], max_prompt_length, render, marker, i)
        truncated += 1
    if truncated and has_images:  # the image fields of the batch as finally rendered
        ids, fields = render_prompts(processing_class, prompts, images, **chat_template_kwargs)
    return ids, truncated, fields


def teacher_prompt_ids(
    tokenizer,
    examples: Sequence[Mapping[str, Any]],
    template: str = DEFAULT_TEACHER_TEMPLATE,
    instruction: str = "",
    max_prompt_length: int | None = None,
    marker: str = DEFAULT_TRUNCATION_MARKER,
    **chat_template_kwargs,
) -> tuple[list[list[int]], int]:
    """`teacher_prompt_batch` without the image fields: the ids and the truncated count."""
    ids, truncated, _ = teacher_prompt_batch(
        tokenizer,
        examples,
        template,
        instruction,
        max_prompt_length,
        marker,
        **chat_template_kwargs,
    )
    return ids, truncated


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
    TRL's `logits_to_keep = T` scores the same tokens under both contexts."""
    import torch

    ids, _ = teacher_prompt_ids(
        tokenizer, examples, template, instruction, max_prompt_length, **chat_template_kwargs
    )
    prompt_ids, prompt_mask = left_pad(ids, tokenizer.pad_token_id)
    device = completion_ids.device
    input_ids = torch.cat([prompt_ids.to(device), completion_ids], dim=1)
    attention_mask = torch.cat(
        [prompt_mask.to(device), completion_mask.to(prompt_mask.dtype).to(device)], 1
    )
    return input_ids, attention_mask
