"""A peer measured beside us: ms-swift 4.6's GRPO and `--advantage_reweight rlsd` against
`rlsd train`'s `grpo` and `rlsd`, same tiny model, data, batch and G. Measured, never asserted;
not run by CI.

What runs (each a subprocess, one after another, `OMP_NUM_THREADS=--threads`, CPU, fp32):

- ours: `python -m rlsd.cli train --task arithmetic` with `--algorithm grpo`, `rlsd`, and
  `rlsd` with `--rlsd_skip_zero_advantage False` (`rlsd-noskip`: the teacher forward runs on
  every response, as ms-swift's does). RLSD runs hold lambda at `--lam` (no decay) and use the
  live policy as the teacher (`--teacher_sync_steps 1`), which is ms-swift's "dynamic
  self-distillation" mode.
- ms-swift: `swift rlhf --rlhf_type grpo` (as `python -m swift.cli.rlhf` with the swift venv's
  python), the shipped tiny model as a local folder (`--model_type llama --template rlsd_tiny`,
  registered by `swift_plugin.py`: BOS + the question, the text of the tiny model's own chat
  template), no vLLM (its
  `TransformersEngine` generates), a JSONL of the same 256+ arithmetic rows, and the ORM
  `rlsd_exact` from `swift_plugin.py` (rlsd's `exact` verifier). `grpo` reads a file without a
  `teacher_prompt` column (with one, ms-swift's GRPO turns into OPD-RL and runs the teacher);
  `rlsd` adds `--advantage_reweight rlsd --rlsd_lambda --lam` and the column, filled with
  exactly the teacher prompt rlsd builds (the task's `R:{privileged}\\n{question}`).

Both sides: 8 prompts x G=8 = 64 completions per step, one optimiser step per rollout
(`num_iterations 1`), `max_completion_length` from the task (40), temperature 1.0, no top-k/p,
lr 1e-4 constant, AdamW (fused, beta2 0.999, no weight decay), grad clip 1.0, `beta 0` (no KL,
no reference model), loss `dapo`, epsilon 0.2 / 0.28, seed 0. s/step is the median of
TRL's `step_time` (the wall time of `training_step`: rollout, scoring, teacher, loss and
backward; the optimiser step is outside it, in both) over every run's steps after the first
`--drop`, pooled over `--repeats`; CPU s/step the median of the process CPU seconds of the same
call (`cpu_step_time`, added by `rlsd_cpu_timed.py` on our side and `swift_plugin.py` on
theirs), which other processes on a shared machine disturb far less. The ms-swift plugin also
adds `time/*` parts the way rlsd logs its own, so the table of parts lines up.

The swift venv (outside the repo; ms-swift 4.6 pins `trl<1.0` and needs `msgspec`, which it
imports but does not declare)::

    python3 -m venv /tmp/swift-venv
    /tmp/swift-venv/bin/pip install torch==2.13.0
    /tmp/swift-venv/bin/pip install 'ms-swift==4.6.0' 'trl==0.29.1' msgspec

Run (from the repo root, with the rlsd venv; 7-10 minutes on a 2-core CPU with the defaults)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/peers/ms_swift.py \\
        --swift-python /tmp/swift-venv/bin/python

Writes `runs/bench-peers/ms-swift/results.json` and `results.md` (`--output`), and the run
folders and logs beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TINY = ROOT / "src" / "rlsd" / "models" / "tiny"
PARTS = ("generate", "verify", "old_logps", "teacher", "update")


# ------------------------------------------------------------------------------ data
def write_swift_data(folder: Path, n: int, seed: int) -> tuple[Path, Path, int]:
    """The arithmetic rows `rlsd train --task arithmetic --num_train n --seed seed` trains on,
    as ms-swift JSONL: `messages`, `solution` (the final answer) and, in the RLSD file,
    `teacher_prompt` (the teacher's user text rlsd builds for the same row)."""
    sys.path.insert(0, str(ROOT / "src"))
    from rlsd.tasks import get_task, make_rows
    from rlsd.teacher import teacher_prompt

    task = get_task("arithmetic")
    rows = make_rows(task.problems("train", n, seed))
    folder.mkdir(parents=True, exist_ok=True)
    plain, with_teacher = folder / "train_grpo.jsonl", folder / "train_rlsd.jsonl"
    with plain.open("w") as f_plain, with_teacher.open("w") as f_teacher:
        for row in rows:
            base = {"messages": row["prompt"], "solution": row["answer"]}
            f_plain.write(json.dumps(base) + "\n")
            teacher = teacher_prompt(row, template=task.teacher_template)
            base["teacher_prompt"] = teacher[-1]["content"]
            f_teacher.write(json.dumps(base) + "\n")
    return plain, with_teacher, task.max_completion_length


# ------------------------------------------------------------------------------ commands
def ours_cmd(name: str, out: Path, a: argparse.Namespace, max_len: int, n: int) -> list[str]:
    algorithm = "grpo" if name == "grpo" else "rlsd"
    cmd = [
        sys.executable, str(HERE / "rlsd_cpu_timed.py"),
        "--output_dir", str(out),
        "--task", "arithmetic", "--num_train", str(n), "--num_eval", "0", "--eval_every", "0",
        "--algorithm", algorithm,
        "--max_steps", str(a.steps),
        "--per_device_train_batch_size", str(a.batch), "--num_generations", str(a.num_generations),
        "--max_completion_length", str(max_len),
        "--temperature", "1.0",
        "--learning_rate", "1e-4", "--lr_scheduler_type", "constant",
        "--beta", "0", "--loss_type", "dapo", "--num_iterations", "1",
        "--save_strategy", "no", "--logging_steps", "1", "--seed", str(a.seed),
        "--dtype", "float32",
    ]  # fmt: skip
    if algorithm == "rlsd":
        cmd += [
            "--rlsd_lambda", str(a.lam), "--rlsd_lambda_decay_steps", "0",
            "--teacher_sync_steps", "1",
        ]  # fmt: skip
    if name == "rlsd-noskip":
        cmd += ["--rlsd_skip_zero_advantage", "False"]
    return cmd


def swift_cmd(
    name: str, out: Path, a: argparse.Namespace, max_len: int, data: tuple[Path, Path]
) -> list[str]:
    cmd = [
        a.swift_python, "-m", "swift.cli.rlhf",
        "--rlhf_type", "grpo",
        "--model", str(TINY), "--model_type", "llama", "--template", "rlsd_tiny",
        "--torch_dtype", "float32", "--tuner_type", "full", "--check_model", "false",
        "--use_vllm", "false",
        "--dataset", str(data[0] if name == "grpo" else data[1]), "--split_dataset_ratio", "0",
        "--external_plugins", str(HERE / "swift_plugin.py"), "--reward_funcs", "rlsd_exact",
        "--num_generations", str(a.num_generations),
        "--per_device_train_batch_size", str(a.batch),
        "--gradient_accumulation_steps", "1", "--steps_per_generation", "1",
        "--max_completion_length", str(max_len),
        "--temperature", "1.0", "--top_k", "-1", "--top_p", "1.0",
        "--learning_rate", "1e-4", "--lr_scheduler_type", "constant", "--warmup_ratio", "0",
        "--optim", "adamw_torch_fused", "--weight_decay", "0", "--adam_beta2", "0.999",
        "--max_grad_norm", "1.0",
        "--beta", "0", "--loss_type", "dapo", "--epsilon", "0.2", "--epsilon_high", "0.28",
        "--num_iterations", "1",
        "--max_steps", str(a.steps), "--logging_steps", "1",
        "--save_strategy", "no", "--eval_strategy", "no", "--report_to", "none",
        "--dataloader_num_workers", "0", "--seed", str(a.seed),
        "--output_dir", str(out),
    ]  # fmt: skip
    if name == "rlsd":
        cmd += ["--advantage_reweight", "rlsd", "--rlsd_lambda", str(a.lam)]
    return cmd


# ------------------------------------------------------------------------------ one run
def run(framework: str, name: str, cmd: list[str], folder: Path, threads: int) -> dict[str, Any]:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    env = dict(
        os.environ,
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        CUDA_VISIBLE_DEVICES="",
        TRL_EXPERIMENTAL_SILENCE="1",
    )
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    print(f"[{framework}/{name}] {folder}", flush=True)
    start = time.perf_counter()
    with (folder / "train.log").open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        raise SystemExit(f"[{framework}/{name}] exit {rc}; see {folder / 'train.log'}")
    # ours: metrics.jsonl in the run folder; ms-swift: <output_dir>/v0-<date>/logging.jsonl
    files = (
        [folder / "metrics.jsonl"] if framework == "ours" else sorted(folder.rglob("logging.jsonl"))
    )
    if not files or not files[0].exists():
        raise SystemExit(f"[{framework}/{name}] no metrics file under {folder}")
    steps = [json.loads(line) for line in files[0].read_text().splitlines() if line.strip()]
    steps = [s for s in steps if isinstance(s.get("step_time"), (int, float))]
    print(
        f"[{framework}/{name}] {len(steps)} steps in {wall:.0f} s, "
        f"peak RSS {usage.ru_maxrss / 1024:.0f} MiB",
        flush=True,
    )
    return {"wall_s": wall, "peak_rss_mib": usage.ru_maxrss / 1024, "steps": steps}


def summarise(runs: list[dict[str, Any]], drop: int) -> dict[str, Any]:
    """Medians over the steps after the first `drop` of each run, pooled across repeats."""
    kept = [s for r in runs for s in r["steps"][drop:]]
    if not kept:
        raise SystemExit(f"no steps left after dropping {drop} per run: raise --steps")

    def median(key: str) -> float:
        values = [s[key] for s in kept if isinstance(s.get(key), (int, float))]
        return statistics.median(values) if values else float("nan")

    def mean(key: str) -> float:
        values = [s[key] for s in kept if isinstance(s.get(key), (int, float))]
        return statistics.fmean(values) if values else float("nan")

    out = {
        "n_steps": len(kept),
        "s_per_step": median("step_time"),
        "cpu_s_per_step": median("cpu_step_time"),
        "parts": {p: median(f"time/{p}") for p in PARTS},
        "completion_length": mean("completions/mean_length"),
        "reward": mean("reward"),
        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
    }
    skipped = mean("rlsd/teacher_skipped_ratio")
    if skipped == skipped:  # not nan: ours, rlsd
        out["teacher_skipped_ratio"] = skipped
    return out


def wait_quiet(max_load: float | None, patience: float = 180.0) -> float:
    """Wait (at most `patience` s) for the 1-minute load average to drop under `max_load`."""
    deadline = time.monotonic() + patience
    while max_load is not None and os.getloadavg()[0] >= max_load and time.monotonic() < deadline:
        time.sleep(5)
    return os.getloadavg()[0]


def versions(python: str) -> dict[str, str]:
    code = (
        "import json, importlib.metadata as m\n"
        "names = ['ms-swift', 'trl', 'transformers', 'torch', 'rlsd']\n"
        "out = {}\n"
        "for n in names:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))"
    )
    res = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(res.stdout)


# ------------------------------------------------------------------------------ report
def fmt(x: float, digits: int = 3) -> str:
    return "n/a" if x != x else f"{x:.{digits}f}"


def report(results: dict[str, Any]) -> str:
    s = results["summary"]
    lines = [
        "| framework | GRPO s/step | RLSD s/step | RLSD/GRPO | GRPO CPU s/step | RLSD CPU s/step "
        "| RLSD/GRPO (CPU) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    labels = {
        ("ours", "rlsd"): "rlsd (ours, TRL {trl})",
        ("ours", "rlsd-noskip"): "rlsd (ours), teacher on every response",
        ("swift", "rlsd"): "ms-swift {swift} (TRL {trl})",
    }
    for (fw, rl), label in labels.items():
        if fw not in s or rl not in s[fw] or "grpo" not in s[fw]:
            continue
        v = results["versions"][fw]
        g, r = s[fw]["grpo"]["s_per_step"], s[fw][rl]["s_per_step"]
        gc, rc = s[fw]["grpo"]["cpu_s_per_step"], s[fw][rl]["cpu_s_per_step"]
        label = label.format(trl=v.get("trl", "?"), swift=v.get("ms-swift", "?"))
        lines.append(
            f"| {label} | {fmt(g)} | {fmt(r)} | {fmt(r / g, 2)} | {fmt(gc)} | {fmt(rc)} "
            f"| {fmt(rc / gc, 2)} |"
        )
    lines += [
        "",
        "s/step: median wall seconds of `training_step` (TRL's `step_time`); CPU s/step: median "
        "process CPU seconds of the same call, steadier than wall time on a shared machine.",
        "",
        "Median wall seconds of each part per step (`old_logps`: ms-swift's no-grad student "
        "forward for the old log-probs, which rlsd/TRL 1.16 skips with one optimiser step per "
        "rollout):",
        "",
        "| run | " + " | ".join(PARTS) + " | step | completion length | reward |",
        "| --- |" + " --- |" * (len(PARTS) + 3),
    ]
    for fw, runs in s.items():
        for name, summ in runs.items():
            parts = " | ".join(fmt(summ["parts"][p]) for p in PARTS)
            lines.append(
                f"| {fw}/{name} | {parts} | {fmt(summ['s_per_step'])} | "
                f"{fmt(summ['completion_length'], 1)} | {fmt(summ['reward'], 2)} |"
            )
    a = results["args"]
    lines += [
        "",
        f"{a['batch']} completions per step ({a['batch'] // a['num_generations']} prompts x "
        f"G={a['num_generations']}), {a['steps']} steps per run, first {a['drop']} dropped, "
        f"{a['repeats']} repeat(s), lambda {a['lam']}, OMP_NUM_THREADS={a['threads']}, CPU fp32 "
        f"({results['cpu_count']} cores; 1-min load average "
        f"{results['loadavg_1min']['before']:.1f} before, "
        f"{results['loadavg_1min']['after']:.1f} after).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--swift-python",
        default=os.environ.get("SWIFT_PYTHON", "/tmp/swift-venv/bin/python"),
        help="python of the venv with ms-swift 4.6 + trl 0.29.1 + msgspec (env SWIFT_PYTHON)",
    )
    p.add_argument("--frameworks", default="ours,swift", help="comma list of: ours, swift")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--drop", type=int, default=2, help="first steps of each run left out")
    p.add_argument("--repeats", type=int, default=2, help="runs of each configuration")
    p.add_argument("--batch", type=int, default=64, help="completions per step")
    p.add_argument("--num-generations", type=int, default=8)
    p.add_argument("--lam", type=float, default=0.5, help="RLSD lambda, held constant")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-noskip", action="store_true", help="skip ours' rlsd-noskip runs")
    p.add_argument(
        "--max-load",
        type=float,
        default=None,
        help="before each run, wait up to 3 min for the 1-min load average to drop under this",
    )
    p.add_argument("--output", default="runs/bench-peers/ms-swift")
    a = p.parse_args(argv)

    frameworks = [f.strip() for f in a.frameworks.split(",") if f.strip()]
    if set(frameworks) - {"ours", "swift"}:
        p.error("--frameworks takes ours and/or swift")
    out = Path(a.output)
    if not out.is_absolute():
        out = ROOT / out
    n_rows = max(256, a.steps * a.batch // a.num_generations)
    plain, with_teacher, max_len = write_swift_data(out / "data", n_rows, a.seed)

    configs: dict[str, list[str]] = {}
    if "ours" in frameworks:
        configs["ours"] = ["grpo", "rlsd"] + ([] if a.no_noskip else ["rlsd-noskip"])
    if "swift" in frameworks:
        if not Path(a.swift_python).exists():
            p.error(f"--swift-python {a.swift_python} not found (see the docstring for the venv)")
        configs["swift"] = ["grpo", "rlsd"]
    vers = {"ours": versions(sys.executable)}
    if "swift" in configs:
        vers["swift"] = versions(a.swift_python)
    print("versions:", json.dumps(vers), flush=True)

    raw: dict[str, dict[str, list[dict[str, Any]]]] = {fw: {} for fw in configs}
    load_before = os.getloadavg()[0]
    for rep in range(a.repeats):  # interleaved, so a slow spell of the machine hits all configs
        for fw, names in configs.items():
            for name in names:
                folder = out / f"{fw}-{name}-r{rep}"
                if fw == "ours":
                    cmd = ours_cmd(name, folder, a, max_len, n_rows)
                else:
                    cmd = swift_cmd(name, folder, a, max_len, (plain, with_teacher))
                load = wait_quiet(a.max_load)
                result = run(fw, name, cmd, folder, a.threads)
                result["loadavg_1min_at_start"] = load
                raw[fw].setdefault(name, []).append(result)

    results = {
        "date": time.strftime("%Y-%m-%d"),
        "args": vars(a),
        "versions": vers,
        "cpu_count": os.cpu_count(),
        "loadavg_1min": {"before": load_before, "after": os.getloadavg()[0]},
        "summary": {
            fw: {n: summarise(r, a.drop) for n, r in runs.items()} for fw, runs in raw.items()
        },
        "runs": {
            fw: {
                n: [
                    {
                        "loadavg_1min_at_start": r["loadavg_1min_at_start"],
                        "step_time": [s.get("step_time") for s in r["steps"]],
                        "cpu_step_time": [s.get("cpu_step_time") for s in r["steps"]],
                    }
                    for r in rs
                ]
                for n, rs in runs.items()
            }
            for fw, runs in raw.items()
        },
    }
    text = report(results)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(text + "\n")
    print()
    print(text)
    print(f"\nwrote {out / 'results.json'} and {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
