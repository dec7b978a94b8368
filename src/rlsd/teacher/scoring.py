"""How the teacher scores responses: the shared-prefix engine and `TeacherScorer`, which drives
it for the trainer (spec section 4).

- **the engine** (`shared_prefix_logps`, `shared_prefix_logits`): each distinct teacher
  prompt is encoded once and its KV cache serves every response that shares it (the G
  responses of a group), instead of encoding the privileged context G times. It needs a
  `DynamicCache` of plain layers (full attention); rows with images and one-token prompts take
  the full forward. Text-only rows of an M-RoPE model (Qwen2-VL) share their prefix exactly
  (tests/test_teacher_engine.py).
- **the driver** (`TeacherScorer`): the teacher prompts of a batch (`rlsd.teacher.prompt`),
  the forward (shared prefix or TRL's own `_get_per_token_logps_and_entropies`, given as a
  callable), and the check of the first shared-prefix batch against the full forward: every
  row's largest error must stay under a bound for the dtype (`SHARED_PREFIX_MAX_ERR`); a row
  over it, or an exception in the shared path, switches to the full forward with one warning.
  Every decision that changes which forwards run is agreed on by all processes first, so
  collectives stay matched under ZeRO-3 and FSDP.

Privileged text only enters the teacher's prompt ids; nothing here logs it.
"""

from __future__ import annotations

import copy
import inspect
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import nullcontext
from typing import Any

import torch

from rlsd.prompts import IMAGE_INPUTS, TOKEN_TYPE_INPUTS, is_processor, left_pad
from rlsd.teacher.prompt import teacher_prompt_batch

logger = logging.getLogger(__name__)


def _cache_kwarg(model) -> str:
    """transformers 5.x names the cache argument `cache` (`past_key_values` before)."""
    inner = getattr(model, "module", model)  # DDP / DeepSpeed engines wrap the model
    inner = getattr(inner, "get_base_model", lambda: inner)()  # PEFT
    names = inspect.signature(inner.forward).parameters
    return "cache" if "cache" in names else "past_key_values"


