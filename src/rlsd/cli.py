"""The `rlsd` command: `rlsd train`, `eval`, `sft`, `compare`, `credit`, `probe` and `context`.

Every command is an argparse subcommand of `rlsd` with its own parser and `--help`
(`rlsd --help` lists them). `rlsd train [CONFIG.yaml] [--key value ...]` is TRL's parser
(`TrlParser`): TRL-style YAML with any `RLSDConfig`/`GRPOConfig` field, TRL's `ModelConfig`
fields for PEFT and the script fields of `ScriptArguments` below, plus command-line overrides;
`rlsd train --help` lists them all. With no arguments it trains RLSD on the built-in tasks
with the shipped tiny model, on a CPU, offline. It works under `accelerate launch` and
`torchrun` like any TRL script.

User errors (`rlsd.data.UserError`: bad data, configuration or flags, missing files or models)
print one short message and exit with status 2; `--debug` (or `RLSD_DEBUG=1`) shows the
traceback instead. Commands raise `UserError` where they know the mistake is the user's.
Importing this module changes nothing global: `main()` sets the offline defaults and quiets
the library progress bars and transformers' deprecation notices.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlsd.data import UserError

if TYPE_CHECKING:
    from trl import ModelConfig

    from rlsd.config import RLSDConfig


@dataclass
class ScriptArguments:
    """What to train on, and how to evaluate. The model is TRL's `ModelConfig.model_name_or_path`
    (default: the shipped tiny model); the rest is `RLSDConfig`."""

    task: str = field(
        default="mixed",
        metadata={
            "help": "Built-in task when no dataset is given: mixed (arithmetic, counting and "
            "paths problems) by default; rg:<dataset> is a reasoning-gym generator (e.g. "
            "rg:chain_sum; its scorer is the verifier)."
        },
    )
    task_config: str | None = field(
        default=None,
        metadata={
            "help": "The rg:<dataset> generator's configuration: a JSON object on the command "
            "line (--task_config '{\"min_terms\": 2}') or a mapping under `task_config:` in the "
            "YAML file; the keys are the fields of the generator's config dataclass."
        },
    )
    dataset_path: str | None = field(
        default=None,
        metadata={"help": "Training data: .jsonl/.json/.csv/.parquet or a datasets folder."},
    )
    eval_dataset_path: str | None = field(
        default=None, metadata={"help": "Held-out data (same format)."}
    )
    num_train: int = field(default=4000, metadata={"help": "Built-in task: training problems."})
    num_eval: int = field(default=500, metadata={"help": "Built-in task: held-out problems."})
    privileged: str = field(
        default="solution",
        metadata={
            "help": "Built-in task privileged context: 'solution' (worked) or 'answer' (final "
            "only); each task has its own kinds (the sql task adds 'sql' and 'rules'). An rg: "
            "task without worked solutions defaults to 'answer'."
        },
    )
    reward_funcs: list[str] = field(
        default_factory=lambda: ["exact"],
        metadata={
            "help": "Verifier names or `module:function` paths (a `verifier` column routes per "
            "row)."
        },
    )
    eval_every: int = field(
        default=10, metadata={"help": "Held-out evaluation every N steps (0: only before/after)."}
    )
    eval_num_samples: int = field(
        default=1, metadata={"help": "Samples per held-out problem (pass@k uses them)."}
    )
    eval_temperature: float = field(
        default=1.0, metadata={"help": "Held-out sampling temperature."}
    )
    eval_greedy: bool = field(
        default=True,
        metadata={"help": "Also score one greedy completion per held-out problem (a second pass)."},
    )
    context_docs: str | None = field(
        default=None,
        metadata={
            "help": "Folder of internal documents (.md, .txt, .html, .pdf, .jsonl): each row's "
            "privileged_context is built before training from its own reference plus the chunks "
            "BM25 ranks highest for its question (rlsd.context; `rlsd context build` shows the "
            "result). Only the self-teacher sees it; the run folder gets its provenance "
            "(context_provenance.jsonl: documents, chunk ids, scores), not its text."
        },
    )
    context_db: str | None = field(
        default=None,
        metadata={
            "help": "SQLite database (opened read-only) whose schema and example rows of the "
            "tables a row touches join its privileged context (with or without --context_docs)."
        },
    )
    context_budget: int = field(
        default=1024,
        metadata={
            "help": "Tokens (the model's tokenizer) of each row's built privileged context: the "
            "lowest-ranked pieces are dropped first, never the row's reference (0: no budget)."
        },
    )
    context_top_k: int = field(
        default=5, metadata={"help": "Document chunks retrieved per row (--context_docs)."}
    )
    context_example_rows: int = field(
        default=3,
        metadata={"help": "Example rows shown per table a row touches (--context_db; 0: none)."},
    )
    context_strict: bool = field(
        default=False,
        metadata={
            "help": "Stop at the first unreadable document in --context_docs (default: skip "
            "each, naming it and the reason; the list goes to the run folder's "
            "context_skipped.txt)."
        },
    )
    print_metrics: bool = field(
        default=False,
        metadata={
            "help": "Print TRL's full metric dict at every logging step, as TRL does (by default "
            "the console shows one progress bar with reward, held-out accuracy, lambda and "
            "s/step; every metric is in metrics.jsonl and the trackers either way)."
        },
    )


# Defaults of `rlsd train` on a CPU with the tiny model (a YAML or flag overrides each).
CPU_DEFAULTS = {
    "learning_rate": 1e-4,  # the probe: 1e-4 learns, 3e-4 stalls, 1e-3 collapses
    "lr_scheduler_type": "constant",
    "per_device_train_batch_size": 128,  # completions: 16 prompts x 8 generations
    "num_generations": 8,
    "max_completion_length": 40,
    "max_steps": 150,
    "logging_steps": 1,
    "save_steps": 50,
    "save_total_limit": 2,
    "report_to": "none",
    "bf16": False,
    "use_cpu": None,
    "dataloader_num_workers": 0,
    "seed": 0,
}


def _default_output_dir(algorithm: str, task: str) -> str:
    return str(Path("runs") / f"{algorithm}-{task}-{time.strftime('%Y%m%d-%H%M%S')}")


# ----------------------------------------------------------------------------------- train
TRAIN_DESCRIPTION = (
    "Train with RLSD (or --algorithm grpo, opsd, grpo_opsd, opd). A YAML file sets any field "
    "below; flags override it. Without data: the built-in tasks and the shipped tiny model, on "
    "a CPU. The fields are those of rlsd.ScriptArguments, rlsd.RLSDConfig (TRL's GRPOConfig "
    "and HF TrainingArguments) and TRL's ModelConfig."
)


def _train_types() -> list[Any]:
    from trl import ModelConfig

    from rlsd.config import RLSDConfig

    return [ScriptArguments, RLSDConfig, ModelConfig]


def _train_defaults(task=None) -> dict[str, Any]:
    """`CPU_DEFAULTS`, then the task's own (`max_completion_length`, its teacher template and
    `Task.train_defaults`, e.g. a shorter run for the sql task): the parser's defaults, so that
    a YAML key or a flag overrides each and `GRPOConfig` derives its batch sizes from them as
    from the user's own values."""
    import torch

    defaults: dict[str, Any] = {
        **CPU_DEFAULTS,
        "use_cpu": not torch.cuda.is_available(),
        "output_dir": "",
    }
    if task is not None:
        defaults.update(
            max_completion_length=task.max_completion_length,
            teacher_template=task.teacher_template,
            **task.train_defaults,
        )
    return defaults


