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
    stats = rlsd_stats(ADV, LOGP_S, LOGP_T, MASK, 0.5, estimator="cepo", logp_teacher_wrong=LOGP_TW)
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


# ------------------------------------------------------------------ which texts the teacher sees
from rlsd.teacher.contexts import final_answer, group_contexts  # noqa: E402


def test_group_contexts_follow_cepos_rule_and_the_peer_rule():
    texts = ["A:5", "A:7", "A:3", "A:6", "A:1", "A:2", "A:9", "A:4"]
    refs = ["r0"] * 4 + ["r1"] * 4
    # group 0: successes 1 (1.0) and 3 (1.2, best); rejected 0 (0.2) and 2 (0.0, worst)
    # group 1: no success; rejected all, the worst are 5 and 7 (0.0; ties: the first, 5)
    rewards = [0.2, 1.0, 0.0, 1.2, 0.2, 0.0, 0.2, 0.0]
    c = group_contexts(texts, rewards, refs, 4, source="peer", negative="wrong")
    assert c.positive == ["A:6"] * 4 + [None] * 4  # the best success; group 1 falls back
    assert c.negative == ["3"] * 4 + ["2"] * 4  # the final answers of 2 and 5
    assert (c.peer_fallbacks, c.negative_fallbacks, c.groups) == (1, 0, 2)
    # an all-correct group has no rejected rollout: no negative (delta = 0 in the trainer)
    c = group_contexts(texts, [1.0] * 4 + rewards[4:], refs, 4, negative="wrong")
    assert c.positive == [None] * 8 and c.negative == [None] * 4 + ["2"] * 4
    assert c.negative_fallbacks == 1
    # shuffled: the next group's reference; a batch of one group has none
    c = group_contexts(texts, rewards, refs, 4, negative="shuffled")
    assert c.negative == ["r1"] * 4 + ["r0"] * 4
    one = group_contexts(texts[:4], rewards[:4], refs[:4], 4, negative="shuffled")
    assert one.negative == [None] * 4 and one.negative_fallbacks == 1
    # NaN rewards rank lowest; a rollout with no readable answer gives its first 50 characters
    c = group_contexts(["x", "A:1"], [float("nan"), 0.0], ["r", "r"], 2, negative="wrong")
    assert c.negative == ["x", "x"]
    assert final_answer("no answer here\n" + "y" * 80) == "y" * 80  # the last line
    assert final_answer("<answer> 12 </answer>") == "12"
    with pytest.raises(ValueError, match="multiple of the group size"):
        group_contexts(texts[:3], rewards[:3], refs[:3], 2)


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides, metric",
    [
        ({"rlsd_estimator": "cepo"}, "rlsd/negative_fallback_ratio"),
        (
            {"rlsd_estimator": "contrastive", "rlsd_negative_context": "shuffled"},
            "rlsd/negative_fallback_ratio",
        ),
        ({"privileged_source": "peer"}, "rlsd/peer_fallback_ratio"),
    ],
)
def test_estimators_train_through_the_teacher_engine(tiny_path, tmp_path, overrides, metric):
    from tests.test_trainer_run import make_trainer

    trainer = make_trainer(tiny_path, tmp_path, max_steps=2, **overrides)
    batches = []
    original = trainer._generate_and_score_completions

    def keep(inputs):
        output = original(inputs)
        batches.append((inputs, output))
        return output

    trainer._generate_and_score_completions = keep
    trainer.train()
    logged = {k: v for record in trainer.state.log_history for k, v in record.items()}
    assert metric in logged and 0.0 <= logged[metric] <= 1.0
    assert "rlsd/w_q50" in logged and "rlsd/adv_hat_over_adv_neg" in logged
    inputs, output = batches[0]
    scored = output["rlsd_scored"]
    assert scored.any()
    if trainer.args.estimator.negative_context:
        assert logged["time/teacher_negative"] > 0
        wrong, right = output["rlsd_logp_teacher_wrong"], output["rlsd_logp_teacher"]
        mask = output["completion_mask"].bool()
        differs = [(wrong[i][mask[i]] != right[i][mask[i]]).any() for i in scored.nonzero()]
        assert any(differs)  # the second context was really scored
    else:  # peer: the teacher saw a rollout, not the reference, in some groups
        assert logged[metric] < 1.0
