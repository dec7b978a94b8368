"""The credit page with images (`rlsd credit --task counting_visual`): a tiny random
vision-language model scores what it sees, the page and the picture show each problem's image
beside its responses' credit, the image stays out of the JSON and the console, and the page
renders in headless Chromium with the image decoded beside the tokens."""

from __future__ import annotations

import base64
import html
import io
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from test_credit import _chromium, _run_chromium

from rlsd.data import UserError
from rlsd.models import load_model, tiny_vlm
from rlsd.reports.credit import compute_credit, main, render_html, render_png
from rlsd.tasks import get_task, make_rows
from rlsd.tasks.counting_visual import COLOURS
from rlsd.teacher import teacher_prompt

LAM, EPS_W, G = 0.5, 0.2, 4
TASK = get_task("counting_visual")
SHAPE_COLOURS = np.array(list(COLOURS.values()))


def alternating_reward(prompts, completions, answer, **_):
    """Rows whose answer is "mixed" get rewards 1, 0, 1, 0, ...; the others all 1 (A = 0)."""
    return [float(a != "mixed" or i % 2 == 0) for i, a in enumerate(answer)]


@pytest.fixture(scope="module")
def vlm():
    processor = tiny_vlm.build_processor()
    return tiny_vlm.build_model(processor, seed=0), processor


@pytest.fixture(scope="module")
def vlm_path(vlm, tmp_path_factory):
    path = tmp_path_factory.mktemp("random-tiny-vlm")
    tiny_vlm.save(*vlm, path)
    return str(path)


@pytest.fixture(scope="module")
def rows():
    rows = make_rows(TASK.problems("eval", 3, 0))
    rows[0]["answer"] = "mixed"
    rows[1]["answer"] = rows[2]["answer"] = "same"
    return rows


@pytest.fixture(scope="module")
def records(vlm, rows):
    model, processor = vlm
    return compute_credit(
        model,
        processor,
        rows,
        alternating_reward,
        group_size=G,
        lam=LAM,
        eps_w=EPS_W,
        teacher_template=TASK.teacher_template,
        max_new_tokens=10,
        seed=0,
    )


def _images(rows):
    return [[row["image"]] for row in rows]


def _shape_pixels(pixels_rgb: np.ndarray) -> int:
    """How many pixels have exactly one of the task's shape colours (never anti-aliased:
    the image is drawn pixel for pixel, nearest-neighbour scaled)."""
    flat = pixels_rgb.reshape(-1, 1, 3).astype(int)
    return int((flat == SHAPE_COLOURS[None]).all(-1).any(-1).sum())


# ------------------------------------------------------------------------------- the numbers


def _logps(model, processor, prompt, image, ids) -> list[float]:
    """Log-probs of `ids` after `prompt` shown `image`, from the processor called directly
    (as `tiny_vlm.generate` calls it), one unpadded sequence."""
    text = processor.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    inputs = processor(images=[image], text=[text], return_tensors="pt")
    prefix = inputs["input_ids"][0].tolist()
    with torch.no_grad():
        logits = model(
            input_ids=torch.tensor([prefix + ids]), pixel_values=inputs["pixel_values"]
        ).logits[0]
    logp = torch.log_softmax(logits[len(prefix) - 1 : -1].float(), -1)
    return logp.gather(-1, torch.tensor(ids)[:, None]).squeeze(-1).tolist()


def test_student_and_teacher_are_scored_with_the_image(vlm, rows, records):
    """Both log-probs equal an independent forward that is shown the image; the teacher's
    change when the image is replaced by a blank one (it really sees it)."""
    model, processor = vlm
    image_token = model.config.image_token_id
    blank = Image.new("RGB", rows[0]["image"].size, (255, 255, 255))
    assert all(r["num_images"] == 1 for r in records)
    assert [s["reward"] for s in records[0]["samples"]] == [1.0, 0.0, 1.0, 0.0]
    assert all(s["advantage"] != 0 for s in records[0]["samples"])
    for record, row in zip(records[:2], rows[:2], strict=True):
        assert record["privileged"] in record["teacher_prompt"]
        assert record["privileged"] not in record["prompt"]
        teacher = teacher_prompt(row, TASK.teacher_template)
        for s in record["samples"][:2]:
            ids = s["token_ids"]
            assert image_token not in ids  # sampling never emits the image placeholder
            student = _logps(model, processor, row["prompt"], row["image"], ids)
            assert s["logp_student"] == pytest.approx(student, abs=1e-4)
            assert s["logp_teacher"] == pytest.approx(
                _logps(model, processor, teacher, row["image"], ids), abs=1e-4
            )
            unseen = _logps(model, processor, teacher, blank, ids)
            assert max(abs(a - b) for a, b in zip(s["logp_teacher"], unseen)) > 1e-4
    json.dumps(records)  # the records hold no image


