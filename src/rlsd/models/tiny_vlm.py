"""The tiny vision-language model for `--task counting_visual`.

A standard transformers LLaVA (`LlavaForConditionalGeneration`: a SigLIP vision tower, a
two-layer projector and a Qwen2 text decoder, about 1M parameters in float32) with a
`LlavaProcessor`. Everything is built from configs and local files, never from the Hub:

- tokenizer: byte-level (the 256-byte alphabet, no merges) plus `<|im_start|>`,
  `<|im_end|>` (the EOS), `<|pad|>` and `<image>`; left padding, as TRL generates;
- chat template: ChatML-like, rendering `{"type": "image"}` parts as `<image>` and text parts
  as their text (the same template on the tokenizer and the processor);
- image processor: `SiglipImageProcessorPil` at 48x48 (the default SigLIP processor needs
  torchvision, which rlsd does not require);
- vision tower: 48-pixel images in 12-pixel patches, so 16 image tokens; one patch per cell
  of the `counting_visual` grid (see `rlsd.tasks.counting_visual`).

It is an ordinary HF folder: `AutoProcessor.from_pretrained` and
`AutoModelForImageTextToText.from_pretrained` (or `LlavaForConditionalGeneration`) load it
offline, and TRL's GRPOTrainer takes the processor as `processing_class`. `load(path)` does
both. The warm-started weights in `DEFAULT_VLM_PATH` come from `rlsd sft --task
counting_visual` (`rlsd.models.sft.run_vlm_sft`), deterministically from a seed.

`generate` samples completions of image rows through the processor, as TRL does (the image
token suppressed, a completion ending at its first EOS); `rlsd.evaluation.generate` is its
text-only counterpart.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    Qwen2Config,
    SiglipImageProcessorPil,
    SiglipVisionConfig,
)

DEFAULT_VLM_PATH = Path(__file__).parent / "tiny_vlm"

IMAGE_SIZE = 48
PATCH_SIZE = 12
IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ["<|pad|>", "<|im_start|>", "<|im_end|>", IMAGE_TOKEN]
# Image parts come as `{"type": "image"}` (datasets stores `{"type": "image", "text": None}`),
# so the template branches on the part's type, never on the presence of a `text` key.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (a BPE over the 256-byte alphabet with no merges)."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + sorted(alphabet))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(SPECIAL_TOKENS)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        padding_side="left",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_processor() -> LlavaProcessor:
    """The `LlavaProcessor`: the byte-level tokenizer and a torchvision-free SigLIP processor."""
    image_processor = SiglipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=build_tokenizer(),
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="full",
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=0,
    )


def build_model(
    processor: LlavaProcessor,
    hidden_size: int = 64,
    num_layers: int = 4,
    num_heads: int = 2,
    intermediate_size: int = 192,
    vision_hidden_size: int = 64,
    vision_layers: int = 2,
    max_positions: int = 512,
    seed: int = 0,
) -> LlavaForConditionalGeneration:
    """A freshly initialised LLaVA sized for a CPU (float32)."""
    torch.manual_seed(seed)
    tokenizer = processor.tokenizer
    vision = SiglipVisionConfig(
        hidden_size=vision_hidden_size,
        intermediate_size=2 * vision_hidden_size,
        num_hidden_layers=vision_layers,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        vision_use_head=False,
    )
    text = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),  # TRL suppresses it
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
        tie_word_embeddings=True,
    )
    model = LlavaForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    return model


def load(
    path: str | Path = DEFAULT_VLM_PATH, dtype: torch.dtype = torch.float32
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """(model, processor) from a folder saved by `save` (offline; the shipped one by default)."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"{path}: no model folder (config.json missing); rebuild it with "
            "`rlsd sft --task counting_visual --output_dir <folder>`"
        )
    processor = LlavaProcessor.from_pretrained(path)
    model = LlavaForConditionalGeneration.from_pretrained(path, dtype=dtype)
    return model, processor


def save(model: LlavaForConditionalGeneration, processor: LlavaProcessor, path: str | Path):
    """Write the model (safetensors) and the processor files into `path`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    processor.save_pretrained(path)


@torch.no_grad()
def generate(
    model,
    processor,
    rows: Sequence[dict[str, Any]],
    num_samples: int = 1,
    temperature: float = 1.0,
    max_new_tokens: int = 64,
    batch_size: int = 256,
    seed: int | None = None,
) -> list[list[str]]:
    """`num_samples` completion texts for each row (`temperature == 0`: greedy).

    Rows are in TRL's VLM form: a conversational `prompt` with image parts and an `image`
    (or `images`) column. Pure temperature sampling (`top_p = 1`, `top_k = 0`), the image
    token suppressed, as TRL generates; with a `seed`, reproducible and leaving the caller's
    random state untouched (`rlsd.evaluation.sampling_mode`)."""
    from rlsd.evaluation import sampling_mode

    tokenizer = processor.tokenizer
    device = next(model.parameters()).device
    per_batch = max(1, batch_size // num_samples)
    sampling = temperature > 0
    out: list[list[str]] = []
    with sampling_mode(model, seed):
        for start in range(0, len(rows), per_batch):
            chunk = rows[start : start + per_batch]
            texts = processor.apply_chat_template(
                [row["prompt"] for row in chunk], add_generation_prompt=True, tokenize=False
            )
            images = [row["images"] if row.get("images") else [row["image"]] for row in chunk]
            inputs = processor(images=images, text=texts, return_tensors="pt", padding=True)
            inputs = inputs.to(device)
            generated = model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=sampling,
                temperature=temperature if sampling else None,
                top_p=1.0,
                top_k=0,
                num_return_sequences=num_samples,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                suppress_tokens=[model.config.image_token_id],
            )
            completions = []
            for ids in generated[:, inputs["input_ids"].shape[1] :].tolist():
                if tokenizer.eos_token_id in ids:  # a completion ends at its first EOS
                    ids = ids[: ids.index(tokenizer.eos_token_id)]
                completions.append(tokenizer.decode(ids, skip_special_tokens=True))
            out.extend(
                completions[i : i + num_samples] for i in range(0, len(completions), num_samples)
            )
    return out
