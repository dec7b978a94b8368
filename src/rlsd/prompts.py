"""What a row's prompt is, shared by the trainer, the self-teacher, evaluation and reports.

- **rendering** (`tokenize_prompts`, `render_prompts`): prompts are tokenized exactly as TRL's
  `GRPOTrainer._tokenize_prompts` does (the chat template with the generation prompt, TRL's
  `tools=` and `chat_template=` where the trainer has them, `prepare_multimodal_messages` for
  a vision-language processor; plain tokenization for text), so the ids the teacher and the
  evaluator see match what the trainer generated from;
- **images** (`example_images`, `inline_images`): a row's images in TRL's conventions, as an
  `image` / `images` column or as `{"type": "image", "image": ...}` parts of the messages;
- **the privileged context** (`privileged_text`): `privileged_context`, else `answer`, the one
  rule every reader of a row uses;
- **padding** (`left_pad`) and the names of the per-token image fields (`TOKEN_TYPE_INPUTS`)
  and of the image inputs a model's forward takes (`IMAGE_INPUTS`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    import torch

Messages = list[dict[str, Any]]
Prompt = str | Messages

# Image inputs a vision-language model's forward takes beside the ids (TRL's names).
IMAGE_INPUTS = (
    "pixel_values",
    "image_grid_thw",
    "pixel_attention_mask",
    "image_sizes",
    "spatial_shapes",
    "image_position_ids",
)
# Per-token fields of a processor's output: padded and cut like the ids.
TOKEN_TYPE_INPUTS = ("token_type_ids", "mm_token_type_ids")


def is_conversational(prompt: Prompt) -> bool:
    return isinstance(prompt, list) and len(prompt) > 0 and isinstance(prompt[0], dict)


def tokenize_prompts(
    tokenizer,
    prompts: Sequence[Prompt],
    tools: list | None = None,
    chat_template: str | None = None,
    **chat_template_kwargs,
) -> list[list[int]]:
    """Token ids of each text-only prompt, as TRL tokenizes them for generation: `tools` and
    `chat_template` as `GRPOTrainer` passes them (`tools or None`: an empty list would render
    Llama's tool boilerplate)."""
    if not prompts:
        return []
    if is_conversational(prompts[0]):
        out = tokenizer.apply_chat_template(
            conversation=list(prompts),
            tools=tools or None,
            chat_template=chat_template,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            **chat_template_kwargs,
        )
        return [list(ids) for ids in out["input_ids"]]
    return [list(ids) for ids in tokenizer(text=list(prompts))["input_ids"]]


def is_processor(processing_class) -> bool:
    """Whether `processing_class` is a multimodal processor (TRL's VLM path), not a tokenizer."""
    from transformers import ProcessorMixin

    return isinstance(processing_class, ProcessorMixin)


def inline_images(prompt: Prompt) -> list:
    """The images given inside a chat prompt's messages (`{"type": "image", "image": ...}`
    parts, as TRL 1.16 reads them); placeholders without a payload are not images."""
    if not is_conversational(prompt):
        return []
    return [
        part["image"]
        for message in cast(Messages, prompt)
        if isinstance(message.get("content"), list)
        for part in message["content"]
        if isinstance(part, dict) and part.get("type") == "image" and part.get("image") is not None
    ]


def example_images(example: Mapping[str, Any]) -> list | None:
    """The images of a row's `images` list or `image` column (TRL's columns); None if neither."""
    if example.get("images") is not None:
        return list(example["images"])
    if example.get("image") is not None:
        return [example["image"]]
    return None


def _load_image(image: Any) -> Any:
    """A PIL image from a PIL image or a file path (what a JSONL row can hold), in RGB."""
    if isinstance(image, str):
        from PIL import Image

        with Image.open(image) as opened:
            return opened.convert("RGB")
    return image


def render_prompts(
    processing_class,
    prompts: list[Prompt],
    images: list[list | None] | None = None,
    tools: list | None = None,
    chat_template: str | None = None,
    **chat_template_kwargs,
) -> tuple[list[list[int]], dict[str, Any]]:
    """Token ids of `prompts` as TRL renders them for generation, and the processor's image
    fields.

    A text tokenizer renders text-only prompts (`tokenize_prompts`). A vision-language
    processor renders every chat prompt as TRL does: `prepare_multimodal_messages` with the
    row's column images (`images`, one list per prompt, or None); images given inline in the
    messages stay where they are. With any image in the batch, the processor's image fields
    come back too (`pixel_values`, ..., per-token ones unpadded) with `num_images` per prompt;
    an image may be a PIL image or a file path."""
    column = images or [None] * len(prompts)
    inline = [inline_images(p) for p in prompts]
    if not is_processor(processing_class) or not is_conversational(prompts[0] if prompts else ""):
        if any(column) or any(inline):
            raise ValueError(
                "Rows with images need a vision-language processor and conversational prompts "
                "(chat messages), as TRL requires."
            )
        ids = tokenize_prompts(
            processing_class, prompts, tools, chat_template, **chat_template_kwargs
        )
        return ids, {}
    from trl.data_utils import prepare_multimodal_messages

    if not all(is_conversational(p) for p in prompts):
        raise ValueError(
            "Rows with images need conversational prompts (chat messages), as TRL requires."
        )
    messages = []
    for prompt, imgs in zip(prompts, column):
        prepared = prepare_multimodal_messages(cast(list, prompt), images=imgs)
        for message in prepared:  # a file path in an inline part is loaded, as a column's is
            if isinstance(message.get("content"), list):
                message["content"] = [
                    {**part, "image": _load_image(part["image"])}
                    if part.get("type") == "image" and part.get("image") is not None
                    else part
                    for part in message["content"]
                ]
        messages.append(prepared)
    counts = [len(imgs or []) + len(found) for imgs, found in zip(column, inline)]
    if not any(counts):  # text-only rows, normalised as TRL normalises them
        ids = tokenize_prompts(
            processing_class, messages, tools, chat_template, **chat_template_kwargs
        )
        return ids, {}
    out = processing_class.apply_chat_template(
        conversation=messages,
        tools=tools or None,
        chat_template=chat_template,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs={"padding": True},
        **chat_template_kwargs,
    )
    mask = out["attention_mask"]
    ids = [row[m.bool()].tolist() for row, m in zip(out["input_ids"], mask)]
    fields = {k: v for k, v in out.items() if k not in ("input_ids", "attention_mask")}
    for key in TOKEN_TYPE_INPUTS:  # per token: unpad like the ids
        if key in fields:
            fields[key] = [row[m.bool()].tolist() for row, m in zip(fields[key], mask)]
    fields["num_images"] = counts
    return ids, fields


def left_pad(ids: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`[B, W]` ids and mask of token lists left-padded to their longest (TRL's layout)."""
    import torch  # here, not at import: `rlsd.cli` imports this module and stays light

    width = max(len(x) for x in ids)
    out = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, x in enumerate(ids):
        out[i, width - len(x) :] = torch.tensor(list(x), dtype=torch.long)
        mask[i, width - len(x) :] = 1
    return out, mask


def privileged_text(example: Mapping[str, Any]) -> str:
    """The example's privileged context: `privileged_context`, falling back to `answer`."""
    text = privileged_or_none(example)
    if text is None:
        raise ValueError(
            "The teacher needs privileged context: this example has neither a non-empty "
            "`privileged_context` nor an `answer` column (or give a whole `teacher_prompt`)."
        )
    return text


def privileged_or_none(example: Mapping[str, Any]) -> str | None:
    """`privileged_text`, or None for a row without either column."""
    for key in ("privileged_context", "answer"):
        value = example.get(key)
        if value is not None and str(value).strip():
            return str(value)
    return None


def completion_text(completion: Any) -> str:
    """The text of one completion: the one conversion used by the verifiers, evaluation and
    the credit page.

    Accepts a string, a TRL conversational completion (`[{"role": "assistant", "content": ...}]`:
    the assistant messages are joined with newlines, or all messages when none is marked
    assistant), a single message dict, or content given as a list of
    `{"type": "text", "text": ...}` parts. `None` is the empty string; anything else is
    converted with `str`.
    """
    if completion is None:
        return ""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return content_text(completion.get("content"))
    if isinstance(completion, (list, tuple)):
        messages = [m for m in completion if isinstance(m, dict)]
        if not messages:
            return "".join(str(part) for part in completion)
        assistant = [m for m in messages if m.get("role", "assistant") == "assistant"]
        return "\n".join(content_text(m.get("content")) for m in (assistant or messages))
    return str(completion)


def content_text(content: Any) -> str:
    """A message's `content`: a string, or the text of a list of parts (`{"type": "text",
    "text": ...}` or strings); image parts, stored by `datasets` as `{"type": "image",
    "text": None}`, contribute nothing."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text") or "") if isinstance(part, dict) else str(part)
            for part in content
            if not isinstance(part, dict) or part.get("type", "text") == "text"
        )
    return str(content)
