"""The self-teacher: its prompt, its weights, and how it scores responses (spec section 4).

The teacher is the policy's own network shown privileged context `r` (a reference solution,
an internal document): `logp_T[t] = log pi_teacher(y_t | x, r, y_<t)`. This module owns:

- **the prompt** (`teacher_prompt`, `teacher_prompt_ids`): the spec's template (or the task's,
  or a `teacher_prompt` column) through the chat template. Over `teacher_max_prompt_length`
  the privileged text alone is cut, from its end, with a marker; the template, system prompt,
  question and response are never cut, and a row that cannot fit raises an error naming it.
- **the weights** (`TeacherSnapshot`): build, sync, save into and load from checkpoints.
  `teacher_sync_steps = N > 1`: a frozen copy refreshed after the update of every optimiser
  step `k` with `k % N == 0` (the released code); `0`: never refreshed (the initial policy,
  as the OPSD paper does); `1`: the live policy weights, without a copy. With PEFT the
  snapshot is a second adapter, `rlsd_teacher`, on the same base model. Under DeepSpeed
  ZeRO-3 and FSDP every copy goes through full (gathered) parameters, so a snapshot never
  holds the empty tensors of a partition. The teacher always runs in eval mode.
- **the scoring** (`shared_prefix_logps`, `shared_prefix_logits`): each distinct teacher
  prompt is encoded once and its KV cache serves every response that shares it (the G
  responses of a group), instead of encoding the privileged context G times.

Privileged text only ever enters the teacher's prompt ids; it is never added to the student
prompt and never logged unless the user asks (`log_privileged`). Error messages name a row by
its question, never by its privileged text.

Simplifications: the distinct prompts of a batch are encoded in one forward (there are at
most B/G of them); shared-prefix scoring needs a `DynamicCache` of plain layers (full
attention), and the trainer checks it once against the full forward before relying on it.
"""

from __future__ import annotations

import copy
import inspect
import json
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, cast

import torch

from rlsd.prompts import Prompt, content_text, is_conversational, tokenize_prompts

# The spec's default template (section 4), editable through `RLSDConfig.teacher_template`.
DEFAULT_TEACHER_TEMPLATE = (
    "{question}\n\nHere is a reference solution:\n{privileged}\n\n"
    "After understanding the reference solution, please try to solve this problem using your "
    "own approach below."
)
TEACHER_ADAPTER = "rlsd_teacher"
TEACHER_STATE_DIR = "rlsd_teacher"
# The adapter's name as one segment of a PEFT parameter name: in the middle for LoRA's linear
# layers (`...q_proj.lora_A.rlsd_teacher.weight`), last for its embedding ParameterDicts
# (`...embed_tokens.lora_embedding_A.rlsd_teacher`).
_ADAPTER_SEGMENT = re.compile(rf"(?<=\.){TEACHER_ADAPTER}(?=\.|$)")


def is_teacher_parameter(name: str) -> bool:
    """Whether a parameter name belongs to the teacher adapter (any LoRA layer kind)."""
    return _ADAPTER_SEGMENT.search(name) is not None


def policy_parameter_name(name: str) -> str:
    """The policy's (`default` adapter's) parameter that a teacher-adapter parameter mirrors."""
    return _ADAPTER_SEGMENT.sub("default", name)


DEFAULT_TRUNCATION_MARKER = " [...]"


# ------------------------------------------------------------------------------- prompts
def fill_template(template: str, question: str, privileged: str, instruction: str = "") -> str:
    """The teacher's user text: the template with `{question}` and `{privileged}` filled, then
    the task's own answer-format instruction (if any). Uses `str.replace`, not `format`, so
    braces in questions and references (LaTeX, JSON, code) need no escaping."""
    text = template.replace("{question}", question).replace("{privileged}", privileged)
    return text + (f"\n{instruction}" if instruction else "")


def privileged_text(example: Mapping[str, Any]) -> str:
    """The example's privileged context: `privileged_context`, falling back to `answer`."""
    for key in ("privileged_context", "answer"):
        value = example.get(key)
        if value is not None and str(value).strip():
            return str(value)
    raise ValueError(
        "The teacher needs privileged context: this example has neither a non-empty "
        "`privileged_context` nor an `answer` column (or give a whole `teacher_prompt`)."
    )