def _shareable(cache) -> bool:
    """A cache whose rows can be selected: a `DynamicCache` of plain full-attention layers."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    return isinstance(cache, DynamicCache) and all(
        type(layer) is DynamicLayer for layer in cache.layers
    )


def _select_rows(cache, rows: torch.Tensor):
    """A new cache holding `rows` of `cache` (the original is left untouched)."""
    chunk = copy.copy(cache)
    chunk.layers = [copy.copy(layer) for layer in cache.layers]
    for layer in chunk.layers:
        layer.batch_select_indices(rows.to(layer.keys.device))
    return chunk


def _encode_prefixes(
    model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, autocast
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any] | None:
    """Encode each distinct prompt row once, all but its last token.

    Returns `(unique_ids [P, W], unique_mask [P, W], row_to_prefix [B], cache)`, or None where
    sharing cannot apply (one-token prompts, a cache that cannot be row-selected)."""
    if prompt_ids.size(1) < 2:
        return None
    # The mask is part of the key: a pad id equal to a real token must not merge two prompts.
    unique, row_to_prefix = torch.unique(
        torch.cat([prompt_ids, prompt_mask.to(prompt_ids.dtype)], dim=1),
        dim=0,
        return_inverse=True,
    )
    width = prompt_ids.size(1)
    unique_ids, unique_mask = unique[:, :width], unique[:, width:]
    with autocast():
        out = model(
            input_ids=unique_ids[:, :-1],
            attention_mask=unique_mask[:, :-1],
            use_cache=True,
            logits_to_keep=1,
        )
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    if not _shareable(cache):
        return None
    return unique_ids, unique_mask, row_to_prefix, cache


def _response_batches(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    batch_size: int,
    autocast,
    timings: dict[str, float] | None = None,
) -> Iterator[dict[str, Any]] | None:
    """Model inputs scoring the responses from the shared prefix cache, one chunk at a time.

    Each row's input is its prompt's last token followed by the response, with the prompt's
    cache (all tokens but the last) in front: the same ids, attention mask and positions as
    the full `[prompt, response]` forward, so position `j` of the output predicts token `j`."""
    start = time.perf_counter()
    encoded = _encode_prefixes(model, prompt_ids, prompt_mask, autocast)
    _add_time(timings, "teacher_prefix", start)
    if encoded is None:
        return None
    unique_ids, unique_mask, row_to_prefix, cache = encoded
    kwarg = _cache_kwarg(model)

    def batches():
        for start in range(0, completion_ids.size(0), batch_size):
            rows = row_to_prefix[start : start + batch_size]
            ids = torch.cat([unique_ids[rows, -1:], completion_ids[start : start + batch_size]], 1)
            mask = torch.cat([unique_mask[rows], completion_mask[start : start + batch_size]], 1)
            yield {"input_ids": ids, "attention_mask": mask, kwarg: _select_rows(cache, rows)}

    return batches()


def _add_time(timings: dict[str, float] | None, key: str, start: float) -> None:
    if timings is not None:
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - start


def _score_responses(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    batch_size: int | None,
    autocast,
    timings: dict[str, float] | None,
    score: Callable[[dict[str, Any]], torch.Tensor],
) -> torch.Tensor | None:
    """`score(inputs)` of every response chunk from the shared prefix cache, concatenated;
    None where sharing cannot apply."""
    batches = _response_batches(
        model,
        prompt_ids,
        prompt_mask,
        completion_ids,
        completion_mask,
        batch_size or completion_ids.size(0),
        autocast,
        timings,
    )
    if batches is None:
        return None
    start = time.perf_counter()
    out = []
    for inputs in batches:
        with autocast():
            out.append(score(inputs))
    _add_time(timings, "teacher_responses", start)
    return torch.cat(out, dim=0)


@torch.no_grad()
def shared_prefix_logps(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    batch_size: int | None = None,
    autocast=nullcontext,
    timings: dict[str, float] | None = None,
) -> torch.Tensor | None:
    """`[B, T]` log-probs of the sampled tokens, scoring every distinct prompt once.

    `model` carries TRL's fused LM head (`fused_lm_head=True` returns the log-probs of the
    labels at the sampling temperature, as `GRPOTrainer._get_per_token_logps_and_entropies`
    does). Inputs: `prompt_ids`/`prompt_mask` `[B, W]` left-padded, `completion_ids`/
    `completion_mask` `[B, T]` right-padded. Returns None where sharing cannot apply (the
    caller then runs the full forward). `timings` (optional) accumulates the seconds spent
    encoding prompts (`teacher_prefix`) and scoring responses (`teacher_responses`)."""
    T = completion_ids.size(1)

    def score(inputs: dict[str, Any]) -> torch.Tensor:
        labels = inputs["input_ids"].masked_fill(inputs["attention_mask"][:, -T - 1 :] == 0, -100)
        labels[:, 0] = -100  # the prompt's last token is context, not a scored token
        return model(**inputs, labels=labels, fused_lm_head=True).log_probs[:, -T:]

    return _score_responses(
        model,
        prompt_ids,
        prompt_mask,
        completion_ids,
        completion_mask,
        batch_size,
        autocast,
        timings,
        score,
    )


@torch.no_grad()
def shared_prefix_logits(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    batch_size: int | None = None,
    autocast=nullcontext,
    timings: dict[str, float] | None = None,
) -> torch.Tensor | None:
    """`[B, T, V]` logits predicting each response token (position `t` predicts token `t`),
    scoring every distinct prompt once; None where sharing cannot apply. For the
    full-vocabulary divergences of OPSD / OPD."""
    T = completion_ids.size(1)
    return _score_responses(
        model,
        prompt_ids,
        prompt_mask,
        completion_ids,
        completion_mask,
        batch_size,
        autocast,
        timings,
        lambda inputs: model(**inputs).logits[:, :T],
    )


# The check of shared-prefix scoring against the full forward: the largest |difference| of a
# teacher log-prob (or logit) in any one row must stay under the bound of the compute dtype.
# Two summation orders of the same model round differently: within 1e-3 in float32; with bf16
# weights the shipped tiny model's rows differ by up to 6e-3 (tests/test_teacher_engine.py
# measures it), so 0.1 there (bf16 / fp16 weights or autocast). A cache that does not fit the
# model errs by O(1) on some row, which either bound catches.
SHARED_PREFIX_MAX_ERR = {"fp32": 1e-3, "half": 0.1}


def row_max_error(shared: torch.Tensor, full: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`[B]` the largest |shared - full| over each row's response tokens (and vocabulary, for
    logits `[B, T, V]`); 0 for a row without response tokens."""
    diff = (shared.float() - full.float()).abs()
    keep = mask.bool()
    while keep.dim() < diff.dim():
        keep = keep.unsqueeze(-1)
    diff = diff.masked_fill(~keep.expand_as(diff), 0.0)
    return diff.flatten(1).amax(1) if diff.numel() else diff.new_zeros(diff.size(0))


