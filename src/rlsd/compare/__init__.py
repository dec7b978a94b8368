"""`rlsd compare`: several algorithms on the same data, model, seeds and step budget.

Modules, one concern each: `variants` (the variants and presets), `estimate` (the time
estimate), `runner` (the resumable runs), `command` (the command line); the report is
`rlsd.reports.compare_report`.

Each (variant, seed) is one `rlsd train` subprocess (`python -m rlsd.cli train`, with
`OMP_NUM_THREADS=1`) writing its own run folder `OUTPUT/runs/<variant>/seed<k>/`. The runs
differ only in the variant's flags (`--algorithm ...` and its knobs); the seed, step budget,
task, held-out set, batch and every flag given after `--` are the same for all of them.
Within a seed every variant sees the same training and held-out problems (both splits are
drawn from the seed).

Resume: a run whose `summary.json` exists is not redone; an interrupted or failed run is
restarted from its last `checkpoint-*` (the metrics logged after that checkpoint are dropped)
or, without one, from scratch. A run folder made with a different command is never reused:
use another `--output_dir`.

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

from rlsd.compare.command import CompareArguments, main
from rlsd.compare.estimate import estimate_seconds
from rlsd.compare.runner import Run, check_folder, execute, load_runs, prepare, run_all
from rlsd.compare.variants import (
    BUILTIN_VARIANTS,
    PRESETS,
    RESERVED,
    Preset,
    parse_variants,
    variant_flags,
)

__all__ = [
    "BUILTIN_VARIANTS",
    "PRESETS",
    "RESERVED",
    "CompareArguments",
    "Preset",
    "Run",
    "check_folder",
    "estimate_seconds",
    "execute",
    "load_runs",
    "main",
    "parse_variants",
    "prepare",
    "run_all",
    "variant_flags",
]
