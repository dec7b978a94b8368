"""The mathematics of RLSD and its baselines: pure functions on tensors.

Every function here implements one section of ``RLSD_SPEC.md`` (named in its docstring), takes
plain tensors, holds no trainer state and runs on a CPU in milliseconds, so each one is checked
against hand-computed numbers in ``tests/test_objectives.py``.

Shapes are written in the docstrings: ``B`` responses in the batch, ``T`` response positions
(right-padded; ``mask`` marks the real tokens), ``V`` the vocabulary, ``N = P * G`` rewards for
``P`` prompts with ``G`` responses each.

What is here:
  * section 1: ``group_advantages`` (the GRPO direction ``A``),
  * section 2: ``lambda_at``, ``rlsd_token_advantages`` (the magnitude ``A_hat``), and the
    magnitude estimators published since the paper, which keep its direction ``sign(A)``
    and its mix and change only ``delta``: ``cepo_token_advantages`` (CEPO) and
    ``contrastive_token_advantages`` (RLCSD's contrastive gap); ``estimator_delta`` is the
    one place where each estimator's ``delta`` is written,
  * section 3: ``clipped_policy_loss`` (the clipped surrogate and its aggregations, written
    out as the reference that TRL's loss is tested against: training itself uses TRL's
    ``_compute_loss``, whose equality with this function ``tests/test_trainer_loss.py``
    checks),
  * section 5: ``generalized_jsd``, ``distillation_loss`` (its token mean over the optimiser
    batch, TRL's normaliser), ``masked_entropy`` and ``sampled_token_distill_advantages``
    (OPSD / OPD),
  * section 6: ``rlsd_stats`` (what to log about the reweighting),
  * section 7: ``leak_flags`` and ``leak_rate`` (the leakage diagnostic).

Choices the spec leaves open, made here and documented where they occur:
  * Non-finite inputs never produce NaN or inf in an advantage: ``delta`` is zeroed at padded
    positions, NaN ``delta`` at a real token counts as "no evidence" (``w = 1``), and +-inf is
    clamped to the largest finite float32. Non-finite *advantages* are a caller's bug and raise.
  * ``A_hat`` is computed as ``A * (1 + lam * (w_clip - 1))``, algebraically the spec's
    ``A * ((1 - lam) + lam * w_clip)``, so that ``lam = 0`` or ``w_clip = 1`` return ``A``
    bit-exactly (RLSD after the decay *is* GRPO, not GRPO up to rounding).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "DEFAULT_LEAK_PHRASES",
    "ESTIMATORS",
    "cepo_token_advantages",
    "clipped_policy_loss",
    "contrastive_token_advantages",
    "clamp_log_ratio",
    "distillation_loss",
    "estimator_delta",
    "generalized_jsd",
    "group_advantages",
    "lambda_at",
    "leak_flags",
    "leak_rate",
    "masked_entropy",
    "rlsd_stats",
    "rlsd_token_advantages",
    "sampled_token_distill_advantages",
    "token_advantages",
]

_STD_EPS = 1e-6  # spec section 1: A = (R - mean) / (std + 1e-6)
_LOG_RATIO_CLAMP = 20.0  # spec section 3: rho = exp(clamp(logp_new - logp_old, -20, 20))
_W_RAW_LOG_CAP = 30.0  # rlsd/w_raw_mean logs exp(min(x, 30)) <= 1.07e13 so it stays finite
_W_MOVED_TOL = 1e-3  # rlsd/w_moved_ratio: |w_clip - 1| > 1e-3 counts as "moved"
_FLOAT32_MAX = torch.finfo(torch.float32).max

_SCALES = ("group", "batch", "none")
_AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_sum_norm")

DEFAULT_LEAK_PHRASES: tuple[str, ...] = (
    "reference solution",
    "reference answer",
    "the reference",
    "the hint",
    "given answer",
    "provided solution",
    "provided answer",
    "according to the solution",
    "the solution says",
)


# --------------------------------------------------------------------------------------------
# Private helpers
# --------------------------------------------------------------------------------------------


def _check_shapes(
    logp_student: torch.Tensor,
    logp_teacher: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor | None = None,
) -> None:
    """Raise ValueError unless the log-probs and mask are ``[B, T]`` and advantages ``[B]``."""
    if mask.dim() != 2:
        raise ValueError(f"mask must be [B, T], got shape {tuple(mask.shape)}")
    for name, t in (("logp_student", logp_student), ("logp_teacher", logp_teacher)):
        if t.shape != mask.shape:
            raise ValueError(
                f"{name} has shape {tuple(t.shape)} but mask has {tuple(mask.shape)}; "
                "both must be [B, T] over the same response positions"
            )
    if advantages is not None and advantages.shape != mask.shape[:1]:
        raise ValueError(
            f"advantages must be [B] = [{mask.shape[0]}] (one scalar per response), "
            f"got shape {tuple(advantages.shape)}"
        )


def _check_unit_interval(name: str, value: float, *, open_interval: bool = False) -> None:
    ok = 0.0 < value < 1.0 if open_interval else 0.0 <= value <= 1.0
    if not ok:
        bounds = "(0, 1)" if open_interval else "[0, 1]"
        raise ValueError(f"{name} must be in {bounds}, got {value}")


def _sanitized_delta(
    logp_student: torch.Tensor, logp_teacher: torch.Tensor, mask_BT: torch.Tensor
) -> torch.Tensor:
    """``delta = stopgrad(logp_T - logp_S)`` in float32, finite everywhere. ``[B, T]``.

    Padded positions (``mask_BT`` False) are 0 whatever they held (``-inf - -inf`` is NaN).
    At real tokens NaN becomes 0 (no evidence, ``w = 1``) and +-inf the largest finite float32,
    which every later clamp maps to the intended bound.
    """
    delta = logp_teacher.detach().float() - logp_student.detach().float()
    delta = torch.nan_to_num(delta, nan=0.0, posinf=_FLOAT32_MAX, neginf=-_FLOAT32_MAX)
    return torch.where(mask_BT, delta, torch.zeros_like(delta))


def _reweight_sign(advantages_B: torch.Tensor, negative_only: bool) -> torch.Tensor:
    """``sign(A)`` as float32 ``[B]``; 0 for rows that are not reweighted.

    With ``negative_only`` rows with ``A >= 0`` get 0, hence ``w = 1`` and ``A_hat = A``.
    """
    sign_B = torch.sign(advantages_B.detach().float())
    if negative_only:
        sign_B = torch.where(sign_B < 0, sign_B, torch.zeros_like(sign_B))
    return sign_B


def _mix_factor(
    sign_B: torch.Tensor, delta_BT: torch.Tensor, lam: float, eps_w: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Spec 2.2-2.3: returns ``(x, w_clip, factor)``, each ``[B, T]`` float32.

    ``x = sign(A) * delta`` (finite), ``w_clip = exp(clamp(x, log(1-eps_w), log(1+eps_w)))`` and
    ``factor = 1 + lam * (w_clip - 1)`` so that ``A_hat = A * factor``.
    """
    x = sign_B[:, None] * delta_BT  # finite: delta is finite and sign is in {-1, 0, 1}
    lo, hi = math.log1p(-eps_w), math.log1p(eps_w)
    # The clip is done in log space (no overflow); the outer clamp only removes exp()'s
    # rounding so the bounds are hit exactly at 1 - eps_w and 1 + eps_w.
    w_clip = torch.exp(x.clamp(lo, hi)).clamp(1.0 - eps_w, 1.0 + eps_w)
    factor = 1.0 + lam * (w_clip - 1.0)
    return x, w_clip, factor


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean of ``values`` where ``mask`` is True, in float64; 0.0 when nothing qualifies."""
    count = int(mask.sum().item())
    if count == 0:
        return 0.0
    return float(values.double()[mask].sum().item() / count)


# --------------------------------------------------------------------------------------------
# Section 1: the GRPO group advantage
# --------------------------------------------------------------------------------------------


def group_advantages(
    rewards: torch.Tensor | Sequence[float], group_size: int, scale: str = "group"
) -> torch.Tensor:
    """Spec section 1 (Eq. 1): the GRPO advantage of each response within its group.

    Args:
        rewards: ``[N]`` with ``N = P * G``, the ``G`` responses of a prompt contiguous
            (``rewards_PG`` flattened row-major). NaN marks an unscorable completion.
        group_size: ``G``.
        scale: how the centred reward is scaled:
            ``"group"`` (default, the paper): ``(R_i - mean_g) / (std_g + 1e-6)``;
            ``"batch"``: the mean is still per group, the std is that of all (non-NaN) rewards
            of the batch (TRL's ``scale_rewards="batch"``);
            ``"none"``: ``R_i - mean_g`` (Dr. GRPO, no std division).

    Every std is the unbiased (n - 1) one. NaN rewards are left out of their group's mean and
    std (and of the batch std) and get ``A = 0``; a group whose valid rewards are all equal
    (or that has fewer than two) gets exactly 0, as does a batch std of fewer than two rewards.
    The arithmetic runs in float64.

    Returns:
        ``[N]`` float32 advantages.
    """
    if scale not in _SCALES:
        raise ValueError(f"scale must be one of {_SCALES}, got {scale!r}")
    rewards_N = torch.as_tensor(rewards).detach().to(torch.float64)
    if rewards_N.dim() != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {tuple(rewards_N.shape)}")
    if (
        isinstance(group_size, bool)
        or not isinstance(group_size, numbers.Integral)
        or group_size < 1
    ):
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    group_size = int(group_size)
    n_total = rewards_N.numel()
    if n_total % group_size != 0:
        raise ValueError(
            f"got {n_total} rewards, not divisible by group_size={group_size}: rewards must hold "
            "exactly G completions per prompt, contiguous"
        )

    rewards_PG = rewards_N.view(-1, group_size)
    valid_PG = ~torch.isnan(rewards_PG)
    r0_PG = torch.where(valid_PG, rewards_PG, torch.zeros_like(rewards_PG))
    n_P1 = valid_PG.sum(dim=1, keepdim=True).to(torch.float64)
    mean_P1 = r0_PG.sum(dim=1, keepdim=True) / n_P1.clamp_min(1.0)
    centred_PG = torch.where(valid_PG, rewards_PG - mean_P1, torch.zeros_like(rewards_PG))

    if scale == "group":
        var_P1 = centred_PG.pow(2).sum(dim=1, keepdim=True) / (n_P1 - 1.0).clamp_min(1.0)
        adv_PG = centred_PG / (var_P1.sqrt() + _STD_EPS)
    elif scale == "batch":
        valid_rewards = rewards_N[~torch.isnan(rewards_N)]
        batch_std = valid_rewards.std() if valid_rewards.numel() > 1 else rewards_N.new_zeros(())
        adv_PG = centred_PG / (batch_std + _STD_EPS)
    else:
        adv_PG = centred_PG

    # All-equal groups: exactly 0, even where the float mean of equal values is not exact.
    big = torch.finfo(torch.float64).max
    hi_P1 = torch.where(valid_PG, rewards_PG, torch.full_like(rewards_PG, -big)).amax(1, True)
    lo_P1 = torch.where(valid_PG, rewards_PG, torch.full_like(rewards_PG, big)).amin(1, True)
    degenerate_P1 = (hi_P1 <= lo_P1) | (n_P1 < 2)
    adv_PG = torch.where(degenerate_P1 | ~valid_PG, torch.zeros_like(adv_PG), adv_PG)
    return adv_PG.reshape(-1).to(torch.float32)


# --------------------------------------------------------------------------------------------
# Section 2: the self-teacher's token evidence
# --------------------------------------------------------------------------------------------


def lambda_at(
    step: int, lam0: float = 0.5, decay_steps: int | None = 50, warmup_steps: int = 0
) -> float:
    """Spec section 2.4: the mixing weight ``lam_k`` at the 1-based optimiser step ``k = step``.

    * Warmup (``warmup_steps = W > 0``): for ``k <= W``, ``lam_k = lam0 * k / W``.
    * Then the linear decay: ``lam_k = lam0 * max(0, 1 - (k - W) / decay_steps)``, so with the
      defaults ``lam_1 = 0.49``, ``lam_25 = 0.25`` and ``lam_k = 0`` from ``k = 50`` on.
    * ``decay_steps = 0`` or ``None``: no decay, ``lam_k = lam0`` after the warmup (the spec's
      "constant lambda" option).
    """
    if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 1:
        raise ValueError(
            f"step is the 1-based optimiser step and must be an int >= 1, got {step!r}"
        )
    _check_unit_interval("lam0", lam0)
    if decay_steps is not None and decay_steps < 0:
        raise ValueError(f"decay_steps must be >= 0 (0 or None = constant), got {decay_steps}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")

    if warmup_steps > 0 and step <= warmup_steps:
        return lam0 * step / warmup_steps
    if not decay_steps:
        return float(lam0)
    return lam0 * max(0.0, 1.0 - (step - warmup_steps) / decay_steps)


@torch.no_grad()
def rlsd_token_advantages(
    advantages: torch.Tensor,
    logp_student: torch.Tensor,
    logp_teacher: torch.Tensor,
    mask: torch.Tensor,
    lam: float,
    eps_w: float = 0.2,
    negative_only: bool = False,
) -> torch.Tensor:
    """Spec section 2 (Eqs. 13-15 and the lambda mix): the token advantages ``A_hat``.

    ``delta = stopgrad(logp_teacher - logp_student)`` (float32),
    ``w_clip = exp(clamp(sign(A) * delta, log(1 - eps_w), log(1 + eps_w)))`` and
    ``A_hat = A * ((1 - lam) + lam * w_clip)``, zero where ``mask == 0``.

    Args:
        advantages: ``[B]`` the group advantages ``A`` (section 1); must be finite.
        logp_student: ``[B, T]`` student (rollout-time by default) log-prob of each sampled token.
        logp_teacher: ``[B, T]`` teacher log-prob of the same tokens.
        mask: ``[B, T]`` nonzero at real response tokens.
        lam: ``lam_k`` in ``[0, 1]`` (see ``lambda_at``); ``lam = 0`` returns ``A`` exactly.
        eps_w: clip half-width, in ``(0, 1)`` so that ``log(1 - eps_w)`` exists.
        negative_only: reweight only rows with ``A < 0``; rows with ``A >= 0`` keep ``A_hat = A``.

    Never NaN or inf: padded positions are ignored whatever they hold, non-finite ``delta``
    is sanitised (module docstring) and the product is clamped to the finite float32 range.

    Returns:
        ``[B, T]`` float32, detached.
    """
    return token_advantages(advantages, logp_student, logp_teacher, mask, lam, eps_w, negative_only)


def token_advantages(
    advantages: torch.Tensor,
    logp_student: torch.Tensor,
    logp_teacher: torch.Tensor,
    mask: torch.Tensor,
    lam: float,
    eps_w: float = 0.2,
    negative_only: bool = False,
    estimator: str = "rlsd",
    logp_teacher_wrong: torch.Tensor | None = None,
    beta: float = 1.0,
) -> torch.Tensor:
    """``A_hat`` ``[B, T]`` of any magnitude estimator (``estimator_delta``), with RLSD's weight,
    clip and mix: what the trainer calls. ``estimator="rlsd"`` is ``rlsd_token_advantages``;
    ``"cepo"`` and ``"contrastive"`` are ``cepo_token_advantages`` and
    ``contrastive_token_advantages`` (plus ``negative_only``). Same guarantees."""
    delta = estimator_delta(estimator, logp_student, logp_teacher, logp_teacher_wrong, mask, beta)
    return _token_advantages(advantages, delta, mask, lam, eps_w, negative_only)


def _checked_advantages(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if advantages.shape != mask.shape[:1]:
        raise ValueError(
            f"advantages must be [B] = [{mask.shape[0]}] (one scalar per response), "
            f"got shape {tuple(advantages.shape)}"
        )
    adv_B = advantages.detach().float()
    if not bool(torch.isfinite(adv_B).all()):
        bad = torch.nonzero(~torch.isfinite(adv_B)).flatten().tolist()
        raise ValueError(f"advantages must be finite; non-finite at rows {bad}")
    return adv_B


def _token_advantages(
    advantages: torch.Tensor,
    delta_BT: torch.Tensor,
    mask: torch.Tensor,
    lam: float,
    eps_w: float,
    negative_only: bool,
) -> torch.Tensor:
    """``A * (1 + lam * (w_clip - 1))`` from a finite ``delta_BT`` (``estimator_delta``)."""
    _check_unit_interval("lam", lam)
    _check_unit_interval("eps_w", eps_w, open_interval=True)
    adv_B = _checked_advantages(advantages, mask)
    mask_BT = mask != 0
    sign_B = _reweight_sign(adv_B, negative_only)
    _, _, factor_BT = _mix_factor(sign_B, delta_BT, lam, eps_w)
    # |factor| <= 1 + eps_w, so only an advantage near float32's max can overflow: clamp it.
    adv_hat_BT = (adv_B[:, None] * factor_BT).clamp(-_FLOAT32_MAX, _FLOAT32_MAX)
    return torch.where(mask_BT, adv_hat_BT, torch.zeros_like(adv_hat_BT))


# The magnitude estimators: what `delta` each one measures (`estimator_delta`). The config's
# table (`rlsd.config.ESTIMATOR_SPECS`) says which teacher contexts each needs.
ESTIMATORS = ("rlsd", "cepo", "contrastive")


def estimator_delta(
    estimator: str,
    logp_student: torch.Tensor,
    logp_teacher: torch.Tensor,
    logp_teacher_wrong: torch.Tensor | None,
    mask: torch.Tensor,
    beta: float = 1.0,
) -> torch.Tensor:
    """The token evidence ``delta`` ``[B, T]`` of each magnitude estimator, float32, detached,
    finite, 0 at padded positions (the sanitising of ``rlsd_token_advantages``):

    * ``rlsd`` (the paper, Eq. 13): ``log P_T - log P_S``;
    * ``cepo`` (CEPO, arXiv 2605.19436): ``log P_T+ - log P_T-``, the teacher shown the
      reference against the same teacher shown a wrong answer; the student is not used;
    * ``contrastive`` (RLCSD, arXiv 2606.11709): ``(log P_T - log P_S) - beta * (log P_T- -
      log P_S)``, the gap under the true hint minus ``beta`` times the gap under a wrong (or
      shuffled) one, which cancels the drift any privileged text causes; ``beta = 0`` is
      ``rlsd`` exactly.

    ``logp_teacher_wrong`` (``[B, T]``, the teacher's log-probs under the wrong context) is
    needed by ``cepo`` and ``contrastive`` and ignored by ``rlsd``."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    _check_shapes(logp_student, logp_teacher, mask)
    mask_BT = mask != 0
    if estimator == "rlsd":
        return _sanitized_delta(logp_student, logp_teacher, mask_BT)
    if logp_teacher_wrong is None:
        raise ValueError(f"estimator {estimator!r} needs logp_teacher_wrong")
    if logp_teacher_wrong.shape != mask.shape:
        raise ValueError(
            f"logp_teacher_wrong has shape {tuple(logp_teacher_wrong.shape)} but mask has "
            f"{tuple(mask.shape)}; both must be [B, T] over the same response positions"
        )
    if estimator == "cepo":
        return _sanitized_delta(logp_teacher_wrong, logp_teacher, mask_BT)
    gap_true = _sanitized_delta(logp_student, logp_teacher, mask_BT)
    gap_wrong = _sanitized_delta(logp_student, logp_teacher_wrong, mask_BT)
    delta = gap_true - float(beta) * gap_wrong  # finite inputs; the difference may overflow
    return torch.nan_to_num(delta, nan=0.0, posinf=_FLOAT32_MAX, neginf=-_FLOAT32_MAX)


def cepo_token_advantages(
    advantages: torch.Tensor,
    logp_teacher: torch.Tensor,
    logp_teacher_wrong: torch.Tensor,
    mask: torch.Tensor,
    lam: float,
    eps_w: float = 0.2,
) -> torch.Tensor:
    """CEPO's token advantages (arXiv 2605.19436; its code: ``apply_cepo_weighting`` in
    ``verl/trainer/core_algos.py``): ``delta = stopgrad(log P_T+ - log P_T-)``,
    ``w = clip(exp(sign(A) * delta), 1 - eps_w, 1 + eps_w)``, ``A_hat = A * ((1 - lam) + lam
    * w)``, zero where ``mask == 0``. A group with no rejected rollout is scored with the
    reference on both sides (``logp_teacher_wrong = logp_teacher``: ``delta = 0``, ``w = 1``,
    ``A_hat = A``, i.e. GRPO for that group), as CEPO's trainer does.

    Shapes and guarantees as ``rlsd_token_advantages`` (``advantages`` ``[B]``, the rest
    ``[B, T]``; float32, detached, never NaN; ``lam = 0`` returns ``A`` exactly); the clip is
    taken in log space, which gives CEPO's values without its overflow."""
    delta = estimator_delta("cepo", logp_teacher, logp_teacher, logp_teacher_wrong, mask)
    return _token_advantages(advantages, delta, mask, lam, eps_w, False)


def contrastive_token_advantages(
    advantages: torch.Tensor,
    logp_student: torch.Tensor,
    logp_teacher: torch.Tensor,
    logp_teacher_wrong: torch.Tensor,
    mask: torch.Tensor,
    lam: float,
    eps_w: float = 0.2,
    beta: float = 1.0,
) -> torch.Tensor:
    """The contrastive gap (RLCSD, arXiv 2606.11709) as RLSD's magnitude: ``delta = (log P_T -
    log P_S) - beta * (log P_T- - log P_S)``, then RLSD's weight, clip and mix
    (``rlsd_token_advantages``). ``beta = 0`` gives ``rlsd_token_advantages`` exactly; with
    ``beta = 1`` the student cancels and ``delta = log P_T - log P_T-`` (CEPO's evidence).

    Shapes and guarantees as ``rlsd_token_advantages``."""
    delta = estimator_delta(
        "contrastive", logp_student, logp_teacher, logp_teacher_wrong, mask, beta
    )
    return _token_advantages(advantages, delta, mask, lam, eps_w, False)


@torch.no_grad()
def rlsd_stats(
    advantages: torch.Tensor,
    logp_student: torch.Tensor,
    logp_teacher: torch.Tensor,
    mask: torch.Tensor,
    lam: float,
    eps_w: float = 0.2,
    negative_only: bool = False,
    scored: torch.Tensor | None = None,
    estimator: str = "rlsd",
    logp_teacher_wrong: torch.Tensor | None = None,
    beta: float = 1.0,
) -> dict[str, float]:
    """Spec section 6: the reweighting's diagnostics, for the arguments of
    ``rlsd_token_advantages`` (same shapes, same validation); with ``estimator`` (and
    ``logp_teacher_wrong``, ``beta``), of that estimator's ``delta`` (``estimator_delta``).

    ``scored`` (``[B]`` bool, default all rows) marks the rows whose ``logp_teacher`` was
    computed; the trainer skips the teacher where it cannot matter (``A = 0``), and those
    rows' placeholder log-probs must not enter ``delta_mean``.

    Token sets (all means return 0.0 when their set is empty):
      * *masked*: tokens with ``mask != 0``, all response tokens (the paper's denominator for
        its 3-6% clip ratios: tokens with ``A = 0`` count as unclipped).
      * *scored*: masked tokens of scored rows.
      * *reweighted*: masked tokens of rows whose weight is applied, i.e. ``A != 0`` (and,
        with ``negative_only``, ``A < 0``). Without ``negative_only`` these are exactly the
        masked tokens of responses with ``A != 0``.

    Keys:
      * ``rlsd/lambda``: ``lam``.
      * ``rlsd/adv_mean``, ``rlsd/adv_abs_mean``: mean of ``A``, ``|A|`` over the ``B``
        responses.
      * ``rlsd/delta_mean``: mean of ``delta`` over scored tokens.
      * ``rlsd/w_raw_mean``: mean over reweighted tokens of ``exp(min(sign(A) * delta, 30))``;
        the cap at ``e^30`` (about 1.07e13) keeps it finite and only bites on absurd deltas.
      * ``rlsd/w_clipped_mean``: mean of ``w_clip`` over reweighted tokens.
      * ``rlsd/clip_low_ratio_all``, ``rlsd/clip_high_ratio_all``: share of all masked tokens
        whose raw ``w`` is below ``1 - eps_w`` / above ``1 + eps_w`` (compared in log space);
        ``..._reweighted``: the same share of reweighted tokens.
      * ``rlsd/w_moved_ratio_all``, ``rlsd/w_moved_ratio_reweighted``: share of masked /
        reweighted tokens with ``|w_clip - 1| > 1e-3``.
      * ``rlsd/adv_hat_mean``, ``rlsd/adv_hat_abs_mean``: mean of ``A_hat``, ``|A_hat|`` over
        masked tokens.
      * ``rlsd/adv_hat_over_adv``: mean of ``|A_hat| / |A|`` over masked tokens of responses
        with ``A != 0`` (including, under ``negative_only``, the ``A > 0`` ones at ratio 1).
        It equals the mix factor ``1 + lam * (w_clip - 1)``, which is what is averaged.
        ``..._pos`` / ``..._neg``: the same over responses with ``A > 0`` (correct ones, for a
        binary verifier) / ``A < 0``.
      * ``rlsd/w_q10``, ``rlsd/w_q50``, ``rlsd/w_q90``: quantiles of the raw ``w`` (capped
        at ``e^30``) over reweighted tokens, the spread the clip then cuts (1.0 when there
        are none).
    """
    delta_BT = estimator_delta(
        estimator, logp_student, logp_teacher, logp_teacher_wrong, mask, beta
    )
    adv_hat_BT = _token_advantages(advantages, delta_BT, mask, lam, eps_w, negative_only)
    adv_B = advantages.detach().float()
    mask_BT = mask != 0
    sign_B = _reweight_sign(adv_B, negative_only)
    x_BT, w_clip_BT, factor_BT = _mix_factor(sign_B, delta_BT, lam, eps_w)

    reweighted_BT = mask_BT & (sign_B != 0)[:, None]
    nonzero_adv_BT = mask_BT & (adv_B != 0)[:, None]
    scored_BT = mask_BT if scored is None else mask_BT & (scored != 0).to(mask_BT.device)[:, None]
    w_raw_BT = torch.exp(x_BT.double().clamp(max=_W_RAW_LOG_CAP))
    all_B = torch.ones_like(adv_B, dtype=torch.bool)
    # x = 0 (w = 1) on tokens that are not reweighted, so over all tokens they count unclipped.
    low_BT = (x_BT < math.log1p(-eps_w)).float()
    high_BT = (x_BT > math.log1p(eps_w)).float()
    moved_BT = ((w_clip_BT - 1.0).abs() > _W_MOVED_TOL).float()
    return {
        "rlsd/lambda": float(lam),
        "rlsd/adv_mean": _masked_mean(adv_B, all_B),
        "rlsd/adv_abs_mean": _masked_mean(adv_B.abs(), all_B),
        "rlsd/delta_mean": _masked_mean(delta_BT, scored_BT),
        "rlsd/w_raw_mean": _masked_mean(w_raw_BT, reweighted_BT),
        "rlsd/w_clipped_mean": _masked_mean(w_clip_BT, reweighted_BT),
        "rlsd/clip_low_ratio_all": _masked_mean(low_BT, mask_BT),
        "rlsd/clip_high_ratio_all": _masked_mean(high_BT, mask_BT),
        "rlsd/w_moved_ratio_all": _masked_mean(moved_BT, mask_BT),
        "rlsd/clip_low_ratio_reweighted": _masked_mean(low_BT, reweighted_BT),
        "rlsd/clip_high_ratio_reweighted": _masked_mean(high_BT, reweighted_BT),
        "rlsd/w_moved_ratio_reweighted": _masked_mean(moved_BT, reweighted_BT),
        "rlsd/adv_hat_mean": _masked_mean(adv_hat_BT, mask_BT),
        "rlsd/adv_hat_abs_mean": _masked_mean(adv_hat_BT.abs(), mask_BT),
        "rlsd/adv_hat_over_adv": _masked_mean(factor_BT.abs(), nonzero_adv_BT),
        "rlsd/adv_hat_over_adv_pos": _masked_mean(factor_BT.abs(), mask_BT & (adv_B > 0)[:, None]),
        "rlsd/adv_hat_over_adv_neg": _masked_mean(factor_BT.abs(), mask_BT & (adv_B < 0)[:, None]),
        **_quantiles("rlsd/w_q", w_raw_BT[reweighted_BT], (10, 50, 90)),
    }


def _quantiles(prefix: str, values: torch.Tensor, percents: Sequence[int]) -> dict[str, float]:
    """``{prefix + "10": q10, ...}`` of a 1-D tensor (1.0 each when it is empty: ``w = 1``)."""
    if values.numel() == 0:
        return {f"{prefix}{p}": 1.0 for p in percents}
    q = torch.quantile(
        values.double(), torch.tensor([p / 100 for p in percents], dtype=torch.float64)
    )
    return {f"{prefix}{p}": float(v) for p, v in zip(percents, q.tolist())}


# --------------------------------------------------------------------------------------------
# Section 3: the clipped surrogate loss (owns aggregation)
# --------------------------------------------------------------------------------------------


def clamp_log_ratio(logp_new: torch.Tensor, logp_old: torch.Tensor) -> torch.Tensor:
    """``logp_new`` with every token whose ``logp_new - logp_old`` leaves ``[-20, 20]`` replaced
    by ``logp_old + clamp(logp_new - logp_old, -20, 20)``, so that a loss which takes
    ``exp(logp_new - logp_old)`` (TRL's) gets spec section 3's
    ``rho = exp(clamp(logp_new - logp_old, -20, 20))``: finite, and, as a clamp does, no
    gradient through a clamped token's ratio. Tokens inside the range are ``logp_new`` itself,
    bit for bit (``torch.where``, not ``old + (new - old)``)."""
    log_ratio = logp_new - logp_old
    inside = log_ratio.abs() <= _LOG_RATIO_CLAMP
    clamped = logp_old + log_ratio.clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    return torch.where(inside, logp_new, clamped)


def clipped_policy_loss(
    logp_new: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    c_dual: float | None = 3.0,
    aggregation: str = "token_mean",
    max_len: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Spec section 3: the PPO-style clipped surrogate with dual clip, and its aggregation.

    Per token, with ``rho = exp(clamp(logp_new - logp_old, -20, 20))``:
    ``l = max(-A_hat * rho, -A_hat * clip(rho, 1 - eps_low, 1 + eps_high))``, and where
    ``A_hat < 0`` (and ``c_dual`` is not None) ``l = min(l, -A_hat * c_dual)``.

    Its aggregations (the spec's reference; training aggregates in TRL's loss, tested equal):
      * ``"token_mean"`` (default, the released code): sum over masked tokens / their count.
      * ``"seq_mean_token_mean"`` (the paper's equations): each response's token mean, then the
        mean over responses that have at least one masked token.
      * ``"seq_sum_norm"`` (Dr. GRPO): sum over masked tokens / ``(B * max_len)``.
    With no masked token the loss is 0 (still connected to the graph).

    Args:
        logp_new: ``[B, T]`` current policy log-probs (carries the gradient).
        logp_old: ``[B, T]`` rollout-time log-probs (treated as constants).
        advantages: ``[B]`` (broadcast over tokens) or ``[B, T]`` (``A_hat``); constants.
        mask: ``[B, T]`` nonzero at real response tokens.
        c_dual: dual-clip constant, > 1; ``None`` disables the dual clip.
        max_len: the constant length for ``"seq_sum_norm"`` (required there).

    Returns:
        ``(loss, metrics)``: ``loss`` a float32 scalar tensor; ``metrics`` the shares of masked
        tokens where a clip is active (its gradient is zero): ``clip/low_ratio`` (``A_hat < 0`` and
        ``rho < 1 - eps_low``), ``clip/high_ratio`` (``A_hat > 0`` and ``rho > 1 + eps_high``),
        ``clip/dual_ratio`` (``A_hat < 0`` and the dual bound is taken).
    """
    if aggregation not in _AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {_AGGREGATIONS}, got {aggregation!r}")
    if aggregation == "seq_sum_norm" and (max_len is None or max_len < 1):
        raise ValueError(f"aggregation='seq_sum_norm' needs max_len >= 1, got {max_len!r}")
    if eps_low < 0 or eps_high < 0:
        raise ValueError(f"eps_low and eps_high must be >= 0, got {eps_low}, {eps_high}")
    if c_dual is not None and c_dual <= 1.0:
        raise ValueError(f"c_dual must be > 1 (or None to disable the dual clip), got {c_dual}")
    if logp_new.shape != mask.shape or logp_old.shape != mask.shape or mask.dim() != 2:
        raise ValueError(
            f"logp_new {tuple(logp_new.shape)}, logp_old {tuple(logp_old.shape)} and mask "
            f"{tuple(mask.shape)} must all be the same [B, T]"
        )
    if advantages.dim() == 1:
        if advantages.shape[0] != mask.shape[0]:
            raise ValueError(f"advantages [B] must have B={mask.shape[0]}, got {advantages.shape}")
        advantages = advantages[:, None]
    elif advantages.shape != mask.shape:
        raise ValueError(f"advantages must be [B] or [B, T], got shape {tuple(advantages.shape)}")

    mask_BT = mask != 0
    logp_new = logp_new.float()  # the loss is computed in float32 whatever the model's dtype
    adv_BT = advantages.detach().float().expand_as(logp_new)
    # Padded positions may hold -inf - -inf = NaN: zero them before exp so no NaN reaches a grad.
    log_ratio = torch.where(
        mask_BT, logp_new - logp_old.detach().float(), torch.zeros_like(logp_new)
    )
    rho = torch.exp(log_ratio.clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP))
    loss_unclipped = -adv_BT * rho
    loss_clipped = -adv_BT * rho.clamp(1.0 - eps_low, 1.0 + eps_high)
    loss_BT = torch.maximum(loss_unclipped, loss_clipped)
    negative_BT = adv_BT < 0
    if c_dual is not None:
        dual_bound = -adv_BT * c_dual
        dual_BT = negative_BT & (loss_BT > dual_bound)
        loss_BT = torch.where(dual_BT, dual_bound, loss_BT)
    else:
        dual_BT = torch.zeros_like(mask_BT)
    loss_BT = torch.where(mask_BT, loss_BT, torch.zeros_like(loss_BT))

    if aggregation == "token_mean":
        loss = loss_BT.sum() / mask_BT.sum().clamp_min(1)
    elif aggregation == "seq_mean_token_mean":
        count_B = mask_BT.sum(dim=1)
        seq_mean_B = loss_BT.sum(dim=1) / count_B.clamp_min(1)
        loss = seq_mean_B.sum() / (count_B > 0).sum().clamp_min(1)
    else:
        assert max_len is not None  # validated above
        loss = loss_BT.sum() / (mask_BT.shape[0] * max_len)

    with torch.no_grad():
        rho_d = rho.detach()
        low_BT = negative_BT & (rho_d < 1.0 - eps_low)
        high_BT = (adv_BT > 0) & (rho_d > 1.0 + eps_high)
        metrics = {
            "clip/low_ratio": _masked_mean(low_BT.float(), mask_BT),
            "clip/high_ratio": _masked_mean(high_BT.float(), mask_BT),
            "clip/dual_ratio": _masked_mean(dual_BT.float(), mask_BT),
        }
    return loss, metrics


# --------------------------------------------------------------------------------------------
# Section 5: OPSD / OPD distillation
# --------------------------------------------------------------------------------------------


def _kl_rows(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """``KL(p || q) = sum_v p (log p - log q)`` over the last dim, for finite log-probs."""
    return (logp.exp() * (logp - logq)).sum(dim=-1)


def _finite_log_softmax(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``log_softmax(logits / temperature)`` in float32, with -inf raised to float32's min.

    A -inf logit (a banned token) has probability exactly 0 either way, but left at -inf it
    makes ``0 * (-inf - -inf)`` and the logsumexp of two -inf, both NaN in the backward.
    """
    logp = F.log_softmax(logits.float() / temperature, dim=-1)
    return logp.clamp_min(torch.finfo(torch.float32).min)


def generalized_jsd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    beta: float = 0.5,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Spec section 5 (OPSD): token mean over the mask of the generalised Jensen-Shannon
    divergence between teacher and student over the full vocabulary.

    Convention (identical to TRL's ``GKDTrainer.generalized_jsd_loss``, GKD paper Eq. 1):
    with ``p_S = softmax(student_logits / temperature)``, ``p_T`` likewise and the mixture
    ``m = beta * p_T + (1 - beta) * p_S``,
    ``JSD_beta = beta * KL(p_T || m) + (1 - beta) * KL(p_S || m)``.
    The endpoints are special-cased as TRL does (the formula itself tends to 0 there):
      * ``beta = 0``: ``KL(p_T || p_S)``, the forward KL (mode-covering);
      * ``beta = 1``: ``KL(p_S || p_T)``, the reverse KL (mode-seeking).
    ``beta = 0.5`` is the symmetric JSD, the OPSD default.

    Args:
        student_logits: ``[B, T, V]`` (carries the gradient).
        teacher_logits: ``[B, T, V]`` (detached here).
        mask: ``[B, T]`` nonzero at the positions to score; others are never read, so they may
            hold anything (even NaN).

    Returns:
        Scalar float32: the sum of per-token divergences over masked positions divided by their
        count (0 with a valid graph when the mask is empty). The mixture is formed in log space
        with ``logsumexp``; -inf logits (probability 0) are allowed.
    """
    _check_unit_interval("beta", beta)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 3:
        raise ValueError(
            f"student_logits {tuple(student_logits.shape)} and teacher_logits "
            f"{tuple(teacher_logits.shape)} must both be [B, T, V]"
        )
    if mask.shape != student_logits.shape[:2]:
        raise ValueError(
            f"mask must be [B, T] = {tuple(student_logits.shape[:2])}, got {mask.shape}"
        )

    mask_BT = mask != 0
    # Select the scored positions first: padded logits never enter the forward or the backward.
    logp_s_NV = _finite_log_softmax(student_logits[mask_BT], temperature)
    logp_t_NV = _finite_log_softmax(teacher_logits.detach()[mask_BT], temperature)

    if beta == 0.0:
        jsd_N = _kl_rows(logp_t_NV, logp_s_NV)
    elif beta == 1.0:
        jsd_N = _kl_rows(logp_s_NV, logp_t_NV)
    else:
        log_m_NV = torch.logsumexp(
            torch.stack([logp_t_NV + math.log(beta), logp_s_NV + math.log1p(-beta)]), dim=0
        )
        jsd_N = beta * _kl_rows(logp_t_NV, log_m_NV) + (1.0 - beta) * _kl_rows(logp_s_NV, log_m_NV)
    return jsd_N.sum() / max(jsd_N.numel(), 1)


def distillation_loss(
    divergence: torch.Tensor,
    mask: torch.Tensor,
    num_items_in_batch: torch.Tensor,
    num_processes: int = 1,
    gradient_accumulation_steps: int = 1,
    steps_per_generation: int = 1,
) -> torch.Tensor:
    """Spec section 5: one micro-batch's token-mean `divergence` (over its `mask`) as its share
    of the optimiser batch's token mean, with the normaliser of TRL's `dapo` loss:
    `divergence * n_tokens / (num_items_in_batch / num_processes * gradient_accumulation_steps
    / steps_per_generation)`, where `num_items_in_batch` counts the response tokens of the
    whole generation batch over all processes (pass 1 and 1 for the last two in evaluation).
    Summed over the micro-batches of an optimiser step (and averaged over processes, as DDP
    does), the result is the token mean over the optimiser batch."""
    normalizer = num_items_in_batch.clamp(min=1.0) / num_processes
    normalizer = normalizer * gradient_accumulation_steps / steps_per_generation
    return divergence * mask.float().sum() / normalizer


@torch.no_grad()
def masked_entropy(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) of `softmax(logits)` `[B, T, V]` over the positions of `mask`."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    mask = mask.float()
    return (entropy * mask).sum() / mask.sum().clamp(min=1)


@torch.no_grad()
def sampled_token_distill_advantages(
    logp_student: torch.Tensor, logp_teacher: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Spec section 5, OPSD sampled-token variant: ``A_hat[t] = delta[t]``.

    ``delta = stopgrad(logp_teacher - logp_student)`` in float32, 0 where ``mask == 0``; NaN at a
    real token becomes 0 and +-inf the largest finite float32 (module docstring).

    Args:
        logp_student, logp_teacher, mask: ``[B, T]``.

    Returns:
        ``[B, T]`` float32, detached, finite.
    """
    _check_shapes(logp_student, logp_teacher, mask)
    return _sanitized_delta(logp_student, logp_teacher, mask != 0)


# --------------------------------------------------------------------------------------------
# Section 7: the leakage diagnostic
# --------------------------------------------------------------------------------------------


def _normalise(text: str) -> str:
    """Lower-case and collapse every whitespace run to one space."""
    return " ".join(text.lower().split())


def _copies_span(response: str, privileged: str, min_chars: int) -> bool:
    """True if ``response`` and ``privileged`` share a substring of ``min_chars`` characters.

    Exact: they share one of length >= k iff they share one of length exactly k, so the
    response's k-grams go in a set and the privileged text's k-grams are looked up,
    O((len(response) + len(privileged)) * k).
    """
    if len(response) < min_chars or len(privileged) < min_chars:
        return False
    grams = {response[i : i + min_chars] for i in range(len(response) - min_chars + 1)}
    return any(
        privileged[i : i + min_chars] in grams for i in range(len(privileged) - min_chars + 1)
    )


def leak_flags(
    responses: list[str],
    privileged: list[str | None],
    phrases: Sequence[str] = DEFAULT_LEAK_PHRASES,
    min_copy_chars: int = 40,
) -> list[bool]:
    """Spec section 7: which evaluation responses refer to material they never saw.

    Response ``i`` leaks if, after lower-casing and collapsing whitespace in both texts,
    (a) it contains any of ``phrases``, or (b) it shares a verbatim span of at least
    ``min_copy_chars`` characters with ``privileged[i]`` (skipped when that is None).
    Matching is case-insensitive: a copied sentence does not stop being a copy because its
    first letter was capitalised.

    Args:
        responses: the ``B`` generated texts (generated WITHOUT the privileged context).
        privileged: the ``B`` privileged texts (or None) of the same examples.
        phrases: phrases that refer to unseen material (``DEFAULT_LEAK_PHRASES``).
        min_copy_chars: minimum length of a copied span, >= 1.
    """
    if len(responses) != len(privileged):
        raise ValueError(
            f"responses ({len(responses)}) and privileged ({len(privileged)}) must be the same "
            "length: one privileged text (or None) per response"
        )
    if min_copy_chars < 1:
        raise ValueError(f"min_copy_chars must be >= 1, got {min_copy_chars}")
    norm_phrases = [p for p in (_normalise(p) for p in phrases) if p]
    flags = []
    for response, priv in zip(responses, privileged, strict=True):
        text = _normalise(response)
        leaked = any(p in text for p in norm_phrases)
        if not leaked and priv:
            leaked = _copies_span(text, _normalise(priv), min_copy_chars)
        flags.append(leaked)
    return flags


def leak_rate(
    responses: list[str],
    privileged: list[str | None],
    phrases: Sequence[str] = DEFAULT_LEAK_PHRASES,
    min_copy_chars: int = 40,
) -> float:
    """Spec section 7: ``leak_rate``, the share of ``responses`` flagged by ``leak_flags``
    (same arguments); 0.0 for an empty list."""
    flags = leak_flags(responses, privileged, phrases, min_copy_chars)
    return sum(flags) / len(flags) if flags else 0.0
