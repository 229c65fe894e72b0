"""An offline MathVista-format data set: drawn pictures whose answer the picture determines.

The ``tiny`` profile cannot reach the hub, so :func:`generate_offline` draws its own items with PIL,
with exactly the hub's columns and types (:data:`vlrl.data.schema.HUB_FEATURES`). Each item comes
from one question template, its **kind**, exposed without parsing text in ``metadata.task`` (also
``metadata.context`` and ``metadata.skills``); :data:`KINDS` lists them:

======================  =============  ===========  ==================================================
kind (metadata.task)    question_type  answer_type  picture -> answer
======================  =============  ===========  ==================================================
bar value               free_form      integer      labelled bars, value written on top of each bar
shape count             free_form      integer      n circles/squares among distractors -> n
number reading          free_form      float        a decimal number written large (precision 1 or 2)
rectangle area          free_form      integer      rectangle with side labels w, h -> w*h
rectangle perimeter     free_form      float        side labels with one decimal -> 2(w+h), precision 1
shape count choice      multi_choice   integer      as shape count, four numeric choices
color name              free_form      text         one shape -> its colour (non-numeric: the filter
                                                    drops these, about 10 %)
======================  =============  ===========  ==================================================

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
from PIL import Image, ImageDraw, ImageFont

from vlrl.data.schema import HUB_FEATURES, mathvista_query

#: Question kinds and their share of items (weights; "color name" is the non-numeric ~10 %).
KINDS: dict[str, float] = {
    "bar value": 0.18,
    "shape count": 0.17,
    "number reading": 0.15,
    "rectangle area": 0.14,
    "rectangle perimeter": 0.12,
    "shape count choice": 0.14,
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
BAR_LABELS = "ABCD"


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


def _font(canvas: int, scale: float = 1.0) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=max(8, int(canvas * scale)))


def _blank(canvas: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("RGB", (canvas, canvas), (255, 255, 255))
    return image, ImageDraw.Draw(image)


def _bar_value(rng: random.Random, canvas: int) -> Drawn:
    image, draw = _blank(canvas)
    n_bars = rng.randint(3, 4)
    values = [rng.randint(1, 9) for _ in range(n_bars)]
    font = _font(canvas, 0.11)
    slot = canvas // n_bars
    base, top = int(canvas * 0.85), int(canvas * 0.15)
    draw.line([(0, base), (canvas, base)], fill=(0, 0, 0))
    for j, value in enumerate(values):
        height = (base - top) * value // 9
        x0 = j * slot + slot // 5
        draw.rectangle([x0, base - height, x0 + slot * 3 // 5, base], fill=(70, 110, 200))
        draw.text((x0, base - height - canvas // 8), str(value), fill=(0, 0, 0), font=font)
        draw.text((x0, base + 1), BAR_LABELS[j], fill=(0, 0, 0), font=font)
    j = rng.randrange(n_bars)
    return Drawn(f"What is the value of bar {BAR_LABELS[j]}?", str(values[j]), image, context="bar chart",
                 skills=("statistical reasoning",))


def _scatter_shapes(rng: random.Random, canvas: int, counts: dict[str, int]) -> Image.Image:
    """Place shapes on a grid (no overlaps, so the count is unambiguous)."""
    image, draw = _blank(canvas)
    grid = 4
    cell = canvas // grid
    cells = rng.sample(range(grid * grid), sum(counts.values()))
    shapes = [shape for shape, n in counts.items() for _ in range(n)]
    for shape, c in zip(shapes, cells, strict=True):
        x, y = (c % grid) * cell, (c // grid) * cell
        pad = cell // 5
        box = [x + pad, y + pad, x + cell - pad, y + cell - pad]
        color = COLORS[rng.choice(sorted(COLORS))]
        if shape == "circles":
            draw.ellipse(box, fill=color)
        else:
            draw.rectangle(box, fill=color)
    return image


def _shape_count(rng: random.Random, canvas: int) -> Drawn:
    target, other = rng.choice([("circles", "squares"), ("squares", "circles")])
    n = rng.randint(1, 9)
    image = _scatter_shapes(rng, canvas, {target: n, other: rng.randint(0, 3)})
    return Drawn(f"How many {target} are there?", str(n), image, skills=("arithmetic reasoning",))


def _shape_count_choice(rng: random.Random, canvas: int) -> Drawn:
    drawn = _shape_count(rng, canvas)
    n = int(drawn.answer)
    low = rng.randint(max(1, n - 3), n)
    choices = [str(v) for v in range(low, low + 4)]
    return Drawn(drawn.question, drawn.answer, drawn.image, question_type="multi_choice", choices=choices,
                 skills=drawn.skills)


def _number_reading(rng: random.Random, canvas: int) -> Drawn:
    digits = rng.choice([1, 2])
    value = round(rng.uniform(0.1, 9.9), digits)
    text = f"{value:.{digits}f}"
    image, draw = _blank(canvas)
    draw.text((canvas // 8, canvas // 3), text, fill=(0, 0, 0), font=_font(canvas, 0.3))
    return Drawn("What number is written in the image?", text, image, answer_type="float",
                 precision=float(digits), context="document image", skills=("numeric commonsense",))


def _rectangle(rng: random.Random, canvas: int, w: float, h: float, label: Callable[[float], str],
               ) -> Image.Image:
    image, draw = _blank(canvas)
    font = _font(canvas, 0.12)
    x0, y0 = canvas // 5, canvas // 5
    x1, y1 = canvas - canvas // 5, canvas - canvas // 4
    draw.rectangle([x0, y0, x1, y1], outline=(0, 0, 0), width=max(1, canvas // 48))
    draw.text(((x0 + x1) // 2 - canvas // 12, y1 + 2), label(w), fill=(0, 0, 0), font=font)
    draw.text((2, (y0 + y1) // 2 - canvas // 16), label(h), fill=(0, 0, 0), font=font)
    return image


def _rectangle_area(rng: random.Random, canvas: int) -> Drawn:
    w, h = rng.randint(2, 9), rng.randint(2, 9)
    image = _rectangle(rng, canvas, w, h, lambda v: str(int(v)))
    return Drawn("What is the area of the rectangle?", str(w * h), image, context="geometry diagram",
                 skills=("geometry reasoning", "arithmetic reasoning"))


def _rectangle_perimeter(rng: random.Random, canvas: int) -> Drawn:
    w, h = rng.randint(10, 60) / 10, rng.randint(10, 60) / 10
    image = _rectangle(rng, canvas, w, h, lambda v: f"{v:.1f}")
    return Drawn("What is the perimeter of the rectangle?", f"{2 * (w + h):.1f}", image, answer_type="float",
                 precision=1.0, context="geometry diagram",
                 skills=("geometry reasoning", "arithmetic reasoning"))


def _color_name(rng: random.Random, canvas: int) -> Drawn:
    name = rng.choice(sorted(COLORS))
    image, draw = _blank(canvas)
    draw.ellipse([canvas // 4, canvas // 4, canvas * 3 // 4, canvas * 3 // 4], fill=COLORS[name])
    return Drawn("What color is the circle?", name, image, answer_type="text", skills=("logical reasoning",))


DRAWERS: dict[str, Callable[[random.Random, int], Drawn]] = {
    "bar value": _bar_value,
    "shape count": _shape_count,
    "number reading": _number_reading,
    "rectangle area": _rectangle_area,
    "rectangle perimeter": _rectangle_perimeter,
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
