"""`RLSDTrainer`: RLSD and its baselines as a thin layer over TRL's `GRPOTrainer`.

What TRL does, unchanged: sampling (HF generate or vLLM), reward computation, the PPO-style
clipped loss with dual clip and token-mean aggregation, distribution (accelerate), PEFT,
checkpoints and trackers. What this class adds (spec sections 1-6):

1. advantages recomputed exactly as spec section 1 (`rlsd.objectives.group_advantages`:
   unbiased std + 1e-6; TRL adds 1e-4) from the rewards TRL computed;
2. at generation time, the teacher's log-probs of the sampled tokens under the privileged
   prompt, from `rlsd.teacher.TeacherScorer` (the one entry into the teacher: its prompts,
   shared-prefix scoring, the snapshot's weights), scored again at loss time for a
   micro-batch trained after a sync inside its rollout;
3. at loss time, the per-token advantages `A_hat [B, T]` (rlsd; `A_hat = delta` for the
   sampled-token OPSD variant), computed inside TRL's loss right after its forward, from that
   forward's own log-probs (detached) or TRL's old log-probs when it has them, and with the
   lambda of the optimiser step the micro-batch feeds;
4. for `opsd` / `opd` / `grpo_opsd`: the full-vocabulary divergence to the teacher, added in
   `_compute_loss`;
5. fail-safe reward functions, step timings and the section-6 metrics.

Overridden TRL internals (checked by tests/test_trl_contract.py, pinned to TRL 1.16):
`_generate_and_score_completions`, `_calculate_rewards`, `_generate`, `_compute_loss`,
`_get_per_token_logps_and_entropies`, `_save_checkpoint`, `_load_optimizer_and_scheduler`,
`training_step`, `log`. The teacher's weights (build, sync, save, load) live in
`rlsd.teacher.TeacherSnapshot`; its refresh runs in `TeacherSyncCallback` at optimiser-step
boundaries. The per-token advantages reach TRL's loss through one hand-off (`_LossHandoff`),
set by `_compute_loss` and taken by the loss's own forward.

Skips (they cannot change the result): no teacher forward when lambda is 0 for every
optimiser step a generation batch feeds, and none for responses whose advantage is 0
(all-equal groups), since `A_hat = A * (...) = 0` there. Under several processes the skip
decisions are global, so every rank runs the same forwards.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from trl import GRPOTrainer

from rlsd.config import RLSDConfig
from rlsd.objectives import (
    clamp_log_ratio,
    distillation_loss,
    generalized_jsd,
    group_advantages,
    lambda_at,
    masked_entropy,
    rlsd_stats,
    sampled_token_distill_advantages,
    token_advantages,
)
from rlsd.prompts import IMAGE_INPUTS, TOKEN_TYPE_INPUTS, inline_images, privileged_or_none
from rlsd.rewards import fail_safe
from rlsd.teacher import (
    TEACHER_STATE_DIR,
    TeacherScorer,
    TeacherSnapshot,
    TeacherSyncCallback,
    group_contexts,
    skip_teacher_parameters,
)
from rlsd.teacher.scoring import full_logits

_INLINE_IMAGE_SCAN_ROWS = 64  # rows read at start-up for image parts inside the messages


@dataclass
class _LossHandoff:
    """What `_compute_loss` hands to TRL's loss forward (`_get_per_token_logps_and_entropies`,
    the one call with `compute_entropy`): the micro-batch whose `A` that forward turns into
    `A_hat` (None: no token advantages), and the rollout log-probs its ratio is clamped
    against (None: TRL has none, the ratio is 1)."""

    inputs: dict[str, Any] | None
    old_logps: torch.Tensor | None


class RLSDTrainer(GRPOTrainer):
    """TRL's `GRPOTrainer` with the self-teacher. Same constructor as `GRPOTrainer`; the
    dataset may carry `privileged_context` (else `answer`) and `teacher_prompt` columns.

    `trainer.teacher` is the `TeacherSnapshot` (None for grpo); `trainer.teacher_logps(...)`
    scores responses under the teacher."""

    _tag_names = ["trl", "grpo", "rlsd"]
    args: RLSDConfig

    def __init__(self, model, reward_funcs=None, args: RLSDConfig | None = None, **kwargs):
        if args is None:
            args = RLSDConfig("rlsd-output")
        if not isinstance(args, RLSDConfig):
            raise TypeError("RLSDTrainer needs an RLSDConfig (a GRPOConfig subclass).")
        if reward_funcs is not None:
            funcs = reward_funcs if isinstance(reward_funcs, list) else [reward_funcs]
            reward_funcs = [
                fail_safe(f) if callable(f) and not isinstance(f, str) else f for f in funcs
            ]
        # The teacher needs the privileged columns in every batch: keep the dataset's columns.
        args.remove_unused_columns = False
        super().__init__(model, reward_funcs=reward_funcs, args=args, **kwargs)
        self._check_images(kwargs.get("train_dataset"), kwargs.get("eval_dataset"))
        self._timings: dict[str, float] = defaultdict(float)
        self._rewards_per_func: torch.Tensor | None = None
        self._loss_handoff: _LossHandoff | None = None
        self.teacher: TeacherSnapshot | None = None
        self.teacher_scorer: TeacherScorer | None = None
        if args.uses_teacher:
            chat_template_kwargs: Any = self.chat_template_kwargs  # a dict (TRL parses JSON)
            self.teacher = TeacherSnapshot(
                args,
                self.accelerator,
                model=lambda: self.model,
                temperature=self.temperature,
                deepspeed=self.is_deepspeed_enabled,
                fsdp=self.is_fsdp_enabled,
            )
            self.teacher_scorer = TeacherScorer(
                self.teacher,
                args,
                self.processing_class,
                self.accelerator,
                forward=self._get_per_token_logps_and_entropies,
                temperature=self.temperature,
                timings=self._timings,
                log_metric=self._log_metric,
                render_kwargs={
                    "tools": self.tools,
                    "chat_template": self.chat_template,
                    **chat_template_kwargs,
                },
            )
            self.add_callback(TeacherSyncCallback(self.teacher, self._timings))
            generation = getattr(self, "vllm_generation", None)
            if generation is not None and self.teacher.kind == "adapter":
                # vLLM gets the policy's weights only, never the teacher adapter's
                iterate = generation._iter_named_params
                generation._iter_named_params = lambda: skip_teacher_parameters(iterate())

    def _check_images(self, *datasets) -> None:
        """A dataset with images (`image` / `images` columns, or image parts inside the first
        messages) needs a vision-language model and its processor: say so now, rather than
        train a model that never sees them."""
        if self._is_vlm:
            return
        for dataset in datasets:
            parts = list(dataset.values()) if isinstance(dataset, dict) else [dataset]
            for part in (p for p in parts if p is not None):
                columns = list(getattr(part, "column_names", None) or [])
                found = [f"image column {c!r}" for c in ("image", "images") if c in columns]
                if "prompt" in columns and _has_inline_images(part):
                    found.append("image parts in the prompt messages")
                if found:
                    raise ValueError(
                        f"The dataset has {' and '.join(found)}, but the model's processing "
                        f"class ({type(self.processing_class).__name__}) is a text tokenizer: "
                        "this model cannot take images. Use a vision-language model with its "
                        "processor (AutoProcessor), or drop the images."
                    )

    def _log_metric(self, name: str, value: float) -> None:
        self._metrics[self._mode()][name].append(value)

    # ----------------------------------------------------------------------------- teacher
    def _mode(self) -> str:
        return "train" if getattr(self.model, "training", False) else "eval"

    def _lambda(self, step: int) -> float:
        """lambda of the 1-based optimiser step `step` (spec section 2.4)."""
        args = self.args
        return lambda_at(
            step, args.rlsd_lambda, args.rlsd_lambda_decay_steps, args.rlsd_lambda_warmup_steps
        )

    def _lambda_ahead(self) -> float:
        """The largest lambda among the optimiser steps this generation batch feeds (one more
        step than a whole number of them, where generation and accumulation are not aligned):
        the teacher can be skipped only when all of them are 0."""
        first = self.state.global_step + 1
        if self._mode() == "eval":
            return self._lambda(first)
        micro_steps = int(self.args.steps_per_generation or 1) * self.num_iterations
        steps = math.ceil(micro_steps / self.args.gradient_accumulation_steps) + 1
        return max(self._lambda(first + i) for i in range(steps))

    def teacher_logps(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        logits_to_keep: int,
        images: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        """`[B, T]` float32 teacher log-probs of the last `T = logits_to_keep` tokens of
        `input_ids` (teacher prompt, left-padded, then the responses, right-padded); `images`:
        the image fields of the teacher prompts (`TeacherScorer.logps`)."""
        return self._scorer().logps(input_ids, attention_mask, logits_to_keep, images)

    def _scorer(self) -> TeacherScorer:
        if self.teacher_scorer is None:
            raise RuntimeError(f"algorithm={self.args.algorithm!r} has no teacher.")
        return self.teacher_scorer

    # ------------------------------------------------------------------------ rollout side
    def _generate(self, prompts):
        start = time.perf_counter()
        try:
            return super()._generate(prompts)
        finally:
            self._timings["generate"] += time.perf_counter() - start

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        start = time.perf_counter()
        rewards_per_func = super()._calculate_rewards(
            inputs, prompts, completions, completion_ids_list
        )
        self._timings["verify"] += time.perf_counter() - start
        self._rewards_per_func = rewards_per_func  # gathered over processes, [N_global, F]
        return rewards_per_func

    def _spec_advantages(self, local_size: int) -> torch.Tensor | None:
        """Spec section 1 advantages of this process's rows, from the gathered rewards."""
        if (
            self._rewards_per_func is None
            or self.multi_objective_aggregation != "sum_then_normalize"
        ):
            return None
        rewards = self._total_rewards()
        advantages = group_advantages(rewards, self._group_size(), scale=self.scale_rewards)
        start = self.accelerator.process_index * local_size
        return advantages[start : start + local_size]

    def _group_size(self) -> int:
        group = self.num_generations if self._mode() == "train" else self.num_generations_eval
        return int(group or 1)

    def _total_rewards(self) -> torch.Tensor:
        """`[N_global]` the weighted reward sum TRL computes (NaN where every reward is)."""
        assert self._rewards_per_func is not None
        rewards_per_func = self._rewards_per_func
        weights = self.reward_weights.to(rewards_per_func.device).unsqueeze(0)
        rewards = (rewards_per_func * weights).nansum(dim=1)
        rewards[torch.isnan(rewards_per_func).all(dim=1)] = float("nan")
        return rewards

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output = super()._generate_and_score_completions(inputs)
        args = self.args
        mode = self._mode()
        advantages_B = self._spec_advantages(len(inputs))
        if advantages_B is not None:
            output["advantages"] = advantages_B.to(output["advantages"].device)
        advantages_B = output["advantages"]
        if not args.uses_teacher:
            return output

        scorer = self._scorer()
        if args.vocab_distillation:  # the divergence needs full logits: computed at loss time
            output.update(scorer.prompt_fields(inputs))
        if not args.uses_token_advantages:
            return output

        # Which rows need the teacher's log-probs: every row for A_hat = delta; for rlsd, the
        # rows whose weight is applied (A != 0; A < 0 with negative_only) while lambda > 0.
        needed_B = torch.ones_like(advantages_B, dtype=torch.bool)
        if args.spec.reweights:
            sign_B = torch.sign(advantages_B)
            reweighted_B = sign_B < 0 if args.rlsd_negative_only else sign_B != 0
            if self._lambda_ahead() == 0.0:
                needed_B = torch.zeros_like(needed_B)
            elif args.rlsd_skip_zero_advantage:
                needed_B = reweighted_B
        self._metrics[mode]["rlsd/teacher_skipped_ratio"].append(
            1.0 - int(needed_B.sum()) / max(1, len(needed_B))
        )
        rows = scorer.rows_to_score(needed_B)  # the same count on every rank
        if len(rows) == 0:
            return output  # A_hat = A exactly: TRL's 1-D advantages are already right
        contexts = self._group_contexts(inputs, output) if args.changes_contexts else None
        output.update(scorer.score_batch(inputs, output, rows, contexts))
        return output

    def _group_contexts(self, inputs: list[dict[str, Any]], output: dict[str, Any]):
        """The peer and negative texts of this process's rows (`rlsd.teacher.contexts`), chosen
        over the whole batch (every rank gathers the texts and makes the same choice); logs
        the fallbacks."""
        from accelerate.utils import gather_object

        args = self.args
        tokenizer: Any = getattr(self.processing_class, "tokenizer", self.processing_class)
        ids, mask = output["completion_ids"], output["completion_mask"]
        texts = tokenizer.batch_decode(
            [row[m.bool()].tolist() for row, m in zip(ids, mask)], skip_special_tokens=True
        )
        references = [privileged_or_none(example) or "" for example in inputs]
        if self.accelerator.num_processes > 1:
            texts, references = gather_object(texts), gather_object(references)
        contexts = group_contexts(
            texts,
            self._total_rewards().tolist(),
            references,
            self._group_size(),
            source=args.privileged_source,
            negative=args.rlsd_negative_context if args.estimator.negative_context else None,
            threshold=args.rlsd_success_threshold,
        )
        start = self.accelerator.process_index * len(inputs)
        contexts.positive = contexts.positive[start : start + len(inputs)]
        contexts.negative = contexts.negative[start : start + len(inputs)]
        metrics = self._metrics[self._mode()]
        groups = max(1, contexts.groups)
        if args.privileged_source == "peer":
            metrics["rlsd/peer_fallback_ratio"].append(contexts.peer_fallbacks / groups)
        if args.estimator.negative_context:
            metrics["rlsd/negative_fallback_ratio"].append(contexts.negative_fallbacks / groups)
        return contexts

    # ---------------------------------------------------------------------------- loss side
    def _compute_loss(self, model, inputs):
        args = self.args
        if args.spec.reweights:
            mode = self._mode()
            self._metrics[mode]["rlsd/lambda"].append(self._lambda(self.state.global_step + 1))
        pending = None
        if "rlsd_logp_teacher" in inputs:
            # TRL's loss forward completes A_hat (`_get_per_token_logps_and_entropies` below);
            # a copy, so that the buffered batch keeps A for its next iteration.
            inputs = pending = dict(inputs)
            self._scorer().rescore_if_synced(inputs)  # a sync since its rollout was scored
        self._loss_handoff = _LossHandoff(pending, inputs.get("old_per_token_logps"))
        try:
            if not args.vocab_distillation:
                return super()._compute_loss(model, inputs)
            distill = self._distillation_loss(model, inputs)
            if args.spec.uses_reward:
                return super()._compute_loss(model, inputs) + args.grpo_opsd_alpha * distill
            return distill
        finally:
            self._loss_handoff = None

    def _get_per_token_logps_and_entropies(
        self,
        model,
        input_ids,
        attention_mask,
        logits_to_keep,
        batch_size=None,
        compute_entropy=False,
        **kwargs,
    ):
        """TRL's forward. In the loss (the only call with `compute_entropy`), it also turns the
        micro-batch's `A` into `A_hat` from these very log-probs, detached: the released code's
        delta, with no forward of its own, before TRL's loss reads `inputs["advantages"]`; and
        it returns log-probs whose ratio to the rollout's is clamped to exp(+-20), as the spec's
        section 3 asks and TRL's plain `exp` does not (`clamp_log_ratio`)."""
        out = super()._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy, **kwargs
        )
        handoff = self._loss_handoff
        if handoff is None or not compute_entropy:
            return out
        self._loss_handoff = None  # taken once, by the loss's own forward
        if handoff.inputs is not None:
            handoff.inputs["advantages"] = self._token_advantages(handoff.inputs, out[0])
        if handoff.old_logps is not None:  # TRL's loss takes a plain exp of the ratio
            out = (clamp_log_ratio(out[0], handoff.old_logps), *out[1:])
        return out

    def _token_advantages(self, inputs: dict[str, Any], logps_BT: torch.Tensor) -> torch.Tensor:
        """`A_hat [B, T]` of one micro-batch (spec section 2; `delta` for sampled-token OPSD)
        and its section-6 statistics. The student's log-prob is TRL's old one when it has one
        and `rlsd_student_logp="old"`, else this forward's; lambda is the one of the optimiser
        step the micro-batch feeds."""
        args = self.args
        mode = self._mode()
        mask = inputs["completion_mask"].float()
        if "tool_mask" in inputs:
            mask = mask * inputs["tool_mask"]
        old = inputs.get("old_per_token_logps")
        use_old = old is not None and args.rlsd_student_logp == "old"
        logp_student = (old if use_old and old is not None else logps_BT).detach().float()
        logp_teacher, advantages_B = inputs["rlsd_logp_teacher"], inputs["advantages"]
        if args.spec.reweights:
            lam = self._lambda(self.state.global_step + 1)
            spec_args = (advantages_B, logp_student, logp_teacher, mask, lam, args.rlsd_eps_w)
            estimator: dict[str, Any] = {
                "negative_only": args.rlsd_negative_only,
                "estimator": args.rlsd_estimator,
                "logp_teacher_wrong": inputs.get("rlsd_logp_teacher_wrong"),
                "beta": args.rlsd_contrastive_beta,
            }
            a_hat = token_advantages(*spec_args, **estimator)
            stats = rlsd_stats(*spec_args, scored=inputs["rlsd_scored"], **estimator)
            stats.pop("rlsd/lambda")  # logged per micro-batch in _compute_loss, skips included
        else:  # opsd / opd, sampled-token variant: A_hat = delta
            a_hat = sampled_token_distill_advantages(logp_student, logp_teacher, mask)
            stats = {"rlsd/delta_mean": float((a_hat * mask).sum() / mask.sum().clamp(min=1))}
        values = torch.tensor([list(stats.values())], device=self.accelerator.device)
        for name, value in zip(stats, self.accelerator.gather(values).mean(0).tolist()):
            self._metrics[mode][name].append(value)
        return a_hat.to(advantages_B.dtype)

    def _distillation_loss(self, model, inputs) -> torch.Tensor:
        """OPSD / OPD: divergence between teacher and student over the full vocabulary at every
        response position (spec section 5), aggregated as a token mean over the optimiser
        batch with the same normaliser as TRL's `dapo` loss."""
        args = self.args
        mode = self._mode()
        completion_ids, mask = inputs["completion_ids"], inputs["completion_mask"].float()
        T = completion_ids.size(1)
        ids = torch.cat([inputs["prompt_ids"], completion_ids], dim=1)
        attention = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        images = {k: inputs[k] for k in (*IMAGE_INPUTS, *TOKEN_TYPE_INPUTS) if k in inputs}
        student_logits = full_logits(
            model, ids, attention, T, self.temperature, self.accelerator.autocast, images
        )
        teacher_logits = self._scorer().logits(inputs)
        beta = {"jsd": args.opsd_beta, "forward_kl": 0.0, "reverse_kl": 1.0}[args.opsd_divergence]
        divergence = generalized_jsd(student_logits, teacher_logits, mask, beta=beta)
        train = mode == "train"
        loss = distillation_loss(
            divergence,
            mask,
            inputs["num_items_in_batch"],
            self.accelerator.num_processes,
            self.current_gradient_accumulation_steps if train else 1,
            int(args.steps_per_generation or 1) if train else 1,
        )
        self._metrics[mode]["opsd/divergence"].append(
            self.accelerator.gather(divergence.detach().reshape(1)).mean().item()
        )
        if not args.spec.uses_reward:  # TRL's loss (which logs entropy) is not called
            value = masked_entropy(student_logits, mask)
            self._metrics[mode]["entropy"].append(
                self.accelerator.gather(value.reshape(1)).mean().item()
            )
        return loss

    # ------------------------------------------------------------------- timing and logging
    def training_step(self, model, inputs, num_items_in_batch):
        start = time.perf_counter()
        before = dict(self._timings)
        loss = super().training_step(model, inputs, num_items_in_batch)
        spent = {
            k: self._timings[k] - before.get(k, 0.0) for k in ("generate", "verify", "teacher")
        }
        self._timings["update"] += time.perf_counter() - start - sum(spent.values())
        if self._step % self.current_gradient_accumulation_steps == 0:
            # teacher_prefix + teacher_responses: the shared-prefix part of `teacher`;
            # teacher_negative: the second context's pass (cepo, contrastive), also in it
            for name in ("generate", "verify", "teacher", "update"):
                self._metrics["train"][f"time/{name}"].append(self._timings.pop(name, 0.0))
            for name in ("teacher_prefix", "teacher_responses", "teacher_negative"):
                if name in self._timings:
                    self._metrics["train"][f"time/{name}"].append(self._timings.pop(name))
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = self._mode()
        for func, name in zip(self.reward_funcs, self.reward_func_names):
            for reason, count in getattr(func, "pop_failures", dict)().items():
                self._metrics[mode][f"verifiers/{name}/{reason}"].append(float(count))
        super().log(logs, start_time)

    # -------------------------------------------------------------------------- checkpoints
    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.teacher is not None:  # every rank: the snapshot is gathered under sharding
            folder = Path(self._get_output_dir(trial)) / f"checkpoint-{self.state.global_step}"
            self.teacher.save(folder / TEACHER_STATE_DIR)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None and self.teacher is not None:
            self.teacher.load(Path(checkpoint) / TEACHER_STATE_DIR)


def _has_inline_images(dataset, rows: int = _INLINE_IMAGE_SCAN_ROWS) -> bool:
    """Whether the first `rows` prompts of `dataset` hold image parts (an iterable dataset,
    which cannot be read ahead, is not scanned)."""
    try:
        head = dataset.select(range(min(rows, len(dataset))))
    except (AttributeError, TypeError):
        return False
    return any(inline_images(prompt) for prompt in head["prompt"])
