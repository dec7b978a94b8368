"""The loss side: RLSDTrainer's loss equals stock TRL's on a fixed batch, and TRL's loss with
per-token advantages equals the spec's section-3 objective (`clipped_policy_loss`)."""

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

from rlsd import RLSDConfig, RLSDTrainer
from rlsd.objectives import clipped_policy_loss, rlsd_token_advantages
from rlsd.verifiers import get_verifier

B, P, T = 8, 6, 10


def _common(tmp_path):
    return dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=B,
        num_generations=4,
        max_completion_length=T,
        report_to="none",
        use_cpu=True,
        max_steps=1,
        epsilon_high=0.28,
        delta=3.0,
        loss_type="dapo",
    )


def _dataset():
    return Dataset.from_list(
        [
            {"prompt": [{"role": "user", "content": f"Q:{i}+1="}], "answer": str(i + 1)}
            for i in range(8)
        ]
    )


def _trainer(cls, config, path):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path)
    trainer = cls(
        model=model,
        reward_funcs=get_verifier("exact"),
        args=config,
        train_dataset=_dataset(),
        processing_class=AutoTokenizer.from_pretrained(path),
    )
    trainer.current_gradient_accumulation_steps = 1
    return trainer


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)
    completion_mask = torch.ones(B, T, dtype=torch.long)
    for i in range(B):
        completion_mask[i, T - (i % 4) :] = 0  # ragged lengths
    return {
        "prompt_ids": torch.randint(4, 100, (B, P), generator=g),
        "prompt_mask": torch.ones(B, P, dtype=torch.long),
        "completion_ids": torch.randint(4, 100, (B, T), generator=g),
        "completion_mask": completion_mask,
        "advantages": torch.tensor([1.5, -0.5, -0.5, -0.5, 0.8, -0.8, 0.0, 0.0]),
        "num_items_in_batch": completion_mask.sum(),
    }


def _with_old_logps(trainer, batch, shift):
    """A batch whose rollout log-probs differ from the current policy's, so ratios clip."""
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    with torch.no_grad():
        logps = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, T)[0]
    g = torch.Generator().manual_seed(1)
    return {
        **batch,
        "old_per_token_logps": logps + shift * torch.randn(logps.shape, generator=g),
    }, logps


@pytest.mark.parametrize("algorithm,extra", [("grpo", {}), ("rlsd", {"rlsd_lambda": 0.0})])
def test_grpo_loss_equals_stock_trl(tmp_path, random_path, batch, algorithm, extra):
    stock = _trainer(GRPOTrainer, GRPOConfig(**_common(tmp_path / "stock")), random_path)
    ours = _trainer(
        RLSDTrainer,
        RLSDConfig(**_common(tmp_path / "ours"), algorithm=algorithm, **extra),
        random_path,
    )
    inputs, _ = _with_old_logps(stock, batch, shift=0.3)
    loss_stock = stock._compute_loss(stock.model, inputs)
    loss_ours = ours._compute_loss(ours.model, inputs)
    torch.testing.assert_close(loss_ours, loss_stock, rtol=0, atol=0)
    loss_stock.backward()
    loss_ours.backward()
    for (name, p), q in zip(stock.model.named_parameters(), ours.model.parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=name)