def teacher_prompt(
    example: Mapping[str, Any],
    template: str = DEFAULT_TEACHER_TEMPLATE,
    instruction: str = "",
    privileged: str | None = None,
) -> Prompt:
    """The teacher's prompt for one dataset example, in the same form as the student's.

    An explicit `teacher_prompt` column wins. Otherwise, for chat prompts the last user
    message's content becomes the filled template (earlier messages, e.g. a system prompt,
    are kept); for text prompts the whole text is the question. `privileged` replaces the
    example's privileged text (the truncated version, for instance)."""
    explicit = example.get("teacher_prompt")
    if explicit:
        return explicit
    prompt = example["prompt"]
    if privileged is None:
        privileged = privileged_text(example)
    if is_conversational(prompt):
        last_user = max(i for i, m in enumerate(prompt) if m.get("role") == "user")
        message = dict(prompt[last_user])
        content = message["content"]
        filled = fill_template(template, content_text(content), privileged, instruction)
        if isinstance(content, list):  # image parts stay where they were; the text is filled
            first_text = next(
                (i for i, part in enumerate(content) if part.get("type") == "text"), len(content)
            )
            parts = [part for part in content if part.get("type") != "text"]
            parts.insert(min(first_text, len(parts)), {"type": "text", "text": filled})
            message["content"] = parts
        else:
            message["content"] = filled
        return [*prompt[:last_user], message, *prompt[last_user + 1 :]]
    return fill_template(template, str(prompt), privileged, instruction)


def example_images(example: Mapping[str, Any]) -> list | None:
    """The images of a row in TRL's conventions: an `images` list or an `image` column."""
    if example.get("images") is not None:
        return list(example["images"])
    if example.get("image") is not None:
        return [example["image"]]
    return None


def _question_of(example: Mapping[str, Any]) -> str:
    """A short, non-privileged name for a row in error messages: its question."""
    prompt: Any = example.get("prompt", "")
    if is_conversational(prompt):
        prompt = next((m.get("content") for m in reversed(prompt) if m.get("role") == "user"), "")
    text = " ".join(content_text(prompt).split())
    return text if len(text) <= 80 else text[:77] + "..."


def _fit_privileged(
    tokenizer,
    example: Mapping[str, Any],
    ids: list[int],
    budget: int,
    render: Callable[[str], list[int]],
    marker: str,
    row: int,
) -> list[int]:
    """Cut the privileged text's last tokens (adding `marker`) until the prompt fits `budget`.

    Tokenisation is not additive at the seam, so the cut is refined: each round removes as
    many privileged tokens as the prompt is still over, until it fits."""
    if example.get("teacher_prompt"):
        raise ValueError(
            f"Teacher prompt of row {row} (question: {_question_of(example)!r}) has {len(ids)} "
            f"tokens, over teacher_max_prompt_length={budget}, and it is an explicit "
            "`teacher_prompt`, whose privileged part rlsd cannot tell apart: shorten it or raise "
            "teacher_max_prompt_length."
        )
    privileged_ids = tokenizer(privileged_text(example), add_special_tokens=False)["input_ids"]
    keep = len(privileged_ids) - (len(ids) - budget)
    while keep > 0:
        cut = tokenizer.decode(privileged_ids[:keep], skip_special_tokens=False) + marker
        ids = render(cut)
        if len(ids) <= budget:
            return ids
        keep -= len(ids) - budget
    bare = len(render(marker.strip()))
    raise ValueError(
        f"Teacher prompt of row {row} (question: {_question_of(example)!r}) cannot fit "
        f"teacher_max_prompt_length={budget}: the template, question and system prompt alone "
        f"take {bare} tokens. Raise teacher_max_prompt_length (never cut: question, template)."
    )


