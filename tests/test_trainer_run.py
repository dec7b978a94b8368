"""Short real RLSD runs on the built-in task with the shipped tiny model: weights move, every
spec metric is logged, the teacher really sees the privileged context, and resume works."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from rlsd import RLSDConfig, RLSDTrainer
from rlsd.data import to_dataset
from rlsd.objectives import lambda_at
from rlsd.tasks import get_task, make_rows
from rlsd.teacher import teacher_input_ids
from rlsd.verifiers import get_verifier

pytestmark = pytest.mark.slow

SPEC_METRICS = [  # spec section 6
    "reward",
    "rewards/exact/mean",
    "rlsd/adv_mean",
    "rlsd/adv_abs_mean",
    "rlsd/delta_mean",
    "rlsd/w_raw_mean",
    "rlsd/w_clipped_mean",
    "rlsd/clip_low_ratio_all",
    "rlsd/clip_high_ratio_all",
    "rlsd/clip_low_ratio_reweighted",
    "rlsd/clip_high_ratio_reweighted",
    "rlsd/adv_hat_mean",
    "rlsd/adv_hat_abs_mean",
    "rlsd/lambda",
    "rlsd/w_moved_ratio_all",
    "rlsd/w_moved_ratio_reweighted",
    "rlsd/adv_hat_over_adv",
    "entropy",
    "completions/mean_length",
    "clip_ratio/low_mean",
    "clip_ratio/high_mean",
    "grad_norm",
    "time/generate",
    "time/verify",
    "time/teacher",
    "time/update",
]


def make_trainer(path, output_dir, **overrides):
    task = get_task("arithmetic")
    kwargs = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=64,
        num_generations=8,
        max_completion_length=task.max_completion_length,
        learning_rate=1e-4,
        max_steps=3,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        seed=0,
        save_strategy="no",
        teacher_template=task.teacher_template,
        bf16=False,  # fp32 on the CPU (bf16 autocast is much slower there)
    )
    peft_config = overrides.pop("peft_config", None)
    kwargs.update(overrides)
    config = RLSDConfig(**kwargs)
    torch.manual_seed(0)
    return RLSDTrainer(
        model=AutoModelForCausalLM.from_pretrained(path),
        reward_funcs=get_verifier("exact"),
        args=config,
        train_dataset=to_dataset(make_rows(task.problems("train", 256, 0))),
        processing_class=AutoTokenizer.from_pretrained(path),
        peft_config=peft_config,
    )


def test_short_rlsd_run_moves_weights_and_logs_spec_metrics(tiny_path, tmp_path):
    trainer = make_trainer(tiny_path, tmp_path)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert trainer.state.global_step == 3
    moved = sum(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())
    assert moved == len(before)
    logged = {k for record in trainer.state.log_history for k in record}
    missing = [m for m in SPEC_METRICS if m not in logged]
    assert not missing, missing
    lambdas = [r["rlsd/lambda"] for r in trainer.state.log_history if "rlsd/lambda" in r]
    assert lambdas == pytest.approx([0.49, 0.48, 0.47])
    # the teacher's evidence really acts: the clipped weights' mean moved off 1 at some step
    w = [r["rlsd/w_clipped_mean"] for r in trainer.state.log_history if "rlsd/w_clipped_mean" in r]
    assert w and max(abs(x - 1.0) for x in w) > 1e-4
    assert max(r.get("rlsd/w_moved_ratio_reweighted", 0) for r in trainer.state.log_history) > 0.01


def test_teacher_sees_the_privileged_context(tiny_path, tmp_path):
    """Score the reference solutions as completions: the teacher (prompt + reference) must be
    more confident of them than the student (prompt only). On `paths` the reference adds the
    terms in one arbitrary order of many, which only the reference reveals."""
    trainer = make_trainer(tiny_path, tmp_path)
    tok = trainer.processing_class
    for task_name, min_mean_gain, min_share in (("paths", 2.0, 0.95), ("arithmetic", 0.2, 0.75)):
        task = get_task(task_name)
        rows = make_rows(task.problems("eval", 64, 0))
        completions = [
            tok(r["privileged_context"], add_special_tokens=False)["input_ids"] for r in rows
        ]
        width = max(map(len, completions))
        completion_ids = torch.full((len(rows), width), tok.pad_token_id)
        completion_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, ids in enumerate(completions):
            completion_ids[i, : len(ids)], completion_mask[i, : len(ids)] = torch.tensor(ids), 1
        t_ids, t_mask = teacher_input_ids(
            tok, rows, completion_ids, completion_mask, task.teacher_template
        )
        # the privileged text is in the teacher's input, never in the student's prompt
        assert all(r["privileged_context"] in tok.decode(t_ids[i]) for i, r in enumerate(rows))
        s_prompts = tok.apply_chat_template(
            [r["prompt"] for r in rows], add_generation_prompt=True, tokenize=False
        )
        assert not any(r["privileged_context"] in p for r, p in zip(rows, s_prompts))
        teacher = trainer.teacher_logps(t_ids, t_mask, width)
        s_ids, s_mask = teacher_input_ids(
            tok,
            [{**r, "teacher_prompt": r["prompt"]} for r in rows],
            completion_ids,
            completion_mask,
        )
        student = trainer.teacher_logps(s_ids, s_mask, width)
        m = completion_mask.float()
        gain = ((teacher - student) * m).sum(1)  # nats per response
        unsure = (student * m).sum(1) < -1.0  # references the student would rarely write
        assert gain.mean() > min_mean_gain, (task_name, gain)
        assert (gain[unsure] > 0).float().mean() >= min_share, (task_name, gain[unsure])


def test_resume_restores_step_config_teacher_and_lambda(tiny_path, tmp_path):
    common = dict(
        max_steps=4,
        save_strategy="steps",
        save_steps=2,
        teacher_sync_steps=3,
        per_device_train_batch_size=32,
    )
    first = make_trainer(tiny_path, tmp_path, **common)
    first.train()
    checkpoint = tmp_path / "checkpoint-2"
    assert (checkpoint / "rlsd_teacher" / "model.safetensors").exists()
    assert json.loads((checkpoint / "rlsd_teacher" / "state.json").read_text()) == {
        "kind": "copy",
        "synced_at": 0,
    }
    from safetensors.torch import load_file

    saved_teacher = load_file(str(checkpoint / "rlsd_teacher" / "model.safetensors"))
    initial = AutoModelForCausalLM.from_pretrained(tiny_path).state_dict()
    assert all(torch.equal(saved_teacher[n], initial[n]) for n in saved_teacher)  # not yet synced

    seen = {}

    class Probe(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            teacher = second.accelerator.unwrap_model(second.teacher.model)
            seen["step"] = state.global_step
            seen["synced_at"] = second.teacher.synced_at
            seen["teacher_equals_saved"] = all(
                torch.equal(p, saved_teacher[n]) for n, p in teacher.named_parameters()
            )
            policy = second.accelerator.unwrap_model(second.model).state_dict()
            seen["teacher_differs_from_policy"] = any(
                not torch.equal(p, policy[n]) for n, p in teacher.named_parameters()
            )

    second = make_trainer(tiny_path, tmp_path / "resumed", **common)
    second.add_callback(Probe())
    second.train(resume_from_checkpoint=str(checkpoint))
    assert second.state.global_step == 4
    assert seen == {
        "step": 2,
        "synced_at": 0,
        "teacher_equals_saved": True,
        "teacher_differs_from_policy": True,
    }
    assert second.args.to_dict()["rlsd_lambda"] == first.args.rlsd_lambda
    # the log history of steps 1-2 comes back with the checkpoint; lambda continues at step 3
    lambdas = [r["rlsd/lambda"] for r in second.state.log_history if "rlsd/lambda" in r]
    assert lambdas == pytest.approx([lambda_at(k) for k in (1, 2, 3, 4)])
    assert second.teacher.synced_at == 3  # refreshed at step 3 after resuming


def test_peft_teacher_is_a_snapshot_adapter(tiny_path, tmp_path):
    from peft import LoraConfig

    task = get_task("arithmetic")
    config = RLSDConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=32,
        num_generations=8,
        max_steps=3,
        max_completion_length=task.max_completion_length,
        learning_rate=1e-3,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        teacher_template=task.teacher_template,
        teacher_sync_steps=2,
    )
    trainer = RLSDTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_path),
        reward_funcs=get_verifier("exact"),
        args=config,
        train_dataset=to_dataset(make_rows(task.problems("train", 128, 0))),
        processing_class=AutoTokenizer.from_pretrained(tiny_path),
        peft_config=LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
        ),
    )
    assert trainer.teacher.kind == "adapter" and trainer.teacher.model is None
    policy_after = {}  # the policy adapter right after each step's update (and its sync)

    class Record(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            policy_after[state.global_step] = {
                n: p.detach().clone()
                for n, p in trainer.model.named_parameters()
                if ".default." in n
            }

    trainer.add_callback(Record())  # runs after the sync callback, which was added first
    trainer.train()
    params = dict(trainer.model.named_parameters())
    teacher = {n: p for n, p in params.items() if ".rlsd_teacher." in n}
    assert teacher and not any(p.requires_grad for p in teacher.values())
    # the teacher holds the policy adapter as it was after step 2 (the sync), not step 1 or 3
    twin = {n: n.replace(".rlsd_teacher.", ".default.") for n in teacher}
    assert all(torch.equal(p, policy_after[2][twin[n]]) for n, p in teacher.items())
    assert not all(torch.equal(p, policy_after[3][twin[n]]) for n, p in teacher.items())
    assert not all(torch.equal(p, policy_after[1][twin[n]]) for n, p in teacher.items())


@pytest.mark.parametrize(
    "algorithm,extra,metric",
    [
        ("opsd", {}, "opsd/divergence"),
        ("grpo_opsd", {}, "opsd/divergence"),
        ("opsd", {"opsd_divergence": "sampled_token"}, "rlsd/delta_mean"),
        ("opsd", {"opsd_divergence": "reverse_kl"}, "opsd/divergence"),
        ("grpo", {}, "reward"),
    ],
)
def test_baselines_train_under_the_same_api(tiny_path, tmp_path, algorithm, extra, metric):
    trainer = make_trainer(
        tiny_path,
        tmp_path,
        algorithm=algorithm,
        max_steps=2,
        per_device_train_batch_size=32,
        **extra,
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())
    history = trainer.state.log_history
    assert any(metric in r for r in history)
    assert all("rlsd/lambda" not in r for r in history)  # only rlsd mixes with lambda
    if algorithm == "grpo":
        assert trainer.teacher is None and all(
            "time/teacher" not in r or r["time/teacher"] == 0 for r in history
        )
    if metric == "opsd/divergence":
        assert all(r[metric] >= 0 for r in history if metric in r)


def test_opd_uses_a_separate_teacher_on_the_plain_prompt(tiny_path, random_path, tmp_path):
    trainer = make_trainer(
        random_path,
        tmp_path,
        algorithm="opd",
        teacher_model_name_or_path=tiny_path,
        max_steps=1,
        per_device_train_batch_size=16,
    )
    teacher = trainer.accelerator.unwrap_model(trainer.teacher.model)
    shipped = AutoModelForCausalLM.from_pretrained(tiny_path).state_dict()
    assert all(torch.equal(p, shipped[n]) for n, p in teacher.named_parameters())
    ids, _, _ = trainer.teacher_scorer.prompts(
        [{"prompt": [{"role": "user", "content": "Q:1+2="}], "privileged_context": "SECRET"}]
    )
    assert "SECRET" not in trainer.processing_class.decode(ids[0])
    trainer.train()
    assert trainer.state.global_step == 1


def test_peft_teacher_syncs_saves_and_loads_embedding_lora(tiny_path, tmp_path):
    """LoRA on the embeddings puts the teacher's weights in ParameterDicts named
    `...lora_embedding_A.rlsd_teacher` (no trailing dot): they are synced, saved and loaded
    like the linear layers' (issue 17, defect 2)."""
    from peft import LoraConfig

    trainer = make_trainer(
        tiny_path,
        tmp_path,
        max_steps=2,
        learning_rate=1e-2,
        teacher_sync_steps=2,
    )
    peft_trainer = RLSDTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_path),
        reward_funcs=get_verifier("exact"),
        args=trainer.args,
        train_dataset=trainer.train_dataset,
        processing_class=trainer.processing_class,
        peft_config=LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "embed_tokens"], task_type="CAUSAL_LM"
        ),
    )
    snapshot = peft_trainer.teacher
    named = dict(snapshot._named())
    embedding = [n for n in named if "lora_embedding" in n]
    assert embedding and all(n.endswith(".rlsd_teacher") for n in embedding)
    peft_trainer.train()  # the update of step 2 moves the policy, then the sync copies it
    assert snapshot.synced_at == 2
    policy = dict(peft_trainer.model.named_parameters())
    for name in embedding:
        twin = policy[name.removesuffix(".rlsd_teacher") + ".default"]
        assert torch.equal(named[name], twin) and twin.abs().sum() > 0, name
    saved = {n: p.detach().clone() for n, p in named.items()}
    snapshot.save(tmp_path / "teacher")
    with torch.no_grad():
        for p in named.values():
            p.zero_()
    snapshot.load(tmp_path / "teacher")
    assert all(torch.equal(named[n], saved[n]) for n in saved)