class TeacherScorer:
    """The teacher's scoring of a batch's responses, for the trainer.

    Dependencies, explicit: `snapshot` (the weights, `rlsd.teacher.TeacherSnapshot`), `args`
    (an `RLSDConfig`), the `processing_class`, the `accelerator`, `forward` (TRL's
    `_get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep,
    batch_size=..., **image_kwargs)`, whose first output is the `[B, T]` log-probs), the
    sampling `temperature`, the trainer's `timings` (seconds, accumulated under `teacher`,
    `teacher_prefix`, `teacher_responses`), `log_metric(name, value)`, and `render_kwargs`, the
    chat-template arguments TRL renders the student's prompt with (`tools`, `chat_template`,
    `chat_template_kwargs`), so that the teacher's prompt is rendered the same way.

    `prefix_sharing` is None until the first shared-prefix batch is checked against the full
    forward, then True or False (False from the start with `teacher_shared_prefix=False`;
    `full_forward_reason` says why)."""

    def __init__(
        self,
        snapshot,
        args,
        processing_class,
        accelerator,
        forward: Callable[..., Any],
        temperature: float,
        timings: dict[str, float],
        log_metric: Callable[[str, float], None],
        render_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self.snapshot = snapshot
        self.args = args
        self.processing_class = processing_class
        self.accelerator = accelerator
        self.forward = forward
        self.temperature = temperature
        self.timings = timings
        self.log_metric = log_metric
        self.render_kwargs = dict(render_kwargs or {})
        self.prefix_sharing: bool | None = None
        self.full_forward_reason: str | None = None
        self.last_prompts: tuple[Any, Any, dict[str, Any]] = (None, None, {})
        if not args.teacher_shared_prefix:
            self._use_full("teacher_shared_prefix=False", warn=False)

    # ------------------------------------------------------------------------- prompts
    def prompts(self, examples: list[dict]) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """`[B, W]` left-padded teacher prompt ids and mask (the plain prompt for opd), and the
        processor's image fields for rows with images (`pixel_values`, ..., `num_images`;
        per-token fields left-padded to `[B, W]`). Logs `teacher/truncated_ratio` and, for a
        vision-language model, `rlsd/teacher_images` (how many images the teacher was shown)."""
        args = self.args
        start = time.perf_counter()
        if args.spec.separate_teacher:  # the separate teacher sees the student's own prompt
            examples = [{**ex, "teacher_prompt": ex["prompt"]} for ex in examples]
        ids, truncated, fields = teacher_prompt_batch(
            self.processing_class,
            examples,
            template=args.teacher_template,
            instruction=args.teacher_instruction,
            max_prompt_length=args.teacher_max_prompt_length,
            marker=args.teacher_truncation_marker,
            **self.render_kwargs,
        )
        self.log_metric("teacher/truncated_ratio", truncated / max(1, len(ids)))
        if is_processor(self.processing_class):  # a vision-language model's teacher
            self.log_metric("rlsd/teacher_images", float(sum(fields.get("num_images", []))))
        tokenizer: Any = getattr(self.processing_class, "tokenizer", self.processing_class)
        prompt_ids, prompt_mask = left_pad(ids, tokenizer.pad_token_id)
        device = self.accelerator.device
        for key in TOKEN_TYPE_INPUTS:
            if key in fields:
                fields[key] = left_pad(fields[key], 0)[0].to(device)
        for key, value in fields.items():
            if isinstance(value, torch.Tensor):
                fields[key] = value.to(device)
        self.timings["teacher"] = self.timings.get("teacher", 0.0) + time.perf_counter() - start
        return prompt_ids.to(device), prompt_mask.to(device), fields

    def prompt_fields(self, examples: list[dict]) -> dict[str, Any]:
        """The teacher prompts of a generation batch as batch fields, for the loss-time
        divergence (`teacher_prompt_ids`, `teacher_prompt_mask`, the per-token image fields as
        `teacher_<name>`; the image tensors are the student's own)."""
        prompt_ids, prompt_mask, fields = self.prompts(examples)
        out: dict[str, Any] = {"teacher_prompt_ids": prompt_ids, "teacher_prompt_mask": prompt_mask}
        for key in TOKEN_TYPE_INPUTS:
            if key in fields:
                out[f"teacher_{key}"] = fields[key]
        return out

    # ------------------------------------------------------------------------- scoring
    def score_batch(
        self,
        inputs: list[dict[str, Any]],
        output: Mapping[str, Any],
        rows: torch.Tensor,
        contexts=None,
    ) -> dict[str, torch.Tensor]:
        """The teacher's fields of a generation batch, for the loss: `rlsd_logp_teacher`
        `[B, T]` under each row's teacher prompt (zeros off `rows`, from `rows_to_score`),
        `rlsd_scored` `[B]` (the rows scored), and for an estimator with a negative context
        (`contexts.negative`, `rlsd.teacher.contexts`) `rlsd_logp_teacher_wrong`, the positive
        log-probs where a row has none. `contexts` (None: every row's own reference) also
        carries the peer texts of `privileged_source="peer"`."""
        positive = [self._positive(inputs[i], contexts, i) for i in rows.tolist()]
        logp_teacher = self.score(positive, rows, output)
        prompts = [(rows, *self.last_prompts)]
        scored_B = torch.zeros(len(inputs), dtype=torch.bool, device=rows.device)
        scored_B[rows] = True
        out = {"rlsd_logp_teacher": logp_teacher, "rlsd_scored": scored_B}
        if contexts is None or not self.args.estimator.negative_context:
            self._keep_prompts(out, output, prompts)
            return out
        # The second pass, on the rows that have a negative context (the same count on every
        # rank: fillers are scored with their positive context and discarded).
        start = time.perf_counter()
        has_negative_B = torch.tensor(
            [text is not None for text in contexts.negative], device=rows.device
        )
        negative_rows = self.rows_to_score(scored_B & has_negative_B)
        logp_wrong = logp_teacher.clone()  # no negative: the positive on both sides
        if len(negative_rows):
            wrong = [  # with_privileged(example, None) is the example itself
                with_privileged(self._positive(inputs[i], contexts, i), contexts.negative[i])
                for i in negative_rows.tolist()
            ]
            computed = self.score(wrong, negative_rows, output)
            keep = has_negative_B[negative_rows]
            logp_wrong[negative_rows[keep]] = computed[negative_rows[keep]]
            ids, mask, fields = self.last_prompts
            types = {k: fields[k][keep] for k in TOKEN_TYPE_INPUTS if k in fields}
            prompts.append((negative_rows[keep], ids[keep], mask[keep], types))
        out["rlsd_logp_teacher_wrong"] = logp_wrong
        self._keep_prompts(out, output, prompts)
        elapsed = time.perf_counter() - start
        self.timings["teacher_negative"] = self.timings.get("teacher_negative", 0.0) + elapsed
        return out

    # ------------------------------------------------ the sync schedule across optimiser steps
    def may_outlive_a_sync(self) -> bool:
        """Whether a generation batch's teacher log-probs can be used after a sync: the
        snapshot is refreshed every N > 1 steps and one rollout feeds more than one optimiser
        step (`steps_per_generation * num_iterations > gradient_accumulation_steps`)."""
        args = self.args
        micro_steps = int(args.steps_per_generation or 1) * int(args.num_iterations or 1)
        return (
            self.snapshot.kind in ("copy", "adapter")
            and self.snapshot.sync_steps > 1
            and micro_steps > args.gradient_accumulation_steps
        )

    def _keep_prompts(self, out: dict[str, Any], output: Mapping[str, Any], prompts: list) -> None:
        """Store the teacher prompts beside their log-probs (`rlsd_teacher_prompt_*`, and
        `rlsd_teacher_wrong_prompt_*` for the negative pass: the positive prompt where a row
        has no negative), with the snapshot's `synced_at`, so that a micro-batch trained after
        a sync is scored again by the teacher the schedule names (`rescore_if_synced`). Only
        where that can happen (`may_outlive_a_sync`). `prompts`: (rows, ids, mask, fields) per
        pass, `fields` holding the per-token image fields of those prompts. With images, the
        per-token fields are kept too (`rlsd_teacher_<field>`), and a row the teacher did not
        score keeps the student's prompt (`output`'s), so that every row's image tokens match
        the micro-batch's image tensors when it is scored again."""
        if not self.may_outlive_a_sync():
            return
        pad_id = getattr(self.processing_class, "tokenizer", self.processing_class).pad_token_id
        with_images = any(output.get(k) is not None for k in IMAGE_INPUTS)
        student_ids, student_mask = output["prompt_ids"], output["prompt_mask"]
        size = student_ids.size(0)
        width = max(ids.size(1) for _, ids, _, _ in prompts)
        if with_images:
            width = max(width, student_ids.size(1))
        device = student_ids.device

        def blank(value: torch.Tensor, fill) -> torch.Tensor:  # [size, width] of `fill`
            return torch.full((size, width), fill, dtype=value.dtype, device=device)

        for name, parts in (("rlsd_teacher", prompts[:1]), ("rlsd_teacher_wrong", prompts)):
            if name == "rlsd_teacher_wrong" and "rlsd_logp_teacher_wrong" not in out:
                continue
            kept = {"prompt_ids": blank(student_ids, pad_id)}
            kept["prompt_mask"] = blank(student_mask, 0)
            if with_images:  # the student's prompt, then the teacher's where it scored
                student = {"prompt_ids": student_ids, "prompt_mask": student_mask}
                for key in TOKEN_TYPE_INPUTS:
                    if key in output:
                        student[key] = output[key]
                        kept[key] = blank(output[key], 0)
                for key, value in student.items():
                    kept[key][:, width - value.size(1) :] = value
            for rows, ids, mask, fields in parts:  # later parts (the negatives) overwrite
                for key, value in (("prompt_ids", ids), ("prompt_mask", mask), *fields.items()):
                    if key in kept:
                        kept[key][rows] = pad_id if key == "prompt_ids" else 0
                        kept[key][rows, width - value.size(1) :] = value.to(kept[key].dtype)
            for key, value in kept.items():
                out[f"{name}_{key}"] = value
        out["rlsd_teacher_synced_at"] = torch.full(
            (size,), self.snapshot.synced_at, dtype=torch.long, device=device
        )

    def rescore_if_synced(self, inputs: dict[str, Any]) -> bool:
        """Score a micro-batch again with the current teacher when the snapshot was synced
        after its rollout was scored (the schedule names the teacher of the optimiser step
        the micro-batch feeds). `inputs` is updated in place; returns whether it was. Every
        rank decides alike (the snapshot syncs on all of them at the same step). With images,
        every row of the micro-batch is scored (its image tensors hold every row's images) with
        the micro-batch's own image tensors, as TRL's loss forward takes them, and only the rows
        scored before are replaced."""
        stamp = inputs.get("rlsd_teacher_synced_at")
        if stamp is None or int(stamp[0]) == self.snapshot.synced_at:
            return False
        scored = inputs["rlsd_scored"]
        images = {
            k: inputs[k]
            for k in (*IMAGE_INPUTS, "num_images", "num_tiles")
            if inputs.get(k) is not None
        }
        rows = self.rows_to_score(scored)  # the same count on every rank
        if len(rows) and images:  # the image tensors hold every row's images: score them all
            rows = torch.arange(len(scored), device=scored.device)
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        T = completion_ids.size(1)
        for name in ("rlsd_teacher", "rlsd_teacher_wrong"):
            if f"{name}_prompt_ids" not in inputs or len(rows) == 0:
                continue
            prompt_ids = inputs[f"{name}_prompt_ids"][rows]
            prompt_mask = inputs[f"{name}_prompt_mask"][rows]
            types = {k: inputs[f"{name}_{k}"] for k in TOKEN_TYPE_INPUTS if f"{name}_{k}" in inputs}
            fresh = self.logps(
                torch.cat([prompt_ids, completion_ids[rows]], dim=1),
                torch.cat([prompt_mask, completion_mask[rows].to(prompt_mask.dtype)], dim=1),
                T,
                {**images, **types} if images else None,
            )
            key = name.replace("rlsd_teacher", "rlsd_logp_teacher")
            logps = inputs[key].clone()
            keep = scored[rows]
            logps[rows[keep]] = fresh[keep].to(logps.dtype)
            inputs[key] = logps
        inputs["rlsd_teacher_synced_at"] = torch.full_like(stamp, self.snapshot.synced_at)
        self.log_metric("rlsd/teacher_rescored", 1.0)
        return True

    def rows_to_score(self, needed_B: torch.Tensor) -> torch.Tensor:
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

    def _positive(self, example: dict[str, Any], contexts, i: int) -> dict[str, Any]:
        """Row `i` as its teacher is shown it: the group's peer text for
        `privileged_source="peer"`, else its own reference."""
        if contexts is not None and self.args.privileged_source == "peer":
            return with_privileged(example, contexts.positive[i])
        return example

    def score(self, examples: list[dict], rows: torch.Tensor, output: Mapping[str, Any]):
        """`[B, T]` teacher log-probs of `output`'s responses at `rows` under the teacher
        prompts of `examples` (one per row), zeros elsewhere. The prompts are kept
        (`self.last_prompts`: ids, mask and their image fields) for `_keep_prompts`."""
        prompt_ids, prompt_mask, images = self.prompts(examples)
        self.last_prompts = (prompt_ids, prompt_mask, images or {})
        completion_ids, completion_mask = output["completion_ids"], output["completion_mask"]
        T = completion_ids.size(1)
        logp_teacher = torch.zeros(completion_ids.shape, device=completion_ids.device)
        logp_teacher[rows] = self.logps(
            torch.cat([prompt_ids, completion_ids[rows]], dim=1),
            torch.cat([prompt_mask, completion_mask[rows].to(prompt_mask.dtype)], dim=1),
            T,
            images,
        )
        return logp_teacher

    @torch.no_grad()
    def logps(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        logits_to_keep: int,
        images: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        """`[B, T]` float32 teacher log-probs of the last `T = logits_to_keep` tokens of
        `input_ids` (teacher prompt, left-padded, then the responses, right-padded). `images`:
        the image fields of `prompts` for these rows (the teacher sees the student's images),
        scored with the full forward. A collective under ZeRO-3 / FSDP: every rank calls it
        with the same number of rows."""
        T = logits_to_keep
        prompt_ids, prompt_mask = input_ids[:, :-T], attention_mask[:, :-T]
        completion_ids, completion_mask = input_ids[:, -T:], attention_mask[:, -T:]
        batch_size = self.args.per_device_train_batch_size
        image_kwargs = extend_token_types(images, T)
        start = time.perf_counter()
        with self.snapshot.forward_context() as model:

            def full() -> torch.Tensor:
                return self.forward(
                    model, input_ids, attention_mask, T, batch_size=batch_size, **image_kwargs
                )[0]

            def shared() -> torch.Tensor | None:
                return shared_prefix_logps(
                    model,
                    prompt_ids,
                    prompt_mask,
                    completion_ids,
                    completion_mask,
                    batch_size,
                    self.accelerator.autocast,
                    self.timings,
                )

            logps = self._run(shared, full, completion_mask, prompt_ids.size(1), image_kwargs)
        self.timings["teacher"] = self.timings.get("teacher", 0.0) + time.perf_counter() - start
        return logps.float()

    @torch.no_grad()
    def logits(self, inputs: Mapping[str, Any]) -> torch.Tensor:
        """`[B, T, V]` temperature-scaled teacher logits for the loss-time divergence. With
        images, the micro-batch's own image tensors (the teacher sees the same images) and the
        teacher prompt's token types, through the full forward."""
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        prompt_ids, prompt_mask = inputs["teacher_prompt_ids"], inputs["teacher_prompt_mask"]
        T = completion_ids.size(1)
        images = {k: inputs[k] for k in IMAGE_INPUTS if inputs.get(k) is not None}
        if images:
            images.update(
                {k: inputs[f"teacher_{k}"] for k in TOKEN_TYPE_INPUTS if f"teacher_{k}" in inputs}
            )
        image_kwargs = extend_token_types(images, T)
        start = time.perf_counter()
        with self.snapshot.forward_context() as model:

            def full() -> torch.Tensor:
                ids = torch.cat([prompt_ids, completion_ids], dim=1)
                mask = torch.cat([prompt_mask, completion_mask], dim=1)
                return full_logits(
                    model, ids, mask, T, self.temperature, self.accelerator.autocast, image_kwargs
                )

            def shared() -> torch.Tensor | None:
                logits = shared_prefix_logits(
                    model,
                    prompt_ids,
                    prompt_mask,
                    completion_ids,
                    completion_mask,
                    autocast=self.accelerator.autocast,
                    timings=self.timings,
                )
                return None if logits is None else logits.float() / self.temperature

            logits = self._run(shared, full, completion_mask, prompt_ids.size(1), image_kwargs)
        self.timings["teacher"] = self.timings.get("teacher", 0.0) + time.perf_counter() - start
        return logits

    # ------------------------------------------------------------ shared or full forward
    def _run(self, shared_fn, full_fn, completion_mask, prompt_width: int, image_kwargs):
        """`shared_fn()` where shared-prefix scoring applies on every process, else `full_fn()`;
        the first shared batch is also run in full and checked (`_check`)."""
        if self.prefix_sharing is False or image_kwargs:  # image tensors are per image
            return full_fn()
        if not self._everywhere(prompt_width >= 2):  # one-token prompts have no prefix to share
            return full_fn()
        failure = None
        try:
            shared = shared_fn()
        except Exception as error:  # noqa: BLE001 - any failure of the fast path falls back
            shared, failure = None, f"the shared path raised {type(error).__name__}: {error}"
        if not self._everywhere(failure is None):  # every process falls back together
            self._use_full(failure or "the shared path raised on another process")
            return full_fn()
        if self.prefix_sharing is None or shared is None:
            full = full_fn()
            self._check(shared, full, completion_mask)
            return full
        return shared

    def _everywhere(self, flag: bool) -> bool:
        """`flag` agreed on by every process (all of them True)."""
        if self.accelerator.num_processes == 1:
            return flag
        value = torch.tensor([float(flag)], device=self.accelerator.device)
        return bool(self.accelerator.gather(value).min() > 0)

    def _check(self, shared: torch.Tensor | None, full: torch.Tensor, mask) -> None:
        """Shared-prefix scoring against the full forward, row by row, agreed on by every rank;
        logged once when it fails (then the full forward is used from now on)."""
        half = self.accelerator.mixed_precision in ("bf16", "fp16") or full.dtype != torch.float32
        bound = SHARED_PREFIX_MAX_ERR["half" if half else "fp32"]
        if shared is None:
            error = torch.tensor(float("inf"), device=full.device)
        else:
            rows = row_max_error(shared, full, mask)
            error = rows.max() if rows.numel() else rows.new_zeros(())
        worst = float(self.accelerator.gather(error.float().reshape(1)).max())
        if worst <= bound:
            if self.prefix_sharing is None:
                self.prefix_sharing = True
            return
        if shared is None and self.full_forward_reason is None:
            self._use_full("its cache cannot be shared for this model")
        elif shared is not None:
            self._use_full(f"a row differs from the full forward by {worst:.2g} (bound {bound:g})")

    def _use_full(self, reason: str, warn: bool = True) -> None:
        """From now on, the full forward, for `reason` (one warning, on the main process)."""
        already = self.prefix_sharing is False
        self.prefix_sharing = False
        if already:
            return
        self.full_forward_reason = reason
        if warn and self.accelerator.is_main_process:
            logger.warning(
                "teacher_shared_prefix: falling back to the full teacher forward (%s); set "
                "teacher_shared_prefix=False to silence this.",
                reason,
            )
        elif not warn:
            logger.info("teacher_shared_prefix: the full teacher forward (%s).", reason)


def with_privileged(example: dict[str, Any], text: str | None) -> dict[str, Any]:
    """`example` whose teacher is shown `text` (None: unchanged) through the template, a
    whole `teacher_prompt` column set aside."""
    if text is None:
        return example
    changed = {k: v for k, v in example.items() if k != "teacher_prompt"}
    changed["privileged_context"] = text
    return changed


def extend_token_types(images: Mapping[str, Any] | None, T: int) -> dict[str, Any]:
    """Image fields as forward kwargs, per-token ones extended with zeros over the `T`
    response positions (as TRL does for the student)."""
    kwargs = dict(images or {})
    for key in TOKEN_TYPE_INPUTS:
        if key in kwargs:
            types = kwargs[key]
            kwargs[key] = torch.cat([types, types.new_zeros((types.size(0), T))], dim=1)
    return kwargs


def full_logits(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    logits_to_keep: int,
    temperature: float,
    autocast=nullcontext,
    image_kwargs: Mapping[str, Any] | None = None,
) -> torch.Tensor:
    """`[B, T, V]` temperature-scaled logits predicting the last `logits_to_keep` tokens."""
    kwargs = {k: v for k, v in (image_kwargs or {}).items() if k != "num_images"}
    with autocast():
        logits = model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits
    return logits[:, -logits_to_keep - 1 : -1, :].float() / temperature
