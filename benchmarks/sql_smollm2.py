"""SmolLM2-135M-Instruct on the built-in text-to-SQL task: GRPO against RLSD, held-out
execution accuracy before and after. Measured, never asserted.

What a user with their own data would do, through the public CLI only:

1. `data`: `train.jsonl` and `eval.jsonl` from `rlsd.tasks.sql.SqlTask`, re-worded for a
   pretrained chat model: a system instruction, the schema as CREATE TABLE statements whose
   comments carry the data dictionary's column meanings (never the glossary's rules: the
   student is not told what *active*, *net*, *fiscal year* or the regions mean), and the
   question in plain English, built from the task's template and parameters. The held-out
   file is the task's eval split (`SqlTask.is_held_out`). `answer` and `privileged_context`
   are the gold SQL; `database` is the absolute path of `sales.db`; `verifier` is `sql`.
   `--tier easy` asks the same (template, parameters) without the glossary's rules (see
   `easy`): the base model scores 0% on the full tier, sampled and greedy, so GRPO has no
   signal there.
2. `probe`: `rlsd eval` of the base model on the held-out file (sampled and greedy).
3. `train`: `rlsd train --algorithm grpo|rlsd` per (algorithm, seed); the self-teacher's
   privileged context is the gold SQL plus the business documents BM25 retrieves
   (`--context_docs`, `--context_budget`). Each run's wall time goes to `timing.json`.
4. `report`: `results.md`, the table and every command that was run (`commands.txt`).

`all` does the four in order. Everything lands in `runs/sql-smollm2/` (git-ignored).

    OMP_NUM_THREADS=1 python benchmarks/sql_smollm2.py all
    OMP_NUM_THREADS=1 python benchmarks/sql_smollm2.py train --algorithms grpo --seeds 0
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import subprocess
import sys
import time
from pathlib import Path

from rlsd.tasks.sql import DB_PATH, DOCS_DIR, SqlTask

OUT = Path("runs/sql-smollm2")

SYSTEM = (
    "You write SQLite queries for the company's sales warehouse. "
    "Reply with one query in a ```sql block."
)

# The data dictionary's column meanings (sql_data/docs/data_dictionary.md) as SQL comments,
# compact: the prompt's length is most of the held-out evaluation's time on a CPU.
SCHEMA = """\
CREATE TABLE c( -- customers
 cid INT PRIMARY KEY,
 cc TEXT, -- country ISO code ('DE', 'US', ...)
 lo INT, -- month of the last order, YYMM (2403 = March 2024)
 st TEXT); -- CRM status 'A' or 'I', entered by hand
CREATE TABLE o( -- orders
 oid INT PRIMARY KEY, cid INT, pid INT,
 ym INT, -- order month, YYMM
 amt INT, -- amount in euros
 ret INT); -- 1 when returned, else 0
