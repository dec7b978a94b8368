"""The magnitude estimators beyond the paper's (CEPO, the contrastive gap): hand-computed
values, the reductions (no rejected rollout -> GRPO, beta = 0 -> rlsd, beta = 1 -> cepo),
finiteness and shape errors."""

import math

import pytest
import torch

from rlsd.objectives import (
    cepo_token_advantages,
    contrastive_token_advantages,
    estimator_delta,
    rlsd_stats,
    rlsd_token_advantages,
)

ADV = torch.tensor([2.0, -1.0])
MASK = torch.ones(2, 3)
LOGP_T = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, -3.0]])
LOGP_TW = torch.tensor([[-1.1, -1.0, -0.5], [-2.0, -0.9, -1.0]])
LOGP_S = torch.full((2, 3), -1.0)
E05, E1 = math.exp(0.05), math.exp(0.1)


def test_cepo_hand_example():
    # delta = logp_T - logp_T- = [[0.1, -1, 0], [1, -0.1, -2]]; sign(A) = [+1, -1]
    # x = [[0.1, -1, 0], [-1, 0.1, 2]] -> w_clip = [[e^.1, .8, 1], [.8, e^.1, 1.2]]
    # lam = 0.5: factor = 1 + 0.5 (w - 1); A_hat = A * factor
    a_hat = cepo_token_advantages(ADV, LOGP_T, LOGP_TW, MASK, lam=0.5, eps_w=0.2)
    f = 1 + 0.5 * (E1 - 1)
    expected = torch.tensor([[2 * f, 1.8, 2.0], [-0.9, -f, -1.1]])
    assert torch.allclose(a_hat, expected, atol=1e-6)
    assert a_hat.dtype == torch.float32 and not a_hat.requires_grad


def test_cepo_without_a_rejected_rollout_is_grpo():
    # the trainer scores such a group with the reference on both sides: delta = 0, A_hat = A
    a_hat = cepo_token_advantages(ADV, LOGP_T, LOGP_T.clone(), MASK, lam=0.5)
    assert torch.equal(a_hat, ADV[:, None].expand(2, 3))


def test_contrastive_hand_example():
    # gap_true = logp_T - logp_S = [[0, -1, .5], [0, 0, -2]]
    # gap_wrong = logp_T- - logp_S = [[-.1, 0, .5], [-1, .1, 0]]
    # beta = 0.5: delta = [[.05, -1, .25], [.5, -.05, -2]]
    # x = sign(A) delta = [[.05, -1, .25], [-.5, .05, 2]]
    # -> w_clip = [[e^.05, .8, 1.2], [.8, e^.05, 1.2]]
    a_hat = contrastive_token_advantages(
        ADV, LOGP_S, LOGP_T, LOGP_TW, MASK, lam=0.5, eps_w=0.2, beta=0.5
    )
    f = 1 + 0.5 * (E05 - 1)
    expected = torch.tensor([[2 * f, 1.8, 2.2], [-0.9, -f, -1.1]])
    assert torch.allclose(a_hat, expected, atol=1e-6)


def test_contrastive_reductions():
    logp_s = torch.tensor([[-0.7, -1.3, -0.2], [-2.0, -0.4, -1.1]])
    rlsd = rlsd_token_advantages(ADV, logp_s, LOGP_T, MASK, lam=0.7, eps_w=0.3)
    beta0 = contrastive_token_advantages(ADV, logp_s, LOGP_T, LOGP_TW, MASK, 0.7, 0.3, beta=0.0)
    assert torch.equal(beta0, rlsd)  # bit for bit
    cepo = cepo_token_advantages(ADV, LOGP_T, LOGP_TW, MASK, 0.7, 0.3)
    beta1 = contrastive_token_advantages(ADV, logp_s, LOGP_T, LOGP_TW, MASK, 0.7, 0.3, beta=1.0)
    assert torch.allclose(beta1, cepo, atol=1e-6)  # the student cancels (up to rounding)


def test_estimators_are_finite_on_infinite_inputs_and_zero_at_padding():
    inf = float("inf")
    logp_t = torch.tensor([[-inf, 0.0, -1.0], [0.0, -inf, -inf]])
    logp_tw = torch.tensor([[0.0, -inf, -1.0], [-inf, 0.0, -inf]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    for a_hat in (
        cepo_token_advantages(ADV, logp_t, logp_tw, mask, 0.5),
        contrastive_token_advantages(ADV, LOGP_S, logp_t, logp_tw, mask, 0.5, beta=2.0),
    ):
        assert torch.isfinite(a_hat).all() and a_hat[0, 2] == 0.0
        assert ((a_hat[mask.bool()].abs() >= 0.9 * 1) & (a_hat[mask.bool()].abs() <= 2.2)).all()


def test_estimator_delta_and_stats_follow_the_estimator():
    delta = estimator_delta("cepo", LOGP_S, LOGP_T, LOGP_TW, MASK)
    assert torch.allclose(delta, LOGP_T - LOGP_TW)
    stats = rlsd_stats(
        ADV, LOGP_S, LOGP_T, MASK, 0.5, estimator="cepo", logp_teacher_wrong=LOGP_TW
    )
    assert stats["rlsd/delta_mean"] == pytest.approx(float((LOGP_T - LOGP_TW).mean()))
    # 2 of 6 tokens clipped low (x = -1, -1) and 1 high (x = 2)
    assert stats["rlsd/clip_low_ratio_all"] == pytest.approx(2 / 6)
    assert stats["rlsd/clip_high_ratio_all"] == pytest.approx(1 / 6)
    with pytest.raises(ValueError, match="needs logp_teacher_wrong"):
        estimator_delta("contrastive", LOGP_S, LOGP_T, None, MASK)
    with pytest.raises(ValueError, match="estimator must be one of"):
        estimator_delta("nope", LOGP_S, LOGP_T, LOGP_TW, MASK)
    with pytest.raises(ValueError, match="logp_teacher_wrong has shape"):
        cepo_token_advantages(ADV, LOGP_T, LOGP_TW[:, :2], MASK, 0.5)
