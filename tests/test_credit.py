"""The credit page (`rlsd credit`, `rlsd.reports.credit`): its numbers, the sampling it shares
with `rlsd.evaluation`, its HTML, its PNG, its CLI, and a real headless-browser render (Debian
Chromium)."""

from __future__ import annotations

import html
import json
import math
import os
import re
import shutil
import subprocess

import pytest
import torch

from rlsd.evaluation import generate, score_completions
from rlsd.objectives import group_advantages
from rlsd.prompts import tokenize_prompts
from rlsd.reports.credit import (
    NEUTRAL_COLOR,
    compute_credit,
    credit_color,
    is_mixed,
    main,
    render_html,
    render_png,
    summarize,
)
from rlsd.tasks import get_task, make_rows
from rlsd.teacher import teacher_prompt

LAM, EPS_W, G = 0.5, 0.2, 4
TEMPLATE = get_task("arithmetic").teacher_template


def alternating_reward(prompts, completions, answer, **_):
    """Rows whose answer is "mixed" get rewards 1, 0, 1, 0, ...; the others all 1 (A = 0)."""
    return [float(a != "mixed" or i % 2 == 0) for i, a in enumerate(answer)]


@pytest.fixture(scope="module")
def model_and_tokenizer():
    from rlsd.models import build_model, build_tokenizer

    tokenizer = build_tokenizer()
    return build_model(tokenizer, seed=0), tokenizer


@pytest.fixture(scope="module")
def rows():
    rows = make_rows(get_task("arithmetic").problems("eval", 2, 0))
    rows[0]["answer"], rows[1]["answer"] = "mixed", "same"
    return rows


@pytest.fixture(scope="module")
def records(model_and_tokenizer, rows):
    model, tokenizer = model_and_tokenizer
    return compute_credit(
        model,
        tokenizer,
        rows,
        alternating_reward,
        group_size=G,
        lam=LAM,
        eps_w=EPS_W,
        teacher_template=TEMPLATE,
        max_new_tokens=12,
        seed=0,
    )


def _hex_to_rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


# ------------------------------------------------------------------------------- the numbers


def test_credit_is_the_spec_mix_factor(records):
    lo, hi = 1 - EPS_W, 1 + EPS_W
    mixed = records[0]["samples"]
    assert [s["reward"] for s in mixed] == [1.0, 0.0, 1.0, 0.0]
    expected_adv = group_advantages([1.0, 0.0, 1.0, 0.0], G).tolist()
    assert [s["advantage"] for s in mixed] == pytest.approx(expected_adv)
    for s in mixed:
        adv = s["advantage"]
        sign = math.copysign(1.0, adv)
        assert len(s["tokens"]) == len(s["credit"]) == len(s["a_hat"]) > 0
        for t in range(len(s["tokens"])):
            w = math.exp(sign * s["delta"][t])
            assert s["w"][t] == pytest.approx(w, rel=1e-6)
            expected = (1 - LAM) + LAM * min(max(w, lo), hi)
            assert s["credit"][t] == pytest.approx(expected, rel=1e-5)
            assert s["a_hat"][t] == pytest.approx(adv * expected, rel=1e-5)
            assert math.copysign(1.0, s["a_hat"][t]) == sign  # the verifier's sign never flips
            assert 1 - LAM * EPS_W - 1e-6 <= s["credit"][t] <= 1 + LAM * EPS_W + 1e-6
            assert s["delta"][t] == pytest.approx(s["logp_teacher"][t] - s["logp_student"][t])
    assert all(s["correct"] == (s["reward"] == 1.0) for s in mixed)


def test_equal_rewards_give_zero_credit(records):
    for s in records[1]["samples"]:
        assert s["advantage"] == 0.0
        assert s["a_hat"] == [0.0] * len(s["tokens"])
        assert s["credit"] == [None] * len(s["tokens"])


