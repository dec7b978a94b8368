"""The credit page: one self-contained HTML file (inline CSS, no script, no network).

Problems whose rewards are mixed come first (in their original order, keeping their
numbers): only they have `A != 0`, hence credit to show. Problems whose group got equal
rewards follow under their own heading, greyed. Every token is a `<span>` coloured by its
relative credit `A_hat / A`, carrying its numbers as `data-*` attributes and a hover title.
A problem with images shows them on its left, beside its prompt and its responses' credit,
each embedded as a PNG data URI (`images`), so the page stays one file.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

from rlsd.reports.credit.colors import (
    LOG_RATIO_RANGE,
    NEUTRAL_COLOR,
    credit_color,
    diverging,
    log_ratio_color,
    text_color,
)
from rlsd.reports.credit.compute import is_mixed, summarize
from rlsd.reports.credit.images import data_uri, images_of, shrunk
from rlsd.reports.credit.style import CSS

_LEGEND_SWATCHES = 9
_IMAGE_SIDE = 192  # CSS pixels: the longest side of a problem's image on the page


def _fmt(x: float | None, spec: str = "+.3f") -> str:
    return "n/a" if x is None else format(x, spec)


def _token_span(sample: dict[str, Any], t: int, lam: float, eps_w: float) -> str:
    adv = sample["advantage"]
    credit = sample["credit"][t]
    bg = credit_color(credit, lam, eps_w)
    raw_bg = log_ratio_color(sample["log_ratio"][t], adv)
    title = (
        f"delta={sample['delta'][t]:+.4f}  w={sample['w'][t]:.4f}  "
        f"w_clip={sample['w_clip'][t]:.4f}  A_hat={sample['a_hat'][t]:+.4f}  "
        f"A_hat/A={_fmt(credit, '.4f')}"
    )
    token = sample["tokens"][t]
    token_id = sample["token_ids"][t]
    special = token.startswith("<") and token.endswith(">") and len(token) > 2
    shown = token.replace("\n", "\u21b5\n")
    cls = "tok special" if special else "tok"
    style = (
        f"background-color:{bg};color:{text_color(bg)};--raw:{raw_bg};--raw-fg:{text_color(raw_bg)}"
    )
    return (
        f'<span class="{cls}" style="{style}" title="{html.escape(title)}" '
        f'data-id="{token_id}" data-delta="{sample["delta"][t]:.6g}" '
        f'data-w="{sample["w"][t]:.6g}" data-w-clip="{sample["w_clip"][t]:.6g}" '
        f'data-a-hat="{sample["a_hat"][t]:.6g}" '
        f'data-credit="{"none" if credit is None else format(credit, ".6g")}" '
        f'data-color="{bg}">{html.escape(shown)}</span>'
    )


def _sample_html(sample: dict[str, Any], lam: float, eps_w: float) -> str:
    adv = sample["advantage"]
    cls = "sample ok" if sample["correct"] else "sample bad"
    note = "" if adv != 0 else " &middot; A = 0: equal rewards in the group, no credit"
    meta = (
        f'<div class="meta">reward {_fmt(sample["reward"], ".2f")} &middot; '
        f"A = {adv:+.3f}{note}</div>"
    )
    spans = "".join(_token_span(sample, t, lam, eps_w) for t in range(len(sample["tokens"])))
    return (
        f'<div class="{cls}" data-advantage="{adv:.6g}">{meta}'
        f'<div class="tokens">{spans}</div></div>'
    )


def _legend(lam: float, eps_w: float) -> str:
    half = lam * eps_w
    credit_sw, raw_sw = [], []
    for k in range(_LEGEND_SWATCHES):
        t = -1.0 + 2.0 * k / (_LEGEND_SWATCHES - 1)
        value, x = 1.0 + t * half, t * LOG_RATIO_RANGE
        credit_sw.append(
            f'<span class="sw" style="background-color:{diverging(t)}" '
            f'title="A_hat/A = {value:.3f}"></span>'
        )
        raw_sw.append(
            f'<span class="sw" style="background-color:{diverging(t)}" '
            f'title="sign(A)*delta = {x:+.2f}"></span>'
        )
    neutral = f'<span class="sw" style="background-color:{NEUTRAL_COLOR}"></span> A = 0'
    return (
        '<div class="legends">'
        '<div class="legend legend-credit"><b>A_hat / A</b> '
        f"{1 - half:.3f} (less weight) {''.join(credit_sw)} {1 + half:.3f} (more weight)"
        f" &nbsp; centre 1 = GRPO &middot; clip bounds: w in [{1 - eps_w:g}, {1 + eps_w:g}]"
        f" &rarr; A_hat/A in [{1 - half:.3f}, {1 + half:.3f}] &nbsp; {neutral}</div>"
        '<div class="legend legend-raw"><b>sign(A)&middot;delta</b> '
        f"{-LOG_RATIO_RANGE:+.1f} {''.join(raw_sw)} {LOG_RATIO_RANGE:+.1f} (nats, unclipped)"
        f" &nbsp; clip bounds log(1&minus;eps_w) = {math.log1p(-eps_w):+.3f}, "
        f"log(1+eps_w) = {math.log1p(eps_w):+.3f} &nbsp; {neutral}</div>"
        "</div>"
    )


def _images_html(record: dict[str, Any], images: list[Any]) -> str:
    """The problem's images, each scaled to `_IMAGE_SIDE` on its longest side (small ones
    drawn pixel for pixel), as `<img>` elements with data URIs."""
    figures = []
    for k, image in enumerate(images):
        width, height = shrunk(image).size
        scale = _IMAGE_SIDE / max(width, height, 1)
        pixelated = " pixelated" if scale > 1 else ""
        figures.append(
            f'<img class="problem-image{pixelated}" src="{data_uri(image)}" '
            f'width="{round(width * scale)}" height="{round(height * scale)}" '
            f'alt="image {k + 1} of problem {record["index"] + 1} ({width}x{height})">'
        )
    caption = f"image{'s' * (len(images) != 1)}: student and teacher see the same"
    return f'<figure class="images">{"".join(figures)}<figcaption>{caption}</figcaption></figure>'


def _problem_html(
    record: dict[str, Any], lam: float, eps_w: float, images: list[Any] | None = None
) -> str:
    esc = html.escape
    privileged = record["privileged"]
    shown_privileged = (
        esc(privileged) if privileged is not None else "(whole teacher_prompt column)"
    )
    priv_box = (
        '<div class="box teacher-only"><div class="label">Privileged context &mdash; teacher only'
        " (the student never sees it)</div>"
        f'<div class="mono">{shown_privileged}</div>'
        f'<details><summary>full teacher prompt</summary><pre class="mono">'
        f"{esc(record['teacher_prompt'])}</pre></details></div>"
    )
    answer = (
        "" if record["answer"] is None else f" &middot; reference answer: {esc(record['answer'])}"
    )
    prompt_box = (
        '<div class="box"><div class="label">Student prompt</div>'
        f'<div class="mono">{esc(record["prompt"])}</div></div>'
    )
    columns = []
    for ok, title in ((True, "Correct"), (False, "Incorrect")):
        chosen = [s for s in record["samples"] if s["correct"] == ok]
        body = (
            "".join(_sample_html(s, lam, eps_w) for s in chosen) or '<div class="empty">none</div>'
        )
        columns.append(f'<div class="col"><h3>{title} ({len(chosen)})</h3>{body}</div>')
    rewards = ", ".join(_fmt(s["reward"], ".2g") for s in record["samples"])
    body = (
        f'<div class="context">{prompt_box}{priv_box}</div>'
        f'<div class="cols">{"".join(columns)}</div>'
    )
    if images:
        body = f'<div class="with-images">{_images_html(record, images)}<div>{body}</div></div>'
    return (
        f'<section class="problem" id="problem-{record["index"]}">'
        f"<h2>Problem {record['index'] + 1}{answer} &middot; rewards [{esc(rewards)}]</h2>"
        f"{body}</section>"
    )


def _problems_html(
    records: Sequence[dict[str, Any]],
    lam: float,
    eps_w: float,
    images: Sequence[Sequence[Any] | None] | None = None,
) -> str:
    """Mixed-reward problems first, then the equal-reward ones, each group under a heading."""
    mixed = [r for r in records if is_mixed(r)]
    equal = [r for r in records if not is_mixed(r)]
    groups = (
        (mixed, "mixed-rewards", "mixed rewards: RLSD moves credit within these responses"),
        (equal, "equal-rewards", "equal rewards: A = 0 for every response, no gradient, no credit"),
    )
    return "".join(
        f'<h2 class="group" id="{anchor}">{len(chosen)} problem{"s" * (len(chosen) != 1)} with '
        f"{title}</h2>"
        + "".join(_problem_html(r, lam, eps_w, images_of(images, r)) for r in chosen)
        for chosen, anchor, title in groups
        if chosen
    )


def _summary_rows(meta: dict[str, Any], summary: dict[str, Any]) -> list[tuple[str, str]]:
    lam, eps_w = float(meta["lam"]), float(meta["eps_w"])

    def pct(key: str) -> str:
        return _fmt(summary.get(key), ".1%")

    sampling = f"{meta.get('group_size', '?')}, {meta.get('temperature', '?')}, "
    sampling += f"{meta.get('seed', '?')}"
    return [
        ("model", str(meta.get("model", "?"))),
        ("task / data", str(meta.get("task", "?"))),
        ("lambda, eps_w", f"{lam:g}, {eps_w:g}"),
        ("group size, temperature, seed", sampling),
        (
            "problems (with mixed rewards, shown first)",
            f"{summary.get('num_problems', 0)} ({summary.get('mixed_groups', 0)})",
        ),
        ("sampled accuracy", _fmt(summary.get("accuracy"), ".3f")),
        (
            "tokens with w clipped, of those with A != 0",
            f"{pct('clip_ratio')} (low {pct('clip_low_ratio_reweighted')}, "
            f"high {pct('clip_high_ratio_reweighted')})",
        ),
        (
            "tokens with w clipped, of all response tokens",
            f"{pct('clip_ratio_all')} (low {pct('clip_low_ratio_all')}, "
            f"high {pct('clip_high_ratio_all')})",
        ),
        (
            "tokens with w_clip != 1, of those with A != 0 / of all",
            f"{pct('w_moved_ratio_reweighted')} / {pct('w_moved_ratio_all')}",
        ),
        ("mean |A_hat| / |A|", _fmt(summary.get("adv_hat_over_adv"), ".4f")),
        ("mean delta", _fmt(summary.get("delta_mean"), "+.4f")),
    ]


def render_html(
    records: Sequence[dict[str, Any]],
    meta: dict[str, Any],
    images: Sequence[Sequence[Any] | None] | None = None,
) -> str:
    """The self-contained credit page (inline CSS, no script, no external resource).

    `meta` needs `lam` and `eps_w`; `model`, `task`, `group_size`, `temperature`, `seed` and
    a `summary` (from `summarize`) are shown when present. `images`: each row's images (PIL
    images or paths, a list or None per row, in the rows' order as `compute_credit` got
    them), shown beside their problem as embedded PNGs."""
    esc = html.escape
    lam, eps_w = float(meta["lam"]), float(meta["eps_w"])
    summary = meta.get("summary") or summarize(records, lam, eps_w)
    table = "".join(
        f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in _summary_rows(meta, summary)
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>RLSD credit: {esc(str(meta.get('model', '')))}</title><style>{CSS}</style>"
        "</head><body>"
        '<input type="radio" name="view" id="view-credit" checked hidden>'
        '<input type="radio" name="view" id="view-raw" hidden>'
        "<header><h1>RLSD credit: which tokens the self-teacher credits and blames</h1>"
        "<p>Each response is coloured token by token by its relative credit A_hat / A = "
        "(1 &minus; lambda) + lambda &middot; clip(w), w = exp(sign(A) &middot; delta), "
        "delta = log p_teacher &minus; log p_student. Red: more weight than GRPO's uniform A "
        "(more credit on a correct answer, more blame on a wrong one); blue: less. "
        "The teacher is the same model shown the privileged context. Hover a token for "
        "delta, w and A_hat. Problems whose rewards are mixed come first: only they get "
        "credit.</p>"
        f'<table class="summary">{table}</table>'
        '<div class="views">View: <label for="view-credit">A_hat / A (clipped, what '
        'training uses)</label><label for="view-raw">sign(A)&middot;delta (unclipped '
        "evidence)</label></div></header>"
        f"{_legend(lam, eps_w)}"
        f"<main>{_problems_html(records, lam, eps_w, images)}</main>"
        "</body></html>\n"
    )
