"""The `rlsd credit` command: load a model and a few problems, compute the credit, write
`DIR/credit.html`, `DIR/credit.png` and `DIR/credit.json`.

`CreditArguments` holds the options (parsed as every `rlsd` command is, `rlsd.arguments`),
`run` does the work for them, and `main(argv)` is both. A model
whose config has a `vision_config` is loaded as a vision-language model with its processor
(`rlsd.models.load_model`); a task with images (`counting_visual`) defaults to the shipped tiny VLM.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlsd.teacher import DEFAULT_TEACHER_TEMPLATE

DESCRIPTION = "Per-token RLSD credit of sampled responses: an HTML page, a PNG and JSON."


@dataclass
class CreditArguments:
    """`rlsd credit`: which model, problems and RLSD settings the credit page shows."""

    model_name_or_path: str = field(
        default="",
        metadata={
            "help": "Model folder (default: the task's shipped model: the tiny model, for a task "
            "with images the shipped tiny vision-language model)."
        },
    )
    output_dir: str = field(
        default="credit", metadata={"help": "Folder of credit.html, credit.png and credit.json."}
    )
    task: str = field(
        default="mixed",
        metadata={"help": "Built-in task (its held-out split), when no --dataset_path is given."},
    )
    task_config: str | None = field(
        default=None,
        metadata={"help": "The rg:<dataset> generator's configuration (a JSON object)."},
    )
    dataset_path: str | None = field(
        default=None, metadata={"help": "Rows in rlsd's format (rlsd.data), instead of a task."}
    )
    num_problems: int = field(default=6, metadata={"help": "Problems shown."})
    privileged: str | None = field(
        default=None,
        metadata={
            "help": "Built-in task: the privileged kind the self-teacher is shown (default: "
            "solution, or the task's own default: answer for rg: tasks without solutions)."
        },
    )
    num_generations: int = field(
        default=8, metadata={"help": "G, responses sampled per prompt (one group)."}
    )
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    max_completion_length: int | None = field(
        default=None,
        metadata={"help": "Tokens per response (default: the task's; 40 for a dataset)."},
    )
    rlsd_lambda: float = field(
        default=0.5,
        metadata={"help": "lambda, the teacher's weight (0.5: its peak in training, spec 2.4)."},
    )
    rlsd_eps_w: float = field(
        default=0.2, metadata={"help": "Clip half-width of the token weight w (spec 2.4)."}
    )
    rlsd_negative_only: bool = field(
        default=False, metadata={"help": "Reweight only responses with A < 0, as in training."}
    )
    teacher_template: str | None = field(
        default=None,
        metadata={"help": "Self-teacher template (default: the task's, for data the spec's)."},
    )
    teacher_instruction: str = field(
        default="", metadata={"help": "Text added to the self-teacher's prompt, as in training."}
    )
    reward_funcs: list[str] = field(
        default_factory=lambda: ["exact"],
        metadata={"help": "Verifier (the first one is used; a `verifier` column routes per row)."},
    )
    success_threshold: float = field(
        default=1.0, metadata={"help": "Reward at which a response counts as correct."}
    )
    seed: int = field(default=0, metadata={"help": "Problems and sampling seed."})
    png_samples: int = field(
        default=2, metadata={"help": "Correct and incorrect responses each in the PNG."}
    )


# the spellings of the previous release (one deprecation line each)
RENAMED = {
    "output": "output_dir",
    "group_size": "num_generations",
    "lam": "rlsd_lambda",
    "eps_w": "rlsd_eps_w",
    "negative_only": "rlsd_negative_only",
    "max_new_tokens": "max_completion_length",
}


def run(args: CreditArguments) -> dict[str, Any]:
    """Write `args.output_dir`/credit.{html,png,json}, print their paths; returns the paths and
    the summary."""
    import torch

    from rlsd.cli import resolve_task
    from rlsd.data import UserError, read_rows
    from rlsd.models import load_model, resolve_model_path
    from rlsd.prompts import example_images
    from rlsd.reports.credit.compute import compute_credit, summarize
    from rlsd.reports.credit.page import render_html
    from rlsd.reports.credit.picture import render_png
    from rlsd.tasks import make_rows
    from rlsd.verifiers import reward_funcs_for

    model_path = resolve_model_path(args.model_name_or_path)
    if args.dataset_path:
        rows = read_rows(args.dataset_path)[: args.num_problems]
        template = args.teacher_template or DEFAULT_TEACHER_TEMPLATE
        max_new_tokens = args.max_completion_length or 40
        source = str(args.dataset_path)
    else:
        task = resolve_task(args.task, args.task_config)
        model_path = resolve_model_path(args.model_name_or_path, task)
        problems = task.problems("eval", args.num_problems, args.seed)
        kind = args.privileged or task.train_defaults.get("privileged", "solution")
        if kind not in task.privileged_kinds:
            raise UserError(f"--privileged {kind}: task {task.name} has {task.privileged_kinds}")
        rows = make_rows(problems, kind)
        template = args.teacher_template or task.teacher_template
        max_new_tokens = args.max_completion_length or task.max_completion_length
        source = f"{args.task} (eval split)"
    reward_fn = reward_funcs_for(rows, args.reward_funcs[:1])[0]

    model, tokenizer = load_model(model_path, dtype=torch.float32)
    images = [example_images(row) for row in rows]
    if any(images) and not hasattr(tokenizer, "image_processor"):
        raise UserError(
            f"{source} has images, but the model {model_path!r} is text-only (its config has no "
            "`vision_config`): give a vision-language model folder, or data without images."
        )
    records = compute_credit(
        model,
        tokenizer,
        rows,
        reward_fn,
        group_size=args.num_generations,
        lam=args.rlsd_lambda,
        eps_w=args.rlsd_eps_w,
        temperature=args.temperature,
        teacher_template=template,
        max_new_tokens=max_new_tokens,
        seed=args.seed,
        teacher_instruction=args.teacher_instruction,
        negative_only=args.rlsd_negative_only,
        success_threshold=args.success_threshold,
    )
    meta: dict[str, Any] = {
        "model": model_path,
        "task": source,
        "lam": args.rlsd_lambda,
        "eps_w": args.rlsd_eps_w,
        "negative_only": args.rlsd_negative_only,
        "group_size": args.num_generations,
        "temperature": args.temperature,
        "seed": args.seed,
        "teacher_template": template,
        "max_new_tokens": max_new_tokens,
    }
    meta["summary"] = summarize(records, args.rlsd_lambda, args.rlsd_eps_w, args.rlsd_negative_only)

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"html": out / "credit.html", "png": out / "credit.png", "json": out / "credit.json"}
    # The images go into the page and the picture only, never into the JSON or the console.
    shown = images if any(images) else None
    paths["html"].write_text(render_html(records, meta, shown), encoding="utf-8")
    render_png(
        records,
        paths["png"],
        args.rlsd_lambda,
        args.rlsd_eps_w,
        per_kind=args.png_samples,
        images=shown,
    )
    paths["json"].write_text(
        json.dumps({"meta": meta, "records": records}, indent=1) + "\n", encoding="utf-8"
    )
    for p in paths.values():
        print(p)
    return {"paths": {k: str(v) for k, v in paths.items()}, "summary": meta["summary"]}


def parse_args(argv: list[str]) -> tuple[CreditArguments]:
    """`CreditArguments` from `[CONFIG.yaml] [--field value ...]`."""
    from rlsd.arguments import parse_command

    return parse_command(
        [CreditArguments],
        argv,
        "rlsd credit",
        DESCRIPTION,
        renamed=RENAMED,
        positional="model_name_or_path",
    )


def main(argv: list[str]) -> dict[str, Any]:
    """`rlsd credit [CONFIG.yaml] [--field value ...]`: writes OUTPUT_DIR/credit.{html,png,json}."""
    (args,) = parse_args(argv)
    return run(args)
