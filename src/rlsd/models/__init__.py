"""The shipped tiny model and how it is rebuilt (`rlsd sft`)."""

from rlsd.models.tiny import DEFAULT_MODEL_PATH, build_model, build_tokenizer

__all__ = ["DEFAULT_MODEL_PATH", "build_model", "build_tokenizer"]
