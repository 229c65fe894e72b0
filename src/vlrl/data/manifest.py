"""The data manifest: what was read, what was dropped and why, and what each split holds.

Written to ``metrics/<profile>/manifest.json`` (declared as DVC metrics: numeric leaves diff, e.g.
``rows_after_numeric_answer`` or ``splits.eval.n``) and also inside the splits folder. Keys:

- ``source`` (offline | hub | local), ``source_params`` (what identifies it: n_items/canvas_px, hub
  path/split, local path/split), ``revision`` (hub revision, else null), ``source_fingerprint``
  (SHA-256 over every source row's pid, question, answer and image bytes: changes when the data does);
- ``rows_in``, ``rows_after_<step>`` for each transform step (vlrl.data.transform.STEPS);
- ``dropped`` (reason -> count, every reason listed) and ``dropped_rows`` (list of {pid, reason});
- ``nonfinite_answers_kept`` (answers like "nan"/"inf" that ``float()`` accepts and the reference keeps);
- ``image_size``, ``min_image_side``, ``eval_fraction``, ``seed``;
- ``splits``: {train, eval}: {n, pid_sha256 (SHA-256 of the sorted pids, one per line),
  by_question_type, by_answer_type, by_task (counts; every known question/answer type listed)}.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from typing import Any

from vlrl.data.transform import TransformResult
from vlrl.mathvista import ANSWER_TYPES, QUESTION_TYPES


def pid_sha256(pids: Sequence[str]) -> str:
    """SHA-256 of the sorted pids, one per line (order-independent identity of a split).

    >>> pid_sha256(["2", "1"]) == pid_sha256(["1", "2"])
    True
    """
    return hashlib.sha256("".join(f"{pid}\n" for pid in sorted(pids)).encode()).hexdigest()


def _counts(values: Sequence[str], known: Sequence[str] = ()) -> dict[str, int]:
    counts = Counter(values)
    return {key: counts.get(key, 0) for key in [*known, *sorted(set(counts) - set(known))]}


def split_summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Counts and pid hash of one split.

    >>> split_summary([{"pid": "1", "question_type": "free_form", "answer_type": "integer",
    ...                 "metadata": {"task": "bar value"}}])["by_answer_type"]["integer"]
    1
    """
    return {
        "n": len(rows),
        "pid_sha256": pid_sha256([r["pid"] for r in rows]),
        "by_question_type": _counts([r["question_type"] for r in rows], QUESTION_TYPES),
        "by_answer_type": _counts([r["answer_type"] for r in rows], ANSWER_TYPES),
        "by_task": _counts([str((r.get("metadata") or {}).get("task")) for r in rows]),
    }


def build_manifest(*, source: str, source_params: dict[str, Any], revision: str | None,
                   result: TransformResult, train: Sequence[dict[str, Any]], eval_: Sequence[dict[str, Any]],
                   image_size: int, min_image_side: int, eval_fraction: float, seed: int) -> dict[str, Any]:
    """The manifest dict (flat-ish; numbers are numeric leaves so that ``dvc metrics diff`` lines up)."""
    manifest: dict[str, Any] = {
        "source": source,
        "source_params": source_params,
        "revision": revision,
        "source_fingerprint": result.source_sha256,
        "rows_in": result.rows_in,
    }
    manifest.update({f"rows_after_{step}": n for step, n in result.rows_after.items()})
    manifest.update({
        "dropped": result.dropped,
        "nonfinite_answers_kept": result.nonfinite_answers_kept,
        "image_size": image_size,
        "min_image_side": min_image_side,
        "eval_fraction": eval_fraction,
        "seed": seed,
        "splits": {"train": split_summary(train), "eval": split_summary(eval_)},
        "dropped_rows": result.dropped_rows,
    })
    return manifest
