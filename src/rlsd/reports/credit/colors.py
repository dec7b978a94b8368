"""The credit page's colour scale, shared by the page and the picture.

A diverging map (ColorBrewer RdBu, 5 classes) centred at 1 = GRPO's uniform credit: blue =
less weight than GRPO, white = the same, red = more. Tokens of responses with `A = 0` get a
neutral grey: they have no gradient, hence no credit to colour.
"""

from __future__ import annotations

import math

STOPS = ("#2166ac", "#92c5de", "#f7f7f7", "#f4a582", "#b2182b")
NEUTRAL_COLOR = "#e4e4e4"  # tokens of A = 0 responses
LOG_RATIO_RANGE = 1.0  # the unclipped view saturates at |sign(A) * delta| = 1 nat


def _rgb(hex_color: str) -> tuple[int, int, int]:
    return int(hex_color[1:3], 16), int(hex_color[3:5], 16), int(hex_color[5:7], 16)


def diverging(t: float) -> str:
    """Hex colour of `t` in `[-1, 1]` (clamped; NaN is the centre) on the RdBu map."""
    t = 0.0 if math.isnan(t) else min(1.0, max(-1.0, t))
    pos = (t + 1.0) / 2.0 * (len(STOPS) - 1)
    k = min(int(pos), len(STOPS) - 2)
    frac = pos - k
    a, b = _rgb(STOPS[k]), _rgb(STOPS[k + 1])
    return "#" + "".join(f"{round(x + (y - x) * frac):02x}" for x, y in zip(a, b, strict=True))


def credit_color(credit: float | None, lam: float, eps_w: float) -> str:
    """The background of a token with relative credit `A_hat / A` (None: `A = 0`).

    The map spans the reachable range `[1 - lam * eps_w, 1 + lam * eps_w]`, centred at 1."""
    if credit is None:
        return NEUTRAL_COLOR
    half = lam * eps_w
    return diverging((credit - 1.0) / half if half > 0 else 0.0)


def log_ratio_color(log_ratio: float, advantage: float) -> str:
    """The background of a token in the unclipped view: `sign(A) * delta` over +-1 nat."""
    if advantage == 0:
        return NEUTRAL_COLOR
    return diverging(log_ratio / LOG_RATIO_RANGE)


def text_color(background: str) -> str:
    """Black or white, whichever reads better on `background`."""
    r, g, b = _rgb(background)
    return "#ffffff" if 0.299 * r + 0.587 * g + 0.114 * b < 128 else "#111111"
