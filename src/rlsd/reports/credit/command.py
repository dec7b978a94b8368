"""The `rlsd credit` command: load a model and a few problems, compute the credit, write
`DIR/credit.html`, `DIR/credit.png` and `DIR/credit.json`.

`add_arguments` declares the options on any parser (so `rlsd.cli` can make it a
subcommand), `run` does the work for parsed arguments, and `main(argv)` is both. A model
whose config has a `vision_config` is loaded as a vision-language model with its processor
(`load_model`); a task with images (`counting_visual`) defaults to the shipped tiny VLM.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rlsd.teacher import DEFAULT_TEACHER_TEMPLATE

DESCRIPTION = "Per-token RLSD credit of sampled responses: an HTML page, a PNG and JSON."


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Declare `rlsd credit`'s options on `p`; returns `p`."""
    p.add_argument(
        "model",
        nargs="?",
        default="",
        help="model folder (default: the shipped tiny model; for a task with images, the "
        "shipped tiny vision-language model)",
    )
    p.add_argument("--output", default="credit", help="output folder (default: ./credit)")
    p.add_argument("--task", default="arithmetic", help="built-in task (eval split) if no data")
    p.add_argument(
        "--task_config", default=None, help="rg:<dataset> generator configuration (JSON object)"
    )
    p.add_argument("--dataset_path", default=None, help="rows in rlsd's format (rlsd.data)")
    p.add_argument("--num_problems", type=int, default=6, help="problems to show")
    p.add_argument(
        "--privileged",
        default=None,
        help="built-in task: its privileged kind, e.g. the worked solution or the final answer "
        "(default: solution, or the task's own default, answer for rg: tasks without solutions)",
    )
    p.add_argument("--group_size", type=int, default=8, help="G, responses per prompt")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument(
        "--max_new_tokens",
        type=int,
        default=None,
        help="default: the task's max_completion_length, else 40",
    )
    p.add_argument("--lam", type=float, default=0.5, help="lambda (0.5: its peak, spec 2.4)")
    p.add_argument("--eps_w", type=float, default=0.2, help="clip half-width of w (spec 2.4)")
    p.add_argument("--negative_only", action="store_true", help="reweight only A < 0")
    p.add_argument(
        "--teacher_template",
        default=None,
        help="default: the task's template for built-in tasks, else the spec's",
    )
    p.add_argument("--teacher_instruction", default="")
    p.add_argument(
        "--reward_funcs",
        nargs="+",
        default=["exact"],
        help="verifier (the first is used; a `verifier` column routes per row)",
    )
    p.add_argument(
        "--success_threshold",
        type=float,
        default=1.0,
        help="reward at which a response counts as correct",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--png_samples", type=int, default=2, help="correct and incorrect responses each in the PNG"
    )
    return p


def load_model(path: str) -> tuple[Any, Any]:
    """(model, tokenizer or processor) of a local folder, in float32. A config with a
    `vision_config` is a vision-language model: `AutoProcessor` and
    `AutoModelForImageTextToText`, or `rlsd.models.tiny_vlm.load` when `AutoProcessor`
    cannot build its processor. A `UserError` when the folder is missing or unloadable."""
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoProcessor,
        AutoTokenizer,
    )

    from rlsd.data import UserError

    if not Path(path).exists():
        raise UserError(
            f"model folder {str(path)!r} does not exist. Give a local model folder "
            "(nothing is downloaded: rlsd runs offline)."
        )
    try:
        config = AutoConfig.from_pretrained(path)
        if not hasattr(config, "vision_config"):
            tokenizer = AutoTokenizer.from_pretrained(path)
            return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), tokenizer
        try:
            processor = AutoProcessor.from_pretrained(path)
        except (OSError, ValueError, ImportError):  # e.g. an image processor it cannot pick
            from rlsd.models import tiny_vlm

            return tiny_vlm.load(path, dtype=torch.float32)
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)
        return model, processor
    except (OSError, ValueError) as error:  # no weights, tokenizer or config in the folder
        raise UserError(
            f"cannot load the model {path!r}: {str(error).splitlines()[0]}. Give a local model "
            "folder (nothing is downloaded: rlsd runs offline)."
        ) from error


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Write `args.output`/credit.{html,png,json}, print their paths; returns the paths and
    the summary."""
    from rlsd.cli import resolve_task
    from rlsd.data import UserError, read_rows
    from rlsd.models import resolve_model_path
    from rlsd.reports.credit.compute import compute_credit, summarize
    from rlsd.reports.credit.page import render_html
    from rlsd.reports.credit.picture import render_png
    from rlsd.tasks import make_rows
    from rlsd.teacher import example_images
    from rlsd.verifiers import reward_funcs_for

    model_path = resolve_model_path(args.model)
    if args.dataset_path:
        rows = read_rows(args.dataset_path)[: args.num_problems]
        template = args.teacher_template or DEFAULT_TEACHER_TEMPLATE
        max_new_tokens = args.max_new_tokens or 40
        source = str(args.dataset_path)
    else:
        task = resolve_task(args.task, args.task_config)
        model_path = resolve_model_path(args.model, task)
        problems = task.problems("eval", args.num_problems, args.seed)
        kind = args.privileged or task.train_defaults.get("privileged", "solution")
        if kind not in task.privileged_kinds:
            raise UserError(f"--privileged {kind}: task {task.name} has {task.privileged_kinds}")
        rows = make_rows(problems, kind)
        template = args.teacher_template or task.teacher_template
        max_new_tokens = args.max_new_tokens or task.max_completion_length
        source = f"{args.task} (eval split)"
    reward_fn = reward_funcs_for(rows, args.reward_funcs[:1])[0]

    model, tokenizer = load_model(model_path)
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
        group_size=args.group_size,
        lam=args.lam,
        eps_w=args.eps_w,
        temperature=args.temperature,
        teacher_template=template,
        max_new_tokens=max_new_tokens,
        seed=args.seed,
        teacher_instruction=args.teacher_instruction,
        negative_only=args.negative_only,
        success_threshold=args.success_threshold,
    )
    meta: dict[str, Any] = {
        "model": model_path,
        "task": source,
        "lam": args.lam,
        "eps_w": args.eps_w,
        "negative_only": args.negative_only,
        "group_size": args.group_size,
        "temperature": args.temperature,
        "seed": args.seed,
        "teacher_template": template,
        "max_new_tokens": max_new_tokens,
    }
    meta["summary"] = summarize(records, args.lam, args.eps_w, args.negative_only)

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"html": out / "credit.html", "png": out / "credit.png", "json": out / "credit.json"}
    # The images go into the page and the picture only, never into the JSON or the console.
    shown = images if any(images) else None
    paths["html"].write_text(render_html(records, meta, shown), encoding="utf-8")
    render_png(records, paths["png"], args.lam, args.eps_w, per_kind=args.png_samples, images=shown)
    paths["json"].write_text(
        json.dumps({"meta": meta, "records": records}, indent=1) + "\n", encoding="utf-8"
    )
    for p in paths.values():
        print(p)
    return {"paths": {k: str(v) for k, v in paths.items()}, "summary": meta["summary"]}


def main(argv: list[str]) -> dict[str, Any]:
    """`rlsd credit [MODEL] --output DIR ...`: writes DIR/credit.{html,png,json}."""
    parser = argparse.ArgumentParser(prog="rlsd credit", description=DESCRIPTION)
    return run(add_arguments(parser).parse_args(argv))