def test_text_tokenizer_with_image_rows_is_an_error(rows):
    from rlsd.models import build_model, build_tokenizer

    tokenizer = build_tokenizer()
    with pytest.raises(ValueError, match="row 0 has images.*text tokenizer"):
        compute_credit(build_model(tokenizer), tokenizer, rows, alternating_reward, group_size=2)


# ------------------------------------------------------------------------------- page and PNG


def test_page_embeds_each_image_beside_its_credit(rows, records):
    page = render_html(records, {"lam": LAM, "eps_w": EPS_W}, _images(rows))
    sections = re.findall(
        r'<section class="problem" id="problem-(\d+)">(.*?)</section>', page, re.S
    )
    assert len(sections) == len(rows)
    for index, body in sections:
        found = re.findall(
            r'<img class="problem-image[^"]*" src="data:image/png;base64,([^"]+)"', body
        )
        assert len(found) == 1  # one image, inside its own problem, before the tokens
        assert body.index("<img") < body.index('class="tok')
        shown = Image.open(io.BytesIO(base64.b64decode(found[0])))
        assert np.array_equal(np.asarray(shown), np.asarray(rows[int(index)]["image"]))
    assert "file:" not in page and "<script" not in page.lower()
    without = render_html(records, {"lam": LAM, "eps_w": EPS_W})
    assert "<img" not in without


def test_image_paths_are_embedded_too(rows, records, tmp_path):
    path = tmp_path / "shapes.png"
    rows[0]["image"].save(path)
    page = render_html(records[:1], {"lam": LAM, "eps_w": EPS_W}, [[str(path)]])
    assert page.count("data:image/png;base64,") == 1 and str(path) not in page


def test_png_draws_the_image_beside_the_tokens(rows, records, tmp_path):
    import matplotlib.image as mpimg

    with_images = render_png(records, tmp_path / "with.png", LAM, EPS_W, images=_images(rows))
    plain = render_png(records, tmp_path / "plain.png", LAM, EPS_W)
    pixels = (mpimg.imread(with_images)[:, :, :3] * 255).round().astype(int)
    plain_pixels = (mpimg.imread(plain)[:, :, :3] * 255).round().astype(int)
    assert _shape_pixels(plain_pixels) == 0
    assert _shape_pixels(pixels) > 200
    # the image region: a strip on the left of the figure, before the token boxes
    is_shape = (pixels[:, :, None] == SHAPE_COLOURS[None, None]).all(-1).any(-1)
    xs = np.nonzero(is_shape.any(0))[0]
    assert xs.max() < pixels.shape[1] * 0.2


# ------------------------------------------------------------------------------- the CLI


def test_cli_with_a_vlm_folder(vlm_path, tmp_path, capsys):
    out = tmp_path / "out"
    result = main(
        [
            vlm_path,
            "--task",
            "counting_visual",
            "--output",
            str(out),
            "--num_problems",
            "2",
            "--group_size",
            "2",
            "--max_new_tokens",
            "6",
        ]
    )
    printed = capsys.readouterr()
    data = json.loads((out / "credit.json").read_text())
    assert [r["num_images"] for r in data["records"]] == [1, 1]
    assert data["meta"]["teacher_template"] == TASK.teacher_template
    assert result["summary"]["num_samples"] == 4
    page = (out / "credit.html").read_text()
    assert page.count('<img class="problem-image') == 2
    for text in ((out / "credit.json").read_text(), printed.out, printed.err):
        assert "base64" not in text and "data:image" not in text


def test_cli_with_image_paths_one_and_two_per_row(vlm_path, rows, tmp_path):
    """A JSONL dataset whose rows name image files, one image in the first row and two in the
    second: both reach the model and the page, and the JSON keeps neither the pixels nor the
    page's data."""
    rows = [dict(row) for row in rows[:2]]
    for i, row in enumerate(rows):
        row.pop("image").save(tmp_path / f"img{i}.png")
    rows[0]["image"] = str(tmp_path / "img0.png")
    question = rows[1]["prompt"][0]["content"][1]["text"]
    rows[1]["prompt"] = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": question}],
        }
    ]
    rows[1]["images"] = [str(tmp_path / "img1.png"), str(tmp_path / "img0.png")]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    main(
        [vlm_path, "--dataset_path", str(data), "--output", str(out)]
        + ["--group_size", "2", "--max_new_tokens", "6"]
    )
    records = json.loads((out / "credit.json").read_text())["records"]
    assert [r["num_images"] for r in records] == [1, 2]
    page = (out / "credit.html").read_text()
    alts = re.findall(r'<img class="problem-image[^>]*alt="([^"]*)"', page)
    assert alts == [
        "image 1 of problem 1 (48x48)",
        "image 1 of problem 2 (48x48)",
        "image 2 of problem 2 (48x48)",
    ]
    assert str(tmp_path) not in page.split("</header>")[1]  # embedded, not linked


