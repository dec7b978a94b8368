"""The credit page: which tokens of each sampled response RLSD credits or blames (`rlsd credit`).

For a checkpoint and a few problems this samples a group of `G` responses per prompt (the
student prompt, no privileged context) with `rlsd.evaluation`'s sampler, verifies them, and
computes exactly what the trainer computes for one rollout batch (spec sections 1-2):

- `A`, the group advantage (`group_advantages`);
- `delta[t] = logp_teacher[t] - logp_student[t]`, the teacher being the same network shown the
  privileged context (`rlsd.teacher.teacher_prompt_batch`), with the sampled ids appended as is;
- `w[t] = exp(sign(A) * delta[t])` and `A_hat[t]` (`rlsd_token_advantages`).

It writes a self-contained HTML page (inline CSS, no script, no network), a PNG of a few
responses for READMEs, and the numbers as JSON. Tokens are coloured by the relative credit
`A_hat / A = (1 - lam) + lam * clip(w)`, on a diverging map centred at 1: red where RLSD puts
more weight than GRPO would (more credit on a correct answer, more blame on a wrong one),
blue where it puts less. A CSS-only switch shows the unclipped evidence `sign(A) * delta`.
Rows with images (a vision-language model and its processor) are scored with their images
and shown beside them, on the page as embedded PNGs; the JSON never holds an image.

One module per concern:

| module    | does                                                                  |
|-----------|-----------------------------------------------------------------------|
| `compute` | sampling, rewards, log-probs and credit (`compute_credit`, `summarize`) |
| `colors`  | the diverging colour scale shared by page and picture                 |
| `images`  | a problem's images as PNG data URIs (page) and pixels (picture)       |
| `page`    | the HTML page (`render_html`); its stylesheet is in `style`          |
| `picture` | the PNG (`render_png`)                                                |
| `command` | the `rlsd credit` command (`main`, `CreditArguments`, `run`, `load_model`) |
"""

from rlsd.reports.credit.colors import NEUTRAL_COLOR, credit_color, log_ratio_color
from rlsd.reports.credit.command import CreditArguments, main, run
from rlsd.reports.credit.compute import compute_credit, is_mixed, summarize
from rlsd.reports.credit.page import render_html
from rlsd.reports.credit.picture import render_png

__all__ = [
    "NEUTRAL_COLOR",
    "CreditArguments",
    "compute_credit",
    "credit_color",
    "is_mixed",
    "log_ratio_color",
    "main",
    "render_html",
    "render_png",
    "run",
    "summarize",
]