def test_log_probs_match_an_independent_unpadded_forward(model_and_tokenizer, rows, records):
    """delta's two log-probs, recomputed one sample at a time without any padding, from the
    student prompt and from the teacher prompt built independently of `teacher_input_ids`."""
    model, tokenizer = model_and_tokenizer
    record, row = records[0], rows[0]
    assert record["privileged"] == row["privileged_context"]
    assert record["privileged"] in record["teacher_prompt"]
    assert record["privileged"] not in record["prompt"]
    student = tokenize_prompts(tokenizer, [row["prompt"]])[0]
    teacher = tokenize_prompts(tokenizer, [teacher_prompt(row, TEMPLATE)])[0]
    for s in record["samples"]:
        ids = s["token_ids"]
        assert s["tokens"] == [tokenizer.decode([i]) for i in ids]
        eos = tokenizer.eos_token_id
        assert eos not in ids[:-1]  # the mask ends at the first EOS, included
        for prefix, key in ((student, "logp_student"), (teacher, "logp_teacher")):
            with torch.no_grad():
                logits = model(torch.tensor([prefix + ids])).logits[0].float()
            logp = torch.log_softmax(logits[len(prefix) - 1 : -1], -1)
            expected = logp.gather(-1, torch.tensor(ids)[:, None]).squeeze(-1)
            assert s[key] == pytest.approx(expected.tolist(), abs=1e-4)


def test_compute_credit_is_seeded_and_restores_rng(model_and_tokenizer, rows, records):
    model, tokenizer = model_and_tokenizer
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    again = compute_credit(
        model,
        tokenizer,
        rows,
        alternating_reward,
        group_size=G,
        lam=LAM,
        eps_w=EPS_W,
        teacher_template=TEMPLATE,
        max_new_tokens=12,
        seed=0,
    )
    assert torch.equal(torch.random.get_rng_state(), before)
    assert [s["token_ids"] for r in again for s in r["samples"]] == [
        s["token_ids"] for r in records for s in r["samples"]
    ]


def test_summarize_counts_clipped_tokens(records):
    summary = summarize(records, LAM, EPS_W)
    reweighted = [
        (x, c)
        for r in records
        for s in r["samples"]
        if s["advantage"] != 0
        for x, c in zip(s["log_ratio"], s["credit"], strict=True)
    ]
    clipped = sum(not (math.log1p(-EPS_W) <= x <= math.log1p(EPS_W)) for x, _ in reweighted)
    assert summary["clip_ratio"] == pytest.approx(clipped / len(reweighted))
    assert summary["adv_hat_over_adv"] == pytest.approx(
        sum(c for _, c in reweighted) / len(reweighted), rel=1e-5
    )
    assert summary["num_samples"] == 2 * G and summary["mixed_groups"] == 1
    all_tokens = [x for r in records for s in r["samples"] for x in s["log_ratio"]]
    assert summary["num_tokens"] == len(all_tokens) > len(reweighted)
    # over all response tokens, A = 0 tokens count as unclipped (the paper's denominator)
    assert summary["clip_ratio_all"] == pytest.approx(clipped / len(all_tokens))
    assert summary["clip_ratio"] == pytest.approx(
        summary["clip_low_ratio_reweighted"] + summary["clip_high_ratio_reweighted"]
    )


# ------------------------------------------------------------------------------- shared sampling


def test_credit_samples_as_evaluation_does(model_and_tokenizer, rows, records):
    """The credit page's first group is exactly what `rlsd.evaluation.generate` samples for
    the same prompt, seed, temperature and length: one sampler, not two."""
    model, tokenizer = model_and_tokenizer
    texts = generate(
        model, tokenizer, [rows[0]["prompt"]], num_samples=G, max_new_tokens=12, seed=0
    )
    assert texts == [[s["text"] for s in records[0]["samples"]]]
    for s in records[0]["samples"]:  # the text is the ids up to the first EOS, decoded
        assert s["text"] == tokenizer.decode(s["token_ids"], skip_special_tokens=True)


