"""The offline MathVista-format generator: hub columns and types, deterministic, kinds, defects."""

from __future__ import annotations

import io
import re
from collections import Counter

import pytest
from datasets import Image as ImageFeature
from PIL import Image

from vlrl.data.offline import DEFECT_PERIOD, DEFECTS, KINDS, defect_of, generate_offline, offline_row
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


def test_number_reading_picture_is_a_function_of_its_answer() -> None:
    # The question text is constant for this kind, so the answer must come from the picture:
    # equal answers give equal pictures, different answers different pictures.
    rows = [offline_row(i, 11, 64) for i in range(400)]
    by_answer: dict[str, set[bytes]] = {}
    for row in rows:
        if row["metadata"]["task"] == "number reading":
            by_answer.setdefault(row["answer"], set()).add(row["decoded_image"]["bytes"])
    pictures = [p for ps in by_answer.values() for p in ps]
    assert len(by_answer) > 10 and all(len(ps) == 1 for ps in by_answer.values())
    assert len(set(pictures)) == len(pictures)


def test_question_vocabulary_is_small(raw) -> None:
    words = {w for q in raw["question"] for w in re.findall(r"[a-z]+", q.lower())}
    assert len(words) <= 40
