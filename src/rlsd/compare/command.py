"""`rlsd compare`'s command line: `CompareArguments`, parsed as every `rlsd` command is
(`rlsd.arguments`), and `main`, which builds the runs, runs them and writes the report."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlsd.arguments import parse_command
from rlsd.compare.estimate import (
    _flag_string,
    _flag_value,
    _task_completion_length,
    estimate_seconds,
)
from rlsd.compare.runner import Run, load_runs, run_all
from rlsd.compare.variants import BUILTIN_VARIANTS, PRESETS, RESERVED, parse_variants, variant_flags
from rlsd.data import UserError
from rlsd.reports.compare_report import write_report


def _description() -> str:
    return (
        "Run algorithm variants on the same data, model, seeds and step budget and write one "
        "report folder. Flags after `--` go to every `rlsd train` run. Presets: --quick (CI: "
        "30 s on 2 idle cores, about a minute on busy ones) and the default (grpo, opsd, rlsd, "
        "rlsd_strong; 3 seeds x 100 steps, 1000 held-out problems every 10 steps: about an "
        "hour with --jobs 1, half with --jobs 2 on 2 free cores). For published numbers: "
        "--seeds 5 (32 minutes measured with --jobs 2 on 2 cores; --dry_run prints the "
        "estimate). Built-in variants: "
        + "; ".join(f"{k}: {' '.join(variant_flags(v))}" for k, v in BUILTIN_VARIANTS.items())
    )


DESCRIPTION = _description()


@dataclass
class CompareArguments:
    """`rlsd compare`: which variants, seeds, task and budget; where the report goes."""

    variants: list[str] | None = field(
        default=None,
        metadata={
            "help": "Variants: built-in names, `name=flag:value,...` (e.g. "
            "rlsd_eps05=rlsd_eps_w:0.5), or one YAML file {name: {flag: value}}. Default: grpo "
            "opsd rlsd rlsd_strong."
        },
    )
    seeds: int | None = field(default=None, metadata={"help": "Seeds 0..n-1 (default 3)."})
    max_steps: int | None = field(
        default=None, metadata={"help": "Optimiser steps per run (default 100)."}
    )
    task: str = field(default="mixed", metadata={"help": "Task, as rlsd train --task."})
    task_config: str | None = field(
        default=None, metadata={"help": "The rg:<dataset> generator's configuration (JSON)."}
    )
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Model of every run (default: the task's shipped one)."}
    )
    num_eval: int | None = field(
        default=None, metadata={"help": "Held-out problems (default 1000)."}
    )
    eval_every: int | None = field(
        default=None, metadata={"help": "Evaluate every N steps (default 10)."}
    )
    jobs: int = field(default=1, metadata={"help": "Runs in parallel."})
    output_dir: str | None = field(
        default=None, metadata={"help": "Report folder (default: runs/compare-<task>)."}
    )
    baseline: str = field(
        default="grpo", metadata={"help": "The variant the others are measured against."}
    )
    quick: bool = field(default=False, metadata={"help": "CI preset: 2 variants, 1 seed, 4 steps."})
    dry_run: bool = field(
        default=False, metadata={"help": "Print the runs and the time estimate only."}
    )
    report_only: bool = field(
        default=False, metadata={"help": "Rebuild the report from existing run folders."}
    )


# the spellings of the previous release (one deprecation line each)
RENAMED = {"algorithms": "variants", "output": "output_dir"}


def parse_args(argv: list[str]) -> tuple[CompareArguments]:
    """`CompareArguments` from the command line before `--` (a YAML file first, then flags)."""
    return parse_command(
        [CompareArguments],
        argv,
        "rlsd compare",
        DESCRIPTION,
        renamed=RENAMED,
        usage="rlsd compare [CONFIG.yaml] [--field value ...] [-- TRAIN FLAGS ...]",
    )


def main(argv: list[str]) -> dict[str, Any]:
    argv = list(argv)
    passthrough: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, passthrough = argv[:cut], argv[cut + 1 :]
    (args,) = parse_args(argv)
    for flag in passthrough:
        if flag.startswith("--") and flag[2:].split("=")[0] in RESERVED:
            raise UserError(
                f"{flag} cannot be passed to the runs (compare sets it); use "
                "--variants for variants, --seeds, and --output_dir."
            )
    preset = PRESETS["quick" if args.quick else "default"]
    try:
        variants = parse_variants(args.variants or preset.algorithms)
    except (ValueError, OSError) as e:  # a bad variant, or its YAML file
        raise UserError(str(e)) from e
    seeds = args.seeds if args.seeds is not None else preset.seeds
    max_steps = args.max_steps if args.max_steps is not None else preset.max_steps
    num_eval = args.num_eval if args.num_eval is not None else preset.num_eval
    eval_every = args.eval_every if args.eval_every is not None else preset.eval_every
    output = Path(args.output_dir or f"runs/compare-{'quick-' if args.quick else ''}{args.task}")

    common = [
        "--max_steps",
        str(max_steps),
        "--task",
        args.task,
        "--num_eval",
        str(num_eval),
        "--eval_every",
        str(eval_every),
        *(["--model_name_or_path", args.model_name_or_path] if args.model_name_or_path else []),
        *(["--task_config", args.task_config] if args.task_config else []),
        *preset.train_flags,
    ]
    runs = [
        Run(
            name,
            seed,
            output / "runs" / name / f"seed{seed}",
            [
                "--output_dir",
                str(output / "runs" / name / f"seed{seed}"),
                "--seed",
                str(seed),
                *common,
                *variant_flags(flags),
                *passthrough,
            ],
        )
        for seed in range(seeds)  # seed-major: a partial compare already covers every variant
        for name, flags in variants.items()
    ]
    batch = _flag_value(preset.train_flags + passthrough, "per_device_train_batch_size", 128)
    length = _flag_value(passthrough, "max_completion_length", _task_completion_length(args.task))
    estimate = estimate_seconds(
        variants,
        seeds,
        max_steps,
        num_eval,
        eval_every,
        batch,
        args.jobs,
        length,
        _flag_value(passthrough, "eval_num_samples", 1),
    )
    model = _flag_string(passthrough, "model_name_or_path") or args.model_name_or_path
    if model is None:
        when = f"estimate ~{estimate / 60:.0f} min with --jobs {args.jobs} on this project's CPU"
    else:  # the cost table is the shipped tiny model's: say so rather than guess
        when = f"no estimate for --model_name_or_path {model}: the table is the tiny model's"
    print(
        f"rlsd compare: {len(variants)} variants x {seeds} seeds = {len(runs)} runs of "
        f"{max_steps} steps, {num_eval} held-out problems every {eval_every} steps -> {output} "
        f"({when})",
        flush=True,
    )
    if args.dry_run:
        for run in runs:
            print(f"  {run.variant} seed {run.seed}: rlsd train {shlex.join(run.argv)}")
        return {"output": str(output), "estimate_s": estimate, "runs": len(runs)}

    output.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["rlsd", "compare", *argv, *(["--", *passthrough] if passthrough else [])])
    if args.report_only and (output / "command.txt").exists():  # the runs' own command
        command = (output / "command.txt").read_text().strip()
    status: dict[str, str] = {}
    if not args.report_only:
        status = run_all(runs, args.jobs)
    settings = {
        "command": command,
        "variants": variants,
        "variant_flags": {name: " ".join(variant_flags(f)) for name, f in variants.items()},
        "seeds": seeds,
        "max_steps": max_steps,
        "num_eval": num_eval,
        "eval_every": eval_every,
        "task": args.task,
        "passthrough": passthrough,
        "baseline": args.baseline,
        "status": status,
    }
    rows = write_report(output, load_runs(runs), args.baseline, command, settings)
    failed = [k for k, v in status.items() if v == "failed"]
    print(f"report: {output / 'results.md'}", flush=True)
    if failed:
        raise SystemExit(
            f"rlsd compare: {len(failed)} run(s) failed: {failed}; see their train.log."
        )
    return {"output": str(output), "rows": rows, "status": status, "estimate_s": estimate}
