"""The one transform both sources go through: bad-row checks, the numeric-answer filter, resize + RGB.

Steps, in order; each drops rows with a reason and the manifest records ``rows_after_<step>``:

1. ``unique_pid``: ``duplicate_pid`` (the first row with a pid is kept).
2. ``numeric_answer``: ``missing_answer`` (None or blank), ``non_numeric_answer``. The reference
   notebook keeps a row when ``float(answer)`` parses; on MathVista testmini that keeps 566 of 1,000
   rows (docs/reference-experiment.md). Like the reference we keep everything ``float()`` accepts, including "nan",
   "inf", "1e3" and " 7 "; non-finite answers are counted in the manifest (``nonfinite_answers_kept``)
   so that a data change bringing them in is visible. The gold string itself is never rewritten.
3. ``question``: ``empty_question`` (None or blank).
4. ``image``: ``missing_image``, ``undecodable_image`` (corrupt or unreadable bytes),
   ``image_too_small`` (shorter side < ``min_image_side``, checked on the original image).

Kept rows are converted to RGB and resized to ``image_size`` x ``image_size`` ignoring the aspect
ratio, as the reference does (it resizes to 512x512, then converts to RGB; we convert first so that
palette images are interpolated in RGB rather than resized with nearest-neighbour, and resize with
bicubic, PIL's default). Images are stored as lossless PNG bytes (zlib level 1, for speed).

Decoding is done here, not by ``datasets``, so a corrupt image drops one row with a reason instead of
failing the whole run.
"""

from __future__ import annotations

import hashlib
import io
import math
import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm.auto import tqdm

from vlrl.errors import CorruptInputError
from vlrl.mathvista import ANSWER_TYPES, QUESTION_TYPES

#: The steps, in order (manifest keys ``rows_after_<step>``).
STEPS = ("unique_pid", "numeric_answer", "question", "item_fields", "image")

#: Every drop reason, per step.
REASONS = {
    "unique_pid": ("missing_pid", "duplicate_pid"),
    "numeric_answer": ("missing_answer", "non_numeric_answer"),
    "question": ("empty_question",),
    "item_fields": ("unknown_question_type", "unknown_answer_type", "choices_missing", "answer_not_a_choice",
                    "bad_precision"),
    "image": ("missing_image", "image_outside_source", "image_too_large", "undecodable_image", "image_too_small"),
}

#: The largest image file read (bytes). MathVista's largest testmini image is about 18 megapixels; a
#: row naming something bigger (or /dev/zero) is dropped instead of exhausting memory.
MAX_IMAGE_BYTES = 64 * 2**20


class NoRowsLeftError(CorruptInputError):
    """Every row was dropped: nothing to split."""


@dataclass
class TransformResult:
    """Kept rows (split schema, image as PNG bytes) and what happened to the others."""

    rows: list[dict[str, Any]]
    rows_in: int
    rows_after: dict[str, int]
    dropped_rows: list[dict[str, str]] = field(default_factory=list)
    nonfinite_answers_kept: int = 0
    source_sha256: str = ""

    @property
    def dropped(self) -> dict[str, int]:
        counts = Counter(d["reason"] for d in self.dropped_rows)
        return {reason: counts.get(reason, 0) for step in STEPS for reason in REASONS[step]}


def parses_as_float(answer: str) -> bool:
    """The reference's numeric-answer filter: does ``float(answer)`` succeed?

    >>> parses_as_float("991"), parses_as_float("1.5"), parses_as_float("nan"), parses_as_float("(A)")
    (True, True, True, False)
    """
    try:
        float(answer)
    except (TypeError, ValueError):
        return False
    return True


def _is_blank(text: str | None) -> bool:
    return text is None or not str(text).strip()


