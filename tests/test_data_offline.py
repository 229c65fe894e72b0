"""The offline MathVista-format generator: hub columns and types, deterministic, kinds, defects."""

from __future__ import annotations

import io
import re
from collections import Counter

import pytest
from datasets import Image as ImageFeature
from PIL import Image

from vlrl.data.offline import (
    BAR_FILL,
    DEFECT_PERIOD,
    DEFECTS,
    GRID,
    KINDS,
    defect_of,
    generate_offline,
    offline_row,
)
from vlrl.data.schema import HUB_FEATURES

N = 2 * DEFECT_PERIOD


def undecoded(ds):
    return ds.cast_column("decoded_image", ImageFeature(decode=False))


@pytest.fixture(scope="module")
def raw():
    return undecoded(generate_offline(N, seed=3407, canvas_px=64))


def test_features_are_the_hubs_exactly(raw) -> None:
    assert generate_offline(12, seed=1, canvas_px=48).features == HUB_FEATURES


def test_same_seed_same_bytes_other_seed_other_data(raw) -> None:
    again = undecoded(generate_offline(N, seed=3407, canvas_px=64))
    other = undecoded(generate_offline(N, seed=1, canvas_px=64))
    assert (raw.to_list() == again.to_list(), raw["answer"] == other["answer"]) == (True, False)


def test_adding_items_keeps_earlier_items() -> None:
    assert generate_offline(30, 5, 48).to_list() == generate_offline(45, 5, 48).select(range(30)).to_list()


def test_every_kind_appears_and_kind_is_in_metadata_task(raw) -> None:
    tasks = Counter(m["task"] for m in raw["metadata"])
    assert set(tasks) == set(KINDS)


def test_about_ten_percent_non_numeric_answers(raw) -> None:
    text = sum(t == "text" for t in raw["answer_type"])
    assert 0.05 * N <= text <= 0.16 * N


def test_defects_sit_at_their_positions(raw) -> None:
    rows = raw.to_list()
    for index, row in enumerate(rows):
        defect = defect_of(index)
        if defect == "missing_answer" and index:
            assert row["answer"] is None
        elif defect == "missing_image":
            assert row["decoded_image"] is None
        elif defect == "duplicate_pid":
            assert row["pid"] == rows[index - 1]["pid"]
        elif defect == "empty_question":
            assert not row["question"].strip()
    assert sorted(Counter(filter(None, map(defect_of, range(N)))).values()) == [2] * len(DEFECTS)


def _clean_rows(raw):
    return [r for i, r in enumerate(raw.to_list()) if defect_of(i) is None]


def test_answers_are_typed_like_mathvista(raw) -> None:
    for row in _clean_rows(raw):
        answer, kind = row["answer"], row["answer_type"]
        assert isinstance(answer, str)
        if kind == "integer":
            assert re.fullmatch(r"\d+", answer) and row["precision"] is None
        elif kind == "float":
            decimals = len(answer.split(".")[1])
            assert row["precision"] == float(decimals) and decimals in (1, 2)
        if row["question_type"] == "multi_choice":
            assert answer in row["choices"] and len(row["choices"]) == 4
        else:
            assert row["choices"] is None
        assert row["query"].startswith("Hint: ") and f"Question: {row['question']}" in row["query"]


def test_images_match_metadata_and_canvas(raw) -> None:
    row = offline_row(3, 3407, 64)
    image = Image.open(io.BytesIO(row["decoded_image"]["bytes"]))
    assert (image.size, row["metadata"]["img_width"], row["metadata"]["img_height"]) == ((64, 64), 64, 64)


def _dark(pixel) -> bool:
    return sum(pixel) < 3 * 128


def _read_squares(image: Image.Image) -> int:
    """A reference reader: the squares are the grid cells whose centre is dark."""
    cell = image.width / GRID
    return sum(_dark(image.getpixel((int((c % GRID + 0.5) * cell), int((c // GRID + 0.5) * cell))))
               for c in range(GRID * GRID))


def _bar_fraction(image: Image.Image) -> float:
    """A reference reader: the bar's height (coloured pixels in its tallest column) / the plot height."""
    column = max(sum(image.getpixel((x, y)) == BAR_FILL for y in range(image.height)) for x in range(image.width))
    base, top = image.height - max(2, image.height // 16), max(2, image.height // 16)
    return (column - 1) / (base - top)


READERS = {
    "shape count": lambda image: str(_read_squares(image)),
    "shape count choice": lambda image: str(_read_squares(image)),
    "bar height": lambda image: str(round(_bar_fraction(image) * 9)),
    "bar value": lambda image: f"{round(_bar_fraction(image) * 10) / 2:.1f}",
}


@pytest.mark.parametrize("canvas", [pytest.param(64, id="tiny-profile-canvas"), pytest.param(96, id="larger-canvas")])
def test_the_answer_can_be_read_off_the_picture_alone(canvas) -> None:
    """Every numeric kind's answer is recovered from the pixels by a few lines of reading code."""
    rows = [offline_row(i, 11, canvas) for i in range(200)]
    read = Counter()
    for row in rows:
        kind = row["metadata"]["task"]
        if kind in READERS:
            image = Image.open(io.BytesIO(row["decoded_image"]["bytes"])).convert("RGB")
            assert READERS[kind](image) == row["answer"], (kind, row["pid"])
            read[kind] += 1
    assert set(read) == set(READERS)


def test_each_kind_asks_one_fixed_question() -> None:
    """The question text cannot carry the answer: one wording per kind, and no two kinds share one."""
    questions: dict[str, set[str]] = {}
    for i in range(300):
        row = offline_row(i, 3, 64)
        questions.setdefault(row["metadata"]["task"], set()).add(row["question"])
    assert all(len(q) == 1 for q in questions.values()), questions
    wordings = [next(iter(q)) for q in questions.values()]
    assert len(set(wordings)) == len(wordings)


def test_question_vocabulary_is_small(raw) -> None:
    words = {w for q in raw["question"] for w in re.findall(r"[a-z]+", q.lower())}
    assert len(words) <= 40
