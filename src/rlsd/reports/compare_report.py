"""The report of `rlsd compare`: a results table and curves over several algorithms and seeds.

Everything here but `write_report` (which writes the report folder) is a pure function of
loaded metrics, so the table can be recomputed from
`runs.jsonl` and unit-tested on hand-made numbers. The shape used throughout is

    runs: {variant: {seed: [record, ...]}}

where a record is one line of a run's `metrics.jsonl` (a training log with `reward`,
`entropy`, `step_time`, `rlsd/*`, `time/*`, or an evaluation log with `eval/*`), each with
its optimiser `step`.

Choices (documented in `results.md` too):
- "final accuracy" is `eval/accuracy` (sampled, held-out) at each seed's last evaluation;
  the spread is the sample standard deviation over seeds (n - 1; 0 for one seed).
- "best accuracy" is the maximum of the seed-mean curve (not the mean of per-seed maxima,
  which noise biases upwards).
- "steps to reach" is the first evaluation step at which a variant's seed-mean accuracy is at
  least the baseline's (GRPO's) final seed-mean accuracy: the paper's speed-up measure
  ("RLSD at 200 steps beats GRPO at 400"). Its resolution is `eval_every`; the baseline's
  own value can be earlier than its last step when its curve is not monotone.
- The RLSD weight statistics are means over the training steps where they were logged, i.e.
  where the teacher ran (they are absent on steps it was skipped: lambda = 0 or no A != 0).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

Runs = dict[str, dict[int, list[dict[str, Any]]]]

ACCURACY = "eval/accuracy"
WEIGHT_STATS = (
    ("rlsd/lambda", "lambda"),
    ("rlsd/w_moved_ratio_reweighted", "w moved (A != 0 tokens)"),
    ("rlsd/adv_hat_over_adv", "mean abs(A_hat)/abs(A)"),
    ("rlsd/clip_low_ratio_all", "clip low (all tokens)"),
    ("rlsd/clip_high_ratio_all", "clip high (all tokens)"),
    ("rlsd/w_q10", "raw w q10"),
    ("rlsd/w_q50", "raw w q50"),
    ("rlsd/w_q90", "raw w q90"),
    ("rlsd/adv_hat_over_adv_pos", "abs(A_hat)/abs(A), A > 0"),
    ("rlsd/adv_hat_over_adv_neg", "abs(A_hat)/abs(A), A < 0"),
    ("rlsd/teacher_skipped_ratio", "teacher skipped"),
)
# The verdict against the baseline: a paired difference (same seed) is "beyond the seeds'
# spread" when its mean is more than this many standard errors away from 0.
PAIRED_SE = 2.0


# ------------------------------------------------------------------------------- loading
def _kind(record: dict[str, Any]) -> str:
    if any(k.startswith("eval/") for k in record):
        return "eval"
    return "end" if "train_runtime" in record else "train"  # the trainer's closing log


def dedupe(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per (step, kind), the last written winning, sorted by step.

    A run resumed from a checkpoint logs the checkpoint's evaluation again and may repeat
    steps written before the interruption; the later lines are the ones that count.
    """
    latest: dict[tuple[int, str], dict[str, Any]] = {}
    for record in records:
        if isinstance(record.get("step"), (int, float)):
            latest[(int(record["step"]), _kind(record))] = record
    return [latest[k] for k in sorted(latest)]


def write_runs_jsonl(runs: Runs, path: str | Path) -> Path:
    """One line per metrics record, tagged with its `variant` and `seed`."""
    path = Path(path)
    with path.open("w") as f:
        for variant, seeds in runs.items():
            for seed, records in sorted(seeds.items()):
                for record in records:
                    f.write(json.dumps({"variant": variant, "seed": seed, **record}) + "\n")
    return path


def read_runs_jsonl(path: str | Path) -> Runs:
    """The inverse of `write_runs_jsonl` (variant order as first seen)."""
    runs: Runs = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            variant, seed = record.pop("variant"), int(record.pop("seed"))
            runs.setdefault(variant, {}).setdefault(seed, []).append(record)
    return runs


