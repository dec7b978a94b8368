"""Images reach the self-teacher: every algorithm trains on a tiny random vision-language
model, the teacher's log-probs depend on the image it is shown, prompts with one and two
images collate, and a text model given images fails early."""

import pytest
import torch
from _qwen2_vl import qwen2_vl
from PIL import Image
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlsd import RLSDConfig, RLSDTrainer
from rlsd.data import to_dataset
from rlsd.models.tiny_vlm import build_model, build_processor
from rlsd.prompts import completion_text
from rlsd.tasks import get_task, make_rows
from rlsd.teacher import left_pad, scoring, teacher_prompt_batch

pytestmark = pytest.mark.slow

IMAGE_FIELDS = ("pixel_values", "image_grid_thw")  # LLaVA's, and Qwen2-VL's patches' grid


def parity(completions, **kwargs):
    """Rewards that split every group (a random model earns no task reward)."""
    return [float(len(completion_text(c)) % 2) for c in completions]


def odd_answers_only(completions, answer, **kwargs):
    """Parity rewards for odd answers, 0 for even ones: those groups have A = 0, and a
    teacher that skips such rows (`rlsd_skip_zero_advantage`) scores only part of a batch."""
    return [float(len(completion_text(c)) % 2) * (int(a) % 2) for c, a in zip(completions, answer)]


def vlm_trainer(tmp_path, reward_funcs=parity, architecture="llava", **overrides):
    task = get_task("counting_visual")
    torch.manual_seed(0)
    if architecture == "qwen2_vl":
        processor, model = qwen2_vl()
    else:
        processor = build_processor()
        model = build_model(processor)
    kwargs = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=12,
        max_steps=1,
        learning_rate=1e-3,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        bf16=False,
        save_strategy="no",
        teacher_template=task.teacher_template,
        rlsd_skip_zero_advantage=False,
    )
    kwargs.update(overrides)
    return RLSDTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=RLSDConfig(**kwargs),
        train_dataset=to_dataset(make_rows(task.problems("train", 16, 0))),
        processing_class=processor,
    )


@pytest.mark.parametrize(
    "algorithm,extra",
    [
        ("rlsd", {}),
        ("grpo", {}),
        ("opsd", {}),
        ("grpo_opsd", {}),
        ("opsd", {"opsd_divergence": "sampled_token"}),
    ],
)
def test_every_algorithm_trains_a_tiny_vlm(tmp_path, algorithm, extra):
    trainer = vlm_trainer(tmp_path, algorithm=algorithm, **extra)
    vision = [n for n, _ in trainer.model.named_parameters() if "vision" in n]
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert trainer.state.global_step == 1
    moved = [n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p)]
    assert moved and any(n in vision for n in moved)  # gradients reach the vision tower
    if algorithm == "rlsd":
        assert "rlsd/w_clipped_mean" in trainer.state.log_history[0]


def _text_only(prompt: list[dict]) -> list[dict]:
    """A chat prompt without its image parts."""
    return [
        {**m, "content": [p for p in m["content"] if p.get("type") != "image"]}
        if isinstance(m["content"], list)
        else m
        for m in prompt
    ]


def _fixed_batch(trainer, rows):
    """Teacher prompt ids and image fields for `rows`, plus their solutions as completions."""
    processor = trainer.processing_class
    ids, _, fields = teacher_prompt_batch(processor, rows, trainer.args.teacher_template)
    prompt_ids, prompt_mask = left_pad(ids, processor.tokenizer.pad_token_id)
    if "mm_token_type_ids" in fields:  # per token (Qwen2-VL): padded like the ids
        fields["mm_token_type_ids"] = left_pad(fields["mm_token_type_ids"], 0)[0]
    tokenizer = processor.tokenizer
    answers = [tokenizer(r["privileged_context"])["input_ids"] for r in rows]
    width = max(map(len, answers))
    completion_ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    completion_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, answer in enumerate(answers):  # right-padded, as sampled completions are
        completion_ids[i, : len(answer)], completion_mask[i, : len(answer)] = (
            torch.tensor(answer),
            1,
        )
    input_ids = torch.cat([prompt_ids, completion_ids], 1)
    attention_mask = torch.cat([prompt_mask, completion_mask], 1)
    return input_ids, attention_mask, completion_ids.size(1), fields


