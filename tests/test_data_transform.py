"""The one transform: bad rows dropped with a reason, the numeric-answer filter, resize + RGB."""

from __future__ import annotations

import io

import pytest
from datasets import Dataset
from datasets import Image as ImageFeature
from PIL import Image

from vlrl.data.schema import HUB_FEATURES, mathvista_query
from vlrl.data.transform import STEPS, NoRowsLeftError, parses_as_float, transform_rows


def png(size: tuple[int, int] = (40, 30), mode: str = "RGB", fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format=fmt)
    return buffer.getvalue()


def hub_row(pid: str, **changes) -> dict:
    """One row with the hub's columns and types (docs/mathvista.md)."""
    row = {
        "pid": pid, "question": "How many circles are there?", "image": f"images/{pid}.jpg",
        "decoded_image": {"bytes": png(), "path": None}, "choices": None, "unit": None, "precision": None,
        "answer": "3", "question_type": "free_form", "answer_type": "integer",
        "metadata": {"category": "math-targeted-vqa", "context": "synthetic scene",
                     "grade": "elementary school", "img_height": 30, "img_width": 40, "language": "english",
                     "skills": ["arithmetic reasoning"], "source": "test", "split": "testmini",
                     "task": "shape count"},
        "query": mathvista_query("How many circles are there?", "free_form", "integer", None),
    }
    row.update(changes)
    return row


def run(rows: list[dict], image_size: int = 32, min_image_side: int = 8):
    ds = Dataset.from_list(rows, features=HUB_FEATURES)
    ds = ds.cast_column("decoded_image", ImageFeature(decode=False))
    return transform_rows(ds, image_size=image_size, min_image_side=min_image_side)


@pytest.mark.parametrize(("bad", "reason"), [
    pytest.param(hub_row("1", answer="4"), "duplicate_pid", id="duplicate-pid-keeps-first"),
    pytest.param(hub_row("2", answer=None), "missing_answer", id="answer-none"),
    pytest.param(hub_row("2", answer="  "), "missing_answer", id="answer-blank"),
    pytest.param(hub_row("2", answer="(A)"), "non_numeric_answer", id="answer-text"),
    pytest.param(hub_row("2", answer="[1, 2]"), "non_numeric_answer", id="answer-list"),
    pytest.param(hub_row("2", question=""), "empty_question", id="question-empty"),
    pytest.param(hub_row("2", question=None), "empty_question", id="question-none"),
    pytest.param(hub_row("2", decoded_image=None), "missing_image", id="image-none"),
    pytest.param(hub_row("2", decoded_image={"bytes": b"\x89PNG\r\n\x1a\ngarbage", "path": None}),
                 "undecodable_image", id="image-corrupt-bytes"),
    pytest.param(hub_row("2", decoded_image={"bytes": png()[:60], "path": None}), "undecodable_image",
                 id="image-truncated"),
    pytest.param(hub_row("2", decoded_image={"bytes": None, "path": "/nonexistent/x.png"}),
                 "image_outside_source", id="image-path-without-a-mirror-folder-is-never-read"),
    pytest.param(hub_row("2", decoded_image={"bytes": png((7, 100)), "path": None}), "image_too_small",
                 id="image-side-below-min"),
])
def test_bad_row_is_dropped_with_its_reason(bad: dict, reason: str) -> None:
    result = run([hub_row("1"), bad])
    assert ([r["pid"] for r in result.rows], result.dropped_rows) == (
        ["1"], [{"pid": bad["pid"], "reason": reason}])


