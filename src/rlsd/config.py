"""`RLSDConfig`: TRL's `GRPOConfig` plus the RLSD knobs, with the paper's defaults.

A comparison between algorithms differs in the single field `algorithm`; everything else
(data, model, seeds, step budget, sampling, optimiser) stays as configured.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import GRPOConfig

from rlsd.teacher.prompt import DEFAULT_TEACHER_TEMPLATE


@dataclass(frozen=True)
class AlgorithmSpec:
    """What one algorithm of spec section 5 is made of: the config, the trainer and
    `rlsd compare` read these fields and never branch on an algorithm's name."""

    name: str
    uses_reward: bool  # the verifier's GRPO term (A from rewards) is in the loss
    reweights: bool  # A_hat = A * mix(w): per-token advantages from the teacher (rlsd)
    distills: bool  # a distillation term (full-vocabulary divergence, or A_hat = delta)
    separate_teacher: bool  # the teacher is another model on the plain prompt (opd)
    default_teacher_sync: int  # teacher_sync_steps when the user gives none
    teacher_cost: float  # teacher forward per step relative to a GRPO step (compare estimate)
    description: str


# teacher_cost: rlsd's teacher (shared prefix, A = 0 rows skipped) measured at 0.11 of a GRPO
# step on the tiny default (benchmarks/cost.py, 2026-11-28); opsd / opd / grpo_opsd measured
# +29% in rlsd 0.1 with the full-sequence teacher and an extra student forward (an upper bound).
_SPECS = (
    AlgorithmSpec("rlsd", True, True, False, False, 10, 0.11, "GRPO direction, teacher magnitude"),
    AlgorithmSpec("grpo", True, False, False, False, 0, 0.0, "verifier reward only"),
    AlgorithmSpec("opsd", False, False, True, False, 0, 0.29, "self-distillation, no reward"),
    AlgorithmSpec("grpo_opsd", True, False, True, False, 0, 0.29, "GRPO + alpha * OPSD"),
    AlgorithmSpec("opd", False, False, True, True, 0, 0.29, "distillation from a separate model"),
)
ALGORITHM_SPECS: dict[str, AlgorithmSpec] = {spec.name: spec for spec in _SPECS}
ALGORITHMS = tuple(ALGORITHM_SPECS)


@dataclass(frozen=True)
class EstimatorSpec:
    """A magnitude estimator of `algorithm="rlsd"` (`RLSDConfig.rlsd_estimator`): the direction
    stays `sign(A)`, the weight's clip and lambda mix stay the paper's, only `delta` changes
    (`rlsd.objectives.estimator_delta`). The trainer reads these fields, never the name."""

    name: str
    negative_context: bool  # a second teacher pass, with a wrong (or shuffled) context
    uses_student: bool  # delta involves the student's own log-prob
    source: str  # where it comes from


_ESTIMATORS = (
    EstimatorSpec("rlsd", False, True, "RLSD, arXiv 2604.03128: log P_T - log P_S"),
    EstimatorSpec("cepo", True, False, "CEPO, arXiv 2605.19436: log P_T+ - log P_T-"),
    EstimatorSpec(
        "contrastive",
        True,
        True,
        "RLCSD, arXiv 2606.11709: (log P_T - log P_S) - beta (log P_T- - log P_S)",
    ),
)
ESTIMATOR_SPECS: dict[str, EstimatorSpec] = {spec.name: spec for spec in _ESTIMATORS}
PRIVILEGED_SOURCES = ("reference", "peer")
NEGATIVE_CONTEXTS = ("wrong", "shuffled")
# TRL loss types that accept `[B, T]` advantages token by token (vespo and luspo reduce the
# advantage per sequence and would silently discard the token weights).
TOKEN_LEVEL_LOSSES = ("dapo", "grpo", "bnpo", "dr_grpo", "cispo", "sapo")