def _named_task(argv: list[str]):
    """The built-in task a train command line names (`--task`/`--task_config`, from its YAML
    file or its flags), or None when it gives `--dataset_path`: read before parsing, because
    the task's defaults are the parser's."""
    import yaml

    from rlsd.arguments import config_path

    path = config_path(argv)
    given: Any = {}
    if path is not None and Path(path).is_file():
        try:
            given = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError:
            given = {}  # the parser reports it, with the file's name
    if not isinstance(given, dict):
        given = {}
    scan = argparse.ArgumentParser(add_help=False)
    for name in ("task", "task_config", "dataset_path"):
        scan.add_argument(f"--{name}", default=given.get(name))
    known, _ = scan.parse_known_args(argv)
    if known.dataset_path is not None:
        return None
    return resolve_task(known.task or ScriptArguments.task, known.task_config)


def _parse_train(argv: list[str]) -> tuple[ScriptArguments, RLSDConfig, ModelConfig, Any]:
    """`parse_train_args` and the task it names (None with a dataset)."""
    from rlsd.arguments import parse_command

    argv = list(argv)
    task = _named_task(argv)
    script, config, model_config = parse_command(
        _train_types(),
        argv,
        "rlsd train",
        TRAIN_DESCRIPTION,
        defaults=_train_defaults(task),
        usage="rlsd train [CONFIG.yaml] [--key value ...]",
    )
    if not config.output_dir or config.output_dir == "trainer_output":
        resumed = config.resume_from_checkpoint
        config.output_dir = (
            str(Path(resumed).parent)  # resume into the checkpoint's own run folder
            if resumed and Path(resumed).is_dir()
            else _default_output_dir(config.algorithm, script.task)
        )
    return script, config, model_config, task


