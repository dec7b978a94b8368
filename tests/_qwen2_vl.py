"""Test helper: a tiny Qwen2-VL built from configs (no download), the M-RoPE architecture with
flattened `pixel_values` split by `image_grid_thw` and per-token `mm_token_type_ids`.

`qwen2_vl_config` is the tiny configuration; `qwen2_vl` adds a processor for it: the shipped
tiny VLM's byte-level tokenizer with Qwen2-VL's vision tokens, a PIL image processor (56-pixel
images: 4 image tokens), and Qwen2-VL's processor without its video part (whose processor
needs torchvision, which rlsd does not require).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor
from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil
from transformers.processing_utils import ProcessorMixin

from rlsd.models.tiny_vlm import build_tokenizer

SPECIAL_TOKENS = ["<|pad|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>"]
SPECIAL_TOKENS += ["<|image_pad|>", "<|video_pad|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def qwen2_vl_config(
    vocab_size: int, image_token_id: int, video_token_id: int, vision_start_token_id: int, **text
) -> Qwen2VLConfig:
    """Two text layers of width 32 (M-RoPE sections 1, 1, 2), a one-block vision tower;
    `text` overrides the text configuration."""
    text_config: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]},
        max_position_embeddings=256,
    )
    text_config.update(text)
    return Qwen2VLConfig(
        text_config=text_config,
        vision_config=dict(depth=1, embed_dim=16, hidden_size=32, num_heads=2, patch_size=14),
        image_token_id=image_token_id,
        video_token_id=video_token_id,
        vision_start_token_id=vision_start_token_id,
    )


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    """Qwen2-VL's processor with its image processor and tokenizer only (no video part)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token, self.video_token = tokenizer.image_token, tokenizer.video_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


def qwen2_vl(seed: int = 0) -> tuple[ImageOnlyQwen2VLProcessor, Qwen2VLForConditionalGeneration]:
    """The processor and a freshly initialised model (float32)."""
    tokenizer = build_tokenizer(
        SPECIAL_TOKENS,
        {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
        CHAT_TEMPLATE,
    )
    processor = ImageOnlyQwen2VLProcessor(
        image_processor=Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=56 * 56),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
    ids = tokenizer.convert_tokens_to_ids
    config = qwen2_vl_config(
        len(tokenizer),
        ids("<|image_pad|>"),
        ids("<|video_pad|>"),
        ids("<|vision_start|>"),
        max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    config.eos_token_id, config.pad_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    torch.manual_seed(seed)
    return processor, Qwen2VLForConditionalGeneration(config)
