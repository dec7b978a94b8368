"""`counting_visual`: count coloured shapes in a picture, then subtract (the paper's example).

Each problem is a 48x48 Pillow drawing of 2-7 shapes (circles, squares, triangles in red,
green, blue or yellow) on white, and a question that removes one colour or one kind:

    How many shapes are left if all the red ones are removed?
    -> There are 5 shapes. 2 are red. 5 - 2 = 3. Answer: 3

The worked solution (the counts, then the subtraction) is the self-teacher's privileged
context; `exact` reads the number after `Answer:`.

Simplification: the shapes sit one per cell of a 4x4 grid of 12-pixel cells (size and
position jittered inside the cell), so no two overlap and each lies in one 12-pixel patch of
the tiny vision tower (`rlsd.models.tiny_vlm`: 16 image tokens). Counting is then counting
patches, which a 1M-parameter model learns on a CPU; shapes at arbitrary positions would need
a larger vision tower. Two problems are the same when they draw the same shapes in the same
cells and ask the same question (the jitter does not count), so held-out draws are new
layouts, not re-jittered training ones.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

from rlsd.tasks.base import Problem, Task

IMAGE_SIZE = 48
GRID = 4  # cells per side
CELL = IMAGE_SIZE // GRID
BACKGROUND = (255, 255, 255)
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (235, 200, 0),
}
KINDS: dict[str, str] = {"circle": "circles", "square": "squares", "triangle": "triangles"}


@dataclass(frozen=True)
class Shape:
    """One drawn shape: its grid cell, colour and kind, and where in the cell it is drawn."""

    row: int
    col: int
    colour: str
    kind: str
    size: int  # side of the bounding box, pixels
    dx: int  # offset of the bounding box inside the cell, pixels
    dy: int

    def box(self) -> tuple[int, int, int, int]:
        """The bounding box `(x0, y0, x1, y1)` in image pixels (inclusive)."""
        x0, y0 = self.col * CELL + self.dx, self.row * CELL + self.dy
        return x0, y0, x0 + self.size - 1, y0 + self.size - 1


@dataclass(frozen=True, eq=False)
class VisualProblem(Problem):
    """A `Problem` that keeps its drawing spec (what the image shows) next to the image."""

    shapes: tuple[Shape, ...] = ()
    removed: str = ""  # the colour or kind the question removes

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VisualProblem):
            return NotImplemented
        return (self.question, self.shapes) == (other.question, other.shapes)

    def __hash__(self) -> int:
        return hash((self.question, self.shapes))


def draw(shapes: tuple[Shape, ...]) -> Image.Image:
    """The RGB picture of `shapes` on a white background."""
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUND)
    pen = ImageDraw.Draw(image)
    for s in shapes:
        x0, y0, x1, y1 = s.box()
        fill = COLOURS[s.colour]
        if s.kind == "circle":
            pen.ellipse((x0, y0, x1, y1), fill=fill)
        elif s.kind == "square":
            pen.rectangle((x0, y0, x1, y1), fill=fill)
        else:  # an upward triangle filling the box
            pen.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    return image


def question_for(removed: str) -> str:
    """The question that removes a colour (`"red"`) or a kind (`"circle"`)."""
    what = f"{removed} ones" if removed in COLOURS else KINDS[removed]
    return f"How many shapes are left if all the {what} are removed?"


def solution_for(shapes: tuple[Shape, ...], removed: str) -> tuple[str, str]:
    """The worked solution and the final answer: count all, count the removed, subtract."""
    total = len(shapes)
    gone = sum(removed in (s.colour, s.kind) for s in shapes)
    if removed in COLOURS:
        which = f"{gone} {'is' if gone == 1 else 'are'} {removed}"
    else:
        which = f"1 is a {removed}" if gone == 1 else f"{gone} are {KINDS[removed]}"
    answer = str(total - gone)
    return (
        f"There are {total} shapes. {which}. {total} - {gone} = {answer}. Answer: {answer}",
        answer,
    )


class CountingVisualTask(Task):
    name = "counting_visual"
    max_completion_length = 64  # the longest solution is 57 characters, plus the EOS
    has_images = True
    default_model = "tiny_vlm"  # the shipped tiny vision-language model

    def __init__(self, min_shapes: int = 2, max_shapes: int = 7):
        if not 1 <= min_shapes <= max_shapes <= GRID * GRID:
            raise ValueError(
                f"counting_visual: need 1 <= min_shapes <= max_shapes <= {GRID * GRID}, "
                f"got {min_shapes} and {max_shapes}"
            )
        self.min_shapes, self.max_shapes = min_shapes, max_shapes

    def sample(self, rng: random.Random) -> VisualProblem:
        n = rng.randint(self.min_shapes, self.max_shapes)
        shapes = []
        for cell in sorted(rng.sample(range(GRID * GRID), n)):
            size = rng.randint(7, 10)
            shapes.append(
                Shape(
                    row=cell // GRID,
                    col=cell % GRID,
                    colour=rng.choice(list(COLOURS)),
                    kind=rng.choice(list(KINDS)),
                    size=size,
                    dx=rng.randint(1, CELL - size - 1),
                    dy=rng.randint(1, CELL - size - 1),
                )
            )
        spec = tuple(shapes)
        removed = rng.choice(list(COLOURS) + list(KINDS))
        solution, answer = solution_for(spec, removed)
        return VisualProblem(
            question_for(removed), solution, answer, image=draw(spec), shapes=spec, removed=removed
        )

    def key(self, problem: Problem) -> str:
        if not isinstance(problem, VisualProblem):
            return problem.question
        layout = ";".join(f"{s.row}{s.col}{s.colour}{s.kind}" for s in problem.shapes)
        return f"{problem.question}|{layout}"