def lookup(key: str) -> str:
    """Look a key up in the company glossary.

    Args:
        key: the term to look up.
    """
    return key


def test_teacher_prompt_is_rendered_as_trl_renders_the_student_prompt(tiny_path, tmp_path):
    """With `tools=` (and the training chat template TRL swaps in for them), a teacher prompt
    equal to the student's prompt gets the very ids TRL generates from."""
    from pathlib import Path

    import trl

    tokenizer = AutoTokenizer.from_pretrained(tiny_path)
    templates = Path(trl.__file__).parent / "chat_templates"
    tokenizer.chat_template = (templates / "qwen3.jinja").read_text()  # one that renders tools
    task = get_task("arithmetic")
    rows = make_rows(task.problems("train", 16, 0))
    trainer = RLSDTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_path),
        reward_funcs=get_verifier("exact"),
        args=RLSDConfig(
            output_dir=str(tmp_path),
            report_to="none",
            use_cpu=True,
            bf16=False,
            per_device_train_batch_size=8,
            num_generations=4,
            save_strategy="no",
        ),
        train_dataset=to_dataset(rows),
        processing_class=tokenizer,
        tools=[lookup],
    )
    assert trainer.chat_template is not None  # TRL's prefix-preserving training template
    student = trainer._tokenize_prompts([rows[0]["prompt"]])[0][0]
    ids, mask, _ = trainer.teacher_scorer.prompts(
        [{**rows[0], "teacher_prompt": rows[0]["prompt"]}]
    )
    assert ids[0][mask[0].bool()].tolist() == list(student)
    assert "lookup" in tokenizer.decode(student)


def test_fsdp1_snapshot_is_refused_with_the_way_to_fsdp2(tiny_path, tmp_path):
    """FSDP1's flat shards give no full parameters to sync, save or load a snapshot from: the
    snapshot refuses it and names FSDP2. accelerate cannot build an FSDP1 plugin on a CPU
    ("no available devices"), so its state is given here as the three attributes read."""
    from types import SimpleNamespace

    from rlsd.teacher import TeacherSnapshot

    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    plugin = SimpleNamespace(fsdp_version=1)
    state = SimpleNamespace(fsdp_plugin=plugin)
    accelerator = SimpleNamespace(state=state, unwrap_model=lambda m: m)
    args = RLSDConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    with pytest.raises(ValueError, match=r"does not support FSDP1.*--fsdp_version 2"):
        TeacherSnapshot(args, accelerator, model=lambda: model, fsdp=True)
    # the live policy (teacher_sync_steps=1) holds no snapshot: allowed under FSDP1
    live = RLSDConfig(
        output_dir=str(tmp_path), report_to="none", use_cpu=True, teacher_sync_steps=1
    )
    assert TeacherSnapshot(live, accelerator, model=lambda: model, fsdp=True).kind == "live"
