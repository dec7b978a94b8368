"""The shipped tiny models and how they are rebuilt (`rlsd sft`)."""

from pathlib import Path

from rlsd.models.tiny import DEFAULT_MODEL_PATH, build_model, build_tokenizer


def default_model_path(task) -> Path:
    """The shipped model a built-in task trains by default (`Task.default_model`): the tiny
    character model, the tiny vision-language model (`counting_visual`) or the tiny SQL model
    (`sql`, 512 positions)."""
    return Path(__file__).parent / getattr(task, "default_model", "tiny")


__all__ = ["DEFAULT_MODEL_PATH", "build_model", "build_tokenizer", "default_model_path"]