def parse_train_args(argv: list[str]) -> tuple[ScriptArguments, RLSDConfig, ModelConfig]:
    """`(ScriptArguments, RLSDConfig, ModelConfig)` from a YAML path and flags, over the CPU
    defaults and the named task's own (`_train_defaults`)."""
    script, config, model_config, _ = _parse_train(argv)
    return script, config, model_config


def _reward_funcs(rows: list[dict], names: list[str]) -> list[Any]:
    from rlsd.verifiers import reward_funcs_for

    try:
        return reward_funcs_for(rows, names)
    except (ValueError, ImportError, AttributeError) as e:  # unknown verifier or module:function
        raise UserError(f"--reward_funcs {' '.join(names)}: {e}") from e


def _build_context(
    script: ScriptArguments,
    model_path: str,
    train_rows: list[dict],
    eval_rows: list[dict],
    out: Path,
) -> tuple[list[dict], list[dict], list[dict]]:
    """Train and held-out rows with their privileged context built from --context_docs and
    --context_db (held-out rows too, so `eval/leak_rate` looks for copies of the documents),
    and one provenance line per row. The budget counts tokens of the model's tokenizer."""
    from rlsd.context import PROVENANCE_COLUMN, ContextBuilder
    from rlsd.context.command import load_tokenizer, report_skipped

    with ContextBuilder(
        script.context_docs,
        script.context_db,
        tokenizer=load_tokenizer(model_path),
        budget=script.context_budget or None,
        top_k=script.context_top_k,
        example_rows=script.context_example_rows,
        strict=script.context_strict,
    ) as builder:
        report_skipped(builder.documents, out / "context_skipped.txt")
        train_rows = builder.build_rows(train_rows, script.dataset_path or "train")
        eval_rows = builder.build_rows(eval_rows, script.eval_dataset_path or "held-out")
    provenance = [
        {"split": split, "row": i, **row.pop(PROVENANCE_COLUMN)}
        for split, rows in (("train", train_rows), ("eval", eval_rows))
        for i, row in enumerate(rows, start=1)
    ]
    return train_rows, eval_rows, provenance


def resolve_task(name: str, task_config: Any = None):
    """The `Task` a `--task` / `--task_config` pair names; a `UserError` listing the choices."""
    from rlsd.tasks import get_task
    from rlsd.tasks.reasoning_gym import parse_task_config

    try:
        return get_task(name, parse_task_config(task_config))
    except ValueError as e:  # an unknown task, dataset or configuration key
        raise UserError(str(e)) from e