def _read_confined(path_text: str, image_root: Path | None) -> tuple[bytes | None, str | None]:
    """The bytes of an image file a row names, only inside ``image_root`` and only up to the size cap."""
    if image_root is None:
        return None, "image_outside_source"
    root = image_root.resolve()
    path = (root / path_text).resolve()  # an absolute path_text stays absolute
    if not path.is_relative_to(root):
        return None, "image_outside_source"
    try:
        if not path.is_file():  # also refuses devices and FIFOs such as /dev/zero
            return None, "undecodable_image"
        if path.stat().st_size > MAX_IMAGE_BYTES:
            return None, "image_too_large"
        with path.open("rb") as handle:
            return handle.read(MAX_IMAGE_BYTES + 1), None
    except OSError:
        return None, "undecodable_image"


def image_bytes(value: Any, image_root: Path | None = None) -> tuple[bytes | None, str | None]:
    """(raw bytes, None) of a source image cell, or (None, drop reason).

    A cell is {"bytes", "path"} (``Image(decode=False)``), bytes, or a PIL image. Bytes in the row are
    used as they are (up to :data:`MAX_IMAGE_BYTES`); a path is read only when it lies inside
    ``image_root``, the local mirror's own folder: a row cannot pull in other files of the machine.

    >>> image_bytes({"bytes": None, "path": "/etc/passwd"}, Path("/mirror"))
    (None, 'image_outside_source')
    >>> image_bytes(None)
    (None, 'missing_image')
    """
    if isinstance(value, Image.Image):
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        value = buffer.getvalue()
    if isinstance(value, dict):
        if value.get("bytes"):
            value = value["bytes"]
        elif value.get("path"):
            value, problem = _read_confined(str(value["path"]), image_root)
            if problem is not None:
                return None, problem
    if isinstance(value, bytes | bytearray):
        return (bytes(value), None) if len(value) <= MAX_IMAGE_BYTES else (None, "image_too_large")
    return None, "missing_image"


def _precision_ok(precision: Any) -> bool:
    """None, or a finite, non-negative, integer-valued number of decimals (the hub stores it as a float)."""
    if precision is None:
        return True
    if isinstance(precision, bool) or not isinstance(precision, int | float):
        return False
    return math.isfinite(precision) and precision >= 0 and float(precision).is_integer()