def test_trl_loss_with_token_advantages_is_spec_section_3(tmp_path, random_path, batch):
    """TRL's dapo loss on RLSD's [B, T] advantages = the spec's clipped surrogate with dual
    clip and token-mean aggregation."""
    trainer = _trainer(RLSDTrainer, RLSDConfig(**_common(tmp_path)), random_path)
    inputs, current = _with_old_logps(trainer, batch, shift=0.5)
    mask = batch["completion_mask"].float()
    g = torch.Generator().manual_seed(2)
    logp_teacher = current + 2.0 * torch.randn(current.shape, generator=g)
    a_hat = rlsd_token_advantages(batch["advantages"], current, logp_teacher, mask, lam=0.49)
    assert a_hat.shape == (B, T) and not torch.equal(a_hat, batch["advantages"][:, None] * mask)
    loss = trainer._compute_loss(trainer.model, {**inputs, "advantages": a_hat})
    expected, metrics = clipped_policy_loss(
        current, inputs["old_per_token_logps"], a_hat, mask, eps_low=0.2, eps_high=0.28, c_dual=3.0
    )
    assert metrics["clip/low_ratio"] + metrics["clip/high_ratio"] > 0  # the clip is exercised
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("algorithm", ["grpo", "rlsd"])
def test_an_overflowing_ratio_gives_the_clamped_spec_loss(tmp_path, random_path, batch, algorithm):
    """Spec section 3: rho = exp(clamp(logp_new - logp_old, -20, 20)). A log-ratio of +100 on a
    token whose advantage is 0 overflows a plain exp to inf, and inf * 0 is NaN; a log-ratio
    of -100 on a negative-advantage token underflows. The loss and its gradient stay finite
    and equal the clamped spec value."""
    extra = {"rlsd_lambda": 0.0} if algorithm == "rlsd" else {}  # rlsd: A_hat = A exactly
    trainer = _trainer(
        RLSDTrainer, RLSDConfig(**_common(tmp_path), algorithm=algorithm, **extra), random_path
    )
    inputs, current = _with_old_logps(trainer, batch, shift=0.3)
    old = inputs["old_per_token_logps"].clone()
    old[6, 0] = current[6, 0] - 100.0  # advantage 0: exp(100) overflows float32
    old[1, 2] = current[1, 2] + 100.0  # advantage -0.5: exp(-100) = 0
    old[0, 1] = current[0, 1] - 30.0  # advantage 1.5: clamped at 20, then clipped
    inputs = {**inputs, "old_per_token_logps": old}
    assert torch.isinf(torch.exp(current - old)).any()  # what TRL alone would compute
    mask = batch["completion_mask"].float()
    a = batch["advantages"][:, None] * mask
    if algorithm == "rlsd":  # the teacher's columns, so that the loss-time A_hat path runs
        inputs["rlsd_logp_teacher"] = current + 1.0
        inputs["rlsd_scored"] = torch.ones(B)
    loss = trainer._compute_loss(trainer.model, inputs)
    expected, _ = clipped_policy_loss(current, old, a, mask, eps_low=0.2, eps_high=0.28, c_dual=3.0)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    loss.backward()
    assert all(
        torch.isfinite(p.grad).all() for p in trainer.model.parameters() if p.grad is not None
    )


def test_refuses_combinations_that_cannot_work(tmp_path):
    with pytest.raises(ValueError, match="per-token"):
        RLSDConfig(output_dir=str(tmp_path), loss_type="vespo", use_cpu=True)
    with pytest.raises(ValueError, match="Liger"):
        RLSDConfig(
            output_dir=str(tmp_path),
            use_cpu=True,
            liger_kernel_config={"fused_linear_cross_entropy": True},
        )
    with pytest.raises(ValueError, match="teacher_model_name_or_path"):
        RLSDConfig(output_dir=str(tmp_path), algorithm="opd", use_cpu=True)
    with pytest.raises(ValueError, match="algorithm"):
        RLSDConfig(output_dir=str(tmp_path), algorithm="ppo", use_cpu=True)
    with pytest.raises(ValueError, match="rlsd_lambda must be in"):
        RLSDConfig(output_dir=str(tmp_path), rlsd_lambda=1.5, use_cpu=True)
    with pytest.raises(ValueError, match="eps_w"):
        RLSDConfig(output_dir=str(tmp_path), rlsd_eps_w=1.5, use_cpu=True)


def test_paper_defaults(tmp_path):
    c = RLSDConfig(output_dir=str(tmp_path), use_cpu=True)
    assert (c.algorithm, c.loss_type, c.epsilon, c.epsilon_high, c.delta, c.beta) == (
        "rlsd",
        "dapo",
        0.2,
        0.28,
        3.0,
        0.0,
    )
    assert (c.num_generations, c.rlsd_eps_w, c.rlsd_lambda, c.rlsd_lambda_decay_steps) == (
        8,
        0.2,
        0.5,
        50,
    )
    assert c.teacher_sync_steps == 10 and c.max_grad_norm == 1.0 and c.scale_rewards == "group"
    assert (
        RLSDConfig(output_dir=str(tmp_path), algorithm="opsd", use_cpu=True).teacher_sync_steps == 0
    )
