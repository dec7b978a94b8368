"""`RLSDTrainer`: RLSD and its baselines as a thin layer over TRL's `GRPOTrainer`.

What TRL does, unchanged: sampling (HF generate or vLLM), reward computation, the PPO-style
clipped loss with dual clip and token-mean aggregation, distribution (accelerate), PEFT,
checkpoints and trackers. What this class adds (spec sections 1-6):

1. advantages recomputed exactly as spec section 1 (`rlsd.objectives.group_advantages`:
   unbiased std + 1e-6; TRL adds 1e-4) from the rewards TRL computed;
2. for `rlsd`: the teacher's log-probs of the sampled tokens under the privileged prompt and
   the per-token advantages `A_hat [B, T]`, which replace `advantages` in TRL's batch
   (TRL's loss accepts 2-D advantages);
3. for `opsd` / `opd` / `grpo_opsd`: the full-vocabulary divergence to the teacher, added in
   `_compute_loss`;
4. fail-safe reward functions, step timings and the section-6 metrics.

Overridden TRL internals (checked by tests/test_trl_contract.py, pinned to TRL 1.16):
`_generate_and_score_completions`, `_calculate_rewards`, `_generate`, `_compute_loss`,
`_save_checkpoint`, `_load_optimizer_and_scheduler`, `training_step`, `log`.

Skips (they cannot change the result): no teacher forward once lambda has reached 0, and none
for responses whose advantage is 0 (all-equal groups), since `A_hat = A * (...) = 0` there.
The lambda of a generation batch is the one of the first optimiser step that consumes it.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import is_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM
from trl import GRPOTrainer
from trl.trainer.callbacks import SyncRefModelCallback
from trl.trainer.utils import (
    add_fused_lm_head,
    create_model_from_path,
    disable_dropout_in_model,
    get_config_model_id,
    use_adapter,
)

from rlsd.config import RLSDConfig
from rlsd.objectives import (
    generalized_jsd,
    group_advantages,
    lambda_at,
    rlsd_stats,
    rlsd_token_advantages,
    sampled_token_distill_advantages,
)
from rlsd.rewards import fail_safe
from rlsd.teacher import TEACHER_ADAPTER, teacher_input_ids

TEACHER_STATE_DIR = "rlsd_teacher"


class RLSDTrainer(GRPOTrainer):
    """TRL's `GRPOTrainer` with the self-teacher. Same constructor as `GRPOTrainer`; the
    dataset may carry `privileged_context` (else `answer`) and `teacher_prompt` columns."""

    _tag_names = ["trl", "grpo", "rlsd"]

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
        self._timings: dict[str, float] = defaultdict(float)
        self._rewards_per_func: torch.Tensor | None = None
        self._teacher_synced_at = 0
        self.teacher_model = self._build_teacher() if args.uses_teacher else None

    # ----------------------------------------------------------------------------- teacher
    def _build_teacher(self):
        """The teacher's weights (spec section 4); None means 'use the live policy'."""
        args: RLSDConfig = self.args
        if args.algorithm == "opd":
            teacher = AutoModelForCausalLM.from_pretrained(
                args.teacher_model_name_or_path, dtype=self.model.dtype
            )
            if (
                teacher.config.vocab_size
                != self.accelerator.unwrap_model(self.model).config.vocab_size
            ):
                raise ValueError(
                    "The opd teacher must share the student's tokenizer: vocab sizes differ "
                    f"({teacher.config.vocab_size} vs the student's)."
                )
        elif args.teacher_sync_steps == 1:
            return None
        elif is_peft_model(self.accelerator.unwrap_model(self.model)):
            peft_model = self.accelerator.unwrap_model(self.model)
            peft_model.add_adapter(TEACHER_ADAPTER, peft_model.peft_config["default"])
            self._sync_teacher()
            return None  # the teacher is the `rlsd_teacher` adapter of the policy itself
        elif self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3:
            # ZeRO-3 shards the policy's parameters: load the snapshot from the same checkpoint,
            # as TRL does for its reference model (identical to the policy at step 0).
            policy = self.accelerator.unwrap_model(self.model)
            teacher = create_model_from_path(
                get_config_model_id(policy.config),
                dtype=policy.dtype,
                attn_implementation=policy.config._attn_implementation,
            )
        else:
            policy = self.accelerator.unwrap_model(self.model)
            teacher = AutoModelForCausalLM.from_config(policy.config, dtype=policy.dtype)
            teacher.load_state_dict(policy.state_dict())
        teacher.requires_grad_(False)
        teacher.eval()
        if args.disable_dropout:
            disable_dropout_in_model(teacher)
        add_fused_lm_head(teacher, temperature=self.temperature)
        if self.is_deepspeed_enabled:
            from trl.models.utils import prepare_deepspeed

            return prepare_deepspeed(teacher, self.accelerator)
        if self.is_fsdp_enabled:
            from trl.models.utils import prepare_fsdp

            return prepare_fsdp(teacher, self.accelerator)
        return self.accelerator.prepare_model(teacher, evaluation_mode=True)

    def _uses_teacher_adapter(self) -> bool:
        unwrapped = self.accelerator.unwrap_model(self.model)
        return is_peft_model(unwrapped) and TEACHER_ADAPTER in unwrapped.peft_config

    def _sync_teacher(self) -> None:
        """Copy the current policy weights (or adapter) into the teacher snapshot."""
        policy = self.accelerator.unwrap_model(self.model)
        if is_peft_model(policy) and TEACHER_ADAPTER in policy.peft_config:
            with torch.no_grad():
                params = dict(policy.named_parameters())
                for name, param in params.items():
                    if f".{TEACHER_ADAPTER}." in name:
                        param.data.copy_(
                            params[name.replace(f".{TEACHER_ADAPTER}.", ".default.")].data
                        )
                        param.requires_grad_(False)
        elif self.teacher_model is not None:
            target = self.accelerator.unwrap_model(self.teacher_model)
            SyncRefModelCallback.sync_target_model(policy, target, alpha=1.0)
        self._teacher_synced_at = self.state.global_step

    def _maybe_sync_teacher(self) -> None:
        sync = self.args.teacher_sync_steps
        if self.args.algorithm == "opd" or sync in (0, 1):
            return
        if self.state.global_step - self._teacher_synced_at >= sync:
            self._sync_teacher()

    def _teacher_context(self):
        if self._uses_teacher_adapter():
            return self.model, use_adapter(
                self.accelerator.unwrap_model(self.model), TEACHER_ADAPTER
            )
        return (self.teacher_model if self.teacher_model is not None else self.model), nullcontext()

    def _teacher_inputs(self, examples: list[dict], completion_ids, completion_mask):
        """Teacher ids: the privileged prompt (plain prompt for opd) + the sampled ids."""
        args: RLSDConfig = self.args
        if args.algorithm == "opd":  # the separate teacher sees the student's own prompt
            examples = [{**ex, "teacher_prompt": ex["prompt"]} for ex in examples]
        return teacher_input_ids(
            self.processing_class,
            examples,
            completion_ids,
            completion_mask,
            template=args.teacher_template,
            instruction=args.teacher_instruction,
            max_prompt_length=args.teacher_max_prompt_length,
            **self.chat_template_kwargs,
        )

    @torch.no_grad()
    def _teacher_logps(self, input_ids, attention_mask, logits_to_keep: int) -> torch.Tensor:
        model, context = self._teacher_context()
        with context:
            logps, _, _ = self._get_per_token_logps_and_entropies(
                model,
                input_ids,
                attention_mask,
                logits_to_keep,
                batch_size=self.args.per_device_train_batch_size,
            )
        return logps.float()

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
        rewards_per_func = self._rewards_per_func
        weights = self.reward_weights.to(rewards_per_func.device).unsqueeze(0)
        rewards = (rewards_per_func * weights).nansum(dim=1)
        rewards[torch.isnan(rewards_per_func).all(dim=1)] = float("nan")
        group = self.num_generations if self.model.training else self.num_generations_eval
        advantages = group_advantages(rewards, group, scale=self.scale_rewards)
        start = self.accelerator.process_index * local_size
        return advantages[start : start + local_size]

    def _rows_to_score(self, advantages_B: torch.Tensor) -> torch.Tensor:
        """Rows whose teacher forward can matter (A != 0). Under several processes every rank
        scores the same number of rows (the maximum over ranks, topped up with A = 0 rows),
        so that all ranks run the same forwards and collectives stay matched."""
        nonzero = (advantages_B != 0).nonzero().squeeze(1)
        if self.accelerator.num_processes == 1:
            return nonzero
        count = torch.tensor([len(nonzero)], device=advantages_B.device)
        most = int(self.accelerator.gather(count).max())
        filler = (advantages_B == 0).nonzero().squeeze(1)[: most - len(nonzero)]
        return torch.cat([nonzero, filler])

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output = super()._generate_and_score_completions(inputs)
        args: RLSDConfig = self.args
        mode = "train" if self.model.training else "eval"
        advantages_B = self._spec_advantages(len(inputs))
        if advantages_B is not None:
            output["advantages"] = advantages_B.to(output["advantages"].device)
        advantages_B = output["advantages"]
        if not args.uses_teacher:
            return output

        completion_ids, mask = output["completion_ids"], output["completion_mask"].float()
        if "tool_mask" in output:
            mask = mask * output["tool_mask"]
        step = self.state.global_step + 1  # the 1-based optimiser step this batch feeds
        lam = lambda_at(
            step, args.rlsd_lambda, args.rlsd_lambda_decay_steps, args.rlsd_lambda_warmup_steps
        )
        if args.algorithm == "rlsd":
            self._metrics[mode]["rlsd/lambda"].append(lam)
        rows = torch.arange(completion_ids.size(0), device=completion_ids.device)
        if args.algorithm == "rlsd" and args.rlsd_skip_zero_advantage and lam > 0.0:
            rows = self._rows_to_score(advantages_B)
        if args.algorithm == "rlsd" and (lam == 0.0 or len(rows) == 0):
            self._metrics[mode]["rlsd/teacher_skipped_ratio"].append(1.0)
            return output  # A_hat = A exactly: TRL's 1-D advantages are already right

        start = time.perf_counter()
        self._maybe_sync_teacher()  # global decision: every rank syncs at the same step
        self._timings["teacher"] += time.perf_counter() - start
        teacher_ids, teacher_mask = self._teacher_inputs(
            inputs, completion_ids, output["completion_mask"]
        )
        if args.vocab_distillation:  # the divergence needs full logits: computed at loss time
            output["teacher_input_ids"] = teacher_ids
            output["teacher_attention_mask"] = teacher_mask
        if not args.uses_token_advantages:
            return output

        start = time.perf_counter()
        T = completion_ids.size(1)
        logp_teacher = torch.zeros_like(mask)
        logp_student = torch.zeros_like(mask)
        logp_teacher[rows] = self._teacher_logps(teacher_ids[rows], teacher_mask[rows], T)
        old = output.get("old_per_token_logps")
        if old is not None:
            logp_student = old.float()
        else:
            prompt_completion = torch.cat([output["prompt_ids"], completion_ids], dim=1)
            attention = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
            with torch.no_grad():
                logp_student[rows] = self._get_per_token_logps_and_entropies(
                    self.model,
                    prompt_completion[rows],
                    attention[rows],
                    T,
                    batch_size=args.per_device_train_batch_size,
                )[0].float()
        self._timings["teacher"] += time.perf_counter() - start
        scored = int((advantages_B[rows] != 0).sum()) if args.algorithm == "rlsd" else len(rows)
        self._metrics[mode]["rlsd/teacher_skipped_ratio"].append(1.0 - scored / max(1, len(mask)))

        if args.algorithm == "rlsd":
            spec_args = (advantages_B, logp_student, logp_teacher, mask, lam, args.rlsd_eps_w)
            a_hat = rlsd_token_advantages(*spec_args, negative_only=args.rlsd_negative_only)
            stats = rlsd_stats(*spec_args, negative_only=args.rlsd_negative_only)
        else:  # opsd / opd, sampled-token variant: A_hat = delta
            a_hat = sampled_token_distill_advantages(logp_student, logp_teacher, mask)
            stats = {"rlsd/delta_mean": float((a_hat * mask).sum() / mask.sum().clamp(min=1))}
        stats.pop("rlsd/lambda", None)  # logged above, also for skipped steps
        values = torch.tensor([list(stats.values())], device=self.accelerator.device)
        for name, value in zip(stats, self.accelerator.gather(values).mean(0).tolist()):
            self._metrics[mode][name].append(value)
        output["advantages"] = a_hat.to(advantages_B.dtype)
        if args.rlsd_student_logp == "current" and args.algorithm == "rlsd":
            output["rlsd_advantages_B"] = advantages_B
            output["rlsd_logp_teacher"] = logp_teacher
            output["rlsd_lambda"] = torch.tensor(lam)
        return output

    # ---------------------------------------------------------------------------- loss side
    def _compute_loss(self, model, inputs):
        args: RLSDConfig = self.args
        if "rlsd_logp_teacher" in inputs:  # rlsd_student_logp="current": delta vs current policy
            inputs = dict(inputs)
            ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
            attention = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
            with torch.no_grad():
                current = self._get_per_token_logps_and_entropies(
                    model, ids, attention, inputs["completion_ids"].size(1)
                )[0].float()
            inputs["advantages"] = rlsd_token_advantages(
                inputs["rlsd_advantages_B"],
                current,
                inputs["rlsd_logp_teacher"],
                inputs["completion_mask"].float(),
                float(inputs["rlsd_lambda"]),
                args.rlsd_eps_w,
                args.rlsd_negative_only,
            )
        if not args.vocab_distillation:
            return super()._compute_loss(model, inputs)
        distill = self._distillation_loss(model, inputs)
        if args.algorithm == "grpo_opsd":
            return super()._compute_loss(model, inputs) + args.grpo_opsd_alpha * distill
        return distill

    def _full_logits(self, model, input_ids, attention_mask, logits_to_keep: int) -> torch.Tensor:
        """`[B, T, V]` temperature-scaled logits predicting the last `logits_to_keep` tokens."""
        with self.accelerator.autocast():
            logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        return logits[:, -logits_to_keep - 1 : -1, :].float() / self.temperature

    def _distillation_loss(self, model, inputs) -> torch.Tensor:
        """OPSD / OPD: divergence between teacher and student over the full vocabulary at every
        response position (spec section 5), aggregated as a token mean over the optimiser
        batch with the same normaliser as TRL's `dapo` loss."""
        args: RLSDConfig = self.args
        mode = "train" if self.model.training else "eval"
        completion_ids, mask = inputs["completion_ids"], inputs["completion_mask"].float()
        T = completion_ids.size(1)
        ids = torch.cat([inputs["prompt_ids"], completion_ids], dim=1)
        attention = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        student_logits = self._full_logits(model, ids, attention, T)
        teacher_model, context = self._teacher_context()
        with torch.no_grad(), context:
            teacher_logits = self._full_logits(
                teacher_model, inputs["teacher_input_ids"], inputs["teacher_attention_mask"], T
            )
        beta = {"jsd": args.opsd_beta, "forward_kl": 0.0, "reverse_kl": 1.0}.get(
            args.opsd_divergence, 0.5
        )
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
        if args.algorithm != "grpo_opsd":  # TRL's loss (which logs entropy) is not called
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
            for name in ("generate", "verify", "teacher", "update"):
                self._metrics["train"][f"time/{name}"].append(self._timings.pop(name, 0.0))
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        for func, name in zip(self.reward_funcs, self.reward_func_names):
            for reason, count in getattr(func, "pop_failures", dict)().items():
                self._metrics[mode][f"verifiers/{name}/{reason}"].append(float(count))
        super().log(logs, start_time)

    # -------------------------------------------------------------------------- checkpoints
    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if not self.args.uses_teacher or not self.is_world_process_zero():
            return
        folder = Path(self._get_output_dir(trial)) / f"checkpoint-{self.state.global_step}"
        state = {"teacher_synced_at": self._teacher_synced_at}
        tensors = self._teacher_state_dict()
        if tensors:
            (folder / TEACHER_STATE_DIR).mkdir(parents=True, exist_ok=True)
            save_file(tensors, str(folder / TEACHER_STATE_DIR / "model.safetensors"))
        (folder / TEACHER_STATE_DIR).mkdir(parents=True, exist_ok=True)
        (folder / TEACHER_STATE_DIR / "state.json").write_text(json.dumps(state) + "\n")

    def _teacher_state_dict(self) -> dict[str, torch.Tensor]:
        """The snapshot's tensors (nothing for live weights or the separate opd teacher)."""
        if self.args.algorithm == "opd":
            return {}
        if self._uses_teacher_adapter():
            return {
                n: p.detach().cpu().contiguous()
                for n, p in self.accelerator.unwrap_model(self.model).named_parameters()
                if f".{TEACHER_ADAPTER}." in n
            }
        if self.teacher_model is None:
            return {}
        target = self.accelerator.unwrap_model(self.teacher_model)
        return {n: p.detach().cpu().contiguous() for n, p in target.named_parameters()}

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None or not self.args.uses_teacher:
            return
        folder = Path(checkpoint) / TEACHER_STATE_DIR
        if (folder / "state.json").exists():
            self._teacher_synced_at = json.loads((folder / "state.json").read_text())[
                "teacher_synced_at"
            ]
        if not (folder / "model.safetensors").exists():
            return
        tensors = load_file(str(folder / "model.safetensors"))
        if self._uses_teacher_adapter():
            params = dict(self.accelerator.unwrap_model(self.model).named_parameters())
        else:
            params = dict(self.accelerator.unwrap_model(self.teacher_model).named_parameters())
        with torch.no_grad():
            for name, value in tensors.items():
                params[name].data.copy_(value.to(params[name].device))
