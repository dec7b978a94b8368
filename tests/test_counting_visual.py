"""`counting_visual` and the tiny vision-language model: the pictures show what the answers
say (read back from the pixels), held-out pictures are new, the shipped model loads offline
and generates, its warm start runs, and TRL's plain GRPO trains on it."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from rlsd.data import to_dataset
from rlsd.evaluation import evaluate
from rlsd.models import tiny_vlm
from rlsd.tasks import get_task, make_rows
from rlsd.tasks.counting_visual import CELL, COLOURS, GRID, KINDS, VisualProblem
from rlsd.verifiers import get_verifier

TASK = get_task("counting_visual")
SOLUTION_RE = re.compile(
    r"There are (\d+) shapes\. (\d+) (?:is|are) (?:a )?(\w+)\. "
    r"(\d+) - (\d+) = (\d+)\. Answer: (\d+)"
)


def read_picture(image) -> list[tuple[str, str]]:
    """(colour, kind) of each shape in the picture, from its pixels alone: the one palette
    colour of a cell's ink, and the kind from how much of its bounding box the ink fills
    (square 1, circle about pi/4, triangle about 1/2)."""
    pixels = np.asarray(image).astype(int)
    shapes = []
    for row in range(GRID):
        for col in range(GRID):
            cell = pixels[row * CELL : (row + 1) * CELL, col * CELL : (col + 1) * CELL]
            ink = (cell != 255).any(axis=-1)
            if not ink.any():
                continue
            colours = {tuple(c) for c in cell[ink]}
            assert len(colours) == 1, f"cell {row},{col}: more than one colour {colours}"
            (rgb,) = colours
            colour = next(n for n, c in COLOURS.items() if c == rgb)
            ys, xs = np.nonzero(ink)
            fill = ink.sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1))
            kind = "square" if fill > 0.95 else "circle" if fill > 0.68 else "triangle"
            shapes.append((colour, kind))
    return shapes


def test_problems_are_deterministic_and_differ_by_seed():
    first, again = TASK.problems("train", 50, 3), TASK.problems("train", 50, 3)
    assert first == again
    assert [p.image.tobytes() for p in first] == [p.image.tobytes() for p in again]
    other = TASK.problems("train", 50, 4)
    assert [p.image.tobytes() for p in first] != [p.image.tobytes() for p in other]
    assert len({p.image.tobytes() for p in first}) == 50


def test_answer_matches_the_pixels_and_the_solution_adds_up():
    verifier = get_verifier("exact")
    problems = TASK.problems("eval", 200, 0)
    for p in problems:
        assert isinstance(p, VisualProblem) and p.image.size == (48, 48)
        drawn = read_picture(p.image)
        assert sorted(drawn) == sorted((s.colour, s.kind) for s in p.shapes)
        removed = re.fullmatch(
            r"How many shapes are left if all the (\w+) (?:ones )?are removed\?", p.question
        ).group(1)
        removed = {plural: kind for kind, plural in KINDS.items()}.get(removed, removed)
        gone = sum(removed in shape for shape in drawn)
        assert p.answer == str(len(drawn) - gone)
        total, n_removed, what, a, b, diff, answer = SOLUTION_RE.fullmatch(p.solution).groups()
        assert (int(total), int(n_removed)) == (len(drawn), gone) and what.startswith(removed)
        assert (a, b) == (total, n_removed) and int(diff) == int(a) - int(b) and answer == diff
        assert answer == p.answer
        completion = [{"role": "assistant", "content": p.solution}]
        wrong = [{"role": "assistant", "content": p.solution[:-1] + str(int(answer) + 1)}]
        assert verifier([None, None], [completion, wrong], answer=[p.answer] * 2) == [1.0, 0.0]
    assert len({p.answer for p in problems}) >= 6  # the answers spread over the range
    assert {p.removed for p in problems} == set(COLOURS) | set(KINDS)


def test_held_out_pictures_are_new_draws():
    eval_problems = TASK.problems("eval", 1000, 0)
    train_problems = TASK.problems("train", 2000, 0)
    eval_keys = {TASK.key(p) for p in eval_problems}
    assert not eval_keys & {TASK.key(p) for p in train_problems}
    eval_images = {p.image.tobytes() for p in eval_problems}
    assert not eval_images & {p.image.tobytes() for p in train_problems}


def test_rows_follow_trl_vlm_conventions():
    rows = make_rows(TASK.problems("eval", 4, 0))
    row, question = rows[0], TASK.problems("eval", 1, 0)[0].question
    image_part, text_part = {"type": "image"}, {"type": "text", "text": question}
    assert row["prompt"] == [{"role": "user", "content": [image_part, text_part]}]
    assert row["image"].mode == "RGB" and row["privileged_context"].endswith(row["answer"])
    answer_only = make_rows(TASK.problems("eval", 1, 0), "answer")[0]
    assert answer_only["privileged_context"] == f"A:{row['answer']}"
    dataset = to_dataset(rows)
    assert dataset[0]["image"].size == (48, 48)
    assert TASK.has_images and not get_task("arithmetic").has_images


def test_shipped_model_loads_offline_and_generates(monkeypatch):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    processor = AutoProcessor.from_pretrained(tiny_vlm.DEFAULT_VLM_PATH)  # no torchvision needed
    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm.DEFAULT_VLM_PATH)
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    rows = make_rows(TASK.problems("eval", 16, 0))
    metrics = evaluate(model, processor, rows, get_verifier("exact"), max_new_tokens=64)
    assert metrics["greedy_accuracy"] > 0  # warm-started: right on some held-out problems
    assert model.generation_config.suppress_tokens == [model.config.image_token_id]
    again, loaded_processor = tiny_vlm.load()
    assert loaded_processor.tokenizer.padding_side == "left"
    for a, b in zip(model.parameters(), again.parameters()):
        assert torch.equal(a, b)


def test_vlm_sft_runs_and_saves_a_loadable_folder(tmp_path):
    from rlsd.models.sft import SFTArgs, run_sft

    args = SFTArgs(
        output_dir=str(tmp_path / "vlm"),
        task="counting_visual",
        num_train=64,
        num_eval=2,
        batch_size=4,
        max_steps=2,
        eval_every=2,
    )
    summary = run_sft(args, log=lambda _: None)  # `rlsd sft --task counting_visual` calls this
    assert summary["steps"] == 2 and len(summary["history"]) == 1
    model, processor = tiny_vlm.load(tmp_path / "vlm")
    assert model.config.image_token_id == processor.tokenizer.convert_tokens_to_ids("<image>")
    assert (tmp_path / "vlm" / "sft_summary.json").exists()


def test_sft_labels_cover_the_target_and_eos_only():
    from rlsd.models.sft import vlm_batch

    processor = tiny_vlm.build_processor()
    rows = make_rows(TASK.problems("eval", 3, 0))
    targets = [r["privileged_context"] for r in rows]
    batch = vlm_batch(processor, rows, targets)
    tokenizer = processor.tokenizer
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    for i, target in enumerate(targets):
        labelled = batch["labels"][i][batch["labels"][i] != -100].tolist()
        assert tokenizer.decode(labelled) == target + tokenizer.eos_token
        assert (batch["input_ids"][i] == image_id).sum() == 16


def test_plain_trl_grpo_trains_two_steps(tmp_path):
    from trl import GRPOConfig, GRPOTrainer

    model, processor = tiny_vlm.load()
    config = GRPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,  # completions: 2 prompts x 4
        num_generations=4,
        max_completion_length=TASK.max_completion_length,
        max_steps=2,
        learning_rate=1e-4,
        use_cpu=True,
        bf16=False,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        seed=0,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[get_verifier("exact")],
        args=config,
        train_dataset=to_dataset(make_rows(TASK.problems("train", 8, 0))),
        processing_class=processor,
    )
    vision = {n: p.detach().clone() for n, p in model.named_parameters() if "vision" in n}
    trainer.train()
    logged = [h for h in trainer.state.log_history if "reward" in h]
    assert trainer.state.global_step == 2 and len(logged) == 2
    assert all(np.isfinite(h["loss"]) for h in logged)
    assert max(h["reward"] for h in logged) > 0  # the warm start earns rewards
    assert any(h["frac_reward_zero_std"] < 1 for h in logged)  # some group has a signal
    params = dict(model.named_parameters())
    assert any(not torch.equal(params[n], v) for n, v in vision.items())  # the vision tower moved


@pytest.mark.parametrize("bad", [(0, 3), (5, 3), (1, 17)])
def test_task_rejects_bad_shape_counts(bad):
    from rlsd.tasks.counting_visual import CountingVisualTask

    with pytest.raises(ValueError, match="min_shapes"):
        CountingVisualTask(*bad)