def test_the_teacher_sees_the_image(tmp_path):
    trainer = vlm_trainer(tmp_path)
    rows = make_rows(get_task("counting_visual").problems("eval", 3, 0))
    ids, mask, T, fields = _fixed_batch(trainer, rows)
    assert fields["num_images"] == [1, 1, 1] and fields["pixel_values"].shape[0] == 3
    seen = trainer.teacher_logps(ids, mask, T, fields)

    blank_rows = [{**r, "image": Image.new("RGB", r["image"].size, "white")} for r in rows]
    _, _, _, blank = _fixed_batch(trainer, blank_rows)
    unseen = trainer.teacher_logps(ids, mask, T, blank)
    real = mask[:, -T:].bool()
    assert (seen - unseen)[real].abs().max() > 1e-4  # a different picture, different judgement

    # image tensors are per image, not per row: image rows never take the shared prefix path
    assert trainer.teacher_scorer.prefix_sharing is None  # never tried on them


def test_image_rows_take_the_full_forward_text_rows_the_shared_one(tmp_path, monkeypatch):
    trainer = vlm_trainer(tmp_path)
    rows = make_rows(get_task("counting_visual").problems("eval", 3, 0))
    ids, mask, T, fields = _fixed_batch(trainer, rows)
    calls = []
    real = scoring.shared_prefix_logps
    monkeypatch.setattr(
        scoring, "shared_prefix_logps", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    with_images = trainer.teacher_logps(ids, mask, T, fields)
    assert not calls and torch.isfinite(with_images).all()
    text_ids, text_mask, text_T, text_fields = _fixed_batch(
        trainer, [{**r, "image": None, "prompt": _text_only(r["prompt"])} for r in rows]
    )
    assert not text_fields
    trainer.teacher_logps(text_ids, text_mask, text_T)
    assert calls and trainer.teacher_scorer.prefix_sharing is True  # checked, and it holds


def test_one_and_two_images_per_prompt_collate(tmp_path):
    trainer = vlm_trainer(tmp_path)
    one, two = make_rows(get_task("counting_visual").problems("eval", 2, 0))
    question = two["prompt"][-1]["content"]
    two = {
        **two,
        "image": None,
        "images": [one["image"], two["image"]],
        "prompt": [{"role": "user", "content": [{"type": "image"}, *question]}],
    }
    one = {**one, "images": [one["image"]], "image": None}
    ids, mask, T, fields = _fixed_batch(trainer, [one, two])
    assert fields["num_images"] == [1, 2] and fields["pixel_values"].shape[0] == 3
    image_token = trainer.processing_class.tokenizer.convert_tokens_to_ids("<image>")
    per_row = (ids == image_token).sum(1)
    assert per_row[1] == 2 * per_row[0] > 0  # the second prompt carries both images
    logps = trainer.teacher_logps(ids, mask, T, fields)
    assert logps.shape == (2, T) and torch.isfinite(logps).all()


def test_an_image_path_is_the_same_as_the_image(tmp_path):
    processor = build_processor()
    (row,) = make_rows(get_task("counting_visual").problems("eval", 1, 0))
    row["image"].save(tmp_path / "shapes.png")
    from_image = teacher_prompt_batch(processor, [row], "{question} {privileged}")
    from_path = teacher_prompt_batch(
        processor, [{**row, "image": str(tmp_path / "shapes.png")}], "{question} {privileged}"
    )
    assert from_image[0] == from_path[0]
    assert torch.equal(from_image[2]["pixel_values"], from_path[2]["pixel_values"])


def test_a_text_model_given_images_fails_early(tiny_path, tmp_path):
    task = get_task("counting_visual")
    with pytest.raises(ValueError, match="cannot take images"):
        RLSDTrainer(
            model=AutoModelForCausalLM.from_pretrained(tiny_path),
            reward_funcs=parity,
            args=RLSDConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False),
            train_dataset=to_dataset(make_rows(task.problems("train", 8, 0))),
            processing_class=AutoTokenizer.from_pretrained(tiny_path),
        )
    # images inside the messages (no image column) are found too
    inline = [_inline(r, f"{i}.png") for i, r in enumerate(make_rows(task.problems("train", 8, 0)))]
    with pytest.raises(ValueError, match="image parts in the prompt messages"):
        RLSDTrainer(
            model=AutoModelForCausalLM.from_pretrained(tiny_path),
            reward_funcs=parity,
            args=RLSDConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False),
            train_dataset=to_dataset(inline),
            processing_class=AutoTokenizer.from_pretrained(tiny_path),
        )


