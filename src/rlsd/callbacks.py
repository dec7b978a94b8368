"""Trainer callbacks that make a run folder and the console of `rlsd train`.

The run folder (the trainer's `output_dir`) holds:
- `config.json`: the resolved configuration (written by the CLI),
- `metrics.jsonl`: one line per logging step (TRL's metrics plus `eval/*` from
  `HeldOutEvalCallback`),
- `samples.jsonl`: a few completions per logging step with their rewards (prompts and
  completions only; the teacher's privileged text is added only with `log_privileged`),
- `checkpoint-*`: TRL/HF checkpoints, with the RLSD teacher snapshot in `rlsd_teacher/`,
- `curves.png`: reward and held-out accuracy against steps (written at the end).

A run resumed from `checkpoint-k` into the same folder first drops the lines logged after
step k (they are about to be logged again), so every step appears once.

`ConsoleCallback` replaces HF's `ProgressCallback` in `rlsd train`: one progress bar with a few
numbers instead of TRL's full metric dict at every step (which stays in `metrics.jsonl` and
the trackers). Python-API users keep TRL's default console.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm
from transformers import TrainerCallback

from rlsd.evaluation import evaluate


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        return str(value)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The readable lines of a JSONL file (a line cut short by a kill is skipped)."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _prompt_key(prompt: Any) -> str:
    return json.dumps(prompt, sort_keys=True, default=str)


class RunFolderCallback(TrainerCallback):
    """Append every log to `metrics.jsonl` and a few recent completions to `samples.jsonl`.

    With the trainer's `log_privileged`, each sample also carries the privileged text the
    teacher saw for its prompt (`privileged_context`, or the row's whole `teacher_prompt`).
    """

    FILES = ("metrics.jsonl", "samples.jsonl")

    def __init__(self, output_dir: str | Path, trainer=None, samples_per_log: int = 4):
        self.output_dir = Path(output_dir)
        self.trainer = trainer
        self.samples_per_log = samples_per_log
        self.started = time.time()
        self._privileged: dict[str, dict[str, Any]] | None = None

    def records(self) -> list[dict[str, Any]]:
        """The lines of `metrics.jsonl` written so far."""
        return _read_jsonl(self.output_dir / "metrics.jsonl")

    def on_train_begin(self, args, state, control, **kwargs):
        """Start the files anew, or, resumed from a checkpoint at step k, keep only what was
        logged at steps <= k (a checkpoint is saved after its step's logs are written)."""
        if not state.is_world_process_zero:
            return
        last_step = state.global_step
        for name in self.FILES:
            path = self.output_dir / name
            if not path.exists():
                continue
            kept = [r for r in _read_jsonl(path) if last_step and r.get("step", 0) <= last_step]
            path.write_text("".join(json.dumps(r) + "\n" for r in kept))
            if name == "metrics.jsonl" and kept:  # `time` goes on from where it stopped
                self.started = time.time() - max(float(r.get("time", 0.0)) for r in kept)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        record = {"step": state.global_step, "time": round(time.time() - self.started, 2)}
        record.update({k: _jsonable(v) for k, v in logs.items()})
        with (self.output_dir / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")
        trainer = self.trainer
        if (
            "loss" not in logs  # samples with a training step's log only (not eval/*, nor the
            or trainer is None  # end-of-training summary): each step's samples appear once
            or not getattr(trainer, "_logs", None)
            or not trainer._logs["completion"]
        ):
            return
        completions = list(trainer._logs["completion"])[: self.samples_per_log]
        prompts = list(trainer._logs["prompt"])[: self.samples_per_log]
        rewards = {
            name: list(v)[: self.samples_per_log] for name, v in trainer._logs["rewards"].items()
        }
        privileged = getattr(trainer.args, "log_privileged", False)
        with (self.output_dir / "samples.jsonl").open("a") as f:
            for i, (prompt, completion) in enumerate(zip(prompts, completions)):
                row = {"step": state.global_step, "prompt": prompt, "completion": completion}
                row["rewards"] = {name: v[i] for name, v in rewards.items() if i < len(v)}
                if privileged:
                    row.update(self._privileged_of(prompt))
                f.write(json.dumps(row, default=str) + "\n")

    def _privileged_of(self, prompt: Any) -> dict[str, Any]:
        """What the teacher was shown for `prompt`, from the training set (the first row with
        that prompt; TRL's logs keep the prompt, not the row)."""
        if self._privileged is None:
            from rlsd.prompts import privileged_text

            self._privileged = {}
            dataset = getattr(self.trainer, "train_dataset", None)
            for row in dataset if dataset is not None else []:
                key = _prompt_key(row["prompt"])
                if key in self._privileged:
                    continue
                if row.get("teacher_prompt"):
                    self._privileged[key] = {"teacher_prompt": row["teacher_prompt"]}
                else:
                    try:
                        self._privileged[key] = {"privileged_context": privileged_text(row)}
                    except ValueError:  # a row without privileged text (grpo on code tests)
                        self._privileged[key] = {}
        return self._privileged.get(_prompt_key(prompt), {})


class ConsoleCallback(TrainerCallback):
    """One progress bar with a few numbers: train reward, held-out accuracy (once evaluated),
    lambda (RLSD) and seconds per step. With `full`, TRL's whole metric dict is also printed
    at every log, as HF's `ProgressCallback` does. With `disable_tqdm`, one line per log
    replaces the bar."""

    SHOWN = (  # (metric, label, format)
        ("reward", "reward", "{:.3f}"),
        ("eval/accuracy", "held-out", "{:.3f}"),
        ("rlsd/lambda", "lambda", "{:.3f}"),
        ("step_time", "s/step", "{:.2f}"),
    )

    def __init__(self, full: bool = False):
        self.full = full
        self.bar: Any = None
        self.values: dict[str, float] = {}

    def _summary(self) -> str:
        return ", ".join(
            f"{label} {fmt.format(self.values[key])}"
            for key, label, fmt in self.SHOWN
            if key in self.values
        )

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and not args.disable_tqdm:
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, dynamic_ncols=True)
            self.bar.set_postfix_str(self._summary(), refresh=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        for key, *_ in self.SHOWN:
            if isinstance(logs.get(key), (int, float)):
                self.values[key] = float(logs[key])
        if self.full:
            shown = {k: f"{v:.4g}" if isinstance(v, float) else v for k, v in logs.items()}
            shown.pop("total_flos", None)
            (self.bar.write if self.bar is not None else print)(str(shown))
        if self.bar is not None:
            self.bar.set_postfix_str(self._summary(), refresh=True)
        elif not self.full and any(key in logs for key, *_ in self.SHOWN):
            print(f"step {state.global_step}/{state.max_steps}: {self._summary()}", flush=True)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class HeldOutEvalCallback(TrainerCallback):
    """Held-out accuracy (and pass@k, leak_rate) every `every` steps, before the first step
    and after the last, logged as `eval/*` metrics. Generation runs on the main process, or on
    every process alike where the model is partitioned (DeepSpeed ZeRO-3, FSDP).

    A run resumed from a checkpoint at step k takes the evaluations already in its run folder
    as its history, and evaluates at k only if the interrupted run did not (k not a multiple
    of `every`): every rank decides the same way without reading the folder."""

    def __init__(
        self,
        trainer,
        rows: list[dict],
        reward_fn,
        every: int = 10,
        num_samples: int = 1,
        temperature: float = 1.0,
        max_new_tokens: int = 40,
        ks: tuple[int, ...] = (1,),
        seed: int = 0,
        greedy: bool = True,
    ):
        self.trainer, self.rows, self.reward_fn = trainer, rows, reward_fn
        self.greedy = greedy
        self.every, self.num_samples, self.temperature = every, num_samples, temperature
        self.max_new_tokens, self.ks, self.seed = max_new_tokens, ks, seed
        self.history: list[dict[str, Any]] = []  # the main process's `eval/*` per step
        self._steps: set[int] = set()  # steps this process evaluated (every rank)

    def run(self, step: int) -> dict[str, Any]:
        trainer = self.trainer
        model = trainer.accelerator.unwrap_model(trainer.model)
        metrics: dict[str, Any] = {}
        self._steps.add(step)
        # A partitioned model (ZeRO-3, FSDP) needs every rank in each forward: there, every
        # rank evaluates the same rows with the same seed (the same samples), and the main
        # process keeps the numbers; otherwise the main process evaluates alone.
        sharded = _is_sharded(trainer)
        if trainer.accelerator.is_main_process or sharded:
            metrics = evaluate(
                model,
                trainer.processing_class,
                self.rows,
                self.reward_fn,
                num_samples=self.num_samples,
                temperature=self.temperature,
                max_new_tokens=self.max_new_tokens,
                ks=self.ks,
                seed=self.seed,
                greedy=self.greedy,
            )
            metrics = {f"eval/{k}": v for k, v in metrics.items() if k != "num_problems"}
            if not trainer.accelerator.is_main_process:
                metrics = {}
            else:
                self.history.append({"step": step, **metrics})
        trainer.accelerator.wait_for_everyone()
        return metrics

    def _evaluated(self, step: int) -> bool:
        """Evaluated by this process, or by `on_step_end` (of this run or of the interrupted
        run whose checkpoint this one resumed from: a checkpoint is saved after it)."""
        return step in self._steps or (self.every > 0 and step > 0 and step % self.every == 0)

    def _callbacks(self, *kinds: type) -> list[Any]:
        return [cb for cb in self.trainer.callback_handler.callbacks if isinstance(cb, kinds)]

    def _log(self, state, metrics):
        if metrics:
            # Trainer.log would average these with the training metrics; write them directly.
            for cb in self._callbacks(RunFolderCallback, ConsoleCallback):
                cb.on_log(self.trainer.args, state, None, logs=metrics)

    def on_train_begin(self, args, state, control, **kwargs):
        step = state.global_step
        if step and state.is_world_process_zero and not self.history:  # resumed
            self.history = [
                {k: v for k, v in record.items() if k == "step" or k.startswith("eval/")}
                for folder in self._callbacks(RunFolderCallback)
                for record in folder.records()
                if "eval/accuracy" in record and record["step"] <= step
            ]
            for console in self._callbacks(ConsoleCallback):  # the last held-out accuracy
                console.on_log(args, state, None, logs=(self.history or [{}])[-1])
        if not step or not self._evaluated(step):
            self._log(state, self.run(step))

    def on_step_end(self, args, state, control, **kwargs):
        if self.every and state.global_step % self.every == 0:
            self._log(state, self.run(state.global_step))

    def on_train_end(self, args, state, control, **kwargs):
        if not self._evaluated(state.global_step):
            self._log(state, self.run(state.global_step))


def _is_sharded(trainer) -> bool:
    """Whether the policy's parameters are partitioned across processes (ZeRO-3 or FSDP), so
    that a forward is a collective."""
    if trainer.accelerator.num_processes < 2:
        return False
    if getattr(trainer, "is_fsdp_enabled", False):
        return True
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return bool(
        getattr(trainer, "is_deepspeed_enabled", False)
        and plugin is not None
        and plugin.zero_stage == 3
    )