@dataclass
class RLSDConfig(GRPOConfig):
    r"""Configuration of [`RLSDTrainer`]: every `GRPOConfig` field plus the ones below.

    Defaults reproduce the paper's released training code (spec sections 2-4): token-mean loss
    (`loss_type="dapo"`), PPO clip 0.2 / 0.28, dual clip 3.0 (`delta`), no KL (`beta=0`),
    8 generations per prompt, `eps_w = 0.2`, lambda 0.5 decaying linearly to 0 over 50 steps,
    and a teacher snapshot refreshed every 10 optimiser steps.
    """

    algorithm: str = field(
        default="rlsd",
        metadata={
            "help": "One of 'rlsd' (default), 'grpo', 'opsd', 'grpo_opsd', 'opd' (spec section 5). "
            "'opd' needs `teacher_model_name_or_path`."
        },
    )
    rlsd_lambda: float = field(
        default=0.5,
        metadata={
            "help": "lam_0, the initial weight of the teacher's evidence (spec section 2.4)."
        },
    )
    rlsd_lambda_decay_steps: int = field(
        default=50,
        metadata={
            "help": "Optimiser steps over which lambda decays linearly to 0 (paper: 50). "
            "0 keeps lambda constant at `rlsd_lambda`."
        },
    )
    rlsd_lambda_warmup_steps: int = field(
        default=0,
        metadata={"help": "Steps during which lambda rises linearly from 0 to lam_0 (default 0)."},
    )
    rlsd_eps_w: float = field(
        default=0.2,
        metadata={
            "help": "Clip range of the token weight w to [1 - eps_w, 1 + eps_w] (paper: 0.2)."
        },
    )
    rlsd_negative_only: bool = field(
        default=False,
        metadata={"help": "Reweight only responses with A < 0; A >= 0 keeps A_hat = A."},
    )
    rlsd_estimator: str = field(
        default="rlsd",
        metadata={
            "help": "How the teacher's token evidence delta is measured: 'rlsd' (the paper, "
            "log P_T - log P_S), 'cepo' (CEPO, arXiv 2605.19436: log P_T+ - log P_T-, the "
            "teacher shown the reference against the same teacher shown a wrong answer) or "
            "'contrastive' (RLCSD, arXiv 2606.11709: the gap under the reference minus "
            "rlsd_contrastive_beta times the gap under a wrong or shuffled one). The direction "
            "sign(A), the clip and the lambda mix are the paper's for all three."
        },
    )
    rlsd_negative_context: str = field(
        default="wrong",
        metadata={
            "help": "The second context of 'cepo' and 'contrastive': 'wrong' (CEPO's rule: per "
            "group, the final answer of the lowest-scoring rejected rollout, ties the first; a "
            "group without one gets the reference, delta = 0) or 'shuffled' (another group's "
            "privileged context)."
        },
    )
    rlsd_contrastive_beta: float = field(
        default=1.0,
        metadata={"help": "beta of 'contrastive' (0 = rlsd exactly, 1 = the student cancels)."},
    )
    privileged_source: str = field(
        default="reference",
        metadata={
            "help": "What the teacher is shown: 'reference' (the row's privileged context, the "
            "paper) or 'peer' (HSD, arXiv 2606.15576: the group's highest-scoring successful "
            "rollout, so the privileged text is in the student's own style; a group without a "
            "success falls back to the reference, counted in rlsd/peer_fallback_ratio)."
        },
    )
    rlsd_success_threshold: float = field(
        default=0.5,
        metadata={
            "help": "A rollout whose total reward reaches this is a success (peer), below it a "
            "rejected one (cepo's wrong answer); CEPO's code uses 0.5."
        },
    )
    rlsd_skip_zero_advantage: bool = field(
        default=True,
        metadata={
            "help": "Skip the teacher forward for responses with A = 0 (all-equal groups), where "
            "A_hat = 0 whatever the teacher says. Off only to measure what the skip saves."
        },
    )
    rlsd_student_logp: str = field(
        default="old",
        metadata={
            "help": "Student log-prob in delta: 'old' (rollout-time policy, the released code) or "
            "'current' (the loss forward's own log-probs, detached). Equal, and both free, with "
            "one optimiser step per rollout batch; they differ with num_iterations > 1."
        },
    )
    teacher_sync_steps: int | None = field(
        default=None,
        metadata={
            "help": "Refresh the teacher snapshot every N optimiser steps (paper: 10; the released "
            "script: 20). 0 = never (fixed initial policy), 1 = live policy weights without a "
            "copy. Default: 10 for rlsd, 0 for opsd and grpo_opsd (the OPSD paper)."
        },
    )
    teacher_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "The separate teacher of 'opd' (must share the student's tokenizer)."},
    )
    teacher_template: str = field(
        default=DEFAULT_TEACHER_TEMPLATE,
        metadata={
            "help": "Teacher prompt template with {question} and {privileged} (spec section 4). "
            "A `teacher_prompt` column in the data replaces the whole teacher prompt."
        },
    )
    teacher_instruction: str = field(
        default="",
        metadata={"help": "The task's answer-format instruction appended after the template."},
    )
    teacher_max_prompt_length: int | None = field(
        default=None,
        metadata={
            "help": "Token budget of the teacher prompt. Over it, the privileged text is cut "
            "(its last tokens, marked with `teacher_truncation_marker`); the template, system "
            "prompt, question and response are never cut (spec section 4). A row that cannot "
            "fit even with no privileged text raises an error naming it."
        },
    )
    teacher_truncation_marker: str = field(
        default=" [...]",
        metadata={"help": "Appended to privileged text cut by `teacher_max_prompt_length`."},
    )
    teacher_shared_prefix: bool = field(
        default=True,
        metadata={
            "help": "Score the teacher prompt once per group (its KV cache), then all responses "
            "that share it: the same log-probs as the full forward within float32 round-off, "
            "without encoding the privileged context G times. Falls back to the full forward "
            "by itself (and says so once) where the model's cache cannot be shared."
        },
    )
    opsd_divergence: str = field(
        default="jsd",
        metadata={
            "help": "OPSD/OPD loss: 'jsd' (generalised Jensen-Shannon over the vocabulary, "
            "default), 'forward_kl', 'reverse_kl', or 'sampled_token' (A_hat = delta in the "
            "policy-gradient loss)."
        },
    )
    opsd_beta: float = field(
        default=0.5,
        metadata={"help": "Interpolation of the generalised JSD (0.5 = symmetric JSD)."},
    )
    grpo_opsd_alpha: float = field(
        default=1.0,
        metadata={
            "help": "Weight of the OPSD term in 'grpo_opsd' (not given in the paper; 1.0 is our "
            "choice)."
        },
    )
    log_privileged: bool = field(
        default=False,
        metadata={"help": "Allow privileged context into logs and sample files (off by default)."},
    )

    # Paper defaults that differ from TRL's (spec section 3).
    epsilon_high: float | None = field(
        default=0.28, metadata={"help": "Upper PPO clip (paper: 0.28, clip-higher)."}
    )
    delta: float | None = field(
        default=3.0, metadata={"help": "Dual-clip constant c_dual for A < 0 (paper: 3.0)."}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.algorithm not in ALGORITHM_SPECS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}.")
        if self.teacher_sync_steps is None:
            self.teacher_sync_steps = self.spec.default_teacher_sync
        if self.teacher_sync_steps < 0:
            raise ValueError(
                "teacher_sync_steps must be >= 0 (0 = never refresh, 1 = live weights)."
            )
        if not 0.0 < self.rlsd_eps_w < 1.0:
            raise ValueError(f"rlsd_eps_w must be in (0, 1), got {self.rlsd_eps_w}.")
        if not 0.0 <= self.rlsd_lambda <= 1.0:
            raise ValueError(
                f"rlsd_lambda must be in [0, 1] (a mixing weight), got {self.rlsd_lambda}."
            )
        if self.rlsd_lambda_decay_steps < 0 or self.rlsd_lambda_warmup_steps < 0:
            raise ValueError("rlsd_lambda_decay_steps and rlsd_lambda_warmup_steps must be >= 0.")
        if self.rlsd_estimator not in ESTIMATOR_SPECS:
            raise ValueError(
                f"rlsd_estimator must be one of {tuple(ESTIMATOR_SPECS)}, got "
                f"{self.rlsd_estimator!r}."
            )
        if self.rlsd_negative_context not in NEGATIVE_CONTEXTS:
            raise ValueError(f"rlsd_negative_context must be one of {NEGATIVE_CONTEXTS}.")
        if self.privileged_source not in PRIVILEGED_SOURCES:
            raise ValueError(f"privileged_source must be one of {PRIVILEGED_SOURCES}.")
        changed = self.rlsd_estimator != "rlsd" or self.privileged_source != "reference"
        if changed and not self.spec.reweights:
            raise ValueError(
                "rlsd_estimator and privileged_source choose how algorithm='rlsd' reweights; "
                f"algorithm={self.algorithm!r} does not reweight. Set algorithm='rlsd'."
            )
        if self.rlsd_student_logp not in ("old", "current"):
            raise ValueError("rlsd_student_logp must be 'old' or 'current'.")
        if self.opsd_divergence not in ("jsd", "forward_kl", "reverse_kl", "sampled_token"):
            raise ValueError(
                "opsd_divergence must be 'jsd', 'forward_kl', 'reverse_kl' or 'sampled_token'."
            )
        if not 0.0 <= self.opsd_beta <= 1.0:
            raise ValueError(f"opsd_beta must be in [0, 1], got {self.opsd_beta}.")
        if self.spec.uses_reward and self.spec.distills and self.opsd_divergence == "sampled_token":
            raise ValueError(
                f"algorithm={self.algorithm!r} adds a full-vocabulary divergence to GRPO; "
                "opsd_divergence='sampled_token' only applies to 'opsd' and 'opd'. Use 'jsd', "
                "'forward_kl' or 'reverse_kl'."
            )
        if self.teacher_max_prompt_length is not None and self.teacher_max_prompt_length < 1:
            raise ValueError("teacher_max_prompt_length must be >= 1 (or None for no limit).")
        if self.spec.separate_teacher and not self.teacher_model_name_or_path:
            raise ValueError(
                f"algorithm={self.algorithm!r} needs `teacher_model_name_or_path` (a separate "
                "teacher)."
            )
        if not self.spec.separate_teacher and self.teacher_model_name_or_path:
            raise ValueError(
                "`teacher_model_name_or_path` is only used by algorithm='opd'; the self-teacher of "
                f"{self.algorithm!r} is the policy itself. Remove it or set algorithm='opd'."
            )
        if self.uses_token_advantages and self.loss_type not in TOKEN_LEVEL_LOSSES:
            raise ValueError(
                f"loss_type={self.loss_type!r} reduces advantages per sequence and would discard "
                f"RLSD's per-token weights; use one of {TOKEN_LEVEL_LOSSES} (paper: 'dapo')."
            )
        liger = self.liger_kernel_config or {}
        if self.uses_token_advantages and (
            getattr(self, "use_liger_loss", False) or liger.get("fused_linear_cross_entropy")
        ):
            raise ValueError(
                "Liger's fused GRPO loss takes one advantage per sequence; it cannot apply RLSD's "
                "per-token advantages. Disable the Liger loss."
            )

    @property
    def spec(self) -> AlgorithmSpec:
        return ALGORITHM_SPECS[self.algorithm]

    @property
    def estimator(self) -> EstimatorSpec:
        return ESTIMATOR_SPECS[self.rlsd_estimator]

    @property
    def changes_contexts(self) -> bool:
        """Whether the teacher is shown anything but each row's own reference (a peer
        rollout, or a second, negative context)."""
        return self.privileged_source != "reference" or self.estimator.negative_context

    @property
    def uses_teacher(self) -> bool:
        return self.spec.reweights or self.spec.distills

    @property
    def uses_token_advantages(self) -> bool:
        """Whether TRL's policy-gradient term gets `[B, T]` advantages (rlsd, or opsd/opd with
        `opsd_divergence="sampled_token"`: `A_hat = delta`)."""
        return self.spec.reweights or self.sampled_token_distillation

    @property
    def sampled_token_distillation(self) -> bool:
        return self.spec.distills and self.opsd_divergence == "sampled_token"

    @property
    def vocab_distillation(self) -> bool:
        """Whether the loss has a full-vocabulary divergence term (opsd/opd/grpo_opsd)."""
        return self.spec.distills and self.opsd_divergence != "sampled_token"
