"""Training curves of one run folder as a PNG (a bare matplotlib `Figure`: no pyplot, no
backend switched, nothing global changed)."""

from __future__ import annotations

import json
from pathlib import Path

from matplotlib.figure import Figure


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return [p[0] for p in points], [p[1] for p in points]


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Train reward and held-out accuracy against optimiser steps."""
    records = read_metrics(run_dir)
    out = Path(out or Path(run_dir) / "curves.png")
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for key, label, style in (
        ("reward", "train reward", "-"),
        ("eval/accuracy", "held-out accuracy (sampled)", "o-"),
        ("eval/greedy_accuracy", "held-out accuracy (greedy)", "s--"),
    ):
        xs, ys = series(records, key)
        if xs:
            ax.plot(xs, ys, style, label=label, markersize=4)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("reward / accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(Path(run_dir).name)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return out
