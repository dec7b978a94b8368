"""The credit page: which tokens of each sampled response RLSD credits or blames (`rlsd credit`).

For a checkpoint and a few problems this samples a group of `G` responses per prompt (the
student prompt, no privileged context), verifies them, and computes exactly what the trainer
computes for one rollout batch (spec sections 1-2):

- `A`, the group advantage (`group_advantages`);
- `delta[t] = logp_teacher[t] - logp_student[t]`, the teacher being the same network shown the
  privileged context (`rlsd.teacher.teacher_input_ids`), with the sampled ids appended as is;
- `w[t] = exp(sign(A) * delta[t])` and `A_hat[t]` (`rlsd_token_advantages`).

It writes a self-contained HTML page (inline CSS, no script, no network), a PNG of a few
responses for READMEs, and the numbers as JSON. Tokens are coloured by the relative credit
`A_hat / A = (1 - lam) + lam * clip(w)`, on a diverging map centred at 1: red where RLSD puts
more weight than GRPO would (more credit on a correct answer, more blame on a wrong one),
blue where it puts less. A CSS-only switch shows the unclipped evidence `sign(A) * delta`.

Simplifications, and why:
- One problem at a time: its `G` samples share one student prompt and one teacher prompt, so
  no prompt padding is needed and the plain forward's positions are those of generation.
- Log-probs come from the plain model forward (`log_softmax(logits / temperature)` at the
  sampled tokens, float32), not TRL's fused path; the sampling policy is the scored policy,
  so `logp_student` is the spec's rollout-time log-prob.
- A `None` reward (an unscorable completion) becomes NaN, hence `A = 0`, as in the trainer.
"""

from __future__ import annotations

import argparse
import html
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from rlsd.objectives import group_advantages, rlsd_stats, rlsd_token_advantages
from rlsd.prompts import is_conversational, tokenize_prompts
from rlsd.teacher import DEFAULT_TEACHER_TEMPLATE, privileged_text, teacher_input_ids

__all__ = [
    "NEUTRAL_COLOR",
    "compute_credit",
    "credit_color",
    "main",
    "render_html",
    "render_png",
    "summarize",
]

RewardFn = Callable[..., list[float | None]]

# A diverging map (ColorBrewer RdBu, 5 classes): blue = less weight, white = 1, red = more.
_STOPS = ("#2166ac", "#92c5de", "#f7f7f7", "#f4a582", "#b2182b")
NEUTRAL_COLOR = "#e4e4e4"  # tokens of A = 0 responses: no gradient, no credit to colour
LOG_RATIO_RANGE = 1.0  # the unclipped view saturates at |sign(A) * delta| = 1 nat
_W_LOG_CAP = 30.0  # raw w is stored as exp(min(x, 30)) so the JSON stays finite (as rlsd_stats)
_LEGEND_SWATCHES = 9


# --------------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------------


