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
    """The text of a completion given as a string or as TRL conversational messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(str(m.get("content", "")) for m in completion if isinstance(m, dict))
    return str(completion)
