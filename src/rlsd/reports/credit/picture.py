"""The credit picture: a few responses as rows of token boxes, coloured as on the page, with
a colourbar; small enough for a README. A response to a problem with an image has the image
drawn on its left, beside its tokens (pixel for pixel, nearest-neighbour scaled).

Drawn on a bare `matplotlib.figure.Figure` (no `pyplot`), so rendering it neither switches
the caller's matplotlib backend nor keeps a figure open.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlsd.reports.credit.colors import STOPS, credit_color, text_color
from rlsd.reports.credit.images import images_of, shrunk

_SHOWN = {"\n": "\u21b5", " ": "\u00b7"}  # newline and space, made visible
_LINE = 0.34  # inches: one row of token boxes
_IMAGE_LINES = 3  # rows: a response shown with its image is at least this high


def _pick(records: Sequence[dict[str, Any]], per_kind: int) -> list[tuple[dict, dict]]:
    """Up to `per_kind` distinct correct and incorrect samples with A != 0, preferring
    problems that have both; falls back to any samples."""
    ordered = sorted(
        records,
        key=lambda r: (
            -min(
                sum(s["correct"] and s["advantage"] != 0 for s in r["samples"]),
                sum(not s["correct"] and s["advantage"] != 0 for s in r["samples"]),
            )
        ),
    )
    picked: list[tuple[dict, dict]] = []
    for ok in (True, False):
        pool, seen = [], set()
        for r in ordered:
            for s in r["samples"]:
                key = (r["index"], tuple(s["token_ids"]))
                if s["correct"] == ok and key not in seen:  # distinct responses only
                    seen.add(key)
                    pool.append((r, s))
        pool.sort(key=lambda rs: rs[1]["advantage"] == 0)  # stable: A != 0 first
        picked.extend(pool[:per_kind])
    return picked


def render_png(
    records: Sequence[dict[str, Any]],
    path: str | Path,
    lam: float = 0.5,
    eps_w: float = 0.2,
    per_kind: int = 2,
    wrap: int = 48,
    images: Sequence[Sequence[Any] | None] | None = None,
) -> Path:
    """A few responses (`per_kind` correct, `per_kind` incorrect) as rows of coloured token
    boxes, `wrap` tokens a row, coloured as on the page, with a colourbar. Returns the path.

    `images`: each row's images, as for `render_html`; a response's first image is drawn on
    the left of its rows, which are then at least `_IMAGE_LINES` high."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LinearSegmentedColormap, Normalize
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    path = Path(path)
    picked = _pick(records, per_kind)
    lines: list[tuple[str, list[tuple[str, str]]]] = []  # (label, [(token, colour)])
    pictures: list[tuple[int, Any]] = []  # (first line, image) of each response
    for record, s in picked:
        first_line, shown_images = len(lines), images_of(images, record)
        toks = [
            (tok, credit_color(c, lam, eps_w))
            for tok, c in zip(s["tokens"], s["credit"], strict=True)
        ]
        mark = "correct" if s["correct"] else "wrong"
        label = f"P{record['index'] + 1} {mark}\nA={s['advantage']:+.2f}"
        for k in range(0, max(1, len(toks)), wrap):
            lines.append((label if k == 0 else "", toks[k : k + wrap]))
        if shown_images:  # blank rows up to the image's height
            lines.extend(("", []) for _ in range(_IMAGE_LINES - (len(lines) - first_line)))
            pictures.append((first_line, shown_images[0]))
    n_lines, n_cols = max(1, len(lines)), max([1] + [len(toks) for _, toks in lines])
    box, left, right, top, bottom = 0.26, 1.3, 0.3, 0.75, 0.95  # inches
    image_column = _LINE * _IMAGE_LINES if pictures else 0.0
    left += image_column
    fig_w = max(7.5, left + right + box * n_cols)
    fig_h = top + bottom + _LINE * n_lines
    fig = Figure(figsize=(fig_w, fig_h))
    ax = fig.add_axes((left / fig_w, bottom / fig_h, box * n_cols / fig_w, _LINE * n_lines / fig_h))
    for first_line, image in pictures:  # in the left margin, top-aligned with the tokens
        side = image_column - 0.06
        y_top = bottom + _LINE * (n_lines - first_line) - 0.03  # inches from the bottom
        image_ax = fig.add_axes((0.1 / fig_w, (y_top - side) / fig_h, side / fig_w, side / fig_h))
        image_ax.imshow(shrunk(image), interpolation="nearest")
        image_ax.set_xticks([])
        image_ax.set_yticks([])
    ax.set_xlim(0, n_cols)
    ax.set_ylim(n_lines, 0)
    ax.axis("off")
    for y, (label, toks) in enumerate(lines):
        if label:
            ax.text(-0.4, y + 0.5, label, ha="right", va="center", fontsize=8)
        for x, (tok, color) in enumerate(toks):
            ax.add_patch(Rectangle((x, y + 0.06), 0.94, 0.88, facecolor=color, edgecolor="none"))
            shown = _SHOWN.get(tok, tok)
            if not shown.isprintable():  # control characters have no glyph
                shown = "\u25a1"
            if len(shown) > 2:  # special tokens such as <eos>
                shown = shown.strip("<>")[:3]
            ax.text(
                x + 0.47,
                y + 0.52,
                shown,
                ha="center",
                va="center",
                fontsize=8 if len(shown) == 1 else 5,
                family="monospace",
                color=text_color(color),
            )
    if picked:
        first = picked[0][0]
        priv = first["privileged"] or "(teacher prompt)"
        context = f"student: {' '.join(first['prompt'].split())}   teacher only: {priv}"
        fits = int(fig_w / 0.078)  # characters of 9-point monospace across the figure
        if len(context) > fits:
            context = context[: fits - 3] + "..."
        fig.suptitle(
            f"RLSD relative credit A_hat/A per token (lambda={lam:g}, eps_w={eps_w:g})\n" + context,
            fontsize=9,
            family="monospace",
            y=1 - 0.08 / fig_h,
            va="top",
        )
    cmap = LinearSegmentedColormap.from_list("rlsd_rdbu", list(STOPS))
    half = lam * eps_w if lam * eps_w > 0 else 1e-6
    cax = fig.add_axes((0.25, 0.5 / fig_h, 0.5, 0.13 / fig_h))
    bar = fig.colorbar(
        ScalarMappable(norm=Normalize(1 - half, 1 + half), cmap=cmap),
        cax=cax,
        orientation="horizontal",
    )
    bar.set_label("A_hat / A   (blue: less weight than GRPO, red: more; grey: A = 0)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    fig.savefig(path, dpi=130)
    return path
