"""Trainer callbacks that make a run folder: metrics JSONL, samples, held-out evaluation.

The run folder (the trainer's `output_dir`) holds:
- `config.json`: the resolved configuration (written by the CLI),
- `metrics.jsonl`: one line per logging step (TRL's metrics plus `eval/*` from
  `HeldOutEvalCallback`),
- `samples.jsonl`: a few completions per logging step with their rewards (prompts and
  completions only: privileged context is left out unless `log_privileged`),
- `checkpoint-*`: TRL/HF checkpoints, with the RLSD teacher snapshot in `rlsd_teacher/`,
- `curves.png`: reward and held-out accuracy against steps (written at the end).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from rlsd.evaluation import evaluate


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        return str(value)


class RunFolderCallback(TrainerCallback):
    """Append every log to `metrics.jsonl` and a few recent completions to `samples.jsonl`."""

    def __init__(self, output_dir: str | Path, trainer=None, samples_per_log: int = 4):
        self.output_dir = Path(output_dir)
        self.trainer = trainer
        self.samples_per_log = samples_per_log
        self.started = time.time()

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
            trainer is None
            or not getattr(trainer, "_logs", None)
            or not trainer._logs["completion"]
        ):
            return
        completions = list(trainer._logs["completion"])[: self.samples_per_log]
        prompts = list(trainer._logs["prompt"])[: self.samples_per_log]
        rewards = {
            name: list(v)[: self.samples_per_log] for name, v in trainer._logs["rewards"].items()
        }
        with (self.output_dir / "samples.jsonl").open("a") as f:
            for i, (prompt, completion) in enumerate(zip(prompts, completions)):
                row = {"step": state.global_step, "prompt": prompt, "completion": completion}
                row["rewards"] = {name: v[i] for name, v in rewards.items() if i < len(v)}
                f.write(json.dumps(row, default=str) + "\n")


class HeldOutEvalCallback(TrainerCallback):
    """Held-out accuracy (and pass@k, leak_rate) every `every` steps, before the first step
    and after the last, logged as `eval/*` metrics. Generation runs on the main process."""

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
    ):
        self.trainer, self.rows, self.reward_fn = trainer, rows, reward_fn
        self.every, self.num_samples, self.temperature = every, num_samples, temperature
        self.max_new_tokens, self.ks, self.seed = max_new_tokens, ks, seed
        self.history: list[dict[str, Any]] = []

    def run(self, step: int) -> dict[str, Any]:
        trainer = self.trainer
        model = trainer.accelerator.unwrap_model(trainer.model)
        metrics: dict[str, Any] = {}
        if trainer.accelerator.is_main_process:
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
            )
            metrics = {f"eval/{k}": v for k, v in metrics.items() if k != "num_problems"}
            self.history.append({"step": step, **metrics})
        trainer.accelerator.wait_for_everyone()
        return metrics

    def _log(self, state, metrics):
        if metrics:
            # Trainer.log would average these with the training metrics; write them directly.
            for cb in self.trainer.callback_handler.callbacks:
                if isinstance(cb, RunFolderCallback):
                    cb.on_log(self.trainer.args, state, None, logs=metrics)

    def on_train_begin(self, args, state, control, **kwargs):
        if not any(h["step"] == state.global_step for h in self.history):
            self._log(state, self.run(state.global_step))

    def on_step_end(self, args, state, control, **kwargs):
        if self.every and state.global_step % self.every == 0:
            self._log(state, self.run(state.global_step))

    def on_train_end(self, args, state, control, **kwargs):
        if not any(h["step"] == state.global_step for h in self.history):
            self._log(state, self.run(state.global_step))
