"""`rlsd compare`: several algorithms on the same data, model, seeds and step budget.

Each (variant, seed) is one `rlsd train` subprocess (`python -m rlsd.cli train`, with
`OMP_NUM_THREADS=1`) writing its own run folder `OUTPUT/runs/<variant>/seed<k>/`. The runs
differ only in the variant's flags (`--algorithm ...` and its knobs); the seed, step budget,
task, held-out set, batch and every flag given after `--` are the same for all of them.
Within a seed every variant sees the same training and held-out problems (both splits are
drawn from the seed).

Resume: a run whose `summary.json` exists is not redone; an interrupted or failed run is
restarted from its last `checkpoint-*` (the metrics logged after that checkpoint are dropped)
or, without one, from scratch. A run folder made with a different command is never reused:
use another `--output`.

The report folder gets `results.md` (tables, see `rlsd.reports.compare_report`),
`curves.png`, `runs.jsonl` (every metrics record, tagged with variant and seed),
`command.txt` (the exact command line) and `compare.json` (the resolved settings).

Presets (see `estimate_seconds` for the cost model, measured on this project's 2-core CPU):
- `--quick`: CI smoke test, about a minute: grpo and rlsd, 1 seed, 4 steps of 32
  completions, 64 held-out problems.
- default: grpo, opsd, rlsd and rlsd_strong, 3 seeds, 100 steps of 128 completions,
  1,000 held-out problems every 10 steps: about an hour on one core (`--jobs 1`), half that
  with `--jobs 2` on an idle 2-core CPU.
- published numbers (docs/results.md): `--seeds 5` (with the default 1,000 held-out problems:
  the issue's minimum); measured 32 minutes with `--jobs 2` on the 2-core CPU. `--dry_run`
  prints the runs and the time estimate without starting anything.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# A variant is a name and the `rlsd train` flags that make it; nothing else may differ.
BUILTIN_VARIANTS: dict[str, dict[str, Any]] = {
    "grpo": {"algorithm": "grpo"},
    "opsd": {"algorithm": "opsd"},
    "rlsd": {"algorithm": "rlsd"},  # the paper's defaults: lambda 0.5 -> 0 over 50 steps
    # The probe found the defaults move the mean advantage by < 1%: a stronger setting.
    "rlsd_strong": {
        "algorithm": "rlsd",
        "rlsd_lambda": 1.0,
        "rlsd_lambda_decay_steps": 0,
        "rlsd_eps_w": 0.5,
    },
    "grpo_opsd": {"algorithm": "grpo_opsd"},
}
# Flags that compare owns: giving them after `--` would break "same everything else".
RESERVED = ("algorithm", "output_dir", "seed", "resume_from_checkpoint")


@dataclass
class Preset:
    algorithms: list[str]
    seeds: int
    max_steps: int
    num_eval: int
    eval_every: int
    train_flags: list[str] = field(default_factory=list)


PRESETS = {
    "default": Preset(["grpo", "opsd", "rlsd", "rlsd_strong"], 3, 100, 1000, 10),
    "quick": Preset(
        ["grpo", "rlsd"],
        1,
        4,
        64,
        2,
        ["--per_device_train_batch_size", "32", "--num_train", "256"],
    ),
}

# Cost model of `estimate_seconds`, measured with the shipped tiny model, OMP_NUM_THREADS=1,
# on this project's 2-core CPU with one other process running (benchmarks/cost.py): a GRPO
# step of 128 completions took 0.95-1.1 s (completions of ~22 tokens; 1.3 s leaves room for
# longer ones), the teacher's extra cost per step is each algorithm's `teacher_cost` in
# `rlsd.config.ALGORITHM_SPECS`, a held-out evaluation (sampled + greedy) 3 s per 500 problems,
# and start-up plus the final save ~8 s.
STEP_S_PER_128 = 1.3
EVAL_S_PER_PROBLEM = 0.007
STARTUP_S = 8.0
# Steps and evaluations cost `(completion_length / 40) ** LENGTH_EXPONENT` times more: fitted
# to the sql compare of docs/results.md (176-token cap, 118 tokens written on average; 36 runs
# of 30 steps of 32 completions, 4 evaluations of 47 x 4 samples) on the idle CPU, two runs at
# a time: 35 minutes measured, 38 estimated. (A square, fitted to the same compare beside
# other jobs, said 96 minutes.)
LENGTH_EXPONENT = 1.35


# --------------------------------------------------------------------------- the variants
def _infer_algorithm(name: str) -> str:
    from rlsd.config import ALGORITHMS

    for algorithm in sorted(ALGORITHMS, key=len, reverse=True):  # grpo_opsd before grpo
        if name == algorithm or name.startswith((f"{algorithm}_", f"{algorithm}-")):
            return algorithm
    raise ValueError(
        f"variant {name!r}: cannot tell its algorithm from the name; add `algorithm:<one of "
        f"{sorted(ALGORITHMS)}>` to its flags (e.g. {name}=algorithm:rlsd,rlsd_eps_w:0.5)."
    )


def _variant(name: str, flags: dict[str, Any] | None) -> dict[str, Any]:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"variant name {name!r}: use letters, digits, '_', '-' and '.' only.")
    if not flags:
        if name not in BUILTIN_VARIANTS:
            raise ValueError(
                f"unknown variant {name!r}: built-in ones are {sorted(BUILTIN_VARIANTS)}; "
                f"define others as `{name}=algorithm:rlsd,rlsd_eps_w:0.5` or in a YAML mapping."
            )
        return dict(BUILTIN_VARIANTS[name])
    flags = {str(k).lstrip("-"): v for k, v in flags.items()}
    base = dict(BUILTIN_VARIANTS.get(name, {}))  # `rlsd=rlsd_eps_w:0.3` overrides a built-in
    if "algorithm" not in flags and "algorithm" not in base:
        base["algorithm"] = _infer_algorithm(name)
    return {**base, **flags}


def parse_variants(specs: list[str]) -> dict[str, dict[str, Any]]:
    """Variants from `--algorithms` tokens: built-in names, `name=flag:value,...`, or one
    YAML file mapping names to flag mappings (an empty mapping means the built-in)."""
    if len(specs) == 1 and specs[0].endswith((".yaml", ".yml")):
        import yaml

        path = Path(specs[0])
        data = yaml.safe_load(path.read_text())
        if not isinstance(data, dict):
            raise ValueError(
                f"{path}: expected a mapping of variant name -> flags, got {type(data).__name__}."
            )
        return {str(name): _variant(str(name), flags) for name, flags in data.items()}
    variants: dict[str, dict[str, Any]] = {}
    for spec in specs:
        name, _, rest = spec.partition("=")
        flags: dict[str, Any] = {}
        for item in filter(None, rest.split(",")):
            key, sep, value = item.partition(":")
            if not sep:
                raise ValueError(f"variant {spec!r}: {item!r} is not `flag:value`.")
            flags[key.strip()] = value.strip()
        if name in variants:
            raise ValueError(f"variant {name!r} is given twice.")
        variants[name] = _variant(name, flags)
    return variants


def variant_flags(flags: dict[str, Any]) -> list[str]:
    out = []
    for key, value in flags.items():
        if isinstance(value, bool):
            value = str(value).lower()
        out += [f"--{key}", str(value)]
    return out


# ---------------------------------------------------------------------------- the budget
def estimate_seconds(
    variants: dict[str, dict[str, Any]],
    seeds: int,
    max_steps: int,
    num_eval: int,
    eval_every: int,
    batch: int = 128,
    jobs: int = 1,
    completion_length: int = 40,
    eval_samples: int = 1,
) -> float:
    """Wall-time estimate of a compare (the cost model above; `jobs` up to the core count).

    Step and evaluation costs scale with `(completion_length / 40) ** LENGTH_EXPONENT` (7.4x
    for the sql task's 176 tokens, see above); the evaluations also with `eval_samples`.

    Per run: startup + steps x step cost (x (1 + the algorithm's teacher_cost) while the
    teacher runs: every step for opsd/grpo_opsd and constant-lambda rlsd, the first decay
    steps for rlsd)
    + evaluations (before, every `eval_every` steps, after) x num_eval x per-problem cost.
    """
    from rlsd.config import ALGORITHM_SPECS

    length = max(1.0, completion_length / 40) ** LENGTH_EXPONENT
    step_s = STEP_S_PER_128 * batch / 128 * length
    # Before the first step, every `eval_every` steps, and after the last (if not just done).
    evals = 2 if not eval_every else 1 + max_steps // eval_every + bool(max_steps % eval_every)
    total = 0.0
    for flags in variants.values():
        spec = ALGORITHM_SPECS[flags.get("algorithm", "rlsd")]
        teacher_steps = max_steps if spec.distills else 0
        if spec.reweights:  # the teacher runs while lambda > 0
            decay = int(flags.get("rlsd_lambda_decay_steps", 50))
            teacher_steps = max_steps if decay == 0 else min(max_steps, decay - 1)
        run = STARTUP_S + max_steps * step_s + teacher_steps * step_s * spec.teacher_cost
        total += seeds * (run + evals * num_eval * eval_samples * length * EVAL_S_PER_PROBLEM)
    return total / max(1, min(jobs, os.cpu_count() or 1))


# ----------------------------------------------------------------------------- the runs
@dataclass
class Run:
    variant: str
    seed: int
    folder: Path
    argv: list[str]  # `rlsd train` arguments (without a resume flag)


def _latest_checkpoint(folder: Path) -> Path | None:
    found = [
        (int(p.name.split("-")[1]), p)
        for p in folder.glob("checkpoint-*")
        if p.name.split("-")[1].isdigit() and (p / "trainer_state.json").exists()
    ]
    return max(found)[1] if found else None


def _truncate_jsonl(path: Path, last_step: int) -> None:
    """Keep the lines of a run's JSONL logged at or before `last_step`."""
    if not path.exists():
        return
    keep = [
        line
        for line in path.read_text().splitlines()
        if line.strip() and json.loads(line).get("step", 0) <= last_step
    ]
    path.write_text("".join(line + "\n" for line in keep))


def check_folder(run: Run) -> None:
    """Refuse a run folder that an earlier compare made with a different command."""
    record_path = run.folder / "compare_run.json"
    previous = json.loads(record_path.read_text()).get("argv") if record_path.exists() else None
    if previous is not None and previous != run.argv:
        raise SystemExit(
            f"{run.folder} was made by a different command:\n  {shlex.join(previous)}\nnow:\n  "
            f"{shlex.join(run.argv)}\nUse another --output (or delete that folder)."
        )


def prepare(run: Run) -> tuple[str, list[str]]:
    """What to do with a run folder: ('skip' | 'resume' | 'fresh', extra train flags)."""
    folder = run.folder
    if (folder / "summary.json").exists():
        return "skip", []
    checkpoint = _latest_checkpoint(folder) if folder.exists() else None
    if checkpoint is not None:
        step = int(checkpoint.name.split("-")[1])
        for name in ("metrics.jsonl", "samples.jsonl"):
            _truncate_jsonl(folder / name, step)
        return "resume", ["--resume_from_checkpoint", str(checkpoint)]
    if folder.exists():  # interrupted before its first checkpoint: start again
        for child in folder.iterdir():
            if child.name not in ("train.log", "compare_run.json"):
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    return "fresh", []


def execute(run: Run, extra: list[str]) -> dict[str, Any]:
    """Run one `rlsd train` subprocess, its output appended to the run's `train.log`."""
    run.folder.mkdir(parents=True, exist_ok=True)
    record_path = run.folder / "compare_run.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    record.update(argv=run.argv, variant=run.variant, seed=run.seed)
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "rlsd.cli", "train", *run.argv, *extra]
    start = time.perf_counter()
    with (run.folder / "train.log").open("a") as log:
        log.write(f"\n$ {shlex.join(cmd)}\n")
        log.flush()
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    wall = time.perf_counter() - start
    record.update(returncode=rc, wall_s=round(record.get("wall_s", 0.0) + wall, 2))
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    return record


def load_runs(runs: list[Run]) -> dict[str, dict[int, list[dict[str, Any]]]]:
    from rlsd.reports.compare_report import dedupe
    from rlsd.reports.plots import read_metrics

    loaded: dict[str, dict[int, list[dict[str, Any]]]] = {}
    for run in runs:
        records = dedupe(read_metrics(run.folder))
        loaded.setdefault(run.variant, {})
        if records:
            loaded[run.variant][run.seed] = records
    return loaded


# ------------------------------------------------------------------------------ the CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlsd compare",
        description="Run algorithm variants on the same data, model, seeds and step budget and "
        "write one report folder. Flags after `--` go to every `rlsd train` run.",
        epilog="Presets: --quick (CI: 30 s on 2 idle cores, about a minute on busy ones) and "
        "the default (grpo, opsd, rlsd, rlsd_strong; 3 seeds x 100 steps, 1000 held-out "
        "problems every 10 steps: about an "
        "hour with --jobs 1, half with --jobs 2 on 2 free cores). For published numbers: "
        "--seeds 5 (32 minutes measured with --jobs 2 on 2 cores; --dry_run prints the "
        "estimate). Built-in variants: "
        + "; ".join(f"{k}: {' '.join(variant_flags(v))}" for k, v in BUILTIN_VARIANTS.items()),
    )
    parser.add_argument(
        "--algorithms",
        nargs="+",
        default=None,
        help="Variants: built-in names, `name=flag:value,...` (e.g. rlsd_eps05=rlsd_eps_w:0.5), "
        "or one YAML file {name: {flag: value}}. Default: grpo opsd rlsd rlsd_strong.",
    )
    parser.add_argument("--seeds", type=int, default=None, help="Seeds 0..n-1 (default 3).")
    parser.add_argument(
        "--max_steps", type=int, default=None, help="Optimiser steps per run (100)."
    )
    parser.add_argument(
        "--task", default="mixed", help="Task, as `rlsd train --task` (default mixed)."
    )
    parser.add_argument("--num_eval", type=int, default=None, help="Held-out problems (1000).")
    parser.add_argument("--eval_every", type=int, default=None, help="Evaluate every N steps (10).")
    parser.add_argument("--jobs", type=int, default=1, help="Runs in parallel (default 1).")
    parser.add_argument("--output", default=None, help="Report folder (runs/compare-<task>).")
    parser.add_argument("--baseline", default="grpo", help="Speed-up reference variant (grpo).")
    parser.add_argument(
        "--quick", action="store_true", help="CI preset: 2 variants, 1 seed, 4 steps."
    )
    parser.add_argument("--dry_run", action="store_true", help="Print the runs and estimate only.")
    parser.add_argument(
        "--report_only", action="store_true", help="Rebuild the report from existing run folders."
    )
    return parser