def test_score_completions_calls_the_reward_as_trl_does():
    calls = []

    def reward(prompts, completions, answer, extra, **_):
        calls.append((prompts, completions, answer, extra))
        return [float(len(c) if isinstance(c, str) else 10) for c in completions[:-1]] + [None]

    chat = [{"role": "user", "content": "q2"}]
    rows = [{"prompt": "q1", "answer": "1", "extra": 0}, {"prompt": chat, "answer": "2"}]
    rewards = score_completions(reward, rows, [["a", "bb"], ["c"]])
    assert rewards == [[1.0, 2.0], [None]]
    prompts, completions, answer, extra = calls[0]
    assert prompts == ["q1", "q1", chat]
    assert completions == ["a", "bb", [{"role": "assistant", "content": "c"}]]
    assert answer == ["1", "1", "2"] and extra == [0, 0, None]  # the first row's columns
    with pytest.raises(ValueError, match="returned 1 rewards for 3 completions"):
        score_completions(lambda **_: [1.0], rows, [["a", "bb"], ["c"]])


def test_credit_color_is_a_diverging_map_centred_at_one():
    half = LAM * EPS_W
    assert credit_color(1.0, LAM, EPS_W) == "#f7f7f7"
    assert credit_color(1 + half, LAM, EPS_W) == "#b2182b"  # red: more weight
    assert credit_color(1 - half, LAM, EPS_W) == "#2166ac"  # blue: less weight
    assert credit_color(5.0, LAM, EPS_W) == "#b2182b"  # clamped
    assert credit_color(None, LAM, EPS_W) == NEUTRAL_COLOR
    assert credit_color(1.03, 0.0, EPS_W) == "#f7f7f7"  # lam = 0: GRPO, nothing to colour
    r_lo, _, b_lo = _hex_to_rgb(credit_color(1 - half / 2, LAM, EPS_W))
    r_hi, _, b_hi = _hex_to_rgb(credit_color(1 + half / 2, LAM, EPS_W))
    assert b_lo > r_lo and r_hi > b_hi


# ------------------------------------------------------------------------------- the HTML


def _page(records) -> str:
    hostile = json.loads(json.dumps(records))
    hostile[0]["prompt"] = '<script>alert("x")</script> & </span>'
    hostile[0]["samples"][0]["tokens"][0] = "<evil>"
    return render_html(hostile, {"lam": LAM, "eps_w": EPS_W, "model": "m<1>", "task": "t&t"})


def test_html_is_self_contained_and_escaped(records):
    page = _page(records)
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert "http://" not in page and "https://" not in page
    assert "@import" not in page and "url(" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;/span&gt;" in page
    assert "m&lt;1&gt;" in page and "t&amp;t" in page
    assert "<evil>" not in page and "&lt;evil&gt;" in page
    assert page.count("teacher only") >= len(records)
    assert page.count('class="box teacher-only"') == len(records)


def test_html_tokens_carry_their_numbers_and_colours(records):
    page = _page(records)
    spans = re.findall(
        r'<span class="tok[^"]*" style="([^"]*)"[^>]*?data-w="([^"]*)"'
        r'[^>]*?data-a-hat="([^"]*)" data-credit="([^"]*)" data-color="([^"]*)"',
        page,
    )
    n_tokens = sum(len(s["tokens"]) for r in records for s in r["samples"])
    assert len(spans) == n_tokens
    flat = [(s, t) for r in records for s in r["samples"] for t in range(len(s["tokens"]))]
    # spans appear column by column (correct, then incorrect) within each problem
    order = [
        (s, t)
        for r in records
        for ok in (True, False)
        for s in r["samples"]
        if s["correct"] == ok
        for t in range(len(s["tokens"]))
    ]
    assert len(order) == len(flat)
    for (style, w, a_hat, credit, color), (s, t) in zip(spans, order, strict=True):
        expected = credit_color(s["credit"][t], LAM, EPS_W)
        assert color == expected and style.startswith(f"background-color:{expected};")
        assert float(w) == pytest.approx(s["w"][t], rel=1e-5)
        assert float(a_hat) == pytest.approx(s["a_hat"][t], rel=1e-5, abs=1e-9)
        if s["credit"][t] is None:
            assert credit == "none" and color == NEUTRAL_COLOR
        else:
            assert float(credit) == pytest.approx(s["credit"][t], rel=1e-5)
    titles = re.findall(r'<span class="tok[^"]*"[^>]*title="([^"]*)"', page)
    assert all("delta=" in x and "w=" in x and "A_hat=" in x for x in titles)
    assert ">Correct (" in page and ">Incorrect (" in page
    for label in (
        "lambda, eps_w",
        "tokens with w clipped, of those with A != 0",
        "tokens with w clipped, of all response tokens",
        "tokens with w_clip != 1",
        "mean |A_hat| / |A|",
    ):
        assert label in page


