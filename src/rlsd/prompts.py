"""Prompt rendering shared by the trainer, the self-teacher and evaluation.

Prompts are tokenized exactly as TRL's `GRPOTrainer._tokenize_prompts` does (chat template
with the generation prompt for conversational prompts, plain tokenization for text), so the
ids the teacher and the evaluator see match what the trainer generated from.
"""

from __future__ import annotations

from typing import Any

Messages = list[dict[str, Any]]
Prompt = str | Messages


def is_conversational(prompt: Prompt) -> bool:
    return isinstance(prompt, list) and len(prompt) > 0 and isinstance(prompt[0], dict)


def tokenize_prompts(tokenizer, prompts: list[Prompt], **chat_template_kwargs) -> list[list[int]]:
    """Token ids of each prompt, as TRL tokenizes them for generation."""
    if not prompts:
        return []
    if is_conversational(prompts[0]):
        out = tokenizer.apply_chat_template(
            conversation=prompts,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            **chat_template_kwargs,
        )
        return [list(ids) for ids in out["input_ids"]]
    return [list(ids) for ids in tokenizer(text=prompts)["input_ids"]]


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