def test_held_out_evaluation_shows_the_images():
    from rlsd.evaluation import evaluate, generate

    processor = build_processor()
    model = build_model(processor)
    rows = make_rows(get_task("counting_visual").problems("eval", 4, 0))
    metrics = evaluate(model, processor, rows, parity, num_samples=2, max_new_tokens=6, ks=(1, 2))
    assert metrics["num_problems"] == 4 and 0.0 <= metrics["accuracy"] <= 1.0
    assert "greedy_accuracy" in metrics and "pass@2" in metrics
    # with the same seed, completions sampled for blank images differ: the picture is seen
    prompts = [r["prompt"] for r in rows]
    seen = generate(
        model, processor, prompts, 4, 1.0, 8, seed=0, images=[[r["image"]] for r in rows]
    )
    blank = [[Image.new("RGB", r["image"].size, "white")] for r in rows]
    assert seen == generate(
        model, processor, prompts, 4, 1.0, 8, seed=0, images=[[r["image"]] for r in rows]
    )
    assert seen != generate(model, processor, prompts, 4, 1.0, 8, seed=0, images=blank)


def _inline(row: dict, image) -> dict:
    """`row` with its image given inside the message (`{"type": "image", "image": ...}`, as TRL
    1.16 accepts) instead of an `image` column."""
    message = row["prompt"][-1]
    content = [
        {"type": "image", "image": image} if part.get("type") == "image" else part
        for part in message["content"]
    ]
    out = {k: v for k, v in row.items() if k != "image"}
    out["prompt"] = [*row["prompt"][:-1], {**message, "content": content}]
    return out


def test_inline_images_reach_the_teacher_as_a_column_does(tmp_path):
    """An image inline in the messages, as a PIL image or as a file path (what a JSONL row
    holds), gives the teacher the same ids and pixels as the same image in a column."""
    processor = build_processor()
    (row,) = make_rows(get_task("counting_visual").problems("eval", 1, 0))
    row["image"].save(tmp_path / "shapes.png")
    template = get_task("counting_visual").teacher_template
    column_ids, _, column = teacher_prompt_batch(processor, [row], template)
    for image in (row["image"], str(tmp_path / "shapes.png")):
        ids, _, fields = teacher_prompt_batch(processor, [_inline(row, image)], template)
        assert fields["num_images"] == [1]
        assert ids == column_ids
        assert torch.equal(fields["pixel_values"], column["pixel_values"])


def test_a_run_on_inline_image_paths_shows_the_teacher_every_image(tmp_path):
    task = get_task("counting_visual")
    rows = make_rows(task.problems("train", 8, 0))
    for i, row in enumerate(rows):
        row["image"].save(tmp_path / f"{i}.png")
    inline = [_inline(row, str(tmp_path / f"{i}.png")) for i, row in enumerate(rows)]
    processor = build_processor()
    torch.manual_seed(0)
    trainer = RLSDTrainer(
        model=build_model(processor),
        reward_funcs=parity,
        args=RLSDConfig(
            output_dir=str(tmp_path / "run"),
            per_device_train_batch_size=8,
            num_generations=4,
            max_completion_length=8,
            max_steps=1,
            logging_steps=1,
            report_to="none",
            use_cpu=True,
            bf16=False,
            save_strategy="no",
            teacher_template=task.teacher_template,
            rlsd_skip_zero_advantage=False,  # every row is scored: 8 images a step
        ),
        train_dataset=to_dataset(inline),
        processing_class=processor,
    )
    trainer.train()
    assert trainer.state.log_history[0]["rlsd/teacher_images"] == 8.0