def render_prompts(
    processing_class,
    prompts: list[Prompt],
    images: list[list | None] | None,
    **chat_template_kwargs,
) -> tuple[list[list[int]], dict[str, Any]]:
    """Token ids of `prompts` as TRL renders them for generation (chat template with the
    generation prompt); with `images` (one list per prompt), through the processor, which also
    returns the batch's image fields (`pixel_values`, ..., per-token ones unpadded, and
    `num_images` per prompt)."""
    if images is None:
        return tokenize_prompts(processing_class, prompts, **chat_template_kwargs), {}
    from trl.data_utils import prepare_multimodal_messages

    if not all(is_conversational(p) for p in prompts):
        raise ValueError(
            "Rows with images need conversational prompts (chat messages), as TRL requires."
        )
    messages = [
        prepare_multimodal_messages(cast(list, p), images=imgs) for p, imgs in zip(prompts, images)
    ]
    out = processing_class.apply_chat_template(
        conversation=messages,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs={"padding": True},
        **chat_template_kwargs,
    )
    mask = out["attention_mask"]
    ids = [row[m.bool()].tolist() for row, m in zip(out["input_ids"], mask)]
    fields = {k: v for k, v in out.items() if k not in ("input_ids", "attention_mask")}
    for key in ("token_type_ids", "mm_token_type_ids"):  # per token: unpad like the ids
        if key in fields:
            fields[key] = [row[m.bool()].tolist() for row, m in zip(fields[key], mask)]
    fields["num_images"] = [len(imgs or []) for imgs in images]
    return ids, fields


def teacher_prompt_batch(
    processing_class,
    examples: Sequence[Mapping[str, Any]],
    template: str = DEFAULT_TEACHER_TEMPLATE,
    instruction: str = "",
    max_prompt_length: int | None = None,
    marker: str = DEFAULT_TRUNCATION_MARKER,
    **chat_template_kwargs,
) -> tuple[list[list[int]], int, dict[str, Any]]:
    """Token ids of each example's teacher prompt, how many had their privileged text cut, and,
    for rows with images (TRL's `image` / `images` columns), the processor's image fields
    (`pixel_values`, `image_grid_thw`, ..., and `num_images` per row; per-token fields such as
    `token_type_ids` as unpadded lists). The teacher sees the same images as the student.

    A prompt over `max_prompt_length` tokens keeps the template, system prompt, question and
    images whole and loses the end of its privileged text (spec section 4)."""
    row_images = [example_images(ex) for ex in examples]
    images = row_images if any(row_images) else None
    prompts = [teacher_prompt(ex, template, instruction) for ex in examples]
    ids, fields = render_prompts(processing_class, prompts, images, **chat_template_kwargs)
    truncated = 0
    if max_prompt_length is None:
        return ids, truncated, fields
    for i, ex in enumerate(examples):
        if len(ids[i]) <= max_prompt_length:
            continue

        def render(privileged: str, i=i, ex=ex) -> list[int]:
            prompts[i] = teacher_prompt(ex, template, instruction, privileged=privileged)
            row = None if images is None else [images[i]]
            return render_prompts(processing_class, [prompts[i]], row, **chat_template_kwargs)[0][0]

        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        ids[i] = _fit_privileged(tokenizer, ex, ids[i], max_prompt_length, render, marker, i)
        truncated += 1
    if truncated and images is not None:  # the image fields of the batch as finally rendered
        ids, fields = render_prompts(processing_class, prompts, images, **chat_template_kwargs)
    return ids, truncated, fields


def teacher_prompt_ids(
    tokenizer,
    examples: Sequence[Mapping[str, Any]],
    template: str = DEFAULT_TEACHER_TEMPLATE,
    instruction: str = "",
    max_prompt_length: int | None = None,
    marker: str = DEFAULT_TRUNCATION_MARKER,
    **chat_template_kwargs,
) -> tuple[list[list[int]], int]:
    """`teacher_prompt_batch` without the image fields: the ids and the truncated count."""
    ids, truncated, _ = teacher_prompt_batch(
        tokenizer,
        examples,
        template,
        instruction,
        max_prompt_length,
        marker,
        **chat_template_kwargs,
    )
    return ids, truncated


