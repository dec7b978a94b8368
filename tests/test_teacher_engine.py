"""The teacher engine, exact on every training path: A_hat at loss time from the loss
forward, shared-prefix teacher scoring, lambda per optimiser step, the sync schedule, a PEFT
teacher without dropout, the teacher after a resume, and privileged-text truncation."""

import logging

import pytest
import torch
from test_trainer_run import make_trainer
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
from trl.trainer.utils import add_fused_lm_head

import rlsd.trainer as trainer_module
from rlsd import RLSDConfig
from rlsd.objectives import lambda_at, rlsd_token_advantages, token_advantages
from rlsd.prompts import tokenize_prompts
from rlsd.tasks import get_task, make_rows
from rlsd.teacher import (
    SHARED_PREFIX_MAX_ERR,
    left_pad,
    shared_prefix_logits,
    shared_prefix_logps,
    teacher_input_ids,
    teacher_prompt_ids,
)
from rlsd.teacher.scoring import row_max_error


def _reference_batch(tokenizer, rows: list[dict], pad_id: int):
    """The rows' reference texts as right-padded completions `[B, T]`."""
    completions = [
        tokenizer(r["privileged_context"], add_special_tokens=False)["input_ids"] for r in rows
    ]
    width = max(map(len, completions))
    ids = torch.full((len(rows), width), pad_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, c in enumerate(completions):
        ids[i, : len(c)], mask[i, : len(c)] = torch.tensor(c), 1
    return ids, mask


def _grouped_rows(task_name: str, prompts: int, group: int) -> list[dict]:
    rows = make_rows(get_task(task_name).problems("eval", prompts, 0))
    return [r for r in rows for _ in range(group)]  # G responses per prompt, contiguous


# --------------------------------------------------------------------- shared-prefix scoring
def _full_logps(model, ids, mask, T):
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :-T] = -100
    with torch.no_grad():
        return model(
            input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True
        ).log_probs[:, -T:]