CREATE TABLE p(pid INT PRIMARY KEY, cat TEXT); -- cat: 'HW', 'SW' or 'SV'"""

# The easy tier's one worked example (a question the task never asks), so that the base model
# answers in SQL rather than in prose.
EXAMPLE = (
    "Example. Question: How many orders were returned?\n"
    "```sql\nselect count(*) from o where ret=1\n```"
)

CATEGORY_NAMES = {"HW": "hardware", "SW": "software licences", "SV": "services"}


def question(template: str, param: dict) -> str:
    """The plain-English question of one (template, parameters) of `SqlTask`."""
    where = f" in {param['place']}" if "place" in param else ""
    fy = f"FY{param['year']}" if "year" in param else ""
    if template == "active":
        return f"How many active customers are there{where}?"
    if template == "revenue":
        return f"What was the net revenue in {fy}?"
    if template == "revenue_place":
        return f"What was the net revenue{where} in {fy}?"
    if template == "revenue_category":
        return f"What was the net revenue of {CATEGORY_NAMES[param['cat']]} in {fy}?"
    if template == "gross_place":
        return f"What was the gross revenue{where} in {fy}?"
    raise ValueError(f"unknown sql template {template!r}")


def easy(task: SqlTask, template: str, param: dict) -> tuple[str, str]:
    """(question, gold SQL) of the easy tier: the same (template, parameters), asked without
    the glossary's hidden rules (no *active*, *net* or fiscal year: calendar years instead);
    only the reporting regions still need the documents."""
    where, _ = task._place(param["place"]) if "place" in param else ("", [])
    year = param.get("year")
    months = f"ym between {year}01 and {year}12" if year else ""
    place = f" in {param.get('place')}"
    if template == "active":
        return f"How many customers are there{place}?", f"select count(*) from c where {where}"
    if template == "revenue":
        return (
            f"What was the total amount of the orders of 20{year}?",
            f"select sum(amt) from o where {months}",
        )
    if template == "revenue_place":
        return (
            f"What was the total amount of the orders of customers{place} in 20{year}?",
            f"select sum(amt) from o join c using(cid) where {where} and {months}",
        )
    if template == "revenue_category":
        return (
            f"What was the total amount of the {CATEGORY_NAMES[param['cat']]} orders of 20{year}?",
            f"select sum(amt) from o join p using(pid) where cat='{param['cat']}' and {months}",
        )
    if template == "gross_place":
        return (
            f"How many orders did customers{place} place in 20{year}?",
            f"select count(*) from o join c using(cid) where {where} and {months}",
        )
    raise ValueError(f"unknown sql template {template!r}")


def make_rows(task: SqlTask, held_out: bool, tier: str) -> list[dict]:
    rows = []
    for template, param in task.combinations():
        if task.is_held_out(template, param) != held_out:
            continue
        if tier == "easy":
            text, gold = easy(task, template, param)
            text = f"{EXAMPLE}\n\nQuestion: {text}"
        else:
            text, gold = f"Question: {question(template, param)}", task.solve(template, param)[2]
        rows.append(
            {
                "prompt": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": f"{SCHEMA}\n\n{text}"},
                ],
                "answer": gold,
                "privileged_context": gold,
                "database": str(Path(DB_PATH).resolve()),
                "verifier": "sql",
                "template": template,
            }
        )
    random.Random(0).shuffle(rows)
    return rows


def write_data(tier: str) -> tuple[Path, Path]:
    task = SqlTask()
    paths = []
    for split, held_out in (("train", False), ("eval", True)):
        rows = make_rows(task, held_out, tier)
        path = OUT / f"{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"{path}: {len(rows)} rows")
        paths.append(path)
    return paths[0], paths[1]


def run(cmd: list[str], log: Path) -> float:
    """Runs one CLI command (logged to `commands.txt`), its output to `log`; wall seconds."""
    line = "OMP_NUM_THREADS=1 " + shlex.join(cmd)
    with open(OUT / "commands.txt", "a") as f:
        f.write(line + f"  > {log}\n")
    print(line, flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode:
        print(f"  failed (exit {proc.returncode}), see {log}", flush=True)
    return seconds


def model_path() -> str:
    from rlsd.models.gguf import smollm2_135m

    return str(smollm2_135m())


def probe(args: argparse.Namespace) -> None:
    out = OUT / "eval.json"
    cmd = [
        "rlsd", "eval", "--model_name_or_path", model_path(),
        "--dataset_path", str(OUT / "eval.jsonl"),
        "--num_generations", str(args.probe_samples),
        "--max_completion_length", str(args.max_completion_length),
        "--output_dir", str(OUT),
    ]  # fmt: skip
    seconds = run(cmd, OUT / "probe.log")
    if out.exists():
        metrics = json.loads(out.read_text())
        metrics["seconds"] = round(seconds, 1)
        out.write_text(json.dumps(metrics, indent=2) + "\n")
        print(json.dumps(metrics, indent=2))


def train(args: argparse.Namespace) -> None:
    timing_path = OUT / "timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.exists() else {}
    for seed in args.seeds:
        for algorithm in args.algorithms:
            name = f"{algorithm}-s{seed}"
            cmd = [
                "rlsd", "train",
                "--algorithm", algorithm,
                "--model_name_or_path", model_path(),
                "--dataset_path", str(OUT / "train.jsonl"),
                "--eval_dataset_path", str(OUT / "eval.jsonl"),
                "--context_docs", str(DOCS_DIR),
                "--context_budget", str(args.context_budget),
                "--output_dir", str(OUT / name),
                "--seed", str(seed),
                "--max_steps", str(args.steps),
                "--per_device_train_batch_size", "8",
                "--num_generations", "8",
                "--max_completion_length", str(args.max_completion_length),
                "--learning_rate", str(args.learning_rate),
                "--eval_every", str(args.eval_every),
                "--eval_num_samples", str(args.eval_samples),
                "--save_strategy", "no",
                "--gradient_checkpointing", "False",  # 135M parameters: memory is not short
            ]  # fmt: skip
            seconds = run(cmd, OUT / f"{name}.log")
            timing[name] = round(seconds, 1)
            timing_path.write_text(json.dumps(timing, indent=2) + "\n")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _read_run(folder: Path) -> tuple[list[dict], list[dict]]:
    """(training steps, held-out evaluations) of a run folder's `metrics.jsonl`."""
    steps, evals = [], []
    path = folder / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        m = json.loads(line)
        (evals if "eval/accuracy" in m else steps if "reward" in m else []).append(m)
    return steps, evals