def train_main(argv: list[str]) -> dict:
    import torch
    from transformers import PrinterCallback, ProgressCallback
    from trl import get_peft_config

    from rlsd.callbacks import ConsoleCallback, HeldOutEvalCallback, RunFolderCallback
    from rlsd.data import read_rows, to_dataset
    from rlsd.models import load_model, resolve_model_path
    from rlsd.reports.plots import plot_run
    from rlsd.tasks import make_rows
    from rlsd.trainer import RLSDTrainer

    script, config, model_config, task = _parse_train(argv)
    out = Path(str(config.output_dir))  # always set by parse_train_args
    model_path = resolve_model_path(model_config.model_name_or_path, task)
    if task is not None:
        if script.privileged not in task.privileged_kinds:
            raise UserError(
                f"--privileged {script.privileged}: task {task.name} has "
                f"{', '.join(task.privileged_kinds)}"
            )
        try:
            train_rows = make_rows(
                task.problems("train", script.num_train, config.seed), script.privileged
            )
            eval_rows = make_rows(
                task.problems("eval", script.num_eval, config.seed), script.privileged
            )
        except ValueError as e:  # more problems than the task's configuration holds
            raise UserError(str(e)) from e
    else:
        assert script.dataset_path is not None  # `task` is None only with a dataset
        train_rows = read_rows(script.dataset_path)
        eval_rows = read_rows(script.eval_dataset_path) if script.eval_dataset_path else []

    reward_funcs = _reward_funcs(train_rows, script.reward_funcs)

    dtype: Any = model_config.dtype if model_config.dtype not in (None, "auto") else None
    if dtype is None:
        dtype = torch.float32 if not torch.cuda.is_available() else "auto"
    provenance: list[dict] = []  # before loading the model: a bad folder fails fast
    if script.context_docs is not None or script.context_db is not None:
        train_rows, eval_rows, provenance = _build_context(
            script, model_path, train_rows, eval_rows, out
        )
    model, tokenizer = load_model(model_path, None, dtype, model_config.attn_implementation)
    try:
        trainer = RLSDTrainer(
            model=model,
            reward_funcs=reward_funcs,
            args=config,
            train_dataset=to_dataset(train_rows),
            processing_class=tokenizer,
            peft_config=get_peft_config(model_config),
        )
    except ValueError as e:  # TRL's and rlsd's checks of the configuration against the model
        raise UserError(str(e)) from e
    # The console: one bar with a few numbers; TRL's metric dicts only with --print_metrics.
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(ConsoleCallback(full=script.print_metrics))
    run_folder = RunFolderCallback(out, trainer)
    trainer.add_callback(run_folder)  # before the held-out callback: it writes through this one
    held_out = None
    if eval_rows:
        held_out = HeldOutEvalCallback(
            trainer,
            eval_rows,
            reward_funcs[0],
            every=script.eval_every,
            num_samples=script.eval_num_samples,
            temperature=script.eval_temperature,
            max_new_tokens=config.max_completion_length or 512,  # unset: TRL's default
            ks=tuple(k for k in (1, 2, 4, 8) if k <= script.eval_num_samples),
            seed=config.seed,
            greedy=script.eval_greedy,
        )
        trainer.add_callback(held_out)
    if trainer.accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        resolved = {
            "script": asdict(script),
            "model": asdict(model_config),
            "config": config.to_dict(),
            "model_path": model_path,
        }
        (out / "config.json").write_text(json.dumps(resolved, indent=2, default=str) + "\n")
        if provenance:  # where each row's privileged context came from, never its text
            lines = "".join(json.dumps(p) + "\n" for p in provenance)
            (out / "context_provenance.jsonl").write_text(lines)
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    trainer.save_model(str(out / "final"))
    summary: dict = {"output_dir": str(out), "steps": trainer.state.global_step}
    if trainer.accelerator.is_main_process:
        plot_run(out)
        if held_out is not None and held_out.history:
            first, last = held_out.history[0], held_out.history[-1]
            summary.update(
                accuracy_before=first.get("eval/accuracy"),
                accuracy_after=last.get("eval/accuracy"),
                greedy_before=first.get("eval/greedy_accuracy"),
                greedy_after=last.get("eval/greedy_accuracy"),
            )
            greedy = ""
            if script.eval_greedy:
                greedy = (
                    f" (greedy {first['eval/greedy_accuracy']:.3f} -> "
                    f"{last['eval/greedy_accuracy']:.3f})"
                )
            print(
                f"held-out accuracy (sampled, {len(eval_rows)} problems): "
                f"{first['eval/accuracy']:.3f} before -> {last['eval/accuracy']:.3f} after{greedy}"
            )
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(f"run folder: {out}")
    return summary