def _gqa_model(vocab_size: int) -> LlamaForCausalLM:
    """A tiny random Llama with grouped-query attention (4 query heads share 2 KV heads)."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("which", ["tiny", "gqa"])
def test_shared_prefix_equals_the_full_forward(tiny_path, which):
    tok = AutoTokenizer.from_pretrained(tiny_path)
    if which == "tiny":
        model = AutoModelForCausalLM.from_pretrained(tiny_path).eval()
    else:
        model = _gqa_model(len(tok))
        assert model.config.num_key_value_heads < model.config.num_attention_heads
    add_fused_lm_head(model, temperature=0.7)
    task = get_task("arithmetic")
    rows = _grouped_rows("arithmetic", 5, 4)  # prompts of different lengths: left padding
    completion_ids, completion_mask = _reference_batch(tok, rows, tok.pad_token_id)
    T = completion_ids.size(1)
    ids, mask = teacher_input_ids(tok, rows, completion_ids, completion_mask, task.teacher_template)
    assert len(set(mask[:, :-T].sum(1).tolist())) > 1  # the prompts really are ragged
    full = _full_logps(model, ids, mask, T)
    for batch_size in (None, 3):  # one chunk, and chunks that split the groups
        shared = shared_prefix_logps(
            model, ids[:, :-T], mask[:, :-T], completion_ids, completion_mask, batch_size
        )
        assert shared is not None and shared.shape == full.shape
        assert ((shared - full).abs() * completion_mask).max() <= 1e-4
    # the same for the full logits of OPSD / OPD
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, -T - 1 : -1]
    shared_logits = shared_prefix_logits(
        model, ids[:, :-T], mask[:, :-T], completion_ids, completion_mask, 7
    )
    assert (shared_logits - logits).abs().max() <= 1e-4


@pytest.mark.slow
def test_trainer_checks_sharing_once_and_falls_back(tiny_path, tmp_path, monkeypatch, caplog):
    tok = AutoTokenizer.from_pretrained(tiny_path)
    rows = _grouped_rows("arithmetic", 3, 4)
    completion_ids, completion_mask = _reference_batch(tok, rows, tok.pad_token_id)
    T = completion_ids.size(1)
    task = get_task("arithmetic")
    ids, mask = teacher_input_ids(tok, rows, completion_ids, completion_mask, task.teacher_template)

    trainer = make_trainer(tiny_path, tmp_path)
    first = trainer.teacher_logps(ids, mask, T)
    assert trainer.teacher_scorer.prefix_sharing is True  # checked once against the full forward
    assert torch.allclose(trainer.teacher_logps(ids, mask, T), first, atol=1e-4)

    # A model whose cache cannot be shared: the full forward, and one warning.
    monkeypatch.setattr("rlsd.teacher.scoring._shareable", lambda cache: False)
    other = make_trainer(tiny_path, tmp_path / "other")
    with caplog.at_level(logging.WARNING, logger="rlsd.teacher.scoring"):
        a = other.teacher_logps(ids, mask, T)
        b = other.teacher_logps(ids, mask, T)
    assert other.teacher_scorer.prefix_sharing is False
    assert sum("falling back" in r.message for r in caplog.records) == 1
    assert torch.equal(a, b) and torch.allclose(a, first, atol=1e-4)
    off = make_trainer(tiny_path, tmp_path / "off", teacher_shared_prefix=False)
    assert torch.allclose(off.teacher_logps(ids, mask, T), first, atol=1e-4)
    assert off.teacher_scorer.prefix_sharing is False  # never tried
    assert off.teacher_scorer.full_forward_reason == "teacher_shared_prefix=False"


# -------------------------------------------------------------------------- A_hat at loss time
def _loss_batch(trainer, rows, with_old: bool):
    tok = trainer.processing_class
    prompt_ids = tokenize_prompts(tok, [r["prompt"] for r in rows])
    prompt_ids, prompt_mask = left_pad(prompt_ids, tok.pad_token_id)
    completion_ids, completion_mask = _reference_batch(tok, rows, tok.pad_token_id)
    T = completion_ids.size(1)
    template = get_task("arithmetic").teacher_template
    t_ids, t_mask = teacher_input_ids(tok, rows, completion_ids, completion_mask, template)
    advantages = torch.tensor([1.2, -0.4, 0.0, -0.8] * (len(rows) // 4))
    batch = {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": advantages,
        "num_items_in_batch": completion_mask.sum(),
        "rlsd_logp_teacher": trainer.teacher_logps(t_ids, t_mask, T),
        "rlsd_scored": advantages != 0,
    }
    ids = torch.cat([prompt_ids, completion_ids], 1)
    mask = torch.cat([prompt_mask, completion_mask], 1)
    with torch.no_grad():  # the generation-time student forward that loss time replaces
        student = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, T)[0]
    if with_old:
        batch["old_per_token_logps"] = student - 0.3 * torch.linspace(0, 1, T)
    return batch, student


@pytest.mark.slow
@pytest.mark.parametrize("with_old", [False, True])
def test_loss_time_a_hat_equals_generation_time_a_hat(tiny_path, tmp_path, with_old):
    trainer = make_trainer(tiny_path, tmp_path)
    trainer.current_gradient_accumulation_steps = 1
    rows = _grouped_rows("arithmetic", 2, 4)
    batch, student = _loss_batch(trainer, rows, with_old)
    applied = {}
    original = trainer._token_advantages

    def spy(inputs, logps):
        applied["a_hat"] = original(inputs, logps)
        return applied["a_hat"]

    trainer._token_advantages = spy
    trainer.model.train()
    trainer._compute_loss(trainer.model, batch)
    mask = batch["completion_mask"].float()
    logp_student = batch["old_per_token_logps"] if with_old else student
    expected = rlsd_token_advantages(
        batch["advantages"], logp_student, batch["rlsd_logp_teacher"], mask, lambda_at(1)
    )
    assert applied["a_hat"].shape == mask.shape
    assert torch.allclose(applied["a_hat"], expected, atol=1e-6)
    assert batch["advantages"].dim() == 1  # the buffered batch keeps A for later iterations
    # statistics describe the A_hat that was applied
    logged = trainer._metrics["train"]["rlsd/adv_hat_abs_mean"][-1]
    assert logged == pytest.approx(float((expected.abs() * mask).sum() / mask.sum()), rel=1e-5)


def _record_lambdas(monkeypatch, trainer) -> list[tuple[int, float, bool]]:
    """(optimiser step, lambda applied, had old log-probs) for every A_hat computed."""
    seen: list[tuple[int, float, bool]] = []
    original_token_advantages = trainer._token_advantages

    def token_advantages_of_step(inputs, logps):
        seen.append((trainer.state.global_step + 1, None, "old_per_token_logps" in inputs))
        return original_token_advantages(inputs, logps)

    def spy(advantages, logp_s, logp_t, mask, lam, *args, **kwargs):
        step, _, old = seen[-1]
        seen[-1] = (step, lam, old)
        return token_advantages(advantages, logp_s, logp_t, mask, lam, *args, **kwargs)

    trainer._token_advantages = token_advantages_of_step
    monkeypatch.setattr(trainer_module, "token_advantages", spy)
    return seen


@pytest.mark.slow
@pytest.mark.parametrize(
    "schedule",
    [
        {"steps_per_generation": 2, "gradient_accumulation_steps": 1},  # 2 steps per generation
        {"num_iterations": 2},  # each generation batch trains twice
    ],
)
def test_lambda_follows_the_optimiser_step(tiny_path, tmp_path, monkeypatch, schedule):
    trainer = make_trainer(
        tiny_path,
        tmp_path,
        max_steps=4,
        per_device_train_batch_size=16,
        rlsd_lambda_decay_steps=5,  # 0.4, 0.3, 0.2, 0.1: every step has its own lambda
        rlsd_skip_zero_advantage=False,
        **schedule,
    )
    seen = _record_lambdas(monkeypatch, trainer)
    trainer.train()
    assert [s for s, _, _ in seen] == [1, 2, 3, 4]
    assert [lam for _, lam, _ in seen] == pytest.approx([lambda_at(k, 0.5, 5) for k in range(1, 5)])
    assert all(old for _, _, old in seen)  # one rollout feeds 2 steps: TRL's old log-probs
    logged = [r["rlsd/lambda"] for r in trainer.state.log_history if "rlsd/lambda" in r]
    assert logged == pytest.approx([lambda_at(k, 0.5, 5) for k in range(1, 5)])


# ------------------------------------------------------------------------------ sync schedule
@pytest.mark.slow
def test_sync_at_exactly_every_n_steps_with_skipped_teacher(tiny_path, tmp_path):
    trainer = make_trainer(
        tiny_path,
        tmp_path,
        max_steps=30,
        per_device_train_batch_size=8,
        steps_per_generation=3,  # 3-step generation batches: 10 is not a multiple of 3
        teacher_sync_steps=10,
        rlsd_lambda_decay_steps=4,  # the teacher stops running after step 3
        logging_steps=10,
    )
    synced = []
    original = trainer.teacher.sync

    def sync(step):
        synced.append(step)
        original(step)

    trainer.teacher.sync = sync
    trainer.train()
    assert synced == [10, 20, 30] and trainer.teacher.synced_at == 30
    policy = trainer.model.state_dict()
    teacher = trainer.accelerator.unwrap_model(trainer.teacher.model).state_dict()
    assert all(torch.equal(teacher[n], policy[n]) for n in teacher)  # synced after the last update


@pytest.mark.slow
@pytest.mark.parametrize(
    "schedule",
    [
        {"steps_per_generation": 2},  # one rollout feeds steps (1, 2), (3, 4)
        {"num_iterations": 2},  # each rollout is trained on twice: steps (1, 2), (3, 4)
    ],
)
def test_each_step_is_scored_by_the_teacher_its_schedule_names(tiny_path, tmp_path, schedule):
    """Syncs after step 3, in the middle of the rollout that feeds steps 3 and 4: step 4
    must be scored by the teacher synced after step 3, not the one that scored the rollout.
    At every loss, the teacher log-probs used equal a fresh scoring by the current snapshot,
    and the snapshot's `synced_at` is the schedule's (0 for steps 1-3, 3 for step 4)."""
    trainer = make_trainer(
        tiny_path,
        tmp_path,
        max_steps=4,
        per_device_train_batch_size=16,
        teacher_sync_steps=3,
        rlsd_lambda_decay_steps=0,  # lambda held: the teacher runs at every step
        **schedule,
    )
    scorer = trainer.teacher_scorer
    seen = []
    original = trainer._token_advantages

    def checked(inputs, logps):
        rows = inputs["rlsd_scored"].nonzero().squeeze(1)
        T = inputs["completion_ids"].size(1)
        fresh = scorer.logps(
            torch.cat([inputs["rlsd_teacher_prompt_ids"][rows], inputs["completion_ids"][rows]], 1),
            torch.cat(
                [inputs["rlsd_teacher_prompt_mask"][rows], inputs["completion_mask"][rows]], 1
            ),
            T,
        )
        used = inputs["rlsd_logp_teacher"][rows]
        real = inputs["completion_mask"][rows].bool()
        seen.append((trainer.state.global_step + 1, trainer.teacher.synced_at))
        assert torch.allclose(used[real], fresh[real], atol=1e-5), seen[-1]
        return original(inputs, logps)

    trainer._token_advantages = checked
    trainer.train()
    assert [synced for step, synced in seen if step == 4] and all(
        synced == (3 if step == 4 else 0) for step, synced in seen
    ), seen
    assert any("rlsd/teacher_rescored" in r for r in trainer.state.log_history)


# ------------------------------------------------------------------------------ PEFT teacher
@pytest.mark.slow
def test_peft_teacher_is_deterministic_and_keeps_the_policy_mode(tiny_path, tmp_path):
    from peft import LoraConfig

    from rlsd import RLSDTrainer
    from rlsd.data import to_dataset
    from rlsd.verifiers import get_verifier

    task = get_task("arithmetic")

    config = RLSDConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=16,
        num_generations=8,
        max_steps=1,
        max_completion_length=task.max_completion_length,
        report_to="none",
        use_cpu=True,
        bf16=False,
        save_strategy="no",
        teacher_template=task.teacher_template,
        disable_dropout=False,  # the policy keeps its dropout: the teacher must still not
    )
    trainer = RLSDTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_path),
        reward_funcs=get_verifier("exact"),
        args=config,
        train_dataset=to_dataset(make_rows(task.problems("train", 32, 0))),
        processing_class=AutoTokenizer.from_pretrained(tiny_path),
        peft_config=LoraConfig(
            r=4, lora_alpha=8, lora_dropout=0.5, target_modules=["q_proj", "v_proj"]
        ),
    )
    assert trainer.teacher.kind == "adapter"
    tok = trainer.processing_class
    rows = _grouped_rows("arithmetic", 2, 4)
    completion_ids, completion_mask = _reference_batch(tok, rows, tok.pad_token_id)
    T = completion_ids.size(1)
    ids, mask = teacher_input_ids(tok, rows, completion_ids, completion_mask, task.teacher_template)
    trainer.model.train()
    first = trainer.teacher_logps(ids, mask, T)
    second = trainer.teacher_logps(ids, mask, T)
    assert torch.equal(first, second)
    assert trainer.model.training  # restored after the teacher's eval-mode forward
    policy = trainer.accelerator.unwrap_model(trainer.model)
    assert policy.active_adapter == "default"


# ----------------------------------------------------------------------------------- resume
@pytest.mark.slow
def test_resumed_teacher_equals_the_uninterrupted_one(tiny_path, tmp_path):
    """Checkpoint at step 2 (just synced), stop there, resume to step 3: the teacher is the
    snapshot of step 2, as in the run that never stopped, not the initial model."""
    common = dict(
        max_steps=3,
        save_strategy="steps",
        save_steps=2,
        teacher_sync_steps=2,
        per_device_train_batch_size=16,
    )
    tok = AutoTokenizer.from_pretrained(tiny_path)
    rows = _grouped_rows("counting", 2, 4)
    completion_ids, completion_mask = _reference_batch(tok, rows, tok.pad_token_id)
    T = completion_ids.size(1)
    template = get_task("arithmetic").teacher_template
    ids, mask = teacher_input_ids(tok, rows, completion_ids, completion_mask, template)

    whole = make_trainer(tiny_path, tmp_path / "whole", **common)
    initial = whole.teacher_logps(ids, mask, T)
    whole.train()
    expected = whole.teacher_logps(ids, mask, T)
    assert not torch.allclose(expected, initial)  # the sync at step 2 changed the teacher

    resumed = make_trainer(tiny_path, tmp_path / "resumed", **common)
    resumed.train(resume_from_checkpoint=str(tmp_path / "whole" / "checkpoint-2"))
    assert resumed.state.global_step == 3 and resumed.teacher.synced_at == 2
    assert torch.allclose(resumed.teacher_logps(ids, mask, T), expected, atol=1e-6)


# ------------------------------------------------------------------------- smaller fixes
@pytest.mark.slow
def test_negative_only_scores_only_negative_rows(tiny_path, tmp_path):
    trainer = make_trainer(tiny_path, tmp_path, max_steps=1, rlsd_negative_only=True)
    outputs = []
    original = trainer._generate_and_score_completions

    def spy(inputs):
        outputs.append(original(inputs))
        return outputs[-1]

    trainer._generate_and_score_completions = spy
    trainer.train()
    out = outputs[0]
    assert (out["advantages"] < 0).any() and (out["advantages"] > 0).any()
    assert torch.equal(out["rlsd_scored"], out["advantages"] < 0)


def test_grpo_opsd_rejects_the_sampled_token_divergence(tmp_path):
    with pytest.raises(ValueError, match="sampled_token"):
        RLSDConfig(
            output_dir=str(tmp_path),
            algorithm="grpo_opsd",
            opsd_divergence="sampled_token",
            report_to="none",
            use_cpu=True,
            bf16=False,
        )


# ------------------------------------------------------------------------------- truncation
def test_truncation_cuts_only_the_privileged_text(tiny_path):
    tok = AutoTokenizer.from_pretrained(tiny_path)
    question = "Q:12+7-3="
    long_reference = "12+7=19 19-3=16 " * 20 + "ANSWER16"
    rows = [
        {
            "prompt": [
                {"role": "system", "content": "SYS"},
                {"role": "user", "content": question},
            ],
            "privileged_context": long_reference,
        },
        {"prompt": [{"role": "user", "content": "Q:1+1="}], "privileged_context": "1+1=2"},
    ]
    template = "{question}\nRef:{privileged}\nNow solve."
    (full, short), _ = teacher_prompt_ids(tok, rows, template)
    budget = len(full) - 50
    (cut, untouched), truncated = teacher_prompt_ids(
        tok, rows, template, max_prompt_length=budget, marker="[...]"
    )
    assert truncated == 1 and untouched == short  # a short prompt is left alone
    assert len(cut) <= budget and len(cut) >= budget - 5
    text = tok.decode(cut)
    assert text.startswith(tok.decode(full[:8]))  # BOS / system prompt kept
    assert "SYS" in text and question in text and "Now solve." in text  # template kept whole
    assert "[...]" in text and "ANSWER16" not in text  # the privileged text's end is cut


def test_truncation_errors_name_the_row_not_the_secret(tiny_path):
    tok = AutoTokenizer.from_pretrained(tiny_path)
    rows = [
        {"prompt": [{"role": "user", "content": "Q:1+1="}], "privileged_context": "2"},
        {"prompt": [{"role": "user", "content": "Q:9+9=" * 10}], "privileged_context": "SECRET"},
    ]
    with pytest.raises(ValueError, match=r"row 1 \(question: 'Q:9\+9=") as error:
        teacher_prompt_ids(tok, rows, "{question} {privileged}", max_prompt_length=30)
    assert "SECRET" not in str(error.value)
    explicit = [{"prompt": "Q", "teacher_prompt": "x" * 100}]
    with pytest.raises(ValueError, match="explicit `teacher_prompt`"):
        teacher_prompt_ids(tok, explicit, max_prompt_length=20)


# ------------------------------------------------ the shared-prefix check: dtype, rows, errors
def _engine_batch(tiny_path):
    tok = AutoTokenizer.from_pretrained(tiny_path)
    rows = _grouped_rows("arithmetic", 4, 4)
    completion_ids, completion_mask = _reference_batch(tok, rows, tok.pad_token_id)
    task = get_task("arithmetic")
    ids, mask = teacher_input_ids(tok, rows, completion_ids, completion_mask, task.teacher_template)
    return ids, mask, completion_ids.size(1)


@pytest.mark.slow
def test_the_check_passes_in_bf16_and_catches_one_bad_row(tiny_path, tmp_path, monkeypatch):
    """In bf16 the two summation orders differ a little on every row (the check must accept
    that), while an O(1) error on a single row of 16 must be caught: a mean over the batch
    (the former bf16 check) is 1/16 of it and passed."""
    ids, mask, T = _engine_batch(tiny_path)
    bf16 = AutoModelForCausalLM.from_pretrained(tiny_path, dtype=torch.bfloat16).eval()
    add_fused_lm_head(bf16, temperature=1.0)
    shared = shared_prefix_logps(bf16, ids[:, :-T], mask[:, :-T], ids[:, -T:], mask[:, -T:])
    errors = row_max_error(shared, _full_logps(bf16, ids, mask, T), mask[:, -T:])
    assert 0 < errors.max() <= SHARED_PREFIX_MAX_ERR["half"] / 10  # bf16 rounds: not exact
    trainer = make_trainer(tiny_path, tmp_path, bf16=True)  # bf16 autocast
    full = make_trainer(tiny_path, tmp_path / "full", teacher_shared_prefix=False, bf16=True)
    expected = full.teacher_logps(ids, mask, T)
    trainer.teacher_logps(ids, mask, T)
    assert trainer.teacher_scorer.prefix_sharing is True

    def one_bad_row(*args, **kwargs):
        out = shared_prefix_logps(*args, **kwargs)
        out[0, 0] += 1.0  # row 0, its first response token: 1/64 of the batch mean
        return out

    monkeypatch.setattr("rlsd.teacher.scoring.shared_prefix_logps", one_bad_row)
    bad = make_trainer(tiny_path, tmp_path / "bad", bf16=True)
    logps = bad.teacher_logps(ids, mask, T)
    assert bad.teacher_scorer.prefix_sharing is False
    assert "differs from the full forward by 1" in bad.teacher_scorer.full_forward_reason
    assert torch.allclose(logps, expected, atol=1e-6)  # the full forward's numbers came back


@pytest.mark.slow
def test_an_error_in_the_shared_path_falls_back_once(tiny_path, tmp_path, monkeypatch, caplog):
    ids, mask, T = _engine_batch(tiny_path)
    reference = make_trainer(tiny_path, tmp_path / "ref", teacher_shared_prefix=False)
    expected = reference.teacher_logps(ids, mask, T)

    def broken(*args, **kwargs):
        raise RuntimeError("cache layout not supported")

    monkeypatch.setattr("rlsd.teacher.scoring.shared_prefix_logps", broken)
    trainer = make_trainer(tiny_path, tmp_path)
    with caplog.at_level(logging.WARNING, logger="rlsd.teacher.scoring"):
        first = trainer.teacher_logps(ids, mask, T)
        second = trainer.teacher_logps(ids, mask, T)
    warnings = [r.message for r in caplog.records if "falling back" in r.message]
    assert len(warnings) == 1 and "RuntimeError: cache layout not supported" in warnings[0]
    assert trainer.teacher_scorer.prefix_sharing is False
    assert torch.equal(first, second) and torch.allclose(first, expected, atol=1e-6)


def test_qwen2_vl_text_rows_share_their_prefix_exactly():
    """An M-RoPE model (Qwen2-VL, built from a config: no download) on text-only teacher rows,
    ragged left padding included: shared-prefix scoring equals the full forward."""
    from _qwen2_vl import qwen2_vl_config
    from transformers import Qwen2VLForConditionalGeneration

    config = qwen2_vl_config(128, 120, 121, 122, bos_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(config).eval()
    add_fused_lm_head(model, temperature=1.0)
    prompt_ids = torch.randint(2, 100, (6, 10))
    prompt_mask = torch.ones_like(prompt_ids)
    prompt_mask[1, :3] = prompt_mask[4, :6] = 0  # left padding of different widths
    prompt_ids[3] = prompt_ids[2]  # two rows share one prompt
    completion_ids = torch.randint(2, 100, (6, 7))
    completion_mask = torch.ones_like(completion_ids)
    completion_mask[2, 4:] = 0
    ids = torch.cat([prompt_ids, completion_ids], 1)
    mask = torch.cat([prompt_mask, completion_mask], 1)
    full = _full_logps(model, ids, mask, 7)
    shared = shared_prefix_logps(model, prompt_ids, prompt_mask, completion_ids, completion_mask, 4)
    assert shared is not None
    assert row_max_error(shared, full, completion_mask).max() <= 1e-4


def test_teacher_log_probs_never_materialise_the_vocabulary_for_the_batch(tiny_path, tmp_path):
    """Both teacher paths score through TRL's fused LM head (tiles of positions, only the
    scored ones): the LM head module never sees the whole `[B, L]` batch, so `[B, L, V]`
    logits (49k wide on SmolLM2) are never formed for the batch at once."""
    ids, mask, T = _engine_batch(tiny_path)
    for shared in (True, False):
        trainer = make_trainer(tiny_path, tmp_path / str(shared), teacher_shared_prefix=shared)
        with trainer.teacher.forward_context() as model:
            head = trainer.accelerator.unwrap_model(model).lm_head
        rows_seen = []
        hook = head.register_forward_hook(
            lambda module, args, out, seen=rows_seen: seen.append(out.shape[:-1].numel())
        )
        try:
            trainer.teacher_logps(ids, mask, T)
            with torch.no_grad(), trainer.teacher.forward_context() as model:
                model(input_ids=ids, attention_mask=mask)  # a plain forward, for contrast
        finally:
            hook.remove()
        *teacher, plain = rows_seen
        assert plain == ids.numel()  # the hook sees a whole-batch projection when there is one
        assert max(teacher, default=0) < ids.numel(), (shared, teacher)