def test_cli_defaults_to_the_shipped_vlm_for_a_visual_task(vlm_path, tmp_path, monkeypatch):
    import rlsd.models
    from rlsd.tasks import get_task

    task = get_task("counting_visual")
    assert rlsd.models.default_model_path(task) == tiny_vlm.DEFAULT_VLM_PATH
    shipped = {tiny_vlm.DEFAULT_VLM_PATH: vlm_path}  # a random VLM stands in for speed
    real = rlsd.models.default_model_path
    monkeypatch.setattr(rlsd.models, "default_model_path", lambda t: shipped.get(real(t), real(t)))
    main(
        ["--task", "counting_visual", "--output", str(tmp_path), "--num_problems", "1"]
        + ["--group_size", "2", "--max_new_tokens", "4"]
    )
    assert json.loads((tmp_path / "credit.json").read_text())["meta"]["model"] == vlm_path


def test_cli_refuses_a_text_model_for_images(random_path, tmp_path):
    with pytest.raises(UserError, match="has images.*text-only"):
        main([random_path, "--task", "counting_visual", "--output", str(tmp_path)])


def test_load_model_falls_back_to_tiny_vlm_load(vlm_path, monkeypatch):
    from transformers import AutoProcessor, LlavaProcessor

    model, processor = load_model(vlm_path)
    assert isinstance(processor, LlavaProcessor) and hasattr(model.config, "vision_config")

    def unloadable(*args, **kwargs):
        raise ValueError("Unrecognized processing class")

    monkeypatch.setattr(AutoProcessor, "from_pretrained", unloadable)
    model, processor = load_model(vlm_path)
    assert isinstance(processor, LlavaProcessor) and hasattr(model.config, "vision_config")
    with pytest.raises(UserError, match="does not exist"):
        load_model(vlm_path + "-missing")


# ------------------------------------------------------------------------------- a real browser

_PROBE = """<script>
window.addEventListener('load', function () {
  var out = {images: [], beside: []};
  document.querySelectorAll('section.problem').forEach(function (section) {
    var img = section.querySelector('img.problem-image');
    var tok = section.querySelector('.tok');
    if (!img || !tok) { return; }
    var a = img.getBoundingClientRect(), b = tok.getBoundingClientRect();
    out.images.push({natural: [img.naturalWidth, img.naturalHeight], complete: img.complete,
                     shown: [a.width, a.height]});
    out.beside.push({imgRight: a.right, tokLeft: b.left, imgTop: a.top, imgBottom: a.bottom,
                     tokTop: b.top});
  });
  var pre = document.createElement('pre');
  pre.id = 'probe';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


@pytest.mark.slow
def test_credit_page_with_an_image_renders_in_chromium(rows, records, tmp_path):
    import matplotlib.image as mpimg

    binary = _chromium()
    page = render_html(
        records, {"lam": LAM, "eps_w": EPS_W, "model": "random tiny VLM"}, _images(rows)
    )
    page_path = tmp_path / "credit.html"
    page_path.write_text(page, encoding="utf-8")

    # 1. A screenshot: not blank, and the picture's shape colours drawn pixel for pixel.
    shot = tmp_path / "shot.png"
    _run_chromium(
        binary, tmp_path, f"--screenshot={shot}", "--window-size=1200,1400", page_path.as_uri()
    )
    pixels = (mpimg.imread(shot)[:, :, :3] * 255).round().astype(int)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50
    assert _shape_pixels(pixels) > 500

    # 2. The DOM after load: every problem's image decoded, at its natural size, on the left
    #    of its first token and level with the responses.
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    proc = _run_chromium(binary, tmp_path, "--dump-dom", probed.as_uri())
    found = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
    assert found, proc.stdout[-2000:]
    out = json.loads(html.unescape(found.group(1)))
    assert len(out["images"]) == len(rows)
    for image, place in zip(out["images"], out["beside"], strict=True):
        assert image["complete"] and image["natural"] == [48, 48]
        assert image["shown"][0] > 100 and image["shown"][1] > 100
        assert place["imgRight"] <= place["tokLeft"]
        assert place["imgTop"] < place["tokTop"] < place["imgBottom"] + 400