# ------------------------------------------------------------------------------------ eval
@dataclass
class EvalArguments:
    """`rlsd eval`: held-out accuracy, pass@k and leak_rate of a model."""

    model_name_or_path: str = field(
        default="",
        metadata={
            "help": "Model folder or checkpoint (default: the shipped model of the task: the tiny "
            "model, or for the sql and counting_visual tasks their own)."
        },
    )
    dataset_path: str | None = field(
        default=None,
        metadata={"help": "Data file or folder (default: the built-in task's held-out split)."},
    )
    task: str = field(
        default="mixed", metadata={"help": "Built-in task, when no --dataset_path is given."}
    )
    task_config: str | None = field(
        default=None,
        metadata={"help": "The rg:<dataset> generator's configuration (a JSON object)."},
    )
    privileged: str | None = field(
        default=None,
        metadata={
            "help": "Built-in task: the privileged kind that eval/leak_rate looks for copies of "
            "(default: the task's first kind)."
        },
    )
    num_eval: int = field(default=500, metadata={"help": "Built-in task: held-out problems."})
    num_generations: int = field(
        default=8, metadata={"help": "Samples per problem (pass@k for every k up to it)."}
    )
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    max_completion_length: int | None = field(
        default=None,
        metadata={"help": "Tokens per completion (default: the task's; 40 for a dataset)."},
    )
    reward_funcs: list[str] = field(
        default_factory=lambda: ["exact"],
        metadata={"help": "Verifier (the first one is scored; a `verifier` column routes)."},
    )
    seed: int = field(default=0, metadata={"help": "Problems and sampling seed."})
    output_dir: str | None = field(
        default=None, metadata={"help": "Folder where eval.json (the metrics) is written."}
    )
    output: str | None = field(
        default=None,
        metadata={
            "help": "Deprecated (removed in the next release): a JSON file for the metrics; use "
            "--output_dir."
        },
    )


EVAL_RENAMED = {"num_samples": "num_generations", "max_new_tokens": "max_completion_length"}


def parse_eval_args(argv: list[str]) -> tuple[EvalArguments]:
    from rlsd.arguments import parse_command

    return parse_command(
        [EvalArguments],
        argv,
        "rlsd eval",
        "Held-out accuracy, pass@k and leak_rate of a model.",
        renamed=EVAL_RENAMED,
        positional="model_name_or_path",
    )


def eval_main(argv: list[str]) -> dict:
    from rlsd.arguments import deprecated

    (args,) = parse_eval_args(argv)
    if args.output:
        deprecated("rlsd eval", "--output FILE", "--output_dir DIR (writes DIR/eval.json)")

    from rlsd.data import read_rows
    from rlsd.evaluation import evaluate
    from rlsd.models import load_model, resolve_model_path
    from rlsd.tasks import make_rows

    path = resolve_model_path(args.model_name_or_path)
    max_new_tokens = args.max_completion_length or 40
    if args.dataset_path:
        rows = read_rows(args.dataset_path)
    else:
        task = resolve_task(args.task, args.task_config)
        kind = args.privileged or task.privileged_kinds[0]
        if kind not in task.privileged_kinds:
            raise UserError(
                f"--privileged {kind}: task {task.name} has {', '.join(task.privileged_kinds)}"
            )
        try:
            rows = make_rows(task.problems("eval", args.num_eval, args.seed), kind)
        except ValueError as e:  # more problems than the task's configuration holds
            raise UserError(str(e)) from e
        max_new_tokens = args.max_completion_length or task.max_completion_length
        path = resolve_model_path(args.model_name_or_path, task)
    reward_fn = _reward_funcs(rows, args.reward_funcs[:1])[0]
    model, tokenizer = load_model(path)
    ks = tuple(k for k in (1, 2, 4, 8, 16, 32) if k <= args.num_generations)
    metrics = evaluate(
        model,
        tokenizer,
        rows,
        reward_fn,
        num_samples=args.num_generations,
        temperature=args.temperature,
        max_new_tokens=max_new_tokens,
        ks=ks,
        seed=args.seed,
    )
    metrics["model"] = path
    print(json.dumps(metrics, indent=2))
    written = [Path(args.output)] if args.output else []
    if args.output_dir:
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        written.append(Path(args.output_dir) / "eval.json")
    for file in written:
        file.write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


# ------------------------------------------------------------------------------------- sft
def parse_sft_args(argv: list[str]) -> tuple[Any]:
    from rlsd.arguments import parse_command
    from rlsd.models.sft import SFTArgs

    return parse_command(
        [SFTArgs],
        argv,
        "rlsd sft",
        "Warm-start the tiny model on a built-in task (rebuilds the shipped checkpoint; see "
        "rlsd.models.sft for the recipe).",
    )


def sft_main(argv: list[str]) -> dict:
    from rlsd.models.sft import run_sft

    (args,) = parse_sft_args(argv)
    summary = run_sft(args)
    print(
        f"saved {args.output_dir}: {summary['steps']} steps, "
        f"sampled accuracy {summary['sampled_accuracy']:.3f}"
    )
    return summary


