"""The tiny vision-language model for `--task counting_visual`.

A standard transformers LLaVA (`LlavaForConditionalGeneration`: a 2-layer SigLIP vision
tower, a two-layer projector and a 4-layer Qwen2 text decoder of width 64; 335k parameters,
1.4 MB in float32) with a `LlavaProcessor`. Everything is built from configs and local files,
never from the Hub:

- tokenizer: byte-level (the 256-byte alphabet, no merges) plus `<|im_start|>`,
  `<|im_end|>` (the EOS), `<|pad|>` and `<image>`; left padding, as TRL generates;
- chat template: ChatML-like, rendering `{"type": "image"}` parts as `<image>` and text parts
  as their text (the same template on the tokenizer and the processor);
- image processor: `SiglipImageProcessorPil` at 48x48 (the default SigLIP processor needs
  torchvision, which rlsd does not require);
- vision tower: 48-pixel images in 12-pixel patches, so 16 image tokens; one patch per cell
  of the `counting_visual` grid (see `rlsd.tasks.counting_visual`).

Why this small: a width-128 decoder (1M parameters) takes about 2.5x longer per training step
on the CPU; at this size plain GRPO takes about 0.7 s per step of 64 completions on 2 quiet
cores, and the warm start about 0.6 s per SFT step of 64 examples.

It is an ordinary HF folder: `AutoProcessor.from_pretrained` and
`AutoModelForImageTextToText.from_pretrained` (or `LlavaForConditionalGeneration`) load it
offline, and TRL's GRPOTrainer takes the processor as `processing_class`. `load(path)` does
both. The warm-started weights in `DEFAULT_VLM_PATH` come from `rlsd sft --task
counting_visual` (`rlsd.models.sft.run_vlm_sft`), deterministically from a seed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

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


def build_tokenizer(
    special_tokens: Sequence[str] = SPECIAL_TOKENS,
    extra_special_tokens: Mapping[str, str] | None = None,
    chat_template: str = CHAT_TEMPLATE,
) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (a BPE over the 256-byte alphabet with no merges), its
    `special_tokens` first (they must hold `<|pad|>` and `<|im_end|>`, the EOS), and named
    `extra_special_tokens` (default: `image_token` = `<image>`), as another VLM's processor
    wants them (the tests build a tiny Qwen2-VL this way)."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {token: i for i, token in enumerate([*special_tokens, *sorted(alphabet)])}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(list(special_tokens))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        padding_side="left",
        extra_special_tokens=dict(extra_special_tokens or {"image_token": IMAGE_TOKEN}),
    )
    tokenizer.chat_template = chat_template
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
    # Never sample the image token (TRL passes the same `suppress_tokens`; plain `generate`
    # calls get it from here): a sampled one would not match the image features when the
    # completion is scored.
    model.generation_config.suppress_tokens = [config.image_token_id]
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
