"""`rlsd train ARGS...` with one metric added for `ms_swift.py`: `cpu_step_time`, the process
CPU seconds (`time.process_time`, all threads) of each `training_step`, beside TRL's wall-clock
`step_time`. On a shared machine the wall time of a step grows with every other process that
wants the cores; its CPU time (with `OMP_NUM_THREADS` fixed) moves far less.
`swift_plugin.py` adds the same metric to ms-swift's trainer.

Run: `python benchmarks/peers/rlsd_cpu_timed.py --task arithmetic ...` (the `rlsd train` flags).
"""

from __future__ import annotations

import functools
import sys
import time

from rlsd.cli import main
from rlsd.trainer import RLSDTrainer

_original = RLSDTrainer.training_step


@functools.wraps(_original)
def _training_step(self, model, inputs, num_items_in_batch):
    start = time.process_time()
    loss = _original(self, model, inputs, num_items_in_batch)
    if self.model.training:
        self._metrics["train"]["cpu_step_time"].append(time.process_time() - start)
    return loss


RLSDTrainer.training_step = _training_step

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