@pytest.mark.parametrize("architecture", ["llava", "qwen2_vl"])
@pytest.mark.parametrize(
    "schedule",
    [
        {"steps_per_generation": 2},  # one rollout feeds steps (1, 2), (3, 4)
        # each rollout trained on twice, a negative pass too; 4 groups a rollout, as above
        {"num_iterations": 2, "rlsd_estimator": "cepo", "per_device_train_batch_size": 16},
    ],
)
def test_image_rows_are_scored_by_the_teacher_their_schedule_names(
    tmp_path, schedule, architecture
):
    """As tests/test_teacher_engine.py checks for text rows, on a tiny VLM: the sync after
    step 3 falls inside the rollout that feeds steps 3 and 4. At every loss, the teacher
    log-probs used (both passes) equal a scoring by the current snapshot of the kept teacher
    prompts with the micro-batch's own images (at steps 1-3 that is the teacher's own
    generation-time processing of the images), and step 4's differ from the rollout's. On
    Qwen2-VL the micro-batch's images are flattened patches split by `image_grid_thw`."""
    trainer = vlm_trainer(
        tmp_path,
        reward_funcs=odd_answers_only,
        architecture=architecture,
        max_steps=4,
        teacher_sync_steps=3,
        rlsd_lambda_decay_steps=0,  # lambda held: the teacher runs at every step
        rlsd_skip_zero_advantage=True,  # rows the teacher skips keep the student's prompt
        **schedule,
    )
    scorer = trainer.teacher_scorer
    names = ["rlsd_teacher"] + (["rlsd_teacher_wrong"] if "rlsd_estimator" in schedule else [])
    keys = [name.replace("teacher", "logp_teacher") for name in names]
    seen, rescored = [], []
    original_rescore = scorer.rescore_if_synced

    def rescore(inputs):
        before = {key: inputs[key] for key in keys}
        done = original_rescore(inputs)
        if done:
            rescored.append((before, inputs))
        return done

    scorer.rescore_if_synced = rescore
    original = trainer._token_advantages

    def checked(inputs, logps):
        scored = inputs["rlsd_scored"]
        assert "pixel_values" in inputs and "rlsd_teacher_prompt_ids" in inputs
        images = {k: inputs[k] for k in (*IMAGE_FIELDS, "num_images") if k in inputs}
        T = inputs["completion_ids"].size(1)
        for name in names:
            types = {"mm_token_type_ids": inputs.get(f"{name}_mm_token_type_ids")}
            fresh = scorer.logps(
                torch.cat([inputs[f"{name}_prompt_ids"], inputs["completion_ids"]], 1),
                torch.cat([inputs[f"{name}_prompt_mask"], inputs["completion_mask"]], 1),
                T,
                {**images, **{k: v for k, v in types.items() if v is not None}},
            )
            real = inputs["completion_mask"].bool() & scored.unsqueeze(1)
            used = inputs[name.replace("teacher", "logp_teacher")]
            step = (trainer.state.global_step + 1, trainer.teacher.synced_at, name)
            assert torch.allclose(used[real], fresh[real], atol=1e-5), step
        seen.append((trainer.state.global_step + 1, trainer.teacher.synced_at, bool(~scored.all())))
        return original(inputs, logps)

    trainer._token_advantages = checked
    trainer.train()
    assert [s for s, _, _ in seen if s == 4] and all(
        synced == (3 if step == 4 else 0) for step, synced, _ in seen
    ), seen
    assert any(skipped for *_, skipped in seen)  # some rows kept the student's prompt
    assert rescored and any("rlsd/teacher_rescored" in r for r in trainer.state.log_history)
    for before, after in rescored:  # the synced teacher judged differently
        real = after["completion_mask"].bool() & after["rlsd_scored"].unsqueeze(1)
        for key in keys:
            assert (before[key] - after[key])[real].abs().max() > 1e-6, key


@pytest.mark.parametrize("architecture", ["llava", "qwen2_vl"])
def test_image_rows_score_as_a_plain_forward_of_the_model_does(tmp_path, architecture):
    """The teacher's log-probs of image rows (the full forward through TRL's batching, M-RoPE
    positions and `mm_token_type_ids` on Qwen2-VL) equal log-softmax of one plain
    `model(**processor output)` forward, and change when the image is blanked."""
    trainer = vlm_trainer(tmp_path, architecture=architecture)
    rows = make_rows(get_task("counting_visual").problems("eval", 3, 0))
    ids, mask, T, fields = _fixed_batch(trainer, rows)
    assert fields["num_images"] == [1, 1, 1]
    seen = trainer.teacher_logps(ids, mask, T, fields)

    kwargs = {k: v for k, v in fields.items() if k != "num_images"}
    if "mm_token_type_ids" in kwargs:  # the response positions are text
        types = kwargs["mm_token_type_ids"]
        kwargs["mm_token_type_ids"] = torch.cat([types, types.new_zeros((len(types), T))], 1)
    with torch.no_grad():
        logits = trainer.model.eval()(input_ids=ids, attention_mask=mask, **kwargs).logits
    expected = torch.log_softmax(logits[:, -T - 1 : -1].float(), -1)
    expected = expected.gather(-1, ids[:, -T:, None]).squeeze(-1)
    real = mask[:, -T:].bool()
    assert (seen - expected)[real].abs().max() < 1e-4

    blank_rows = [{**r, "image": Image.new("RGB", r["image"].size, "white")} for r in rows]
    _, _, _, blank = _fixed_batch(trainer, blank_rows)
    unseen = trainer.teacher_logps(ids, mask, T, blank)
    assert (seen - unseen)[real].abs().max() > 1e-4  # a different picture, different judgement