def test_counts_after_each_step_are_cumulative_and_every_reason_is_listed() -> None:
    rows = [hub_row("1"), hub_row("1"), hub_row("2", answer="x"), hub_row("3", question=" "),
            hub_row("4", decoded_image=None), hub_row("5")]
    result = run(rows)
    after = dict(zip(STEPS, [5, 4, 3, 3, 2], strict=True))
    assert (result.rows_in, result.rows_after, result.dropped) == (6, after, {
        "missing_pid": 0, "duplicate_pid": 1, "missing_answer": 0, "non_numeric_answer": 1, "empty_question": 1,
        "unknown_question_type": 0, "unknown_answer_type": 0, "choices_missing": 0, "answer_not_a_choice": 0,
        "bad_precision": 0, "missing_image": 1, "image_outside_source": 0, "image_too_large": 0,
        "undecodable_image": 0, "image_too_small": 0})


@pytest.mark.parametrize(("answer", "kept"), [
    pytest.param("991", True, id="integer"),
    pytest.param("0.0", True, id="float-zero-testmini-pid"),
    pytest.param("-2.5", True, id="negative"),
    pytest.param("1e3", True, id="exponent-float-accepts"),
    pytest.param(" 7 ", True, id="whitespace-float-accepts"),
    pytest.param("1_000", True, id="underscore-float-accepts"),
    pytest.param("nan", True, id="nan-kept-like-reference"),
    pytest.param("inf", True, id="inf-kept-like-reference"),
    pytest.param("145°", False, id="degree-sign"),
    pytest.param("1/2", False, id="fraction"),
    pytest.param("Yes", False, id="word"),
])
def test_numeric_filter_is_exactly_float_parse(answer: str, kept: bool) -> None:
    assert parses_as_float(answer) is kept
    result = run([hub_row("0"), hub_row("1", answer=answer)])
    assert ("1" in [r["pid"] for r in result.rows]) is kept


def test_nonfinite_answers_are_kept_and_counted_and_gold_string_untouched() -> None:
    result = run([hub_row("1", answer="nan"), hub_row("2", answer=" 7 "), hub_row("3", answer="inf")])
    assert ([r["answer"] for r in result.rows], result.nonfinite_answers_kept) == (["nan", " 7 ", "inf"], 2)


@pytest.mark.parametrize(("size", "mode", "fmt"), [
    pytest.param((187, 18), "L", "PNG", id="wide-grey-like-testmini-669"),
    pytest.param((300, 500), "RGBA", "PNG", id="rgba-portrait"),
    pytest.param((64, 64), "P", "PNG", id="palette"),
    pytest.param((800, 600), "RGB", "JPEG", id="jpeg"),
    pytest.param((32, 32), "RGB", "PNG", id="already-target-size"),
])
def test_kept_images_are_rgb_square_of_image_size(size, mode, fmt) -> None:
    result = run([hub_row("1", decoded_image={"bytes": png(size, mode, fmt), "path": None})], image_size=32)
    image = Image.open(io.BytesIO(result.rows[0]["image"]["bytes"]))
    assert (image.mode, image.size) == ("RGB", (32, 32))


def test_nothing_left_raises_a_clear_error() -> None:
    with pytest.raises(NoRowsLeftError, match=r"all 2 source rows were dropped \(non_numeric_answer: 2\)"):
        run([hub_row("1", answer="a"), hub_row("2", answer="b")])


def test_source_fingerprint_changes_with_image_bytes_only_when_they_change() -> None:
    same = run([hub_row("1")]).source_sha256
    assert run([hub_row("1")]).source_sha256 == same
    other = run([hub_row("1", decoded_image={"bytes": png((41, 30)), "path": None})]).source_sha256
    assert other != same


def test_kept_row_carries_hub_columns_into_split_schema() -> None:
    row = hub_row("9", choices=["2", "3"], question_type="multi_choice", answer="3", unit="cm")
    kept = run([row]).rows[0]
    columns = ("pid", "image_path", "choices", "unit", "answer", "question_type", "metadata")
    assert {k: kept[k] for k in columns} == {
        "pid": "9", "image_path": "images/9.jpg", "choices": ["2", "3"], "unit": "cm", "answer": "3",
        "question_type": "multi_choice", "metadata": row["metadata"]}
