"""`RLSDTrainer`: RLSD and its baselines as a thin layer over TRL's `GRPOTrainer`.

What TRL does, unchanged: sampling (HF generate or vLLM), reward computation, the PPO-style
clipped loss with dual clip and token-mean aggregation, distribution (accelerate), PEFT,
checkpoints and trackers. What this class adds (spec sections 1-6):

1. advantages recomputed exactly as spec section 1 (`rlsd.objectives.group_advantages`:
   unbiased std + 1e-6; TRL adds 1e-4) from the rewards TRL computed;
2. at generation time, the teacher's log-probs of the sampled tokens under the privileged
   prompt (`rlsd.teacher`: shared-prefix scoring, the snapshot's weights);
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
boundaries.

Skips (they cannot change the result): no teacher forward when lambda is 0 for every
optimiser step a generation batch feeds, and none for responses whose advantage is 0
(all-equal groups), since `A_hat = A * (...) = 0` there. Under several processes the skip
decisions are global, so every rank runs the same forwards.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from trl import GRPOTrainer

from rlsd.config import RLSDConfig
from rlsd.objectives import (
    clamp_log_ratio,
    generalized_jsd,
    group_advantages,
    lambda_at,
    rlsd_stats,
    sampled_token_distill_advantages,
    token_advantages,
)
from rlsd.rewards import fail_safe
from rlsd.teacher import (
    TEACHER_STATE_DIR,
    TeacherSnapshot,
    left_pad,
    privileged_text,
    shared_prefix_logits,
    shared_prefix_logps,
    teacher_prompt_batch,
)
from rlsd.teacher_contexts import group_contexts

logger = logging.getLogger(__name__)

# The one-time check of shared-prefix scoring against the full forward: in float32 the largest
# |difference| of a teacher log-prob (or logit) must stay within round-off; under bf16 / fp16
# (weights or autocast), where the two summation orders round differently, the mean |difference|
# over response tokens must. A cache that does not fit the model errs by O(1) either way.
_SHARED_PREFIX_MAX_ERR_FP32 = 1e-3
# Image inputs the model's forward takes beside the ids (TRL's names), and the per-token ones.
_IMAGE_INPUTS = (
    "pixel_values",
    "image_grid_thw",
    "pixel_attention_mask",
    "image_sizes",
    "spatial_shapes",
    "image_position_ids",
)
_TOKEN_TYPE_INPUTS = ("token_type_ids", "mm_token_type_ids")
_SHARED_PREFIX_MEAN_ERR_HALF = 2e-2


class TeacherSyncCallback(TrainerCallback):
    """Refresh the teacher after the update of every optimiser step `k` with
    `k % teacher_sync_steps == 0` (the released code), whether or not the teacher ran."""

    def __init__(self, trainer: RLSDTrainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        start = time.perf_counter()
        if self.trainer.teacher.maybe_sync(state.global_step):
            self.trainer._timings["teacher"] += time.perf_counter() - start


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
        self._loss_time_inputs: dict[str, Any] | None = None
        self._loss_old_logps: torch.Tensor | None = None  # for the ratio clamp (spec section 3)
        self._prefix_sharing: bool | None = None  # None until checked against the full forward
        self.teacher = TeacherSnapshot(self, args) if args.uses_teacher else None
        if self.teacher is not None:
            self.add_callback(TeacherSyncCallback(self))

    def _check_images(self, *datasets) -> None:
        """A dataset with images needs a vision-language model and its processor: say so now,
        rather than train a model that never sees them."""
        for dataset in datasets:
            columns = getattr(dataset, "column_names", None) or []
            if isinstance(columns, dict):  # a DatasetDict of eval sets
                columns = [c for names in columns.values() for c in names]
            image_columns = [c for c in ("image", "images") if c in columns]
            if image_columns and not self._is_vlm:
                raise ValueError(
                    f"The dataset has image column(s) {image_columns}, but the model's "
                    f"processing class ({type(self.processing_class).__name__}) is a text "
                    "tokenizer: this model cannot take images. Use a vision-language model with "
                    "its processor (AutoProcessor), or drop the image columns."
                )

    # ----------------------------------------------------------------------------- teacher
    def _mode(self) -> str:
        return "train" if getattr(self.model, "training", False) else "eval"

    def _snapshot(self) -> TeacherSnapshot:
        if self.teacher is None:
            raise RuntimeError(f"algorithm={self.args.algorithm!r} has no teacher.")
        return self.teacher

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

    def _teacher_prompts(
        self, examples: list[dict]
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """`[B, W]` left-padded teacher prompt ids and mask (the plain prompt for opd), and the
        processor's image fields for rows with images (`pixel_values`, ..., `num_images`;
        per-token fields left-padded to `[B, W]`)."""
        args = self.args
        if args.spec.separate_teacher:  # the separate teacher sees the student's own prompt
            examples = [{**ex, "teacher_prompt": ex["prompt"]} for ex in examples]
        chat_template_kwargs: Any = self.chat_template_kwargs  # a dict (TRL parses JSON strings)
        ids, truncated, fields = teacher_prompt_batch(
            self.processing_class,
            examples,
            template=args.teacher_template,
            instruction=args.teacher_instruction,
            max_prompt_length=args.teacher_max_prompt_length,
            marker=args.teacher_truncation_marker,
            **chat_template_kwargs,
        )
        self._metrics[self._mode()]["teacher/truncated_ratio"].append(truncated / max(1, len(ids)))
        tokenizer: Any = getattr(self.processing_class, "tokenizer", self.processing_class)
        prompt_ids, prompt_mask = left_pad(ids, tokenizer.pad_token_id)
        device = self.accelerator.device
        for key in _TOKEN_TYPE_INPUTS:
            if key in fields:
                fields[key] = left_pad(fields[key], 0)[0].to(device)
        for key, value in fields.items():
            if isinstance(value, torch.Tensor):
                fields[key] = value.to(device)
        return prompt_ids.to(device), prompt_mask.to(device), fields

    def _sharing_checked(self, shared: torch.Tensor | None, full: torch.Tensor, mask) -> None:
        """The one-time check of shared-prefix scoring against the full forward: agreed on by
        every rank, logged once when it fails (then the full forward is used from now on)."""
        half = self.accelerator.mixed_precision in ("bf16", "fp16") or full.dtype != torch.float32
        if shared is None:
            error = torch.tensor(float("inf"), device=full.device)
        else:
            diff = (shared.float() - full.float()).abs()
            while mask.dim() < diff.dim():
                mask = mask.unsqueeze(-1)
            mask = mask.expand_as(diff).float()
            diff = diff * mask
            if half:
                error = diff.sum() / mask.sum().clamp(min=1)
            else:
                error = diff.max() if diff.numel() else diff.new_zeros(())
        worst = float(self.accelerator.gather(error.reshape(1)).max())
        tol = _SHARED_PREFIX_MEAN_ERR_HALF if half else _SHARED_PREFIX_MAX_ERR_FP32
        self._prefix_sharing = worst <= tol
        if not self._prefix_sharing and self.accelerator.is_main_process:
            reason = "its cache cannot be shared" if shared is None else f"differs by {worst:.2g}"
            logger.warning(
                "teacher_shared_prefix: falling back to the full teacher forward (%s) for this "
                "model; set teacher_shared_prefix=False to silence this.",
                reason,
            )

    def _score_teacher(self, shared_fn, full_fn, completion_mask):
        """Run `shared_fn` (None where it cannot apply) or `full_fn` for the teacher; checks
        shared-prefix scoring against the full forward the first time."""
        shared = None
        if self.args.teacher_shared_prefix and self._prefix_sharing is not False:
            shared = shared_fn()
            if self._prefix_sharing is None:
                full = full_fn()
                self._sharing_checked(shared, full, completion_mask)
                return full
        return shared if shared is not None else full_fn()

    @torch.no_grad()
    def teacher_logps(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        logits_to_keep: int,
        images: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        """`[B, T]` float32 teacher log-probs of the last `T = logits_to_keep` tokens of
        `input_ids` (teacher prompt, left-padded, then the responses, right-padded). `images`:
        the image fields of `teacher_prompt_batch` for these rows (the teacher sees the
        student's images), scored with the full forward. A collective under ZeRO-3 / FSDP:
        every rank calls it with the same number of rows."""
        T = logits_to_keep
        prompt_ids, prompt_mask = input_ids[:, :-T], attention_mask[:, :-T]
        completion_ids, completion_mask = input_ids[:, -T:], attention_mask[:, -T:]
        batch_size = self.args.per_device_train_batch_size
        image_kwargs = self._extend_token_types(images, T)
        start = time.perf_counter()
        with self._snapshot().forward_context() as model:

            def full() -> torch.Tensor:
                return self._get_per_token_logps_and_entropies(
                    model, input_ids, attention_mask, T, batch_size=batch_size, **image_kwargs
                )[0]

            if image_kwargs:  # image tensors are per image, not per row: no prefix sharing
                logps = full()
            else:
                logps = self._score_teacher(
                    lambda: shared_prefix_logps(
                        model,
                        prompt_ids,
                        prompt_mask,
                        completion_ids,
                        completion_mask,
                        batch_size,
                        self.accelerator.autocast,
                        self._timings,
                    ),
                    full,
                    completion_mask,
                )
        self._timings["teacher"] += time.perf_counter() - start
        return logps.float()

    @staticmethod
    def _extend_token_types(images: dict[str, Any] | None, T: int) -> dict[str, Any]:
        """Image fields as forward kwargs, per-token ones extended with zeros over the `T`
        response positions (as TRL does for the student)."""
        kwargs = dict(images or {})
        for key in _TOKEN_TYPE_INPUTS:
            if key in kwargs:
                types = kwargs[key]
                kwargs[key] = torch.cat([types, types.new_zeros((types.size(0), T))], dim=1)
        return kwargs

    @torch.no_grad()
    def _teacher_logits(self, inputs: dict[str, Any]) -> torch.Tensor:
        """`[B, T, V]` temperature-scaled teacher logits for the loss-time divergence. With
        images, the micro-batch's own image tensors (the teacher sees the same images) and the
        teacher prompt's token types, through the full forward."""
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        prompt_ids, prompt_mask = inputs["teacher_prompt_ids"], inputs["teacher_prompt_mask"]
        T = completion_ids.size(1)
        images = {k: inputs[k] for k in _IMAGE_INPUTS if inputs.get(k) is not None}
        if images:
            images.update(
                {k: inputs[f"teacher_{k}"] for k in _TOKEN_TYPE_INPUTS if f"teacher_{k}" in inputs}
            )
        image_kwargs = self._extend_token_types(images, T)
        start = time.perf_counter()
        with self._snapshot().forward_context() as model:

            def full() -> torch.Tensor:
                ids = torch.cat([prompt_ids, completion_ids], dim=1)
                mask = torch.cat([prompt_mask, completion_mask], dim=1)
                return self._full_logits(model, ids, mask, T, **image_kwargs)

            def shared() -> torch.Tensor | None:
                logits = shared_prefix_logits(
                    model,
                    prompt_ids,
                    prompt_mask,
                    completion_ids,
                    completion_mask,
                    autocast=self.accelerator.autocast,
                    timings=self._timings,
                )
                return None if logits is None else logits.float() / self.temperature

            logits = full() if image_kwargs else self._score_teacher(shared, full, completion_mask)
        self._timings["teacher"] += time.perf_counter() - start
        return logits

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

    def _rows_to_score(self, needed_B: torch.Tensor) -> torch.Tensor:
        """Rows whose teacher forward can matter. Under several processes every rank scores
        the same number of rows (the maximum over ranks, topped up with rows that do not need
        it), so that all ranks run the same forwards and collectives stay matched."""
        needed = needed_B.nonzero().squeeze(1)
        if self.accelerator.num_processes == 1:
            return needed
        count = torch.tensor([len(needed)], device=needed_B.device)
        most = int(self.accelerator.gather(count).max())
        filler = (~needed_B).nonzero().squeeze(1)[: most - len(needed)]
        return torch.cat([needed, filler])

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

        if args.vocab_distillation:  # the divergence needs full logits: computed at loss time
            start = time.perf_counter()
            prompt_ids, prompt_mask, fields = self._teacher_prompts(inputs)
            output["teacher_prompt_ids"], output["teacher_prompt_mask"] = prompt_ids, prompt_mask
            for key in _TOKEN_TYPE_INPUTS:  # per row; the image tensors are the student's own
                if key in fields:
                    output[f"teacher_{key}"] = fields[key]
            self._timings["teacher"] += time.perf_counter() - start
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
        rows = self._rows_to_score(needed_B)
        self._metrics[mode]["rlsd/teacher_skipped_ratio"].append(
            1.0 - int(needed_B.sum()) / max(1, len(needed_B))
        )
        if len(rows) == 0:
            return output  # A_hat = A exactly: TRL's 1-D advantages are already right

        contexts = self._group_contexts(inputs, output) if args.changes_contexts else None
        examples = [inputs[i] for i in rows.tolist()]
        if contexts is not None:
            examples = [self._positive_example(inputs[i], contexts, i) for i in rows.tolist()]
        logp_teacher = self._score_rows(examples, rows, output)
        scored_B = torch.zeros_like(needed_B)
        scored_B[rows] = True
        output["rlsd_logp_teacher"] = logp_teacher
        output["rlsd_scored"] = scored_B
        if contexts is not None and args.estimator.negative_context:
            # The second pass, on the rows that have a negative context (the same count on
            # every rank: fillers are scored with their positive context and discarded).
            start = time.perf_counter()
            has_negative_B = torch.tensor(
                [text is not None for text in contexts.negative], device=needed_B.device
            )
            negative_rows = self._rows_to_score(scored_B & has_negative_B)
            logp_wrong = logp_teacher.clone()  # no negative: the positive on both sides
            if len(negative_rows):
                wrong_examples = [  # _with_privileged(example, None) is the example itself
                    _with_privileged(self._positive_example(inputs[i], contexts, i), text)
                    for i in negative_rows.tolist()
                    for text in [contexts.negative[i]]
                ]
                computed = self._score_rows(wrong_examples, negative_rows, output)
                keep = has_negative_B[negative_rows]
                logp_wrong[negative_rows[keep]] = computed[negative_rows[keep]]
            output["rlsd_logp_teacher_wrong"] = logp_wrong
            self._timings["teacher_negative"] += time.perf_counter() - start
        return output

    def _score_rows(
        self, examples: list[dict[str, Any]], rows: torch.Tensor, output: dict[str, Any]
    ) -> torch.Tensor:
        """`[B, T]` teacher log-probs of `output`'s responses at `rows` under the teacher
        prompts of `examples` (one per row), zeros elsewhere."""
        start = time.perf_counter()
        prompt_ids, prompt_mask, images = self._teacher_prompts(examples)
        self._timings["teacher"] += time.perf_counter() - start
        completion_ids, completion_mask = output["completion_ids"], output["completion_mask"]
        T = completion_ids.size(1)
        logp_teacher = torch.zeros(completion_ids.shape, device=completion_ids.device)
        logp_teacher[rows] = self.teacher_logps(
            torch.cat([prompt_ids, completion_ids[rows]], dim=1),
            torch.cat([prompt_mask, completion_mask[rows].to(prompt_mask.dtype)], dim=1),
            T,
            images,
        )
        return logp_teacher

    def _positive_example(self, example: dict[str, Any], contexts, i: int) -> dict[str, Any]:
        if self.args.privileged_source == "peer":
            return _with_privileged(example, contexts.positive[i])
        return example

    def _group_contexts(self, inputs: list[dict[str, Any]], output: dict[str, Any]):
        """The peer and negative texts of this process's rows (`rlsd.teacher_contexts`), chosen
        over the whole batch (every rank gathers the texts and makes the same choice); logs
        the fallbacks."""
        from accelerate.utils import gather_object

        args = self.args
        tokenizer: Any = getattr(self.processing_class, "tokenizer", self.processing_class)
        ids, mask = output["completion_ids"], output["completion_mask"]
        texts = tokenizer.batch_decode(
            [row[m.bool()].tolist() for row, m in zip(ids, mask)], skip_special_tokens=True
        )
        references = [_reference_or_empty(example) for example in inputs]
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
        if "rlsd_logp_teacher" in inputs:
            # TRL's loss forward completes A_hat (`_get_per_token_logps_and_entropies` below);
            # a copy, so that the buffered batch keeps A for its next iteration.
            inputs = dict(inputs)
            self._loss_time_inputs = inputs
        self._loss_old_logps = inputs.get("old_per_token_logps")
        try:
            if not args.vocab_distillation:
                return super()._compute_loss(model, inputs)
            distill = self._distillation_loss(model, inputs)
            if args.spec.uses_reward:
                return super()._compute_loss(model, inputs) + args.grpo_opsd_alpha * distill
            return distill
        finally:
            self._loss_time_inputs = None
            self._loss_old_logps = None

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
        pending = self._loss_time_inputs
        if pending is not None and compute_entropy:
            self._loss_time_inputs = None
            pending["advantages"] = self._token_advantages(pending, out[0])
        old = self._loss_old_logps
        if old is not None and compute_entropy:  # TRL's loss takes a plain exp of the ratio
            self._loss_old_logps = None
            out = (clamp_log_ratio(out[0], old), *out[1:])
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

    def _full_logits(
        self, model, input_ids, attention_mask, logits_to_keep: int, **image_kwargs
    ) -> torch.Tensor:
        """`[B, T, V]` temperature-scaled logits predicting the last `logits_to_keep` tokens."""
        image_kwargs.pop("num_images", None)  # the forward takes the whole micro-batch at once
        with self.accelerator.autocast():
            logits = model(
                input_ids=input_ids, attention_mask=attention_mask, **image_kwargs
            ).logits
        return logits[:, -logits_to_keep - 1 : -1, :].float() / self.temperature

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
        images = {k: inputs[k] for k in (*_IMAGE_INPUTS, *_TOKEN_TYPE_INPUTS) if k in inputs}
        student_logits = self._full_logits(model, ids, attention, T, **images)
        teacher_logits = self._teacher_logits(inputs)
        beta = {"jsd": args.opsd_beta, "forward_kl": 0.0, "reverse_kl": 1.0}[args.opsd_divergence]
        divergence = generalized_jsd(student_logits, teacher_logits, mask, beta=beta)
        normalizer = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
        if mode == "train":
            normalizer = (
                normalizer * self.current_gradient_accumulation_steps / args.steps_per_generation
            )
        loss = divergence * mask.sum() / normalizer
        self._metrics[mode]["opsd/divergence"].append(
            self.accelerator.gather(divergence.detach().reshape(1)).mean().item()
        )
        if not args.spec.uses_reward:  # TRL's loss (which logs entropy) is not called
            with torch.no_grad():
                logp = torch.log_softmax(student_logits, dim=-1)
                entropy = -(logp.exp() * logp).sum(-1)
                value = (entropy * mask).sum() / mask.sum().clamp(min=1)
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


def _with_privileged(example: dict[str, Any], text: str | None) -> dict[str, Any]:
    """`example` whose teacher is shown `text` (None: unchanged) through the template, a
    whole `teacher_prompt` column set aside."""
    if text is None:
        return example
    changed = {k: v for k, v in example.items() if k != "teacher_prompt"}
    changed["privileged_context"] = text
    return changed


def _reference_or_empty(example: dict[str, Any]) -> str:
    try:
        return privileged_text(example)
    except ValueError:  # a row with a whole `teacher_prompt` only
        return ""