def decode_image(data: bytes) -> Image.Image | None:
    """Decode image bytes fully (``load()``), or None if they are corrupt/truncated/unreadable.

    >>> decode_image(b"not an image") is None
    True
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. PIL's DecompressionBombWarning, EXIF warnings
            image = Image.open(io.BytesIO(data))
            image.load()
        return image
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None


def to_model_image(image: Image.Image, image_size: int) -> bytes:
    """RGB, ``image_size`` x ``image_size`` (aspect ratio ignored, as the reference), as PNG bytes.

    >>> from PIL import Image as I
    >>> png = to_model_image(I.new("P", (187, 18)), 64)
    >>> I.open(io.BytesIO(png)).size, I.open(io.BytesIO(png)).mode
    ((64, 64), 'RGB')
    """
    rgb = image.convert("RGB")
    if rgb.size != (image_size, image_size):
        rgb = rgb.resize((image_size, image_size), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    # Lossless PNG at zlib level 1: PNG encoding dominates the transform's time and level 6 (PIL's
    # default) is ~2.3x slower for ~6 % smaller files (benchmarks/bench_transform.py).
    rgb.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _drop_reason(row: dict[str, Any], seen: set[str], image_problem: str | None) -> tuple[str, str] | None:
    """(step, reason) of the first check the row fails, in :data:`STEPS` order; None if it passes
    every check but the image decode (done by the caller, as it is the expensive one)."""
    if _is_blank(row.get("pid")):
        return "unique_pid", "missing_pid"
    if row["pid"] in seen:
        return "unique_pid", "duplicate_pid"
    if _is_blank(row.get("answer")):
        return "numeric_answer", "missing_answer"
    if not parses_as_float(row["answer"]):
        return "numeric_answer", "non_numeric_answer"
    if _is_blank(row.get("question")):
        return "question", "empty_question"
    fields = _item_fields_problem(row)
    if fields is not None:
        return "item_fields", fields
    if image_problem is not None:
        return "image", image_problem
    return None


def _item_fields_problem(row: dict[str, Any]) -> str | None:
    """Rows the answer checks could not judge as MathVista does: unknown enums, inconsistent choices."""
    if row.get("question_type") not in QUESTION_TYPES:
        return "unknown_question_type"
    if row.get("answer_type") not in ANSWER_TYPES:
        return "unknown_answer_type"
    if row["question_type"] == "multi_choice":
        choices = row.get("choices")
        if not isinstance(choices, list | tuple) or not choices:
            return "choices_missing"
        if str(row["answer"]) not in [str(c) for c in choices]:
            return "answer_not_a_choice"
    if not _precision_ok(row.get("precision")):
        return "bad_precision"
    return None


def _length(rows: Iterable) -> int | None:
    try:
        return len(rows)  # type: ignore[arg-type]
    except TypeError:
        return None


def _hash_row(hasher: Any, row: dict[str, Any], image_bytes: bytes | None) -> None:
    for value in (row.get("pid"), row.get("question"), row.get("answer")):
        hasher.update(repr(value).encode("utf-8"))
    hasher.update(hashlib.sha256(image_bytes or b"").digest())


def transform_rows(rows: Iterable[dict[str, Any]], image_size: int, min_image_side: int,
                   image_root: Path | None = None, progress: bool = True) -> TransformResult:
    """Run the transform over hub-format rows (``decoded_image`` undecoded: {"bytes", "path"}).

    ``image_root``: the folder a local mirror's image paths may point into (None: bytes only).

    Returns the kept rows in the split schema, counts after each step, the dropped rows with reasons
    and a SHA-256 over every source row (pid, question, answer, image bytes): the source fingerprint.

    >>> from vlrl.data.offline import generate_offline
    >>> from datasets import Image as I
    >>> raw = generate_offline(20, 3407, 64).cast_column("decoded_image", I(decode=False))
    >>> result = transform_rows(raw, image_size=32, min_image_side=8, progress=False)
    >>> result.rows_in, result.rows_after["image"] == len(result.rows)
    (20, True)
    """
    seen: set[str] = set()
    kept: list[dict[str, Any]] = []
    dropped: list[dict[str, str]] = []
    dropped_at = Counter()
    hasher = hashlib.sha256()
    rows_in = nonfinite = 0
    for row in tqdm(rows, desc="transform", unit="row", disable=not progress, total=_length(rows)):
        rows_in += 1
        data, image_problem = image_bytes(row.get("decoded_image"), image_root)
        _hash_row(hasher, row, data)
        failed = _drop_reason(row, seen, image_problem)
        seen.add(row.get("pid"))
        image = None
        if failed is None:
            image = decode_image(data)
            if image is None:
                failed = ("image", "undecodable_image")
            elif min(image.size) < min_image_side:
                failed = ("image", "image_too_small")
        if failed is not None:
            step, reason = failed
            dropped_at[step] += 1
            dropped.append({"pid": str(row["pid"]), "reason": reason})
            continue
        if not math.isfinite(float(row["answer"])):
            nonfinite += 1
        kept.append({
            "pid": row["pid"],
            "question": row["question"],
            "image": {"bytes": to_model_image(image, image_size), "path": None},
            "image_path": row.get("image"),
            "choices": row.get("choices"),
            "unit": row.get("unit"),
            "precision": row.get("precision"),
            "answer": row["answer"],
            "question_type": row["question_type"],
            "answer_type": row["answer_type"],
            "metadata": row.get("metadata"),
            "query": row.get("query"),
        })
    rows_after, remaining = {}, rows_in
    for step in STEPS:
        remaining -= dropped_at[step]
        rows_after[step] = remaining
    if not kept:
        reasons = ", ".join(f"{r}: {n}" for r, n in Counter(d["reason"] for d in dropped).most_common())
        raise NoRowsLeftError(f"data transform: all {rows_in} source rows were dropped "
                              f"({reasons or 'no rows'}); "
                              "check the source (data.source and its section in params.yaml) and "
                              "data.min_image_side")
    return TransformResult(rows=kept, rows_in=rows_in, rows_after=rows_after, dropped_rows=dropped,
                           nonfinite_answers_kept=nonfinite, source_sha256=hasher.hexdigest())