def _sampled_logps(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, T: int, temperature: float
) -> torch.Tensor:
    """`[B, T]` float32 log-probs of the last `T` ids of `input_ids` `[B, P + T]`."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    logits = logits[:, -T - 1 : -1].float()  # position P - 1 + t predicts completion token t
    if temperature > 0:
        logits = logits / temperature
    logp = torch.log_softmax(logits, dim=-1)
    return logp.gather(-1, input_ids[:, -T:, None]).squeeze(-1)


def _completion_mask(completion_ids: torch.Tensor, eos_token_id: int | None) -> torch.Tensor:
    """`[G, T]` long: 1 up to and including the first EOS (as TRL masks completions)."""
    if eos_token_id is None:
        return torch.ones_like(completion_ids)
    is_eos = completion_ids == eos_token_id
    after_eos = (is_eos.long().cumsum(dim=1) - is_eos.long()) > 0  # strictly after the first
    return (~after_eos).long()


def _score(
    reward_fn: RewardFn, row: dict[str, Any], texts: list[str], group_size: int
) -> list[float]:
    prompt = row["prompt"]
    completions: list[Any] = [
        [{"role": "assistant", "content": t}] if is_conversational(prompt) else t for t in texts
    ]
    columns = {k: [v] * group_size for k, v in row.items() if k != "prompt"}
    rewards = reward_fn(prompts=[prompt] * group_size, completions=completions, **columns)
    return [float("nan") if r is None else float(r) for r in rewards]


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


@torch.no_grad()
def compute_credit(
    model,
    tokenizer,
    rows: Sequence[dict[str, Any]],
    reward_fn: RewardFn,
    group_size: int = 8,
    lam: float = 0.5,
    eps_w: float = 0.2,
    temperature: float = 1.0,
    teacher_template: str = DEFAULT_TEACHER_TEMPLATE,
    max_new_tokens: int = 40,
    seed: int = 0,
    teacher_instruction: str = "",
    negative_only: bool = False,
    success_threshold: float = 1.0,
) -> list[dict[str, Any]]:
    """Sample `group_size` responses per row and compute RLSD's per-token credit.

    Returns one record per row: `prompt` (the student's prompt text), `privileged`,
    `teacher_prompt` (the teacher's prompt text, decoded from its ids), `answer`, and
    `samples`, each with `text`, `reward` (None when unscorable), `advantage` (`A`),
    `correct` (`reward >= success_threshold`), and per token (`L` real tokens, EOS included):
    `tokens`, `token_ids`, `logp_student`, `logp_teacher`, `delta`, `log_ratio`
    (`sign(A) * delta`), `w` (raw, capped at e^30), `w_clip`, `a_hat` and `credit`
    (`A_hat / A`, None when `A = 0`). `model` is left in its previous train/eval mode and
    the global torch RNG is restored.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rng_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    sampling = temperature > 0
    lo, hi = math.log1p(-eps_w), math.log1p(eps_w)
    records = []
    try:
        for row in rows:
            prompt_ids = torch.tensor(tokenize_prompts(tokenizer, [row["prompt"]]), device=device)
            generated = model.generate(
                input_ids=prompt_ids,
                attention_mask=torch.ones_like(prompt_ids),
                max_new_tokens=max_new_tokens,
                do_sample=sampling,
                temperature=temperature if sampling else None,
                top_p=1.0,
                top_k=0,
                num_return_sequences=group_size,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            P = prompt_ids.shape[1]
            completion_ids_GT = generated[:, P:]
            T = completion_ids_GT.shape[1]
            mask_GT = _completion_mask(completion_ids_GT, tokenizer.eos_token_id)
            texts = [
                tokenizer.decode(ids[: int(m.sum())], skip_special_tokens=True)
                for ids, m in zip(completion_ids_GT, mask_GT, strict=True)
            ]
            rewards_G = _score(reward_fn, row, texts, group_size)
            adv_G = group_advantages(rewards_G, group_size).to(device)

            student_ids = torch.cat([prompt_ids.expand(group_size, -1), completion_ids_GT], 1)
            student_mask = torch.cat([torch.ones_like(student_ids[:, :P]), mask_GT], 1)
            logp_s_GT = _sampled_logps(model, student_ids, student_mask, T, temperature)
            teacher_ids, teacher_mask = teacher_input_ids(
                tokenizer,
                [row] * group_size,
                completion_ids_GT,
                mask_GT,
                teacher_template,
                teacher_instruction,
            )
            logp_t_GT = _sampled_logps(model, teacher_ids, teacher_mask, T, temperature)
            a_hat_GT = rlsd_token_advantages(
                adv_G, logp_s_GT, logp_t_GT, mask_GT, lam, eps_w, negative_only
            )

            samples = []
            for g in range(group_size):
                n = int(mask_GT[g].sum())
                adv = float(adv_G[g])
                sign = 0.0 if (negative_only and adv >= 0) else math.copysign(1.0, adv) * (adv != 0)
                ids = completion_ids_GT[g, :n].tolist()
                lp_s, lp_t = logp_s_GT[g, :n].tolist(), logp_t_GT[g, :n].tolist()
                delta = [t - s for s, t in zip(lp_s, lp_t, strict=True)]
                log_ratio = [sign * d for d in delta]
                a_hat = a_hat_GT[g, :n].tolist()
                samples.append(
                    {
                        "text": texts[g],
                        "reward": _finite(rewards_G[g]),
                        "advantage": adv,
                        "correct": bool(rewards_G[g] >= success_threshold),
                        "tokens": [tokenizer.decode([i]) for i in ids],
                        "token_ids": ids,
                        "logp_student": lp_s,
                        "logp_teacher": lp_t,
                        "delta": delta,
                        "log_ratio": log_ratio,
                        "w": [math.exp(min(x, _W_LOG_CAP)) for x in log_ratio],
                        "w_clip": [math.exp(min(max(x, lo), hi)) for x in log_ratio],
                        "a_hat": a_hat,
                        "credit": [a / adv if adv != 0 else None for a in a_hat],
                    }
                )
            teacher_prompt_len = teacher_ids.shape[1] - T
            records.append(
                {
                    "index": len(records),
                    "prompt": tokenizer.decode(prompt_ids[0], skip_special_tokens=True),
                    "privileged": _privileged_or_none(row),
                    "teacher_prompt": tokenizer.decode(
                        teacher_ids[0, :teacher_prompt_len], skip_special_tokens=True
                    ),
                    "answer": None if row.get("answer") is None else str(row.get("answer")),
                    "samples": samples,
                }
            )
    finally:
        torch.random.set_rng_state(rng_state)
        model.train(was_training)
    return records


def _privileged_or_none(row: dict[str, Any]) -> str | None:
    try:
        return privileged_text(row)
    except ValueError:  # a row with a whole `teacher_prompt` and no privileged column
        return None


def summarize(
    records: Sequence[dict[str, Any]], lam: float, eps_w: float, negative_only: bool = False
) -> dict[str, float]:
    """`rlsd_stats` (spec section 6) over every sample of `records`, plus counts.

    `clip_ratio` is the share of reweighted tokens whose raw `w` lies outside
    `[1 - eps_w, 1 + eps_w]`; `adv_hat_over_adv` the mean `|A_hat| / |A|` over tokens of
    responses with `A != 0`."""
    samples = [s for r in records for s in r["samples"]]
    if not samples:
        return {"num_problems": len(records), "num_samples": 0}
    T = max(1, max(len(s["token_ids"]) for s in samples))
    shape = (len(samples), T)
    logp_s, logp_t = torch.zeros(shape), torch.zeros(shape)
    mask = torch.zeros(shape)
    for i, s in enumerate(samples):
        n = len(s["token_ids"])
        logp_s[i, :n] = torch.tensor(s["logp_student"])
        logp_t[i, :n] = torch.tensor(s["logp_teacher"])
        mask[i, :n] = 1
    adv = torch.tensor([s["advantage"] for s in samples])
    stats = rlsd_stats(adv, logp_s, logp_t, mask, lam, eps_w, negative_only)
    out = {k.removeprefix("rlsd/"): v for k, v in stats.items()}
    out["clip_ratio"] = out["clip_low_ratio_reweighted"] + out["clip_high_ratio_reweighted"]
    out.update(
        num_problems=len(records),
        num_samples=len(samples),
        num_tokens=int(mask.sum()),
        accuracy=sum(s["correct"] for s in samples) / len(samples),
        mixed_groups=sum(any(s["advantage"] != 0 for s in r["samples"]) for r in records),
    )
    return out


# --------------------------------------------------------------------------------------------
# Colours
# --------------------------------------------------------------------------------------------


def _rgb(hex_color: str) -> tuple[int, int, int]:
    return int(hex_color[1:3], 16), int(hex_color[3:5], 16), int(hex_color[5:7], 16)


def _diverging(t: float) -> str:
    """Hex colour of `t` in `[-1, 1]` (clamped; NaN is the centre) on the RdBu map."""
    t = 0.0 if math.isnan(t) else min(1.0, max(-1.0, t))
    pos = (t + 1.0) / 2.0 * (len(_STOPS) - 1)
    k = min(int(pos), len(_STOPS) - 2)
    frac = pos - k
    a, b = _rgb(_STOPS[k]), _rgb(_STOPS[k + 1])
    return "#" + "".join(f"{round(x + (y - x) * frac):02x}" for x, y in zip(a, b, strict=True))


def credit_color(credit: float | None, lam: float, eps_w: float) -> str:
    """The background of a token with relative credit `A_hat / A` (None: `A = 0`).

    The map spans the reachable range `[1 - lam * eps_w, 1 + lam * eps_w]`, centred at 1."""
    if credit is None:
        return NEUTRAL_COLOR
    half = lam * eps_w
    return _diverging((credit - 1.0) / half if half > 0 else 0.0)


def log_ratio_color(log_ratio: float, advantage: float) -> str:
    """The background of a token in the unclipped view: `sign(A) * delta` over +-1 nat."""
    if advantage == 0:
        return NEUTRAL_COLOR
    return _diverging(log_ratio / LOG_RATIO_RANGE)


def _text_color(background: str) -> str:
    r, g, b = _rgb(background)
    return "#ffffff" if 0.299 * r + 0.587 * g + 0.114 * b < 128 else "#111111"


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#1a1a1a;
background:#fafafa}
header,.legends,main{max-width:1180px;margin:0 auto;padding:0 16px}
h1{font-size:1.35em;margin:16px 0 6px}
h2{font-size:1.05em;margin:0 0 8px}
.summary{border-collapse:collapse;font-size:.9em;margin:6px 0 10px}
.summary td{padding:2px 14px 2px 0}.summary td:first-child{color:#555}
.views{margin:6px 0}.views label{margin-right:10px;cursor:pointer;padding:2px 8px;
border:1px solid #bbb;border-radius:12px;color:#555}
#view-credit:checked ~ header label[for=view-credit],
#view-raw:checked ~ header label[for=view-raw]{background:#333;color:#fff;border-color:#333}
.legend{display:flex;align-items:center;gap:8px;font-size:.85em;margin:4px 0 12px}
.sw{display:inline-block;width:34px;height:18px;border:1px solid #bbb}
.legend-raw{display:none}
#view-raw:checked ~ .legends .legend-credit{display:none}
#view-raw:checked ~ .legends .legend-raw{display:flex}
#view-raw:checked ~ main .tok{background-color:var(--raw) !important;color:var(--raw-fg) !important}
.problem{background:#fff;border:1px solid #ddd;border-radius:6px;padding:12px;margin:14px 0}
.context{display:flex;gap:12px;flex-wrap:wrap;margin-bottom:10px}
.box{border:1px solid #ccc;border-radius:4px;padding:6px 8px;font-size:.9em;flex:1 1 300px}
.box .label{font-size:.75em;text-transform:uppercase;letter-spacing:.05em;color:#555}
.teacher-only{border:2px dashed #8a5a00;background:#fff8e6}
.teacher-only .label{color:#8a5a00;font-weight:bold}
.mono,.tokens{font-family:ui-monospace,'DejaVu Sans Mono',Menlo,Consolas,monospace}
.cols{display:grid;grid-template-columns:1fr 1fr;gap:12px}
.col h3{font-size:.9em;margin:0 0 6px}
.sample{border-left:4px solid #999;padding:4px 8px;margin:0 0 8px;background:#fcfcfc}
.sample.ok{border-left-color:#1a9850}.sample.bad{border-left-color:#d73027}
.meta{font-size:.8em;color:#444;margin-bottom:3px}
.tokens{white-space:pre-wrap;word-break:break-all;line-height:1.7;font-size:.95em}
.tok{padding:1px 0;border-radius:2px}
.special{font-size:.7em;vertical-align:middle;opacity:.85}
.empty{color:#888;font-size:.85em;font-style:italic}
details{font-size:.85em;margin-top:4px}
"""


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
        f"background-color:{bg};color:{_text_color(bg)};"
        f"--raw:{raw_bg};--raw-fg:{_text_color(raw_bg)}"
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
    return f'<div class="{cls}" data-advantage="{adv:.6g}">{meta}<div class="tokens">{spans}</div></div>'


def _legend(meta: dict[str, Any]) -> str:
    lam, eps_w = meta["lam"], meta["eps_w"]
    half = lam * eps_w
    credit_sw, raw_sw = [], []
    for k in range(_LEGEND_SWATCHES):
        t = -1.0 + 2.0 * k / (_LEGEND_SWATCHES - 1)
        value, x = 1.0 + t * half, t * LOG_RATIO_RANGE
        credit_sw.append(
            f'<span class="sw" style="background-color:{_diverging(t)}" '
            f'title="A_hat/A = {value:.3f}"></span>'
        )
        raw_sw.append(
            f'<span class="sw" style="background-color:{_diverging(t)}" '
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


def _problem_html(record: dict[str, Any], lam: float, eps_w: float) -> str:
    esc = html.escape
    privileged = record["privileged"]
    priv_box = (
        '<div class="box teacher-only"><div class="label">Privileged context &mdash; teacher only'
        " (the student never sees it)</div>"
        f'<div class="mono">{esc(privileged) if privileged is not None else "(whole teacher_prompt column)"}</div>'
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
    return (
        f'<section class="problem" id="problem-{record["index"]}">'
        f"<h2>Problem {record['index'] + 1}{answer} &middot; rewards [{esc(rewards)}]</h2>"
        f'<div class="context">{prompt_box}{priv_box}</div>'
        f'<div class="cols">{"".join(columns)}</div></section>'
    )


def render_html(records: Sequence[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The self-contained credit page (inline CSS, no script, no external resource).

    `meta` needs `lam` and `eps_w`; `model`, `task`, `group_size`, `temperature`, `seed` and
    a `summary` (from `summarize`) are shown when present."""
    esc = html.escape
    lam, eps_w = float(meta["lam"]), float(meta["eps_w"])
    summary = meta.get("summary") or summarize(records, lam, eps_w)
    rows = [
        ("model", meta.get("model", "?")),
        ("task / data", meta.get("task", "?")),
        ("lambda, eps_w", f"{lam:g}, {eps_w:g}"),
        (
            "group size, temperature, seed",
            f"{meta.get('group_size', '?')}, {meta.get('temperature', '?')}, {meta.get('seed', '?')}",
        ),
        (
            "problems (with mixed rewards)",
            f"{summary.get('num_problems', 0)} ({summary.get('mixed_groups', 0)})",
        ),
        ("sampled accuracy", _fmt(summary.get("accuracy"), ".3f")),
        (
            "tokens with w clipped",
            f"{_fmt(summary.get('clip_ratio'), '.1%')} (low {_fmt(summary.get('clip_low_ratio_reweighted'), '.1%')}, "
            f"high {_fmt(summary.get('clip_high_ratio_reweighted'), '.1%')}) of tokens with A != 0",
        ),
        ("mean |A_hat| / |A|", _fmt(summary.get("adv_hat_over_adv"), ".4f")),
        ("mean delta", _fmt(summary.get("delta_mean"), "+.4f")),
    ]
    table = "".join(f"<tr><td>{esc(k)}</td><td>{esc(str(v))}</td></tr>" for k, v in rows)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>RLSD credit: {esc(str(meta.get('model', '')))}</title><style>{_CSS}</style>"
        "</head><body>"
        '<input type="radio" name="view" id="view-credit" checked hidden>'
        '<input type="radio" name="view" id="view-raw" hidden>'
        "<header><h1>RLSD credit: which tokens the self-teacher credits and blames</h1>"
        "<p>Each response is coloured token by token by its relative credit A_hat / A = "
        "(1 &minus; lambda) + lambda &middot; clip(w), w = exp(sign(A) &middot; delta), "
        "delta = log p_teacher &minus; log p_student. Red: more weight than GRPO's uniform A "
        "(more credit on a correct answer, more blame on a wrong one); blue: less. "
        "The teacher is the same model shown the privileged context. Hover a token for "
        "delta, w and A_hat.</p>"
        f'<table class="summary">{table}</table>'
        '<div class="views">View: <label for="view-credit">A_hat / A (clipped, what '
        'training uses)</label><label for="view-raw">sign(A)&middot;delta (unclipped '
        "evidence)</label></div></header>"
        f"{_legend(meta)}"
        f"<main>{''.join(_problem_html(r, lam, eps_w) for r in records)}</main>"
        "</body></html>\n"
    )


# --------------------------------------------------------------------------------------------
# PNG
# --------------------------------------------------------------------------------------------


def _pick_for_png(records: Sequence[dict[str, Any]], per_kind: int) -> list[tuple[dict, dict]]:
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
) -> Path:
    """A few responses (`per_kind` correct, `per_kind` incorrect) as rows of coloured token
    boxes, coloured as on the page, with a colourbar. Returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LinearSegmentedColormap, Normalize
    from matplotlib.patches import Rectangle

    path = Path(path)
    picked = _pick_for_png(records, per_kind)
    lines: list[tuple[str, list[tuple[str, str]]]] = []  # (label, [(token, colour)])
    for record, s in picked:
        toks = [
            (tok, credit_color(c, lam, eps_w))
            for tok, c in zip(s["tokens"], s["credit"], strict=True)
        ]
        mark = "correct" if s["correct"] else "wrong"
        label = f"P{record['index'] + 1} {mark}\nA={s['advantage']:+.2f}"
        for k in range(0, max(1, len(toks)), wrap):
            lines.append((label if k == 0 else "", toks[k : k + wrap]))
    n_lines, n_cols = max(1, len(lines)), max([1] + [len(toks) for _, toks in lines])
    box, left, right, top, bottom = 0.26, 1.3, 0.3, 0.75, 0.95  # inches
    fig_w = max(7.5, left + right + box * n_cols)
    fig_h = top + bottom + 0.34 * n_lines
    fig = plt.figure(figsize=(fig_w, fig_h))
    ax = fig.add_axes((left / fig_w, bottom / fig_h, box * n_cols / fig_w, 0.34 * n_lines / fig_h))
    ax.set_xlim(0, n_cols)
    ax.set_ylim(n_lines, 0)
    ax.axis("off")
    for y, (label, toks) in enumerate(lines):
        if label:
            ax.text(-0.4, y + 0.5, label, ha="right", va="center", fontsize=8)
        for x, (tok, color) in enumerate(toks):
            ax.add_patch(Rectangle((x, y + 0.06), 0.94, 0.88, facecolor=color, edgecolor="none"))
            shown = {"\n": "\u21b5", " ": "\u00b7"}.get(tok, tok)
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
                color=_text_color(color),
            )
    if picked:
        first = picked[0][0]
        priv = first["privileged"] or "(teacher prompt)"
        fig.suptitle(
            f"RLSD relative credit A_hat/A per token (lambda={lam:g}, eps_w={eps_w:g})\n"
            f"student: {first['prompt']}   teacher only: {priv}"[:200],
            fontsize=9,
            family="monospace",
            y=1 - 0.08 / fig_h,
            va="top",
        )
    cmap = LinearSegmentedColormap.from_list("rlsd_rdbu", list(_STOPS))
    half = lam * eps_w if lam * eps_w > 0 else 1e-6
    cax = fig.add_axes((0.25, 0.5 / fig_h, 0.5, 0.13 / fig_h))
    bar = fig.colorbar(
        plt.cm.ScalarMappable(norm=Normalize(1 - half, 1 + half), cmap=cmap),
        cax=cax,
        orientation="horizontal",
    )
    bar.set_label("A_hat / A   (blue: less weight than GRPO, red: more; grey: A = 0)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rlsd credit",
        description="Per-token RLSD credit of sampled responses: an HTML page, a PNG and JSON.",
    )
    p.add_argument("model", nargs="?", default="", help="model folder (default: shipped tiny)")
    p.add_argument("--output", default="credit", help="output folder (default: ./credit)")
    p.add_argument("--task", default="arithmetic", help="built-in task (eval split) if no data")
    p.add_argument("--dataset_path", default=None, help="rows in rlsd's format (rlsd.data)")
    p.add_argument("--num_problems", type=int, default=6, help="problems to show")
    p.add_argument(
        "--privileged",
        default="solution",
        choices=("solution", "answer"),
        help="built-in task: worked solution or final answer as privileged context",
    )
    p.add_argument("--group_size", type=int, default=8, help="G, responses per prompt")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument(
        "--max_new_tokens",
        type=int,
        default=None,
        help="default: the task's max_completion_length, else 40",
    )
    p.add_argument("--lam", type=float, default=0.5, help="lambda (0.5: its peak, spec 2.4)")
    p.add_argument("--eps_w", type=float, default=0.2, help="clip half-width of w (spec 2.4)")
    p.add_argument("--negative_only", action="store_true", help="reweight only A < 0")
    p.add_argument(
        "--teacher_template",
        default=None,
        help="default: the task's template for built-in tasks, else the spec's",
    )
    p.add_argument("--teacher_instruction", default="")
    p.add_argument(
        "--reward_funcs",
        nargs="+",
        default=["exact"],
        help="verifier (the first is used; a `verifier` column routes per row)",
    )
    p.add_argument(
        "--success_threshold",
        type=float,
        default=1.0,
        help="reward at which a response counts as correct",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--png_samples", type=int, default=2, help="correct and incorrect responses each in the PNG"
    )
    return p


def main(argv: list[str]) -> dict[str, Any]:
    """`rlsd credit [MODEL] --output DIR ...`: writes DIR/credit.{html,png,json}."""
    args = _parser().parse_args(argv)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlsd.data import read_rows
    from rlsd.models import DEFAULT_MODEL_PATH
    from rlsd.tasks import get_task, make_rows
    from rlsd.verifiers import reward_funcs_for

    model_path = args.model or str(DEFAULT_MODEL_PATH)
    if args.dataset_path:
        rows = read_rows(args.dataset_path)[: args.num_problems]
        template = args.teacher_template or DEFAULT_TEACHER_TEMPLATE
        max_new_tokens = args.max_new_tokens or 40
        source = str(args.dataset_path)
    else:
        task = get_task(args.task)
        problems = task.problems("eval", args.num_problems, args.seed)
        rows = make_rows(problems, args.privileged)
        template = args.teacher_template or task.teacher_template
        max_new_tokens = args.max_new_tokens or task.max_completion_length
        source = f"{args.task} (eval split)"
    reward_fn = reward_funcs_for(rows, args.reward_funcs[:1])[0]

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    records = compute_credit(
        model,
        tokenizer,
        rows,
        reward_fn,
        group_size=args.group_size,
        lam=args.lam,
        eps_w=args.eps_w,
        temperature=args.temperature,
        teacher_template=template,
        max_new_tokens=max_new_tokens,
        seed=args.seed,
        teacher_instruction=args.teacher_instruction,
        negative_only=args.negative_only,
        success_threshold=args.success_threshold,
    )
    meta = {
        "model": model_path,
        "task": source,
        "lam": args.lam,
        "eps_w": args.eps_w,
        "negative_only": args.negative_only,
        "group_size": args.group_size,
        "temperature": args.temperature,
        "seed": args.seed,
        "teacher_template": template,
        "max_new_tokens": max_new_tokens,
    }
    meta["summary"] = summarize(records, args.lam, args.eps_w, args.negative_only)

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"html": out / "credit.html", "png": out / "credit.png", "json": out / "credit.json"}
    paths["html"].write_text(render_html(records, meta), encoding="utf-8")
    render_png(records, paths["png"], args.lam, args.eps_w, per_kind=args.png_samples)
    paths["json"].write_text(
        json.dumps({"meta": meta, "records": records}, indent=1) + "\n", encoding="utf-8"
    )
    for p in paths.values():
        print(p)
    return {"paths": {k: str(v) for k, v in paths.items()}, "summary": meta["summary"]}
