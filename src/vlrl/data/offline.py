"""An offline MathVista-format data set: drawn pictures whose answer only the picture gives.

The ``tiny`` profile cannot reach the hub, so :func:`generate_offline` draws its own items with PIL,
with exactly the hub's columns and types (:data:`vlrl.data.schema.HUB_FEATURES`). Each item comes
from one question template, its **kind**, exposed without parsing text in ``metadata.task`` (also
``metadata.context`` and ``metadata.skills``); :data:`KINDS` lists them. Each kind asks for ONE
visual property, and its question text is the same for every item of the kind, so the answer
cannot come from the text:

======================  =============  ===========  ==================================================
kind (metadata.task)    question_type  answer_type  picture -> answer
======================  =============  ===========  ==================================================
shape count             free_form      integer      1-9 black squares, one per cell of a 4 x 4 grid -> n
shape count choice      multi_choice   integer      as shape count, four consecutive numeric choices
bar height              free_form      integer      one bar on a baseline, height 1-9 ninths -> 1..9
bar value               free_form      float        one bar, 0.5-4.5 on a 0-5 scale -> "2.5" (precision 1)
color name              free_form      text         one circle -> its colour (non-numeric: the numeric
                                                    filter drops these, about 10 %)
======================  =============  ===========  ==================================================

Why these: the tiny model sees a 64 x 64 image as 16 tokens (patch 8, merge 2), one per 16 x 16
cell. A square per grid cell is one token's worth of ink, and a bar's height is a share of dark
pixels, both simple functions of the image tokens that a 0.2 M-parameter model learns in a few
hundred steps. Measured before choosing (held-out answer accuracy, teacher-forced, after 400
supervised steps on correct answers only): shape count 29/29, shape count choice 20/20, bar height
19/25, bar value 9/16, and a large drawn digit 0-9 only 10/27, so the digit kind was dropped. The
earlier kinds (values written on labelled bars, rectangle area and perimeter, decimals written in
the image) need reading digits and arithmetic; with them the tiny model's held-out strict accuracy
stayed at 6.8 % before and after GSPO.

Deliberately broken rows (so that the transform's bad-row checks have work): every 80th item from
a fixed offset has corrupt image bytes, a too-small (4x4) image, no image, an empty question, a
duplicate pid (of the previous item) or a missing answer; :data:`DEFECTS` names them.

Deterministic: item ``i`` is drawn from ``random.Random(f"{seed}:{i}")`` (string seeds are hashed
with SHA-512, independent of PYTHONHASHSEED), so adding items never changes earlier ones.
Question wording uses a small vocabulary on purpose (the tiny profile trains its tokenizer on it).
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from datasets import Dataset
from PIL import Image, ImageDraw

from vlrl.data.schema import HUB_FEATURES, mathvista_query

#: Question kinds and their share of items (weights; "color name" is the non-numeric ~10 %).
KINDS: dict[str, float] = {
    "shape count": 0.30,
    "bar height": 0.25,
    "bar value": 0.15,
    "shape count choice": 0.20,
    "color name": 0.10,
}

#: Defect -> position in each block of :data:`DEFECT_PERIOD` items.
DEFECT_PERIOD = 80
DEFECTS: dict[str, int] = {
    "corrupt_image": 7,
    "too_small_image": 19,
    "missing_image": 31,
    "empty_question": 43,
    "duplicate_pid": 55,
    "missing_answer": 67,
}

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "blue": (30, 60, 220), "green": (20, 160, 40),
}
INK = (20, 20, 20)
BAR_FILL = (40, 70, 190)
#: Cells per side of the counting grid: 4 x 4 cells of a 64 px image are the 16 image tokens of the
#: tiny model (patch 8, merge 2), so each shape fills one token's patch block.
GRID = 4


@dataclass(frozen=True)
class Drawn:
    """One drawn item before it becomes a hub-format row."""

    question: str
    answer: str
    image: Image.Image
    answer_type: str = "integer"
    precision: float | None = None
    question_type: str = "free_form"
    choices: list[str] | None = None
    unit: str | None = None
    context: str = "synthetic scene"
    skills: tuple[str, ...] = ("arithmetic reasoning",)


def _blank(canvas: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("RGB", (canvas, canvas), (255, 255, 255))
    return image, ImageDraw.Draw(image)


def _squares(rng: random.Random, canvas: int, n: int) -> Image.Image:
    """``n`` filled squares, each in its own cell of a GRID x GRID grid (no overlap: the count is exact)."""
    image, draw = _blank(canvas)
    cell = canvas / GRID
    pad = max(1, round(cell / 6))
    for c in rng.sample(range(GRID * GRID), n):
        x, y = (c % GRID) * cell, (c // GRID) * cell
        draw.rectangle([round(x) + pad, round(y) + pad, round(x + cell) - pad - 1, round(y + cell) - pad - 1],
                       fill=INK)
    return image


def _shape_count(rng: random.Random, canvas: int) -> Drawn:
    n = rng.randint(1, 9)
    return Drawn("How many squares are there?", str(n), _squares(rng, canvas, n))


def _shape_count_choice(rng: random.Random, canvas: int) -> Drawn:
    drawn = _shape_count(rng, canvas)
    n = int(drawn.answer)
    low = rng.randint(max(1, n - 3), n)
    choices = [str(v) for v in range(low, low + 4)]
    # Its own wording: the prompt shows the question only, and the warm start gives each kind its own
    # completion style and guess, which the model can follow only if it can tell the kinds apart.
    return Drawn("How many squares are in the picture?", drawn.answer, drawn.image, question_type="multi_choice",
                 choices=choices)


def _bar(rng: random.Random, canvas: int, fraction: float) -> Image.Image:
    """One bar on a baseline, ``fraction`` of the plot height tall, at a random horizontal position."""
    image, draw = _blank(canvas)
    base, top = canvas - max(2, canvas // 16), max(2, canvas // 16)
    width = canvas // 4
    x0 = rng.randint(canvas // 8, canvas - canvas // 8 - width)
    draw.line([(0, base), (canvas - 1, base)], fill=INK, width=max(1, canvas // 64))
    draw.rectangle([x0, base - round((base - top) * fraction), x0 + width, base], fill=BAR_FILL)
    return image


def _bar_height(rng: random.Random, canvas: int) -> Drawn:
    value = rng.randint(1, 9)
    return Drawn("How tall is the bar?", str(value), _bar(rng, canvas, value / 9), context="bar chart",
                 skills=("statistical reasoning",))


def _bar_value(rng: random.Random, canvas: int) -> Drawn:
    value = rng.randint(1, 9) / 2  # 0.5 ... 4.5 on a 0-5 scale
    return Drawn("What is the value of the bar?", f"{value:.1f}", _bar(rng, canvas, value / 5),
                 answer_type="float", precision=1.0, context="bar chart", skills=("statistical reasoning",))


def _color_name(rng: random.Random, canvas: int) -> Drawn:
    name = rng.choice(sorted(COLORS))
    image, draw = _blank(canvas)
    draw.ellipse([canvas // 4, canvas // 4, canvas * 3 // 4, canvas * 3 // 4], fill=COLORS[name])
    return Drawn("What color is the circle?", name, image, answer_type="text", skills=("logical reasoning",))


DRAWERS: dict[str, Callable[[random.Random, int], Drawn]] = {
    "shape count": _shape_count,
    "bar height": _bar_height,
    "bar value": _bar_value,
    "shape count choice": _shape_count_choice,
    "color name": _color_name,
}


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def offline_row(index: int, seed: int, canvas_px: int) -> dict[str, Any]:
    """Item ``index`` of the offline set as a hub-format row (before any defect is applied).

    >>> row = offline_row(0, 3407, 96)
    >>> sorted(row) == sorted(HUB_FEATURES)
    True
    """
    rng = random.Random(f"{seed}:{index}")
    kind = rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
    drawn = DRAWERS[kind](rng, canvas_px)
    pid = str(index + 1)
    return {
        "pid": pid,
        "question": drawn.question,
        "image": f"images/{pid}.png",
        "decoded_image": {"bytes": _png(drawn.image), "path": None},
        "choices": drawn.choices,
        "unit": drawn.unit,
        "precision": drawn.precision,
        "answer": drawn.answer,
        "question_type": drawn.question_type,
        "answer_type": drawn.answer_type,
        "metadata": {
            "category": "math-targeted-vqa",
            "context": drawn.context,
            "grade": "elementary school",
            "img_height": drawn.image.height,
            "img_width": drawn.image.width,
            "language": "english",
            "skills": list(drawn.skills),
            "source": "vlrl-offline",
            "split": "testmini",
            "task": kind,
        },
        "query": mathvista_query(drawn.question, drawn.question_type, drawn.answer_type, drawn.precision,
                                 drawn.unit, drawn.choices),
    }


def defect_of(index: int) -> str | None:
    """The deliberate defect of item ``index``, if any.

    >>> defect_of(7), defect_of(8)
    ('corrupt_image', None)
    """
    position = index % DEFECT_PERIOD
    return next((name for name, at in DEFECTS.items() if at == position), None)


def _apply_defect(row: dict[str, Any], defect: str, previous_pid: str, rng: random.Random) -> dict[str, Any]:
    row = dict(row)
    if defect == "corrupt_image":
        # A PNG signature followed by garbage: looks like an image, does not decode.
        row["decoded_image"] = {"bytes": b"\x89PNG\r\n\x1a\n" + rng.randbytes(64), "path": None}
    elif defect == "too_small_image":
        row["decoded_image"] = {"bytes": _png(Image.new("RGB", (4, 4), (255, 255, 255))), "path": None}
    elif defect == "missing_image":
        row["decoded_image"] = None
    elif defect == "empty_question":
        row["question"] = "  "
    elif defect == "duplicate_pid":
        row["pid"] = previous_pid
    elif defect == "missing_answer":
        row["answer"] = None
    return row


def generate_offline(n_items: int, seed: int, canvas_px: int) -> Dataset:
    """The offline MathVista-format set: ``n_items`` rows with the hub's features, broken rows included.

    >>> ds = generate_offline(20, seed=3407, canvas_px=64)
    >>> ds.features == HUB_FEATURES, len(ds)
    (True, 20)
    """
    rows = []
    for index in range(n_items):
        row = offline_row(index, seed, canvas_px)
        defect = defect_of(index)
        if defect is not None and index > 0:
            row = _apply_defect(row, defect, rows[-1]["pid"], random.Random(f"{seed}:defect:{index}"))
        rows.append(row)
    return Dataset.from_list(rows, features=HUB_FEATURES)
