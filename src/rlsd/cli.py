"""The `rlsd` command: `rlsd train`, `rlsd eval`, `rlsd sft`.

`rlsd train [CONFIG.yaml] [--key value ...]` takes TRL-style YAML (any `RLSDConfig`/
`GRPOConfig` field, TRL's `ModelConfig` fields for PEFT, and the script fields of
`ScriptArguments` below) plus command-line overrides. With no arguments it trains RLSD on
the built-in arithmetic task with the shipped tiny model, on a CPU, offline. It works under
`accelerate launch` and `torchrun` like any TRL script.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Offline by default: nothing here needs a hub. A user may export HF_HUB_OFFLINE=0.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
# transformers 5 deprecation notices raised inside TRL (gradient_checkpointing renames).
warnings.filterwarnings("ignore", category=FutureWarning)


@dataclass
class ScriptArguments:
    """What to train on, and how to evaluate. The model is TRL's `ModelConfig.model_name_or_path`
    (default: the shipped tiny model); the rest is `RLSDConfig`."""

    task: str = field(
        default="mixed",
        metadata={
            "help": "Built-in task when no dataset is given: mixed (default: arithmetic, counting "
            "and paths problems), arithmetic, counting, paths."
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
            "help": "Built-in task privileged context: 'solution' (worked) or 'answer' (final only)."
        },
    )
    reward_funcs: list[str] = field(
        default_factory=lambda: ["exact"],
        metadata={
            "help": "Verifier names or `module:function` paths (a `verifier` column routes per row)."
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


def parse_train_args(argv: list[str]):
    import torch
    from trl import ModelConfig, TrlParser

    from rlsd.config import RLSDConfig

    argv = list(argv)
    if argv and not argv[0].startswith("-") and argv[0].endswith((".yaml", ".yml")):
        argv = ["--config", argv[0], *argv[1:]]
    parser = TrlParser((ScriptArguments, RLSDConfig, ModelConfig))
    defaults = dict(CPU_DEFAULTS)
    defaults["use_cpu"] = not torch.cuda.is_available()
    defaults["output_dir"] = ""
    parser.set_defaults_with_config(**defaults)
    script, config, model_config = parser.parse_args_and_config(argv)
    if not config.output_dir or config.output_dir == "trainer_output":
        config.output_dir = _default_output_dir(config.algorithm, script.task)
    return script, config, model_config


def train_main(argv: list[str]) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import get_peft_config

    from rlsd.callbacks import HeldOutEvalCallback, RunFolderCallback
    from rlsd.data import read_rows, to_dataset
    from rlsd.models import DEFAULT_MODEL_PATH
    from rlsd.reports.plots import plot_run
    from rlsd.tasks import get_task, make_rows
    from rlsd.teacher import DEFAULT_TEACHER_TEMPLATE
    from rlsd.trainer import RLSDTrainer
    from rlsd.verifiers import reward_funcs_for

    script, config, model_config = parse_train_args(argv)
    out = Path(config.output_dir)
    model_path = model_config.model_name_or_path or str(DEFAULT_MODEL_PATH)
    builtin = script.dataset_path is None
    if builtin:
        task = get_task(script.task)
        if config.teacher_template == DEFAULT_TEACHER_TEMPLATE:  # the task's compact format
            config.teacher_template = task.teacher_template
        train_rows = make_rows(
            task.problems("train", script.num_train, config.seed), script.privileged
        )
        eval_rows = make_rows(
            task.problems("eval", script.num_eval, config.seed), script.privileged
        )
    else:
        train_rows = read_rows(script.dataset_path)
        eval_rows = read_rows(script.eval_dataset_path) if script.eval_dataset_path else []

    reward_funcs = reward_funcs_for(train_rows, script.reward_funcs)

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    dtype = model_config.dtype if model_config.dtype not in (None, "auto") else None
    if dtype is None:
        dtype = torch.float32 if not torch.cuda.is_available() else "auto"
    model = AutoModelForCausalLM.from_pretrained(
        model_path, dtype=dtype, attn_implementation=model_config.attn_implementation
    )
    trainer = RLSDTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=config,
        train_dataset=to_dataset(train_rows),
        processing_class=tokenizer,
        peft_config=get_peft_config(model_config),
    )
    run_folder = RunFolderCallback(out, trainer)
    trainer.add_callback(run_folder)
    held_out = None
    if eval_rows:
        held_out = HeldOutEvalCallback(
            trainer,
            eval_rows,
            reward_funcs[0],
            every=script.eval_every,
            num_samples=script.eval_num_samples,
            temperature=script.eval_temperature,
            max_new_tokens=config.max_completion_length,
            ks=tuple(k for k in (1, 2, 4, 8) if k <= script.eval_num_samples),
            seed=config.seed,
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
            print(
                f"held-out accuracy (sampled, {len(eval_rows)} problems): "
                f"{first['eval/accuracy']:.3f} before -> {last['eval/accuracy']:.3f} after "
                f"(greedy {first['eval/greedy_accuracy']:.3f} -> {last['eval/greedy_accuracy']:.3f})"
            )
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(f"run folder: {out}")
    return summary


def eval_main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="rlsd eval", description="Held-out accuracy and pass@k.")
    parser.add_argument(
        "model", nargs="?", default="", help="model folder or checkpoint (default: shipped tiny)"
    )
    parser.add_argument(
        "--dataset_path", default=None, help="data file (default: the built-in task's eval split)"
    )
    parser.add_argument("--task", default="mixed")
    parser.add_argument("--num_eval", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--num_samples", type=int, default=8, help="samples per problem (pass@k, k <= this)"
    )
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--max_new_tokens", type=int, default=40)
    parser.add_argument("--reward_funcs", nargs="+", default=["exact"])
    parser.add_argument("--output", default=None, help="write the metrics as JSON here")
    args = parser.parse_args(argv)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlsd.data import read_rows
    from rlsd.evaluation import evaluate
    from rlsd.models import DEFAULT_MODEL_PATH
    from rlsd.tasks import get_task, make_rows
    from rlsd.verifiers import reward_funcs_for

    path = args.model or str(DEFAULT_MODEL_PATH)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    if args.dataset_path:
        rows = read_rows(args.dataset_path)
    else:
        rows = make_rows(get_task(args.task).problems("eval", args.num_eval, args.seed))
    reward_fn = reward_funcs_for(rows, args.reward_funcs[:1])[0]
    ks = tuple(k for k in (1, 2, 4, 8, 16, 32) if k <= args.num_samples)
    metrics = evaluate(
        model,
        tokenizer,
        rows,
        reward_fn,
        num_samples=args.num_samples,
        temperature=args.temperature,
        max_new_tokens=args.max_new_tokens,
        ks=ks,
        seed=args.seed,
    )
    metrics["model"] = path
    print(json.dumps(metrics, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def sft_main(argv: list[str]) -> dict:
    from rlsd.models.sft import SFTArgs, run_sft

    defaults = SFTArgs()
    parser = argparse.ArgumentParser(
        prog="rlsd sft",
        description="Warm-start the tiny model on a built-in task (rebuilds the shipped checkpoint).",
    )
    for name, value in asdict(defaults).items():
        parser.add_argument(f"--{name}", type=type(value), default=value)
    args = SFTArgs(**vars(parser.parse_args(argv)))
    summary = run_sft(args)
    print(
        f"saved {args.output_dir}: {summary['steps']} steps, sampled accuracy {summary['sampled_accuracy']:.3f}"
    )
    return summary


def compare_main(argv: list[str]):
    from rlsd.compare import main as compare

    return compare(argv)


def credit_main(argv: list[str]):
    from rlsd.reports.credit import main as credit

    return credit(argv)


COMMANDS = {
    "train": train_main,
    "eval": eval_main,
    "sft": sft_main,
    "compare": compare_main,
    "credit": credit_main,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(
            "usage: rlsd {train,eval,sft,compare,credit} [...]\n\n"
            "  train [CONFIG.yaml] [--key value ...]  train RLSD (default: built-in task, tiny model)\n"
            "  eval  [MODEL] [--dataset_path F]        held-out accuracy and pass@k\n"
            "  sft   [--output_dir D]                  rebuild the warm-started tiny model\n"
            "  compare [--quick] [--algorithms ...]     algorithms side by side over seeds\n"
            "  credit  [MODEL] [--output D]             per-token credit page (HTML + PNG)\n"
        )
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    COMMANDS[argv[0]](argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