def report(args: argparse.Namespace) -> None:
    timing_path = OUT / "timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.exists() else {}
    lines = [
        "# SmolLM2-135M-Instruct on the sql task: GRPO vs RLSD",
        "",
        "Held-out execution accuracy (47 questions, the task's eval split) before (step 0) and "
        "after the last step, sampled (temperature 1, one sample a question) and greedy; "
        "leak_rate and context_leak_rate of the last evaluation (leak_rate flags a 40-character "
        "span shared with the gold query, so a correct answer counts as a leak).",
        "",
    ]
    row = json.loads((OUT / "eval.jsonl").read_text().splitlines()[0])
    tier = "easy" if EXAMPLE in row["prompt"][-1]["content"] else "full"
    lines += [
        f"Tier of the training and held-out files: **{tier}**"
        + (
            " (the task's (template, parameters) and split, asked without the glossary's "
            "rules: calendar years, plain totals and counts; the regions still need the "
            "documents; one worked example in the prompt)."
            if tier == "easy"
            else " (the task's questions and gold SQL)."
        ),
        "",
    ]
    for name in ("probe-full.json", "probe.json", "eval.json"):
        if (OUT / name).exists():
            p = json.loads((OUT / name).read_text())
            passes = ", ".join(f"{k} {_pct(v)}" for k, v in p.items() if k.startswith("pass@"))
            lines += [
                f"Base-model probe `{name}` (`rlsd eval`, {p['num_problems']} held-out "
                f"questions): sampled {_pct(p['accuracy'])}, greedy "
                f"{_pct(p.get('greedy_accuracy'))}, {passes}, leak_rate "
                f"{_pct(p.get('leak_rate'))}, {p.get('seconds', '?')} s.",
                "",
            ]
    lines += [
        "| algorithm | seed | steps | sampled before -> after | greedy before -> after "
        "| leak_rate | context_leak_rate | train reward (mean; steps with a reward > 0) "
        "| s/step | minutes |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for folder in sorted(p for p in OUT.glob("*-s[0-9]*") if p.is_dir()):
        algorithm, seed = folder.name.rsplit("-s", 1)
        steps, evals = _read_run(folder)
        first, last = (evals[0], evals[-1]) if evals else ({}, {})
        done = (folder / "summary.json").exists()
        if not done:  # stopped: no evaluation after its last step
            last = {}
        rewards = [m["reward"] for m in steps]
        reward = (
            f"{sum(rewards) / len(rewards):.3f}; {sum(r > 0 for r in rewards)}" if rewards else "-"
        )
        step_times = [m["step_time"] for m in steps if "step_time" in m]
        per_step = f"{sum(step_times) / len(step_times):.1f}" if step_times else "-"
        minutes = f"{timing[folder.name] / 60:.1f}" if folder.name in timing else "(stopped)"
        lines.append(
            f"| {algorithm} | {seed} | {len(steps)} | {_pct(first.get('eval/accuracy'))} -> "
            f"{_pct(last.get('eval/accuracy'))} | {_pct(first.get('eval/greedy_accuracy'))} -> "
            f"{_pct(last.get('eval/greedy_accuracy'))} | {_pct(last.get('eval/leak_rate'))} "
            f"| {_pct(last.get('eval/context_leak_rate'))} | {reward} | {per_step} | {minutes} |"
        )
    missing = [
        f"{a}-s{seed}"
        for seed in args.seeds
        for a in args.algorithms
        if not (OUT / f"{a}-s{seed}").is_dir()
    ]
    if missing:
        lines += ["", f"Not run (out of time): {', '.join(missing)}."]
    commands = "".join(
        (OUT / name).read_text()
        for name in ("probe-full.cmd", "commands.txt")
        if (OUT / name).exists()
    )
    lines += ["", "## Commands", "", "```", commands.rstrip(), "```", ""]
    (OUT / "results.md").write_text("\n".join(lines))
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=["data", "probe", "train", "report", "all"])
    parser.add_argument("--tier", choices=["full", "easy"], default="full")
    parser.add_argument("--algorithms", nargs="+", default=["grpo", "rlsd"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--max_completion_length", type=int, default=96)
    parser.add_argument("--learning_rate", type=float, default=5e-6)
    parser.add_argument("--context_budget", type=int, default=512)
    parser.add_argument("--eval_every", type=int, default=0, help="0: before and after only")
    parser.add_argument("--eval_samples", type=int, default=1, help="sampled, per question")
    parser.add_argument("--probe_samples", type=int, default=4)
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    if args.stage != "report":
        with open(OUT / "commands.txt", "a") as f:
            f.write("OMP_NUM_THREADS=1 " + shlex.join(["python", *sys.argv]) + "\n")
    if args.stage in ("data", "all"):
        write_data(args.tier)
    if args.stage in ("probe", "all"):
        probe(args)
    if args.stage in ("train", "all"):
        train(args)
    if args.stage in ("report", "all"):
        report(args)


if __name__ == "__main__":
    sys.exit(main())