def test_page_opens_with_the_problems_whose_rewards_are_mixed(records):
    """Groups with equal rewards (A = 0 everywhere) show no credit: they come last, under
    their own heading, and every problem keeps its number."""
    equal, mixed = json.loads(json.dumps(records[1])), json.loads(json.dumps(records[0]))
    equal["index"], mixed["index"] = 0, 1  # the equal-reward problem comes first in the data
    assert not is_mixed(equal) and is_mixed(mixed)
    page = render_html([equal, mixed], {"lam": LAM, "eps_w": EPS_W})
    order = re.findall(r'id="(problem-\d+|mixed-rewards|equal-rewards)"', page)
    assert order == ["mixed-rewards", "problem-1", "equal-rewards", "problem-0"]
    assert ">Problem 2 " in page and ">Problem 1 " in page
    only_equal = render_html([equal], {"lam": LAM, "eps_w": EPS_W})
    assert 'id="mixed-rewards"' not in only_equal and 'id="equal-rewards"' in only_equal


def test_png_is_written(records, tmp_path):
    import matplotlib.image as mpimg

    path = render_png(records, tmp_path / "c.png", LAM, EPS_W)
    image = mpimg.imread(path)
    assert image.shape[0] > 100 and image.shape[1] > 500
    assert len({tuple(p) for p in image[::4, ::4, :3].reshape(-1, 3).round(2).tolist()}) > 10


# ------------------------------------------------------------------------------- the CLI


def test_cli_writes_page_png_and_json(random_path, tmp_path, capsys):
    out = tmp_path / "out"
    result = main(
        [
            random_path,
            "--output",
            str(out),
            "--num_problems",
            "2",
            "--group_size",
            "3",
            "--max_new_tokens",
            "6",
            "--lam",
            "0.3",
            "--eps_w",
            "0.1",
        ]
    )
    printed = capsys.readouterr().out
    for name in ("credit.html", "credit.png", "credit.json"):
        assert (out / name).stat().st_size > 0 and str(out / name) in printed
    data = json.loads((out / "credit.json").read_text())
    assert data["meta"]["lam"] == 0.3 and data["meta"]["eps_w"] == 0.1
    assert data["meta"]["teacher_template"] == TEMPLATE  # the built-in task's template
    assert len(data["records"]) == 2 and all(len(r["samples"]) == 3 for r in data["records"])
    assert result["summary"]["num_samples"] == 6