def left_pad(ids: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`[B, W]` ids and mask of token lists left-padded to their longest (TRL's layout)."""
    width = max(len(x) for x in ids)
    out = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, x in enumerate(ids):
        out[i, width - len(x) :] = torch.tensor(list(x), dtype=torch.long)
        mask[i, width - len(x) :] = 1
    return out, mask


def teacher_input_ids(
    tokenizer,
    examples: Sequence[Mapping[str, Any]],
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    template: str = DEFAULT_TEACHER_TEMPLATE,
    instruction: str = "",
    max_prompt_length: int | None = None,
    **chat_template_kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`[B, P_T + T]` ids and attention mask: teacher prompts (left-padded) followed by the
    student's sampled completion ids unchanged (`[B, T]`, right-padded, never re-tokenised).

    The last `T` positions line up with the completion exactly as in the student's input, so
    TRL's `logits_to_keep = T` scores the same tokens under both contexts."""
    ids, _ = teacher_prompt_ids(
        tokenizer, examples, template, instruction, max_prompt_length, **chat_template_kwargs
    )
    prompt_ids, prompt_mask = left_pad(ids, tokenizer.pad_token_id)
    device = completion_ids.device
    input_ids = torch.cat([prompt_ids.to(device), completion_ids], dim=1)
    attention_mask = torch.cat(
        [prompt_mask.to(device), completion_mask.to(prompt_mask.dtype).to(device)], 1
    )
    return input_ids, attention_mask


# ------------------------------------------------------------------- shared-prefix scoring
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


# ------------------------------------------------------------------------------- weights
def _is_dtensor(t: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - old torch
        return False
    return isinstance(t, DTensor)


@contextmanager
def _gathered(params: list[torch.nn.Parameter], modifier_rank: int | None = None):
    """Full parameters for the duration of the block under DeepSpeed ZeRO-3 (a collective:
    every rank must enter it); a no-op otherwise. With `modifier_rank`, that rank's writes
    reach every rank's partition when the block ends."""
    if params and hasattr(params[0], "ds_id"):  # partitioned by ZeRO-3
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank):
            yield
    else:
        yield


def _full_value(param: Any) -> torch.Tensor:
    """The whole tensor of a (possibly FSDP-sharded) parameter, on every rank."""
    return param.full_tensor() if _is_dtensor(param) else param.data


def _write(param: Any, value: torch.Tensor) -> None:
    """Copy a full tensor into a (possibly FSDP-sharded) parameter."""
    if _is_dtensor(param):
        from torch.distributed.tensor import distribute_tensor

        local = distribute_tensor(
            value.to(param.device, param.dtype), param.device_mesh, param.placements
        )
        param.data.copy_(local)
    else:
        param.data.copy_(value.to(param.device, param.dtype))


def _is_rank_zero() -> bool:
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


_GATHER_BLOCK = 64  # parameters gathered at a time under ZeRO-3 (bounds peak memory)


def _copy_parameters(pairs: list[tuple[torch.nn.Parameter, torch.nn.Parameter]]) -> None:
    """`target <- source` for each pair, through full parameters (ZeRO-3, FSDP, plain)."""
    for start in range(0, len(pairs), _GATHER_BLOCK):
        block = pairs[start : start + _GATHER_BLOCK]
        sources = [s for s, _ in block]
        targets = [t for _, t in block]
        with _gathered(sources), _gathered(targets, modifier_rank=0), torch.no_grad():
            for source, target in block:
                _write(target, _full_value(source))


def cast_lm_head_to_fp32(model) -> None:
    """The LM head in float32, as TRL's `cast_lm_head_to_fp32` does for the policy: float32
    weights and projection; with tied embeddings, the embedding output keeps the model's dtype."""
    original = model.lm_head.weight.dtype
    lm_head = model.lm_head.float()
    model.lm_head = lm_head

    def forward(hidden_states: torch.Tensor) -> torch.Tensor:
        bias = None if lm_head.bias is None else lm_head.bias.float()
        return torch.nn.functional.linear(hidden_states.float(), lm_head.weight.float(), bias)

    lm_head.forward = forward
    if model.config.tie_word_embeddings:
        model.get_input_embeddings().register_forward_hook(
            lambda module, args, output: output.to(original)
        )


class TeacherSnapshot:
    """The teacher's weights: one of

    - `"live"`: the policy itself (`teacher_sync_steps=1`), nothing copied;
    - `"adapter"`: under PEFT, a second adapter `rlsd_teacher` holding a copy of the policy's
      adapter, switched on for the teacher's forward;
    - `"copy"`: a frozen copy of the policy (prepared like TRL's reference model: ZeRO-3 and
      FSDP shard it too);
    - `"separate"`: the separate teacher of `opd`, loaded from its own path, never synced.

    `sync()` copies the policy into the snapshot through full parameters (a collective under
    ZeRO-3 and FSDP: every rank calls it, as the trainer's callback does), `save()` and
    `load()` put the snapshot into a checkpoint folder and back. `synced_at` is the optimiser
    step of the last sync (0: the initial policy)."""

    def __init__(self, trainer, args) -> None:
        from accelerate.utils import is_peft_model

        self.trainer = trainer
        self.sync_steps = int(args.teacher_sync_steps or 0)
        self.synced_at = 0
        policy = self._policy()
        if args.spec.separate_teacher:
            self.kind = "separate"
        elif self.sync_steps == 1:
            self.kind = "live"
        elif is_peft_model(policy):
            self.kind = "adapter"
        else:
            self.kind = "copy"
        self.model = None
        # Building draws random initial weights (overwritten by the first sync): keep the
        # global RNG as it was, so the run samples as it would with any other teacher kind.
        with torch.random.fork_rng(devices=[]):
            if self.kind == "separate":
                self.model = self._prepare(self._load_separate(args, policy), args)
            elif self.kind == "copy":
                self.model = self._prepare(self._new_copy(policy), args)
            elif self.kind == "adapter":
                self._add_adapter(policy)
        if self.kind in ("copy", "adapter"):
            self.sync(step=0)

    # -------------------------------------------------------------------------- build
    def _policy(self):
        return self.trainer.accelerator.unwrap_model(self.trainer.model)

    def _load_separate(self, args, policy):
        from transformers import AutoModelForCausalLM

        teacher = AutoModelForCausalLM.from_pretrained(
            args.teacher_model_name_or_path, dtype=policy.dtype
        )
        if teacher.config.vocab_size != policy.config.vocab_size:
            raise ValueError(
                "The opd teacher must share the student's tokenizer: vocab sizes differ "
                f"({teacher.config.vocab_size} vs {policy.config.vocab_size})."
            )
        return teacher

    @staticmethod
    def _new_copy(policy):
        """An empty model of the policy's class (a causal LM or a vision-language model);
        `sync()` fills it with the policy's full parameters, so no checkpoint path is needed
        (also under ZeRO-3, where `_from_config` partitions it, and FSDP)."""
        return type(policy)._from_config(copy.deepcopy(policy.config), dtype=policy.dtype)

    def _prepare(self, teacher, args):
        """Frozen, eval mode, no dropout, the policy's LM-head settings, then distributed like
        TRL's reference model."""
        from trl.trainer.utils import add_fused_lm_head, disable_dropout_in_model

        trainer = self.trainer
        teacher.requires_grad_(False)
        teacher.eval()
        disable_dropout_in_model(teacher)
        if args.cast_lm_head_to_fp32:
            cast_lm_head_to_fp32(teacher)
        add_fused_lm_head(
            teacher, temperature=trainer.temperature, cast_lm_head_to_fp32=args.cast_lm_head_to_fp32
        )
        if trainer.is_deepspeed_enabled:
            from trl.models.utils import prepare_deepspeed

            return prepare_deepspeed(teacher, trainer.accelerator)
        if trainer.is_fsdp_enabled:
            from trl.models.utils import prepare_fsdp

            return prepare_fsdp(teacher, trainer.accelerator)
        return trainer.accelerator.prepare_model(teacher, evaluation_mode=True)

    def _add_adapter(self, policy) -> None:
        """The `rlsd_teacher` adapter: the policy's adapter config, frozen, and with its LoRA
        dropout removed (TRL disabled dropout before this adapter existed)."""
        policy.add_adapter(TEACHER_ADAPTER, policy.peft_config["default"])
        for name, module in policy.named_modules():
            if name.endswith(f"lora_dropout.{TEACHER_ADAPTER}"):
                module.p = 0.0
        for name, param in policy.named_parameters():
            if is_teacher_parameter(name):
                param.requires_grad_(False)
        # add_adapter may switch the active adapter; the policy trains `default`.
        policy.set_adapter("default")

    # --------------------------------------------------------------------------- use
    @contextmanager
    def forward_context(self):
        """`(model)` to run the teacher's forward with: eval mode (no dropout), and the
        teacher adapter switched on under PEFT; the policy's mode is restored after."""
        if self.kind in ("copy", "separate"):
            yield self.model
            return
        model = self.trainer.model
        was_training = model.training
        model.eval()
        try:
            if self.kind == "adapter":
                from trl.trainer.utils import use_adapter

                with use_adapter(self._policy(), TEACHER_ADAPTER):
                    yield model
            else:
                yield model
        finally:
            model.train(was_training)

    # ------------------------------------------------------------------ the weights
    def _pairs(self) -> list[tuple[torch.nn.Parameter, torch.nn.Parameter]]:
        """(policy parameter, teacher parameter) for every parameter the snapshot holds."""
        if self.kind == "adapter":
            params = dict(self._policy().named_parameters())
            return [
                (params[policy_parameter_name(n)], p)
                for n, p in params.items()
                if is_teacher_parameter(n)
            ]
        if self.kind == "copy":
            source = dict(self._policy().named_parameters())
            target = self.trainer.accelerator.unwrap_model(self.model)
            return [(source[n], p) for n, p in target.named_parameters()]
        return []

    def _named(self) -> list[tuple[str, torch.nn.Parameter]]:
        if self.kind == "adapter":
            return [(n, p) for n, p in self._policy().named_parameters() if is_teacher_parameter(n)]
        if self.kind == "copy":
            return list(self.trainer.accelerator.unwrap_model(self.model).named_parameters())
        return []

    def sync(self, step: int) -> None:
        """Copy the policy (or its adapter) into the snapshot; every rank calls it."""
        if self.kind in ("copy", "adapter"):
            _copy_parameters(self._pairs())
        self.synced_at = step

    def maybe_sync(self, step: int) -> bool:
        """The released code's schedule: after the update of step `k`, sync if `k % N == 0`
        (N = `teacher_sync_steps` > 1), whether or not the teacher ran at that step."""
        if self.sync_steps > 1 and step > 0 and step % self.sync_steps == 0:
            self.sync(step)
            return True
        return False

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The snapshot's full tensors on CPU, on every rank (a collective under ZeRO-3 and
        FSDP). Empty for the live policy and the separate opd teacher (nothing to save)."""
        named = self._named()
        out: dict[str, torch.Tensor] = {}
        for start in range(0, len(named), _GATHER_BLOCK):
            block = named[start : start + _GATHER_BLOCK]
            with _gathered([p for _, p in block]), torch.no_grad():
                for name, param in block:
                    out[name] = _full_value(param).detach().cpu().clone().contiguous()
        return out

    def save(self, folder: str | Path) -> None:
        """Write the snapshot into `folder` (rank 0 writes; every rank must call it)."""
        from safetensors.torch import save_file

        tensors = self.full_state_dict()
        if not _is_rank_zero():
            return
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if tensors:
            save_file(tensors, str(folder / "model.safetensors"))
        state = {"kind": self.kind, "synced_at": self.synced_at}
        (folder / "state.json").write_text(json.dumps(state) + "\n")

    def load(self, folder: str | Path) -> None:
        """Restore a snapshot written by `save` (every rank reads the files)."""
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / "state.json").exists():
            return
        state = json.loads((folder / "state.json").read_text())
        self.synced_at = int(state.get("synced_at", state.get("teacher_synced_at", 0)))
        if not (folder / "model.safetensors").exists() or self.kind not in ("copy", "adapter"):
            return
        tensors = load_file(str(folder / "model.safetensors"))
        named = self._named()
        missing = [n for n, _ in named if n not in tensors]
        if missing:
            raise ValueError(
                f"{folder / 'model.safetensors'}: the teacher snapshot lacks {len(missing)} of "
                f"this model's parameters (first: {missing[0]!r}); it was saved from another "
                "model or PEFT setup."
            )
        for start in range(0, len(named), _GATHER_BLOCK):
            block = named[start : start + _GATHER_BLOCK]
            with _gathered([p for _, p in block], modifier_rank=0), torch.no_grad():
                for name, param in block:
                    _write(param, tensors[name])
