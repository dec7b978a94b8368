"""The problems' images as the page and the picture show them.

A row's images come in TRL's conventions (`rlsd.teacher.example_images`): PIL images or file
paths. The page embeds each one as a base64 PNG data URI, so the page stays one
self-contained file that points at no file outside itself; the records (`credit.json`) and
the console never hold an image.

Simplification: an image larger than `MAX_SIDE` pixels is shrunk (aspect kept) before it is
embedded, so a page of a real VLM's dataset stays a few hundred kB per problem; the tiny
task's 48x48 pictures are embedded pixel for pixel.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

from PIL import Image

MAX_SIDE = 512  # pixels: larger images are shrunk before they are embedded


def as_pil(image: Any) -> Image.Image:
    """An RGB PIL image from a PIL image or a file path (loaded now, file closed)."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, str):
        with Image.open(image) as opened:
            return opened.convert("RGB")
    raise TypeError(
        f"an image must be a PIL image or a file path (TRL's conventions), got "
        f"{type(image).__name__}"
    )


def shrunk(image: Any) -> Image.Image:
    """`as_pil(image)`, shrunk to at most `MAX_SIDE` pixels a side."""
    pil = as_pil(image)
    if max(pil.size) > MAX_SIDE:
        pil = pil.copy()
        pil.thumbnail((MAX_SIDE, MAX_SIDE))
    return pil


def data_uri(image: Any) -> str:
    """`data:image/png;base64,...` of `shrunk(image)`."""
    buffer = io.BytesIO()
    shrunk(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def images_of(images: Sequence[Sequence[Any] | None] | None, record: dict[str, Any]) -> list[Any]:
    """The images of `record` (by its `index`) in `images`, one entry (a list or None) per
    row as `compute_credit` got them; `[]` when there are none."""
    if images is None or record["index"] >= len(images):
        return []
    return list(images[record["index"]] or [])