def main(argv: list[str]) -> dict[str, Any]:
    argv = list(argv)
    passthrough: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, passthrough = argv[:cut], argv[cut + 1 :]
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag in passthrough:
        if flag.startswith("--") and flag[2:].split("=")[0] in RESERVED:
            parser.error(  # exits 2 with the message, like any other bad flag
                f"{flag} cannot be passed to the runs (compare sets it); use "
                "--algorithms for variants, --seeds, and --output."
            )
    preset = PRESETS["quick" if args.quick else "default"]
    try:
        variants = parse_variants(args.algorithms or preset.algorithms)
    except (ValueError, OSError) as e:  # a bad variant, or its YAML file: exit 2 with the message
        parser.error(str(e))
    seeds = args.seeds if args.seeds is not None else preset.seeds
    max_steps = args.max_steps if args.max_steps is not None else preset.max_steps
    num_eval = args.num_eval if args.num_eval is not None else preset.num_eval
    eval_every = args.eval_every if args.eval_every is not None else preset.eval_every
    output = Path(args.output or f"runs/compare-{'quick-' if args.quick else ''}{args.task}")

    common = [
        "--max_steps",
        str(max_steps),
        "--task",
        args.task,
        "--num_eval",
        str(num_eval),
        "--eval_every",
        str(eval_every),
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
    model = _flag_string(passthrough, "model_name_or_path")
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
        status = _run_all(runs, args.jobs)
    settings = {
        "command": command,
        "variants": variants,
        "seeds": seeds,
        "max_steps": max_steps,
        "num_eval": num_eval,
        "eval_every": eval_every,
        "task": args.task,
        "passthrough": passthrough,
        "baseline": args.baseline,
        "status": status,
    }
    rows = write_report(output, runs, args.baseline, command, settings)
    failed = [k for k, v in status.items() if v == "failed"]
    print(f"report: {output / 'results.md'}", flush=True)
    if failed:
        raise SystemExit(
            f"rlsd compare: {len(failed)} run(s) failed: {failed}; see their train.log."
        )
    return {"output": str(output), "rows": rows, "status": status, "estimate_s": estimate}


def _task_completion_length(task: str) -> int:
    from rlsd.tasks import TASKS

    return TASKS[task].max_completion_length if task in TASKS else 40


def _flag_string(flags: list[str], name: str) -> str | None:
    """The last value given to `--name` in `flags` (None: not given)."""
    value = None
    for i, flag in enumerate(flags):
        if flag == f"--{name}" and i + 1 < len(flags):
            value = flags[i + 1]
        elif flag.startswith(f"--{name}="):
            value = flag.split("=", 1)[1]
    return value


def _flag_value(flags: list[str], name: str, default: int) -> int:
    value = default
    for i, flag in enumerate(flags):
        if flag == f"--{name}" and i + 1 < len(flags):
            value = int(flags[i + 1])
        elif flag.startswith(f"--{name}="):
            value = int(flag.split("=", 1)[1])
    return value


def _run_all(runs: list[Run], jobs: int) -> dict[str, str]:
    lock = threading.Lock()
    status: dict[str, str] = {}

    def say(message: str) -> None:
        with lock:
            print(message, flush=True)

    def one(run: Run) -> None:
        key = f"{run.variant}/seed{run.seed}"
        action, extra = prepare(run)
        if action == "skip":
            status[key] = "skipped"
            say(f"[{key}] skipped (finished: {run.folder / 'summary.json'} exists)")
            return
        say(f"[{key}] {'resuming from ' + extra[1] if action == 'resume' else 'starting'}")
        record = execute(run, extra)
        ok = record["returncode"] == 0 and (run.folder / "summary.json").exists()
        status[key] = "done" if ok else "failed"
        say(
            f"[{key}] {status[key]} in {record['wall_s']:.0f} s"
            + ("" if ok else f" (exit {record['returncode']}; see {run.folder / 'train.log'})")
        )

    for run in runs:  # refuse a mismatched folder before anything starts
        check_folder(run)
    if jobs <= 1:
        for run in runs:
            one(run)
    else:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            list(pool.map(one, runs))
    return status


def write_report(
    output: Path, runs: list[Run], baseline: str, command: str, settings: dict[str, Any]
) -> list[dict[str, Any]]:
    """`runs.jsonl`, `results.md`, `curves.png`, `command.txt` and `compare.json`."""
    from rlsd.reports.compare_report import (
        format_table,
        plot_compare,
        plot_weights,
        summarize,
        write_runs_jsonl,
    )

    loaded = load_runs(runs)
    loaded = {k: v for k, v in loaded.items() if v}
    write_runs_jsonl(loaded, output / "runs.jsonl")
    rows = summarize(loaded, baseline)
    (output / "command.txt").write_text(command + "\n")
    (output / "compare.json").write_text(json.dumps(settings, indent=2, default=str) + "\n")
    if loaded:
        plot_compare(
            loaded,
            output / "curves.png",
            title=f"rlsd compare: {settings['task']}, mean over seeds, band = ± 1 std",
        )
        plot_weights(
            loaded,
            output / "weights.png",
            title=f"rlsd compare: {settings['task']}, the teacher's token weights, mean over seeds",
        )
    lines = [
        "# rlsd compare",
        "",
        f"Command: `{command}`",
        "",
        f"Task `{settings['task']}`, {settings['max_steps']} steps, "
        f"seeds 0..{settings['seeds'] - 1}, "
        f"{settings['num_eval']} held-out problems (sampled accuracy, temperature 1) every "
        f"{settings['eval_every']} steps. Variants (their only difference):",
        "",
        *[
            f"- `{name}`: `{' '.join(variant_flags(flags))}`"
            for name, flags in settings["variants"].items()
        ],
        "",
        format_table(rows, baseline),
        f"Final accuracy: each seed's last evaluation, mean ± sample std over seeds. Best: the "
        f"maximum of the seed-mean curve (its step). Steps to {baseline} final: the first "
        f"evaluation step where the seed-mean accuracy reaches {baseline}'s final seed-mean "
        f"accuracy (resolution: {settings['eval_every']} steps); × {baseline}: that step "
        f"divided by {baseline}'s own. s/step: mean `step_time` of the training steps "
        "(evaluation excluded). Paired Δ: each seed's final accuracy minus "
        f"{baseline}'s with the same seed, mean ± standard error; verdict `beats` / `below` "
        "only beyond 2 standard errors, else `within noise`. Raw per-seed metrics: "
        "`runs.jsonl`; curves: `curves.png`; the teacher's weights: `weights.png`.",
        "",
    ]
    (output / "results.md").write_text("\n".join(lines))
    return rows
