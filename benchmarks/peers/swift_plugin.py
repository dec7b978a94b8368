"""ms-swift plugin for `benchmarks/peers/ms_swift.py` (loaded with `--external_plugins`).

0. Registers the template `rlsd_tiny`: BOS + the question, then the response + EOS, the text of
   the tiny model's own chat template. (ms-swift's `dummy` template would generate from the
   tokenizer's chat template, with BOS, but score and train without it: `auto_add_bos` only
   adds a BOS that the tokenizer itself adds, and this tokenizer adds none.)
1. Registers the ORM `rlsd_exact`: rlsd's own `exact` verifier (`rlsd.verifiers.exact.score_exact`,
   imported from this checkout's `src/`; that module needs only the standard library), scoring
   each completion against the row's `solution` column (the task's final answer). The swift venv
   has no rlsd installed, so the checkout's `src/` is put on `sys.path`.
2. Adds per-step phase timers to swift's `GRPOTrainer` (swift only sends its own
   `profiling_context` timings to wandb/swanlab), logged beside TRL's `step_time`:
   `time/generate` (`_rollout_samples`: rows to samples, then generation), `time/verify`
   (`_score_completions`), `time/teacher` (the OPSD teacher view's encoding and collation, plus
   its no-grad forward: `_collate_teacher_opsd_batch` + `_compute_teacher_logps`),
   `time/old_logps` (the rest of `_prepare_batch_inputs`: encoding the student batch and the
   no-grad "old" log-prob forward swift runs on every step) and `time/update` (`step_time` less
   the rollout, i.e. the loss forward and backward), and `cpu_step_time`, the process CPU seconds
   of the step (as `rlsd_cpu_timed.py` adds to rlsd's). The wrappers only read clocks.
"""

from __future__ import annotations

import functools
import sys
import time
from collections import defaultdict
from pathlib import Path

_SRC = Path(__file__).resolve().parents[2] / "src"
if str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))

from swift.rewards import orms  # noqa: E402
from swift.rewards.orm import ORM  # noqa: E402
from swift.rlhf_trainers.grpo_trainer import GRPOTrainer  # noqa: E402
from swift.template import TemplateMeta, register_template  # noqa: E402

from rlsd.verifiers.exact import score_exact  # noqa: E402

register_template(
    TemplateMeta(
        "rlsd_tiny",
        prefix=[["bos_token_id"]],
        prompt=["{{QUERY}}"],
        chat_sep=None,
        suffix=[["eos_token_id"]],
    )
)


class RLSDExact(ORM):
    """1.0 when the completion's extracted answer equals the row's `solution` (rlsd `exact`)."""

    def __call__(self, completions, solution, **kwargs) -> list[float]:
        return [score_exact(c, {"answer": s}) for c, s in zip(completions, solution)]


orms["rlsd_exact"] = RLSDExact


# ----------------------------------------------------------------------------- timers
_TIMED = {
    "_rollout_samples": "generate",
    "_score_completions": "verify",
    "_collate_teacher_opsd_batch": "teacher",
    "_compute_teacher_logps": "teacher",
    "_prepare_batch_inputs": "prepare",
    "_generate_and_score_completions": "rollout",
}


def _timed(name: str, part: str):
    original = getattr(GRPOTrainer, name)

    @functools.wraps(original)
    def wrapper(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            timers = self.__dict__.setdefault("_peer_timers", defaultdict(float))
            timers[part] += time.perf_counter() - start

    return wrapper


def _training_step(original):
    @functools.wraps(original)
    def wrapper(self, *args, **kwargs):
        self.__dict__["_peer_timers"] = defaultdict(float)
        start, cpu_start = time.perf_counter(), time.process_time()
        out = original(self, *args, **kwargs)
        total, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        if self.model.training:
            t = self._peer_timers
            metrics = self._metrics["train"]
            metrics["cpu_step_time"].append(cpu)
            metrics["time/generate"].append(t["generate"])
            metrics["time/verify"].append(t["verify"])
            metrics["time/teacher"].append(t["teacher"])
            metrics["time/old_logps"].append(max(t["prepare"] - t["teacher"], 0.0))
            metrics["time/update"].append(max(total - t["rollout"], 0.0))
        return out

    return wrapper


for _name, _part in _TIMED.items():
    setattr(GRPOTrainer, _name, _timed(_name, _part))
GRPOTrainer.training_step = _training_step(GRPOTrainer.training_step)
