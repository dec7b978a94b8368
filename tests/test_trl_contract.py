"""Fails loudly if the TRL internals RLSDTrainer relies on change (rlsd pins TRL 1.16.x)."""

import inspect

import trl
from packaging.version import Version
from trl import GRPOConfig, GRPOTrainer

from rlsd import RLSDTrainer


def test_trl_minor_version_is_the_pinned_one():
    assert Version(trl.__version__).release[:2] == (1, 16), (
        f"rlsd is built against TRL 1.16.x, found {trl.__version__}: re-check the overridden "
        "internals listed in rlsd/trainer.py, then update the pin in pyproject.toml"
    )


def _params(fn):
    return list(inspect.signature(fn).parameters)


def test_overridden_methods_keep_their_signatures():
    expected = {
        "_generate_and_score_completions": ["self", "inputs"],
        "_calculate_rewards": ["self", "inputs", "prompts", "completions", "completion_ids_list"],
        "_generate": ["self", "prompts"],
        "_compute_loss": ["self", "model", "inputs"],
        "_save_checkpoint": ["self", "model", "trial"],
        "_load_optimizer_and_scheduler": ["self", "checkpoint"],
        "training_step": ["self", "model", "inputs", "num_items_in_batch"],
        "log": ["self", "logs", "start_time"],
        "_get_per_token_logps_and_entropies": [
            "self",
            "model",
            "input_ids",
            "attention_mask",
            "logits_to_keep",
            "batch_size",
            "compute_entropy",
        ],
    }
    for name, params in expected.items():
        assert hasattr(GRPOTrainer, name), f"TRL removed GRPOTrainer.{name}"
        assert _params(getattr(GRPOTrainer, name))[: len(params)] == params, (
            f"GRPOTrainer.{name} changed signature"
        )
        assert name in RLSDTrainer.__dict__
    logps = _params(GRPOTrainer._get_per_token_logps_and_entropies)
    assert logps[:6] == [
        "self",
        "model",
        "input_ids",
        "attention_mask",
        "logits_to_keep",
        "batch_size",
    ]


def test_trl_internals_we_read_still_exist():
    source = inspect.getsource(GRPOTrainer._compute_loss)
    # 2-D advantages are accepted as they are (only 1-D ones are unsqueezed)
    assert "if advantages.dim() == 1:" in source
    # the dual clip is TRL's `delta`, the upper clip `epsilon_high`; dapo normalises by
    # num_items_in_batch
    assert "coef_1 = torch.clamp(coef_1, max=self.args.delta)" in source
    assert 'inputs["num_items_in_batch"]' in source
    # A_hat is completed inside the loss forward: TRL's loss must compute its log-probs (the only
    # call with entropies) before it reads the advantages, and use old log-probs when present.
    forward = source.index("self._get_per_token_logps_and_entropies(")
    assert "compute_entropy=True" in source[forward : source.index(")", forward + 200)]
    assert forward < source.index('advantages = inputs["advantages"]')
    assert 'old_per_token_logps = inputs.get("old_per_token_logps")' in source
    out_source = inspect.getsource(GRPOTrainer._generate_and_score_completions)
    for key in (
        '"completion_ids"',
        '"completion_mask"',
        '"advantages"',
        '"prompt_ids"',
        '"old_per_token_logps"',
    ):
        assert key in out_source, key
    fields = GRPOConfig.__dataclass_fields__
    for name in (
        "delta",
        "epsilon_high",
        "loss_type",
        "scale_rewards",
        "num_generations",
        "temperature",
    ):
        assert name in fields
    for attr in ("_metrics", "_logs", "reward_weights", "multi_objective_aggregation"):
        assert attr in inspect.getsource(GRPOTrainer.__init__), attr


def test_vllm_weight_pushes_skip_the_teacher_adapter(tiny_path, tmp_path):
    """With PEFT `modules_to_save`, TRL's vLLM weight iterator (run here on the real model,
    without vLLM: only its name handling is used) yields `...modules_to_save.rlsd_teacher.*`
    next to the policy's names; the trainer's filter drops exactly those."""
    from contextlib import nullcontext
    from types import SimpleNamespace

    from peft import LoraConfig
    from test_trainer_run import make_trainer
    from trl.generation.vllm_generation import VLLMGeneration

    from rlsd.teacher import skip_teacher_parameters

    trainer = make_trainer(
        tiny_path,
        tmp_path,
        teacher_sync_steps=2,
        peft_config=LoraConfig(
            r=4, target_modules=["q_proj"], modules_to_save=["lm_head"], task_type="CAUSAL_LM"
        ),
    )
    assert trainer.teacher.kind == "adapter"
    generation = SimpleNamespace(
        model=trainer.model,
        _dist=SimpleNamespace(is_fsdp=False, gather_params=lambda params: nullcontext()),
        _fix_param_name_to_vllm=lambda name, extra_prefixes=None: (
            VLLMGeneration._fix_param_name_to_vllm(None, name, extra_prefixes)
        ),
    )
    names = [name for name, _ in VLLMGeneration._iter_named_params(generation)]
    assert any("rlsd_teacher" in n for n in names)  # what TRL alone would push
    kept = [
        name for name, _ in skip_teacher_parameters(VLLMGeneration._iter_named_params(generation))
    ]
    assert kept == [n for n in names if "rlsd_teacher" not in n] and "lm_head.weight" in kept
