"""The runs of `rlsd compare`: one `rlsd train` subprocess per (variant, seed), each in its own
folder, resumed from its last checkpoint, refused if an earlier compare made it differently."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any


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


def run_all(runs: list[Run], jobs: int) -> dict[str, str]:
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