# ------------------------------------------------------------------------------------ main
def _lazy(module: str, name: str) -> Callable[[list[str]], Any]:
    """`module.name`, imported when called (a command's imports are its own cost)."""

    def call(argv: list[str]) -> Any:
        import importlib

        return getattr(importlib.import_module(module), name)(argv)

    call.__qualname__ = f"{module}.{name}"
    return call


@dataclass(frozen=True)
class Command:
    summary: str  # the line in `rlsd --help`
    run: Callable[[list[str]], Any]  # parses its own arguments (`rlsd <name> --help`)
    # its command line -> its dataclasses (`rlsd.arguments.parse_command`), without running it
    parse: Callable[[list[str]], tuple[Any, ...]]


COMMANDS = {
    "train": Command(
        "train RLSD or a baseline; YAML and/or --key value for any field",
        train_main,
        parse_train_args,
    ),
    "eval": Command(
        "held-out accuracy, pass@k and leak_rate of a model", eval_main, parse_eval_args
    ),
    "sft": Command("rebuild the warm-started tiny model", sft_main, parse_sft_args),
    "compare": Command(
        "algorithms side by side over seeds, one report",
        _lazy("rlsd.compare.command", "main"),
        _lazy("rlsd.compare.command", "parse_args"),
    ),
    "credit": Command(
        "per-token credit page (HTML + PNG)",
        _lazy("rlsd.reports.credit.command", "main"),
        _lazy("rlsd.reports.credit.command", "parse_args"),
    ),
    "probe": Command(
        "does the self-teacher read its privileged context? (true vs shuffled)",
        _lazy("rlsd.reports.probe", "main"),
        _lazy("rlsd.reports.probe", "parse_args"),
    ),
    "context": Command(
        "privileged context from internal documents and a SQLite database",
        _lazy("rlsd.context.command", "main"),
        _lazy("rlsd.context.command", "parse_args"),
    ),
}

# TrainingArguments has its own `--debug <option>` (HF's underflow/overflow detection): a
# bare `--debug` after the command is rlsd's, one followed by one of these values is HF's.
_HF_DEBUG_OPTIONS = ("underflow_overflow", "tpu_metrics_debug")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlsd",
        description="RLSD (RLVR with self-distillation) on Hugging Face TRL.",
        epilog="`rlsd COMMAND --help` shows a command's options. User errors print one message "
        "and exit with status 2.",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the traceback of a user error (also RLSD_DEBUG=1, or --debug after COMMAND)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in COMMANDS.items():
        # Each command parses its own arguments (TRL's parser for train), as TRL's CLI does.
        commands.add_parser(name, help=command.summary, add_help=False)
    return parser


def _set_process_defaults() -> None:
    """What the `rlsd` process sets for itself (never on import): offline unless the user
    exported otherwise, no library progress bars besides the training bar, and no
    transformers deprecation notices about TRL's own calls."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() not in ("1", "true"):
        # accelerate imports DeepSpeed wherever it is installed, and DeepSpeed then prints its
        # CPU fallback notice to stdout: not a word for a run that does not use DeepSpeed
        logging.getLogger("DeepSpeed").addFilter(_DropDeepSpeedCpuNotice())


class _DropDeepSpeedCpuNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Setting accelerator to CPU")


def main(argv: list[str] | None = None) -> int:
    """`rlsd COMMAND ...`: 0 on success, 2 on a user error (argparse exits 2 on bad flags)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # The first word that is not an option is the command; the rest is the command's.
    at = next((i for i, a in enumerate(argv) if not a.startswith("-")), len(argv))
    args = build_parser().parse_args(argv[: at + 1])
    rest = argv[at + 1 :]
    debug = args.debug or os.environ.get("RLSD_DEBUG", "") not in ("", "0")
    for i in reversed(range(len(rest))):
        if rest[i] == "--debug" and (i + 1 == len(rest) or rest[i + 1] not in _HF_DEBUG_OPTIONS):
            debug = True
            del rest[i]
    _set_process_defaults()
    try:
        COMMANDS[args.command].run(rest)
    except UserError as e:  # DataError included
        if debug:
            raise
        print(f"rlsd {args.command}: error: {e}", file=sys.stderr)
        print("(--debug or RLSD_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