# ---------------------------------------------------------------------------- statistics
def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _std(values: list[float]) -> float:
    """Sample standard deviation (n - 1); 0 for a single value."""
    if len(values) < 2:
        return 0.0 if values else math.nan
    m = _mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def curve(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """`(steps, values)` of a numeric key over one run's records."""
    points = [(int(r["step"]), float(r[key])) for r in records if _is_number(r.get(key))]
    return [p[0] for p in points], [p[1] for p in points]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def seed_band(
    seeds: dict[int, list[dict[str, Any]]], key: str
) -> tuple[list[int], list[float], list[float], list[int]]:
    """Mean and sample std over seeds at every step any seed logged `key`.

    Returns `(steps, mean, std, count)`; `count` is how many seeds had the step (a run that
    stopped early contributes only the steps it reached).
    """
    by_step: dict[int, list[float]] = {}
    for records in seeds.values():
        for step, value in zip(*curve(records, key), strict=True):
            by_step.setdefault(step, []).append(value)
    steps = sorted(by_step)
    return (
        steps,
        [_mean(by_step[s]) for s in steps],
        [_std(by_step[s]) for s in steps],
        [len(by_step[s]) for s in steps],
    )


def steps_to_reach(steps: list[int], values: list[float], target: float) -> int | None:
    """The first step whose value is at least `target` (None if never reached)."""
    for step, value in zip(steps, values, strict=True):
        if value >= target - 1e-12:
            return step
    return None


def final_values(seeds: dict[int, list[dict[str, Any]]], key: str) -> list[float]:
    """Each seed's last logged value of `key` (seeds that never logged it are left out)."""
    out = []
    for records in seeds.values():
        _, values = curve(records, key)
        if values:
            out.append(values[-1])
    return out


def mean_over_steps(seeds: dict[int, list[dict[str, Any]]], key: str) -> float:
    """Mean of `key` over every training step of every seed where it was logged."""
    values = [v for records in seeds.values() for v in curve(records, key)[1]]
    return _mean(values)


def summarize(runs: Runs, baseline: str = "grpo") -> list[dict[str, Any]]:
    """One row per variant with the numbers of the results table (NaN or None when absent)."""
    target = math.nan
    base_steps = None
    if baseline in runs:
        target = _mean(final_values(runs[baseline], ACCURACY))
        steps, mean, _, _ = seed_band(runs[baseline], ACCURACY)
        base_steps = steps_to_reach(steps, mean, target) if math.isfinite(target) else None
    rows = []
    for variant, seeds in runs.items():
        finals = final_values(seeds, ACCURACY)
        steps, mean, _, _ = seed_band(seeds, ACCURACY)
        best_i = max(range(len(mean)), key=mean.__getitem__) if mean else None
        reach = steps_to_reach(steps, mean, target) if math.isfinite(target) else None
        ratio = None
        if reach is not None and base_steps:
            ratio = reach / base_steps
        elif reach == 0 and base_steps == 0:
            ratio = 1.0
        train_steps = [curve(r, "step_time")[0] for r in seeds.values()]
        row: dict[str, Any] = {
            "variant": variant,
            "seeds": len(seeds),
            "last_step": max((s[-1] for s in train_steps if s), default=None),
            "final_accuracy_mean": _mean(finals),
            "final_accuracy_std": _std(finals),
            "final_accuracy_per_seed": finals,
            "best_accuracy": mean[best_i] if best_i is not None else math.nan,
            "best_step": steps[best_i] if best_i is not None else None,
            "steps_to_baseline_final": reach,
            "steps_ratio_to_baseline": ratio,
            "final_greedy_accuracy_mean": _mean(final_values(seeds, "eval/greedy_accuracy")),
            "final_leak_rate_mean": _mean(final_values(seeds, "eval/leak_rate")),
            "final_context_leak_rate_mean": _mean(final_values(seeds, "eval/context_leak_rate")),
            "step_time_mean": mean_over_steps(seeds, "step_time"),
            "teacher_time_mean": mean_over_steps(seeds, "time/teacher"),
        }
        for key, _ in WEIGHT_STATS:
            row[key] = mean_over_steps(seeds, key)
        row.update(paired_difference(seeds, runs.get(baseline, {})))
        rows.append(row)
    return rows


def paired_difference(
    seeds: dict[int, list[dict[str, Any]]], baseline: dict[int, list[dict[str, Any]]]
) -> dict[str, Any]:
    """Final held-out accuracy minus the baseline's, seed by seed (the seeds both have): the
    mean, its standard error and the verdict (`beats`, `below`, or `within noise` when the
    mean is within `PAIRED_SE` standard errors of 0; `n/a` with fewer than 2 seeds)."""
    diffs = []
    for seed, records in seeds.items():
        mine, theirs = curve(records, ACCURACY)[1], curve(baseline.get(seed, []), ACCURACY)[1]
        if mine and theirs:
            diffs.append(mine[-1] - theirs[-1])
    n = len(diffs)
    mean = _mean(diffs)
    se = _std(diffs) / math.sqrt(n) if n > 1 else math.nan
    verdict = "n/a"
    if n > 1 and math.isfinite(se):
        if se == 0:
            verdict = "within noise" if mean == 0 else ("beats" if mean > 0 else "below")
        elif mean > PAIRED_SE * se:
            verdict = "beats"
        elif mean < -PAIRED_SE * se:
            verdict = "below"
        else:
            verdict = "within noise"
    return {"paired_diff_mean": mean, "paired_diff_se": se, "paired_n": n, "paired": verdict}


# ------------------------------------------------------------------------------ the table
def _pct(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.{digits}f}"


def _signed_pct(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:+.{digits}f}"


def _num(value: float | None, fmt: str = ".2f") -> str:
    return "n/a" if value is None or not math.isfinite(value) else format(value, fmt)


def format_table(rows: list[dict[str, Any]], baseline: str = "grpo") -> str:
    """The Markdown results table and the RLSD weight-statistics table."""
    # the sql task's leak measure (see rlsd.evaluation.context_beyond_answer), when logged
    context = any(math.isfinite(r.get("final_context_leak_rate_mean", math.nan)) for r in rows)
    head = (
        "| variant | seeds | final acc % (mean ± std) | best acc % (step) | "
        f"steps to {baseline} final | × {baseline} | final greedy % | final leak % | "
        + ("final context leak % | " if context else "")
        + f"paired Δ vs {baseline} (pp, ± se) | verdict | "
        + "s/step | teacher s/step |\n"
        + "|"
        + "---|" * (13 if context else 12)
        + "\n"
    )
    lines = []
    for r in rows:
        reach = r["steps_to_baseline_final"]
        reach_s = "not reached" if reach is None else str(reach)
        if reach is None and r["last_step"] is not None:
            reach_s = f"> {r['last_step']}"
        ratio = r["steps_ratio_to_baseline"]
        best_step = "" if r["best_step"] is None else f" ({r['best_step']})"
        lines.append(
            f"| {r['variant']} | {r['seeds']} | {_pct(r['final_accuracy_mean'])} ± "
            f"{_pct(r['final_accuracy_std'])} | {_pct(r['best_accuracy'])}{best_step} | "
            f"{reach_s} | {'n/a' if ratio is None else f'{ratio:.2f}'} | "
            f"{_pct(r['final_greedy_accuracy_mean'])} | {_pct(r['final_leak_rate_mean'])} | "
            + (f"{_pct(r['final_context_leak_rate_mean'])} | " if context else "")
            + f"{_signed_pct(r.get('paired_diff_mean'))} ± {_pct(r.get('paired_diff_se'))} | "
            + f"{r.get('paired', 'n/a')} | "
            + f"{_num(r['step_time_mean'])} | {_num(r['teacher_time_mean'])} |"
        )
    weights_head = (
        "| variant | " + " | ".join(label for _, label in WEIGHT_STATS) + " |\n"
        "|---|" + "---|" * len(WEIGHT_STATS) + "\n"
    )
    weight_lines = []
    for r in rows:
        if all(not math.isfinite(r[k]) for k, _ in WEIGHT_STATS):
            continue
        weight_lines.append(
            f"| {r['variant']} | " + " | ".join(_num(r[k], ".3f") for k, _ in WEIGHT_STATS) + " |"
        )
    out = head + "\n".join(lines) + "\n"
    if weight_lines:
        out += (
            "\nRLSD token-weight statistics (means over the training steps where the teacher "
            "ran; `w moved` = share of tokens with abs(w - 1) > 1e-3, `abs(A_hat)/abs(A)` = "
            "mean token multiplier, clip = share of tokens with w outside "
            "[1 - eps_w, 1 + eps_w]):\n\n" + weights_head + "\n".join(weight_lines) + "\n"
        )
    return out


# ------------------------------------------------------------------------------ the plot
PANELS = (
    (ACCURACY, "held-out accuracy (sampled)"),
    ("reward", "train reward"),
    ("eval/leak_rate", "held-out leak rate"),
    ("entropy", "policy entropy (nats)"),
)


def plot_compare(runs: Runs, out: str | Path, title: str = "") -> Path:
    """Four panels (accuracy, reward, leak rate, entropy), one line per variant, mean over
    seeds with a mean ± std band."""
    from matplotlib.figure import Figure

    out = Path(out)
    fig = Figure(figsize=(12, 8))
    axes = fig.subplots(2, 2, sharex=True)
    for ax, (key, label) in zip(axes.flat, PANELS, strict=True):
        for i, (variant, seeds) in enumerate(runs.items()):
            steps, mean, std, _ = seed_band(seeds, key)
            if not steps:
                continue
            color = f"C{i % 10}"
            marker = "o" if key.startswith("eval/") else None
            ax.plot(
                steps,
                mean,
                color=color,
                marker=marker,
                markersize=3,
                label=f"{variant} (n={len(seeds)})",
            )
            low = [m - s for m, s in zip(mean, std, strict=True)]
            high = [m + s for m, s in zip(mean, std, strict=True)]
            ax.fill_between(steps, low, high, color=color, alpha=0.18, linewidth=0)
        ax.set_title(label)
        if key != "entropy":  # rates and accuracies: keep 0 in view
            ax.set_ylim(bottom=0, top=max(ax.get_ylim()[1], 0.05))
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("optimiser step")
    axes[0][0].legend(loc="best", fontsize=8)
    fig.suptitle(title or "rlsd compare: mean over seeds, band = ± 1 std")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return out


WEIGHT_PANELS = (
    (("rlsd/w_q10", "rlsd/w_q50", "rlsd/w_q90"), "raw w: q10, q50, q90 (A != 0 tokens)"),
    (("rlsd/clip_low_ratio_all", "rlsd/clip_high_ratio_all"), "share clipped low / high (all)"),
    (
        ("rlsd/adv_hat_over_adv_pos", "rlsd/adv_hat_over_adv_neg"),
        "abs(A_hat)/abs(A): A > 0 (solid), A < 0 (dashed)",
    ),
    (("rlsd/delta_mean",), "mean delta (scored tokens)"),
)
_STYLES = ("-", "--", ":")


def plot_weights(runs: Runs, out: str | Path, title: str = "") -> Path | None:
    """What the teacher's weights did, per variant (mean over seeds): the spread of the raw
    `w`, the shares the clip cuts, the mean token multiplier for correct and incorrect
    responses, and `delta`. None (nothing written) when no variant logged them."""
    keys = {k for panel, _ in WEIGHT_PANELS for k in panel}
    logged = [
        v
        for v, seeds in runs.items()
        if any(k in r for rs in seeds.values() for r in rs for k in keys)
    ]
    if not logged:
        return None
    from matplotlib.figure import Figure

    out = Path(out)
    fig = Figure(figsize=(12, 8))
    axes = fig.subplots(2, 2, sharex=True)
    for ax, (panel, label) in zip(axes.flat, WEIGHT_PANELS, strict=True):
        for i, variant in enumerate(runs):
            if variant not in logged:
                continue
            for key, style in zip(panel, _STYLES):
                steps, mean, _, _ = seed_band(runs[variant], key)
                if steps:
                    name = variant if key == panel[0] else None
                    ax.plot(steps, mean, color=f"C{i % 10}", linestyle=style, label=name)
        ax.set_title(label)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("optimiser step")
    axes[0][0].legend(loc="best", fontsize=8)
    fig.suptitle(title or "rlsd compare: the teacher's token weights, mean over seeds")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return out


def write_report(
    output: Path, runs: Runs, baseline: str, command: str, settings: dict[str, Any]
) -> list[dict[str, Any]]:
    """A compare's report folder from its loaded runs (`{variant: {seed: records}}`):
    `runs.jsonl`, `results.md`, `curves.png`, `weights.png`, `command.txt` and `compare.json`
    (`settings`, whose `variant_flags` maps each variant to the flags that make it)."""
    loaded = {k: v for k, v in runs.items() if v}
    write_runs_jsonl(loaded, output / "runs.jsonl")
    rows = summarize(loaded, baseline)
    (output / "command.txt").write_text(command + "\n")
    (output / "compare.json").write_text(json.dumps(settings, indent=2, default=str) + "\n")
    if loaded:
        plot_compare(
            loaded,
            output / "curves.png",
            title=f"rlsd compare: {settings['task']}, mean over seeds, band = ± 1 std",
        )
        plot_weights(
            loaded,
            output / "weights.png",
            title=f"rlsd compare: {settings['task']}, the teacher's token weights, mean over seeds",
        )
    lines = [
        "# rlsd compare",
        "",
        f"Command: `{command}`",
        "",
        f"Task `{settings['task']}`, {settings['max_steps']} steps, "
        f"seeds 0..{settings['seeds'] - 1}, "
        f"{settings['num_eval']} held-out problems (sampled accuracy, temperature 1) every "
        f"{settings['eval_every']} steps. Variants (their only difference):",
        "",
        *[f"- `{name}`: `{flags}`" for name, flags in settings["variant_flags"].items()],
        "",
        format_table(rows, baseline),
        f"Final accuracy: each seed's last evaluation, mean ± sample std over seeds. Best: the "
        f"maximum of the seed-mean curve (its step). Steps to {baseline} final: the first "
        f"evaluation step where the seed-mean accuracy reaches {baseline}'s final seed-mean "
        f"accuracy (resolution: {settings['eval_every']} steps); × {baseline}: that step "
        f"divided by {baseline}'s own. s/step: mean `step_time` of the training steps "
        "(evaluation excluded). Paired Δ: each seed's final accuracy minus "
        f"{baseline}'s with the same seed, mean ± standard error; verdict `beats` / `below` "
        "only beyond 2 standard errors, else `within noise`. Raw per-seed metrics: "
        "`runs.jsonl`; curves: `curves.png`; the teacher's weights: `weights.png`.",
        "",
    ]
    (output / "results.md").write_text("\n".join(lines))
    return rows
