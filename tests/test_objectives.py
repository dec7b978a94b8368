"""Tests for rlsd.objectives against numbers computed by hand (written out below each case).

Conventions: ``ln`` values are written as ``math.log(...)`` of the hand-derived probabilities, so
the expected number is the arithmetic of the comment above it, not a call into the code under
test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlsd.objectives import (
    DEFAULT_LEAK_PHRASES,
    clamp_log_ratio,
    clipped_policy_loss,
    generalized_jsd,
    group_advantages,
    lambda_at,
    leak_flags,
    leak_rate,
    rlsd_stats,
    rlsd_token_advantages,
    sampled_token_distill_advantages,
)

NAN = float("nan")
INF = float("inf")


def close(actual: torch.Tensor, expected: list, tol: float = 1e-5) -> None:
    torch.testing.assert_close(
        actual, torch.tensor(expected, dtype=actual.dtype), rtol=tol, atol=tol
    )


# --------------------------------------------------------------------------------------------
# Section 1: group_advantages
# --------------------------------------------------------------------------------------------


def test_group_advantages_hand_example():
    # [1, 0, 0, 0]: mean 0.25, unbiased var (0.75^2 + 3 * 0.25^2) / 3 = 0.25, std 0.5.
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), group_size=4)
    assert adv.dtype == torch.float32
    d = 0.5 + 1e-6
    close(adv, [0.75 / d, -0.25 / d, -0.25 / d, -0.25 / d], tol=1e-7)
    close(adv, [1.5, -0.5, -0.5, -0.5], tol=1e-5)


def test_group_advantages_groups_are_independent_and_equal_groups_are_exactly_zero():
    # Group 2 is all 0.1: the float mean of equal values need not be exact, the result must be.
    adv = group_advantages([1.0, 0.0, 0.0, 0.0, 0.1, 0.1, 0.1, 0.1, 1.0, 1.0, 1.0, 1.0], 4)
    close(adv[:4], [1.5, -0.5, -0.5, -0.5])
    assert torch.equal(adv[4:], torch.zeros(8))


def test_group_advantages_nan_rewards_are_excluded_and_get_zero():
    # Valid [1, 0, 0]: mean 1/3, deviations 2/3, -1/3, -1/3; var (4/9 + 1/9 + 1/9) / 2 = 1/3.
    adv = group_advantages([1.0, 0.0, NAN, 0.0], 4)
    s = math.sqrt(1 / 3) + 1e-6
    close(adv, [(2 / 3) / s, (-1 / 3) / s, 0.0, (-1 / 3) / s])
    assert adv[2].item() == 0.0
    # All NaN, or a single valid reward: no spread, so 0, never NaN.
    assert torch.equal(group_advantages([NAN, NAN, 1.0, NAN], 2), torch.zeros(4))


def test_group_advantages_scale_batch_and_none():
    # Groups [1, 0] and [1, 1]; group means 0.5 and 1 -> centred [0.5, -0.5, 0, 0].
    rewards = [1.0, 0.0, 1.0, 1.0]
    # Batch std of [1, 0, 1, 1]: mean 0.75, var (3 * 0.0625 + 0.5625) / 3 = 0.25, std 0.5.
    close(group_advantages(rewards, 2, scale="batch"), [0.5 / 0.500001, -0.5 / 0.500001, 0, 0])
    # Group std of [1, 0] is sqrt(0.5): 0.5 / 0.70711 = 0.70711.
    close(group_advantages(rewards, 2, scale="group"), [0.7071058, -0.7071058, 0.0, 0.0])
    # Dr. GRPO: no division.
    close(group_advantages([1.0, 0.0, 0.0, 0.0], 4, scale="none"), [0.75, -0.25, -0.25, -0.25])


def test_group_advantages_batch_scale_ignores_nan():
    # Valid rewards [1, 0, 1]: batch mean 2/3, var (1/9 + 4/9 + 1/9) / 2 = 1/3.
    adv = group_advantages([1.0, 0.0, 1.0, NAN], 2, scale="batch")
    s = math.sqrt(1 / 3) + 1e-6
    close(adv, [0.5 / s, -0.5 / s, 0.0, 0.0])


def test_group_advantages_accepts_integer_rewards_and_group_size_one():
    close(group_advantages(torch.tensor([1, 0]), 2), [0.7071058, -0.7071058])
    assert torch.equal(group_advantages([1.0, 0.0, 3.0], 1), torch.zeros(3))
    close(group_advantages(np.array([1.0, 0.0, 0.0, 0.0]), np.int64(4)), [1.5, -0.5, -0.5, -0.5])


def test_group_advantages_errors():
    with pytest.raises(ValueError, match="not divisible by group_size=4"):
        group_advantages([1.0, 0.0, 1.0, 0.0, 1.0], 4)
    with pytest.raises(ValueError, match="scale must be one of"):
        group_advantages([1.0, 0.0], 2, scale="std")
    with pytest.raises(ValueError, match="group_size"):
        group_advantages([1.0, 0.0], 0)
    with pytest.raises(ValueError, match="1-D"):
        group_advantages(torch.zeros(2, 2), 2)


# --------------------------------------------------------------------------------------------
# Section 2: lambda_at
# --------------------------------------------------------------------------------------------


def test_lambda_schedule_defaults():
    assert lambda_at(1) == pytest.approx(0.49)
    assert lambda_at(25) == pytest.approx(0.25)
    assert lambda_at(49) == pytest.approx(0.01)
    assert lambda_at(50) == 0.0
    assert lambda_at(51) == 0.0
    assert lambda_at(1000) == 0.0


def test_lambda_schedule_warmup_and_constant():
    # W = 10: 0.5 * 5 / 10 at k = 5, lam0 at k = 10, then 0.5 * (1 - 1/50) at k = 11.
    assert lambda_at(5, warmup_steps=10) == pytest.approx(0.25)
    assert lambda_at(10, warmup_steps=10) == pytest.approx(0.5)
    assert lambda_at(11, warmup_steps=10) == pytest.approx(0.49)
    assert lambda_at(60, warmup_steps=10) == 0.0
    assert lambda_at(1, lam0=0.3, decay_steps=10) == pytest.approx(0.27)
    # No decay: constant lam0 (after any warmup).
    assert lambda_at(1000, decay_steps=0) == 0.5
    assert lambda_at(1000, decay_steps=None) == 0.5
    assert lambda_at(2, decay_steps=None, warmup_steps=4) == pytest.approx(0.25)
    assert lambda_at(np.int64(25)) == pytest.approx(0.25)  # any integral step


@pytest.mark.parametrize(
    "kwargs",
    [
        {"step": 0},
        {"step": 1.5},
        {"step": 1, "lam0": 1.5},
        {"step": 1, "decay_steps": -1},
        {"step": 1, "warmup_steps": -1},
    ],
)
def test_lambda_schedule_validation(kwargs):
    with pytest.raises(ValueError):
        lambda_at(**kwargs)


# --------------------------------------------------------------------------------------------
# Section 2: rlsd_token_advantages
# --------------------------------------------------------------------------------------------
# The shared hand example: A = [2, -1, 0]; logp_S = 0 so delta = logp_T;
# delta = [0.1, -0.1, 1, -1, 0] in rows 0 and 1, [0.3, 0, 0, 0, 0] in row 2 (last token padded).
# lam = 0.5, eps_w = 0.2 so w_clip lies in [0.8, 1.2] and factor = 1 + 0.5 * (w_clip - 1):
#   x = +0.1: w = e^0.1  = 1.1051709, factor 1.0525855
#   x = -0.1: w = e^-0.1 = 0.9048374, factor 0.9524187
#   x = +1:   w clipped to 1.2,        factor 1.1
#   x = -1:   w clipped to 0.8,        factor 0.9
#   x = 0:    w = 1,                   factor 1
# Row 0 (A = 2 > 0): x = delta.  Row 1 (A = -1 < 0): x = -delta.  Row 2 (A = 0): A_hat = 0.

E01, EM01 = math.exp(0.1), math.exp(-0.1)
F01, FM01 = 1 + 0.5 * (E01 - 1), 1 + 0.5 * (EM01 - 1)


def hand_example() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    adv = torch.tensor([2.0, -1.0, 0.0])
    logp_s = torch.zeros(3, 5)
    logp_t = torch.tensor(
        [[0.1, -0.1, 1.0, -1.0, 0.0], [0.1, -0.1, 1.0, -1.0, 0.0], [0.3, 0.0, 0.0, 0.0, 0.0]]
    )
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    return adv, logp_s, logp_t, mask


def test_rlsd_token_advantages_hand_example():
    adv, logp_s, logp_t, mask = hand_example()
    a_hat = rlsd_token_advantages(adv, logp_s, logp_t, mask, lam=0.5)
    assert a_hat.dtype == torch.float32 and a_hat.shape == (3, 5)
    close(
        a_hat,
        [
            [2 * F01, 2 * FM01, 2 * 1.1, 2 * 0.9, 2.0],
            [-FM01, -F01, -0.9, -1.1, -1.0],
            [0.0] * 5,
        ],
    )
    # Sign handling: a correct answer's reference-supported token gets more credit, a wrong
    # answer's reference-disfavoured token (delta < 0) gets more blame; the sign never flips.
    assert a_hat[0, 0] > 2.0 and a_hat[0, 1] < 2.0
    assert a_hat[1, 1] < -1.0 and a_hat[1, 0] > -1.0
    assert (a_hat[0] > 0).all() and (a_hat[1] < 0).all()


def test_rlsd_token_advantages_clip_bounds_are_exact():
    # lam = 1: A_hat = A * w_clip, and w_clip hits 1 - eps_w, 1 + eps_w exactly (float32).
    adv = torch.tensor([1.0, -1.0])
    logp_t = torch.tensor([[5.0, -5.0, 0.05], [5.0, -5.0, 0.05]])
    a_hat = rlsd_token_advantages(adv, torch.zeros(2, 3), logp_t, torch.ones(2, 3), lam=1.0)
    assert torch.equal(a_hat[:, :2], torch.tensor([[1.2, 0.8], [-0.8, -1.2]]))
    close(a_hat[:, 2], [math.exp(0.05), -math.exp(-0.05)])
    a_hat = rlsd_token_advantages(adv, torch.zeros(2, 3), logp_t, torch.ones(2, 3), 1.0, eps_w=0.5)
    assert torch.equal(a_hat[0, :2], torch.tensor([1.5, 0.5]))


def test_rlsd_token_advantages_lambda_zero_is_grpo_exactly():
    adv, logp_s, logp_t, mask = hand_example()
    adv = torch.tensor([0.123456789, -1.7, 0.0])
    a_hat = rlsd_token_advantages(adv, logp_s, logp_t, mask, lam=0.0)
    assert torch.equal(a_hat, adv[:, None].expand(3, 5) * mask)


def test_rlsd_token_advantages_negative_only():
    adv, logp_s, logp_t, mask = hand_example()
    a_hat = rlsd_token_advantages(adv, logp_s, logp_t, mask, lam=0.5, negative_only=True)
    assert torch.equal(a_hat[0], torch.full((5,), 2.0))
    close(a_hat[1], [-FM01, -F01, -0.9, -1.1, -1.0])
    assert torch.equal(a_hat[2], torch.zeros(5))


def test_rlsd_token_advantages_is_finite_on_extreme_inputs():
    # Padded slots hold -inf in both log-probs (-inf - -inf = NaN); real slots hold deltas of
    # +-1e30, +-inf and NaN; advantages near float32's max.
    adv = torch.tensor([1e30, -1e30, 3.3e38, 0.0])
    logp_s = torch.tensor([[0.0, 0.0, -INF], [0.0, 0.0, -INF], [0.0, -INF, -INF], [0.0, 0.0, -INF]])
    logp_t = torch.tensor(
        [[1e30, -1e30, -INF], [-1e30, NAN, -INF], [INF, 0.0, -INF], [INF, -INF, -INF]]
    )
    mask = torch.tensor([[1, 1, 0], [1, 1, 0], [1, 1, 0], [1, 1, 0]])
    a_hat = rlsd_token_advantages(adv, logp_s, logp_t, mask, lam=0.5)
    assert torch.isfinite(a_hat).all()
    assert torch.equal(a_hat[:, 2], torch.zeros(4))
    # +-1e30 saturate the clip: 1e30 * 1.1 and 1e30 * 0.9; a wrong answer with delta = -1e30
    # gets -1e30 * 1.1; NaN delta means no evidence (factor 1); A = 0 stays 0 even with inf.
    close(a_hat[0, :2], [1.1e30, 0.9e30], tol=1e-6)
    close(a_hat[1, :2], [-1.1e30, -1e30], tol=1e-6)
    assert a_hat[2, 0].item() == torch.finfo(torch.float32).max  # 3.3e38 * 1.1 overflows: clamped
    assert torch.equal(a_hat[3], torch.zeros(3))
    # Stats are finite on the same input.
    stats = rlsd_stats(adv, logp_s, logp_t, mask, lam=0.5)
    assert all(math.isfinite(v) for v in stats.values())


def test_rlsd_token_advantages_is_detached_float32_and_respects_float_masks():
    adv = torch.tensor([1.0], requires_grad=True)
    logp_s = torch.zeros(1, 2, dtype=torch.bfloat16, requires_grad=True)
    logp_t = torch.tensor([[0.1, 0.0]], dtype=torch.bfloat16)
    a_hat = rlsd_token_advantages(adv, logp_s, logp_t, torch.tensor([[1.0, 0.0]]), lam=1.0)
    assert not a_hat.requires_grad and a_hat.dtype == torch.float32
    assert a_hat[0, 1].item() == 0.0 and a_hat[0, 0].item() > 1.0


def test_rlsd_token_advantages_validation():
    adv, logp_s, logp_t, mask = hand_example()
    for eps_w in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="eps_w"):
            rlsd_token_advantages(adv, logp_s, logp_t, mask, lam=0.5, eps_w=eps_w)
    with pytest.raises(ValueError, match="lam"):
        rlsd_token_advantages(adv, logp_s, logp_t, mask, lam=1.5)
    with pytest.raises(ValueError, match="finite"):
        rlsd_token_advantages(torch.tensor([NAN, 1.0, 0.0]), logp_s, logp_t, mask, lam=0.5)
    with pytest.raises(ValueError, match=r"advantages must be \[B\]"):
        rlsd_token_advantages(adv[:2], logp_s, logp_t, mask, lam=0.5)
    with pytest.raises(ValueError, match="logp_teacher"):
        rlsd_token_advantages(adv, logp_s, logp_t[:, :4], mask, lam=0.5)


# --------------------------------------------------------------------------------------------
# Section 6: rlsd_stats
# --------------------------------------------------------------------------------------------


def test_rlsd_stats_hand_example():
    adv, logp_s, logp_t, mask = hand_example()
    stats = rlsd_stats(adv, logp_s, logp_t, mask, lam=0.5)
    e1, em1 = math.e, math.exp(-1)
    # 14 masked tokens; the 10 of rows 0 and 1 are reweighted. In each of those rows the five
    # x values are {0.1, -0.1, 1, -1, 0} (in some order).
    f_row = F01 + FM01 + 1.1 + 0.9 + 1.0  # sum of the mix factors of one reweighted row
    expected = {
        "rlsd/lambda": 0.5,
        "rlsd/adv_mean": (2 - 1 + 0) / 3,
        "rlsd/adv_abs_mean": (2 + 1 + 0) / 3,
        "rlsd/delta_mean": 0.3 / 14,
        "rlsd/w_raw_mean": 2 * (E01 + EM01 + e1 + em1 + 1) / 10,
        "rlsd/w_clipped_mean": 2 * (E01 + EM01 + 1.2 + 0.8 + 1) / 10,
        "rlsd/clip_low_ratio_reweighted": 2 / 10,
        "rlsd/clip_high_ratio_reweighted": 2 / 10,
        "rlsd/w_moved_ratio_reweighted": 8 / 10,
        # the paper's denominator: all 14 response tokens, A = 0 ones counting as unclipped
        "rlsd/clip_low_ratio_all": 2 / 14,
        "rlsd/clip_high_ratio_all": 2 / 14,
        "rlsd/w_moved_ratio_all": 8 / 14,
        "rlsd/adv_hat_mean": (2 * f_row - f_row) / 14,
        "rlsd/adv_hat_abs_mean": (2 * f_row + f_row) / 14,
        "rlsd/adv_hat_over_adv": 2 * f_row / 10,
        # row 0 has A > 0, row 1 A < 0: the same five factors each
        "rlsd/adv_hat_over_adv_pos": f_row / 5,
        "rlsd/adv_hat_over_adv_neg": f_row / 5,
        # the 10 raw w, sorted: e^-1 e^-1 e^-.1 e^-.1 1 1 e^.1 e^.1 e e; linear quantiles at
        # positions 0.9, 4.5 and 8.1 fall between equal neighbours
        "rlsd/w_q10": em1,
        "rlsd/w_q50": 1.0,
        "rlsd/w_q90": e1,
    }
    assert set(stats) == set(expected)
    for key, value in expected.items():
        assert stats[key] == pytest.approx(value, rel=1e-6), key
    assert all(isinstance(v, float) for v in stats.values())
    # Spot values: w_raw_mean 1.2192338, adv_hat_mean 0.3575003, adv_hat_over_adv 1.0010008.
    assert stats["rlsd/w_raw_mean"] == pytest.approx(1.2192338, rel=1e-6)
    assert stats["rlsd/adv_hat_mean"] == pytest.approx(0.3575003, rel=1e-6)
    assert stats["rlsd/adv_hat_over_adv"] == pytest.approx(1.0010008, rel=1e-6)


def test_rlsd_stats_delta_mean_counts_scored_rows_only():
    # The trainer skips the teacher on A = 0 rows; their placeholder log-probs (row 2's 0.3
    # here) must not enter delta_mean. Rows 0 and 1 have deltas summing to 0.
    adv, logp_s, logp_t, mask = hand_example()
    scored = torch.tensor([True, True, False])
    stats = rlsd_stats(adv, logp_s, logp_t, mask, lam=0.5, scored=scored)
    assert stats["rlsd/delta_mean"] == 0.0
    everything = rlsd_stats(adv, logp_s, logp_t, mask, lam=0.5)
    assert everything["rlsd/delta_mean"] == pytest.approx(0.3 / 14)
    assert {k: v for k, v in stats.items() if k != "rlsd/delta_mean"} == {
        k: v for k, v in everything.items() if k != "rlsd/delta_mean"
    }


def test_rlsd_stats_negative_only_and_empty_sets():
    adv, logp_s, logp_t, mask = hand_example()
    stats = rlsd_stats(adv, logp_s, logp_t, mask, lam=0.5, negative_only=True)
    # Only row 1 is reweighted (5 tokens): 2 of its 5 clipped, 4 moved.
    assert stats["rlsd/clip_low_ratio_reweighted"] == pytest.approx(1 / 5)
    assert stats["rlsd/w_moved_ratio_reweighted"] == pytest.approx(4 / 5)
    assert stats["rlsd/clip_low_ratio_all"] == pytest.approx(1 / 14)
    assert stats["rlsd/w_moved_ratio_all"] == pytest.approx(4 / 14)
    # Over the 10 tokens with A != 0: row 0 at ratio 1, row 1 at its mix factors.
    f_row = F01 + FM01 + 1.1 + 0.9 + 1.0
    assert stats["rlsd/adv_hat_over_adv"] == pytest.approx((5 + f_row) / 10, rel=1e-6)
    # No masked token and no nonzero advantage: every mean is 0.0, not NaN.
    empty = rlsd_stats(torch.zeros(3), logp_s, logp_t, torch.zeros(3, 5), lam=0.25)
    assert empty["rlsd/lambda"] == 0.25
    quantiles = {k for k in empty if k.startswith("rlsd/w_q")}
    assert all(v == 0.0 for k, v in empty.items() if k != "rlsd/lambda" and k not in quantiles)
    assert quantiles and all(empty[k] == 1.0 for k in quantiles)  # no reweighted token: w = 1


def test_rlsd_stats_w_raw_is_capped():
    # delta = 100 for A > 0: e^100 would dominate any mean; the log is capped at 30.
    stats = rlsd_stats(
        torch.tensor([1.0]), torch.zeros(1, 1), torch.tensor([[100.0]]), torch.ones(1, 1), 0.5
    )
    assert stats["rlsd/w_raw_mean"] == pytest.approx(math.exp(30))
    assert stats["rlsd/clip_high_ratio_all"] == stats["rlsd/clip_high_ratio_reweighted"] == 1.0


# --------------------------------------------------------------------------------------------
# Section 3: clipped_policy_loss
# --------------------------------------------------------------------------------------------
# Hand example: logp_old = 0, rho = exp(logp_new); A = [1, -1]; row 1's last token padded.
# eps_low = 0.2, eps_high = 0.28 (clip to [0.8, 1.28]), c_dual = 3.
#   row 0 (A = 1):  l = max(-rho, -clip(rho)):
#     rho 1.5 -> max(-1.5, -1.28) = -1.28 (high clip)   rho 0.5 -> max(-0.5, -0.8) = -0.5
#     rho 1.0 -> -1.0
#   row 1 (A = -1): l = max(rho, clip(rho)), then min(l, 3):
#     rho 4.0 -> min(4, 3) = 3 (dual clip)            rho 0.5 -> max(0.5, 0.8) = 0.8 (low clip)
# Sum over the 5 tokens: -1.28 - 0.5 - 1.0 + 3 + 0.8 = 1.02.


def policy_example() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    rho = torch.tensor([[1.5, 0.5, 1.0], [4.0, 0.5, 1.1]])
    logp_new = rho.log().requires_grad_(True)
    return (
        logp_new,
        torch.zeros(2, 3),
        torch.tensor([1.0, -1.0]),
        torch.tensor([[1, 1, 1], [1, 1, 0]]),
    )


def test_clipped_policy_loss_token_mean_and_metrics():
    logp_new, logp_old, adv, mask = policy_example()
    loss, metrics = clipped_policy_loss(logp_new, logp_old, adv, mask)
    assert loss.item() == pytest.approx(1.02 / 5, rel=1e-6)
    assert metrics == pytest.approx(
        {"clip/low_ratio": 1 / 5, "clip/high_ratio": 1 / 5, "clip/dual_ratio": 1 / 5}
    )
    # Gradient: only the two unclipped row-0 tokens carry one, d(-rho)/dlogp = -rho, over 5.
    loss.backward()
    close(logp_new.grad, [[0.0, -0.5 / 5, -1.0 / 5], [0.0, 0.0, 0.0]])


def test_clipped_policy_loss_aggregations():
    logp_new, logp_old, adv, mask = policy_example()
    # Row means: -2.78 / 3 and 3.8 / 2 = 1.9; their mean.
    loss, _ = clipped_policy_loss(logp_new, logp_old, adv, mask, aggregation="seq_mean_token_mean")
    assert loss.item() == pytest.approx((-2.78 / 3 + 1.9) / 2, rel=1e-6)
    # Dr. GRPO: 1.02 / (B * max_len) = 1.02 / 8.
    loss, _ = clipped_policy_loss(
        logp_new, logp_old, adv, mask, aggregation="seq_sum_norm", max_len=4
    )
    assert loss.item() == pytest.approx(1.02 / 8, rel=1e-6)


def test_clipped_policy_loss_without_dual_clip_and_token_advantages():
    logp_new, logp_old, adv, mask = policy_example()
    # Without the dual clip rho = 4 contributes 4 instead of 3: (1.02 + 1) / 5.
    loss, metrics = clipped_policy_loss(logp_new, logp_old, adv, mask, c_dual=None)
    assert loss.item() == pytest.approx(2.02 / 5, rel=1e-6)
    assert metrics["clip/dual_ratio"] == 0.0
    # [B, T] advantages equal to the broadcast [B] ones give the same loss.
    loss_bt, _ = clipped_policy_loss(logp_new, logp_old, adv[:, None].expand(2, 3), mask)
    assert loss_bt.item() == pytest.approx(1.02 / 5, rel=1e-6)


def test_clipped_policy_loss_ratio_clamp_and_padding():
    # log-ratio 50 is clamped to 20: rho = e^20; with A = -1 and no dual clip l = e^20.
    # The padded slot holds -inf in both log-probs: no NaN in the loss or the gradient.
    logp_new = torch.tensor([[50.0, -INF]], requires_grad=True)
    logp_old = torch.tensor([[0.0, -INF]])
    loss, _ = clipped_policy_loss(
        logp_new, logp_old, torch.tensor([-1.0]), torch.tensor([[1, 0]]), c_dual=None
    )
    assert loss.item() == pytest.approx(math.exp(20), rel=1e-5)
    loss.backward()
    assert torch.isfinite(logp_new.grad).all()
    # Empty mask: 0, still differentiable.
    loss, metrics = clipped_policy_loss(
        logp_new,
        logp_old,
        torch.tensor([1.0]),
        torch.zeros(1, 2),
        aggregation="seq_mean_token_mean",
    )
    assert loss.item() == 0.0 and loss.requires_grad and metrics["clip/low_ratio"] == 0.0


def test_clamp_log_ratio_by_hand():
    new = torch.tensor([[0.1, -150.0, -1.0, -2.0]], requires_grad=True)
    old = torch.tensor([[-0.3, -1.0, -25.0, -2.0 + 20.0]])
    out = clamp_log_ratio(new, old)
    # inside [-20, 20]: new itself, bit for bit; outside: old +- 20
    assert out[0, 0].item() == new[0, 0].item() and out[0, 3].item() == new[0, 3].item()
    close(out.detach(), [[0.1, -21.0, -5.0, -2.0]])
    close(
        torch.exp(out - old).detach(), [[math.exp(0.4), math.exp(-20), math.exp(20), math.exp(-20)]]
    )
    out.sum().backward()  # a clamped token's ratio carries no gradient, as torch.clamp's
    close(new.grad, [[1.0, 0.0, 0.0, 1.0]])


def test_clipped_policy_loss_is_float32_for_bfloat16_inputs():
    logp_new, logp_old, adv, mask = policy_example()
    loss, _ = clipped_policy_loss(logp_new.detach().bfloat16(), logp_old.bfloat16(), adv, mask)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(1.02 / 5, rel=1e-2)  # bf16 rounding of the log-probs


def test_clipped_policy_loss_validation():
    logp_new, logp_old, adv, mask = policy_example()
    with pytest.raises(ValueError, match="max_len"):
        clipped_policy_loss(logp_new, logp_old, adv, mask, aggregation="seq_sum_norm")
    with pytest.raises(ValueError, match="aggregation"):
        clipped_policy_loss(logp_new, logp_old, adv, mask, aggregation="sum")
    with pytest.raises(ValueError, match="c_dual"):
        clipped_policy_loss(logp_new, logp_old, adv, mask, c_dual=0.5)
    with pytest.raises(ValueError, match="advantages"):
        clipped_policy_loss(logp_new, logp_old, torch.ones(3), mask)


# --------------------------------------------------------------------------------------------
# Section 5: generalized_jsd and the sampled-token variant
# --------------------------------------------------------------------------------------------
# Hand example, V = 2: student logits [0, 0] -> p_S = [1/2, 1/2];
# teacher logits [ln 3, 0] -> p_T = [3/4, 1/4].

KL_T_S = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # forward KL, 0.1308122
KL_S_T = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)  # reverse KL, 0.1438410
# beta = 0.5: m = [5/8, 3/8]; JSD = (KL(T||m) + KL(S||m)) / 2 = 0.0338221.
KL_T_M = 0.75 * math.log(0.75 / 0.625) + 0.25 * math.log(0.25 / 0.375)
KL_S_M = 0.5 * math.log(0.5 / 0.625) + 0.5 * math.log(0.5 / 0.375)
# beta = 0.25: m = 0.25 p_T + 0.75 p_S = [9/16, 7/16]; JSD = 0.25 KL(T||m) + 0.75 KL(S||m).
KL_T_M25 = 0.75 * math.log(0.75 / (9 / 16)) + 0.25 * math.log(0.25 / (7 / 16))
KL_S_M25 = 0.5 * math.log(0.5 / (9 / 16)) + 0.5 * math.log(0.5 / (7 / 16))


def jsd_example() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor([[[0.0, 0.0]]]), torch.tensor([[[math.log(3.0), 0.0]]])


@pytest.mark.parametrize(
    ("beta", "expected"),
    [
        (0.0, KL_T_S),
        (1.0, KL_S_T),
        (0.5, 0.5 * KL_T_M + 0.5 * KL_S_M),
        (0.25, 0.25 * KL_T_M25 + 0.75 * KL_S_M25),
    ],
)
def test_generalized_jsd_hand_example(beta, expected):
    student, teacher = jsd_example()
    value = generalized_jsd(student, teacher, torch.ones(1, 1), beta=beta)
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_generalized_jsd_spot_values():
    student, teacher = jsd_example()
    mask = torch.ones(1, 1)
    assert generalized_jsd(student, teacher, mask, beta=0.0).item() == pytest.approx(0.1308122)
    assert generalized_jsd(student, teacher, mask, beta=1.0).item() == pytest.approx(0.1438410)
    assert generalized_jsd(student, teacher, mask, beta=0.5).item() == pytest.approx(0.0338221)


def test_generalized_jsd_limits_equal_direct_kl_on_random_logits():
    g = torch.Generator().manual_seed(0)
    student = torch.randn(2, 3, 7, generator=g)
    teacher = torch.randn(2, 3, 7, generator=g)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    ps, pt = student.softmax(-1), teacher.softmax(-1)
    kl_fwd = (pt * (pt.log() - ps.log())).sum(-1)  # KL(teacher || student), [B, T]
    kl_rev = (ps * (ps.log() - pt.log())).sum(-1)  # KL(student || teacher)
    m = mask.bool()
    assert generalized_jsd(student, teacher, mask, beta=0.0).item() == pytest.approx(
        kl_fwd[m].mean().item(), rel=1e-5
    )
    assert generalized_jsd(student, teacher, mask, beta=1.0).item() == pytest.approx(
        kl_rev[m].mean().item(), rel=1e-5
    )
    # beta = 0.5 is symmetric in the two distributions.
    assert generalized_jsd(student, teacher, mask).item() == pytest.approx(
        generalized_jsd(teacher, student, mask).item(), rel=1e-5
    )


def test_generalized_jsd_zero_for_identical_logits_and_mask_respected():
    logits = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(1))
    for beta in (0.0, 0.5, 1.0):
        assert generalized_jsd(logits, logits.clone(), torch.ones(2, 3), beta=beta).abs() < 1e-6
    # A second, padded position with NaN logits changes nothing, not even the gradient.
    student, teacher = jsd_example()
    student = torch.cat([student, torch.full((1, 1, 2), NAN)], dim=1).requires_grad_(True)
    teacher = torch.cat([teacher, torch.tensor([[[9.0, -9.0]]])], dim=1)
    value = generalized_jsd(student, teacher, torch.tensor([[1, 0]]), beta=0.0)
    assert value.item() == pytest.approx(KL_T_S, rel=1e-5)
    value.backward()
    assert torch.isfinite(student.grad).all() and torch.equal(student.grad[0, 1], torch.zeros(2))


def test_generalized_jsd_temperature_and_gradient_only_to_student():
    # Teacher logits [2 ln 3, 0] at temperature 2 are [ln 3, 0]; student [0, 0] unchanged.
    student = torch.zeros(1, 1, 2, requires_grad=True)
    teacher = torch.tensor([[[2 * math.log(3.0), 0.0]]], requires_grad=True)
    value = generalized_jsd(student, teacher, torch.ones(1, 1), beta=0.0, temperature=2.0)
    assert value.item() == pytest.approx(KL_T_S, rel=1e-5)
    value.backward()
    assert teacher.grad is None
    # d KL(T||S) / d z_S = (p_S - p_T) / temperature = ([0.5, 0.5] - [0.75, 0.25]) / 2.
    close(student.grad[0, 0], [-0.125, 0.125])


def test_generalized_jsd_handles_minus_inf_logits():
    # A third vocabulary entry banned (-inf) in both: p = 0 there, so every value equals the
    # V = 2 hand example, and the backward stays finite.
    student, teacher = jsd_example()
    student = torch.cat([student, torch.full((1, 1, 1), -INF)], dim=-1).requires_grad_(True)
    teacher = torch.cat([teacher, torch.full((1, 1, 1), -INF)], dim=-1)
    for beta, expected in ((0.0, KL_T_S), (1.0, KL_S_T), (0.5, 0.5 * KL_T_M + 0.5 * KL_S_M)):
        student.grad = None
        value = generalized_jsd(student, teacher, torch.ones(1, 1), beta=beta)
        assert value.item() == pytest.approx(expected, rel=1e-5)
        value.backward()
        assert torch.isfinite(student.grad).all()


def test_generalized_jsd_empty_mask_and_validation():
    student, teacher = jsd_example()
    student.requires_grad_(True)
    value = generalized_jsd(student, teacher, torch.zeros(1, 1))
    assert value.item() == 0.0
    value.backward()
    with pytest.raises(ValueError, match="beta"):
        generalized_jsd(student, teacher, torch.ones(1, 1), beta=1.5)
    with pytest.raises(ValueError, match="temperature"):
        generalized_jsd(student, teacher, torch.ones(1, 1), temperature=0.0)


def test_sampled_token_distill_advantages():
    logp_s = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, -INF, -INF]], requires_grad=True)
    logp_t = torch.tensor([[-0.5, -3.0, -INF], [-1.0, -INF, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    a_hat = sampled_token_distill_advantages(logp_s, logp_t, mask)
    f32max = torch.finfo(torch.float32).max
    # delta = logp_T - logp_S; -inf at a real token saturates to -max; padded slots are 0.
    assert torch.equal(a_hat, torch.tensor([[0.5, -1.0, -f32max], [-0.5, 0.0, 0.0]]))
    assert not a_hat.requires_grad and a_hat.dtype == torch.float32


# --------------------------------------------------------------------------------------------
# Section 7: leak_flags / leak_rate
# --------------------------------------------------------------------------------------------

PRIVILEGED = "We first note that the interior angles of a triangle always sum to 180 degrees."


def test_leak_flags_phrases_and_copies():
    responses = [
        "As the Reference Solution shows, x = 3.",  # phrase, case-insensitive
        "Using THE  HINT, we get 4.",  # phrase across a double space
        "Angles:  the interior angles of a\n triangle always sum to 180, so x = 60.",  # copy
        "The angles of a triangle sum to 180, so x = 60.",  # paraphrase, 22-char overlap
        "The interior angles of a triangle always sum to 180.",  # copy, but no privileged text
    ]
    privileged = [None, None, PRIVILEGED, PRIVILEGED, None]
    assert leak_flags(responses, privileged) == [True, True, True, False, False]
    # The longest shared span is " the interior angles of a triangle always sum to 180", 52
    # characters once whitespace is collapsed; the paraphrase shares " angles of a triangle ", 22.
    assert leak_flags(responses[2:3], privileged[2:3], min_copy_chars=52) == [True]
    assert leak_flags(responses[2:3], privileged[2:3], min_copy_chars=53) == [False]
    assert leak_flags(responses[3:4], privileged[3:4], min_copy_chars=22) == [True]
    assert leak_flags(responses[3:4], privileged[3:4], min_copy_chars=23) == [False]
    assert leak_rate(responses, privileged) == pytest.approx(3 / 5)


def test_leak_flags_custom_phrases_and_edge_cases():
    assert leak_flags(["see the oracle"], [None], phrases=["The Oracle"]) == [True]
    assert leak_flags(["the hint"], [None], phrases=[]) == [False]
    assert "reference solution" in DEFAULT_LEAK_PHRASES and "the hint" in DEFAULT_LEAK_PHRASES
    assert leak_rate([], []) == 0.0
    with pytest.raises(ValueError, match="same length"):
        leak_flags(["a"], [])
    with pytest.raises(ValueError, match="min_copy_chars"):
        leak_flags(["a"], ["a"], min_copy_chars=0)