def test_cli_dispatch_with_a_jsonl_dataset(random_path, tmp_path):
    from rlsd.cli import main as rlsd_main

    data = tmp_path / "rows.jsonl"
    rows = [
        {"prompt": "What is 2+2?", "answer": "4", "privileged_context": "2+2=4 <b>"},
        {"prompt": "What is 3+3?", "answer": "6"},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    assert (
        rlsd_main(
            [
                "credit",
                random_path,
                "--dataset_path",
                str(data),
                "--output",
                str(out),
                "--group_size",
                "2",
                "--max_new_tokens",
                "4",
            ]
        )
        == 0
    )
    records = json.loads((out / "credit.json").read_text())["records"]
    assert "Here is a reference solution" in records[0]["teacher_prompt"]  # the spec's template
    assert records[1]["privileged"] == "6"  # falls back to `answer`
    assert "2+2=4 &lt;b&gt;" in (out / "credit.html").read_text()


# ------------------------------------------------------------------------------- a real browser

_PROBE = """<script>
(function () {
  var out = {errors: window.__errors || [], tokens: [], raw: []};
  try {
    var spans = Array.prototype.slice.call(document.querySelectorAll('.tok'));
    out.n = spans.length;
    spans.forEach(function (s) {
      var r = s.getBoundingClientRect();
      out.tokens.push({credit: s.dataset.credit, color: s.dataset.color, w: r.width,
                       bg: getComputedStyle(s).backgroundColor});
    });
    out.teacherBoxes = document.querySelectorAll('.teacher-only').length;
    out.legendRaw = getComputedStyle(document.querySelector('.legend-raw')).display;
    document.getElementById('view-raw').checked = true;  // the CSS-only switch
    spans.forEach(function (s) {
      out.raw.push([getComputedStyle(s).backgroundColor, s.style.getPropertyValue('--raw')]);
    });
    out.legendRawAfter = getComputedStyle(document.querySelector('.legend-raw')).display;
  } catch (e) { out.errors.push(String(e)); }
  var pre = document.createElement('pre');
  pre.id = 'probe';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
</script>"""
_ON_ERROR = (
    "<script>window.__errors = []; window.addEventListener('error', function (e) "
    "{ window.__errors.push(String(e.message)); });</script>"
)


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None and os.path.exists("/usr/bin/chromium"):
        path = "/usr/bin/chromium"
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(
                "Chromium is required under CI (CI is set) for the credit page's browser test, "
                "but no `chromium` is on PATH: install it with `apt-get install -y chromium`."
            )
        pytest.skip("chromium not installed (apt-get install -y chromium); required when CI is set")
    return path


def _run_chromium(binary: str, tmp_path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"
    cmd = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-3000:]
    console = [ln for ln in proc.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
    assert not console, console
    return proc


def _css_rgb(color: str) -> str:
    r, g, b = _hex_to_rgb(color)
    return f"rgb({r}, {g}, {b})"


@pytest.mark.slow
def test_page_renders_in_headless_chromium(records, tmp_path):
    import matplotlib.image as mpimg
    import numpy as np

    binary = _chromium()
    page = render_html(records, {"lam": LAM, "eps_w": EPS_W, "model": "random tiny"})
    page_path = tmp_path / "credit.html"
    page_path.write_text(page, encoding="utf-8")

    # 1. The page itself, as a screenshot: it renders, it is not blank, the legend's extreme
    #    swatches are drawn in the map's end colours.
    shot = tmp_path / "shot.png"
    _run_chromium(
        binary, tmp_path, f"--screenshot={shot}", "--window-size=1200,900", page_path.as_uri()
    )
    pixels = (mpimg.imread(shot)[:, :, :3] * 255).round().astype(np.int16)
    assert pixels.shape[:2] == (900, 1200)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50
    for color in ("#2166ac", "#b2182b", NEUTRAL_COLOR):
        close = (np.abs(pixels - np.array(_hex_to_rgb(color))) <= 3).all(axis=-1)
        assert close.sum() >= 200, f"{color} is not drawn"

    # 2. The same page with an inline probe: computed colours of every token equal the
    #    colours computed in Python, in both views, and no script error.
    probed = tmp_path / "probed.html"
    probed.write_text(
        page.replace("<head>", "<head>" + _ON_ERROR).replace("</body>", _PROBE + "</body>"),
        encoding="utf-8",
    )
    proc = _run_chromium(binary, tmp_path, "--dump-dom", probed.as_uri())
    found = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
    assert found, proc.stdout[-2000:]
    out = json.loads(html.unescape(found.group(1)))
    assert out["errors"] == []
    flat = [s for r in records for s in r["samples"]]
    assert out["n"] == sum(len(s["tokens"]) for s in flat) > 0
    assert out["teacherBoxes"] == len(records)
    for token in out["tokens"]:
        assert (token["credit"] == "none") == (token["color"] == NEUTRAL_COLOR)
        assert token["bg"] == _css_rgb(token["color"])
        assert token["w"] > 0
    assert any(t["color"] == NEUTRAL_COLOR for t in out["tokens"])
    assert len({t["bg"] for t in out["tokens"]}) > 5
    for bg, raw in out["raw"]:
        assert bg == _css_rgb(raw.strip())
    assert out["legendRaw"] == "none" and out["legendRawAfter"] == "flex"
