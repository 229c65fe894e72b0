"""Shared fixtures: the tiny profile's splits and a warm-started tiny Qwen3-VL, built once per session.

- ``tiny_params``: the fixture copy of params.yaml (tests/helpers.py), validated.
- ``tiny_splits``: ``vlrl.data.fetch_splits`` on the tiny profile into a temporary folder.
- ``tiny_model_dir``: the model stage's output for the tiny profile (built + warm-started, pinned).
- ``handmade_split``: a few MathVista-format rows built by hand (no vlrl.data needed).
"""

from __future__ import annotations

import random
from pathlib import Path

import datasets
import pytest
from PIL import Image, ImageDraw

from helpers import fixture_params
from vlrl.config import Params
from vlrl.data import fetch_splits


@pytest.fixture(scope="session")
def tiny_params() -> Params:
    return fixture_params()


@pytest.fixture(scope="session")
def tiny_splits(tiny_params: Params, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny_data")
    splits = root / "splits"
    fetch_splits(tiny_params.profile("tiny").data, tiny_params.seed, splits, root / "manifest.json")
    return splits


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_params: Params, tiny_splits: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vlrl.data import load_split
    from vlrl.tiny_model import build_and_warm_start

    out = tmp_path_factory.mktemp("tiny_model") / "model"
    build_and_warm_start(tiny_params.profile("tiny").model, tiny_params.prompt.template,
                         load_split(tiny_splits, "train"), tiny_params.seed, out)
    return out


def make_rows(n: int, seed: int = 0) -> list[dict]:
    """MathVista-format rows with 64x64 images and four question kinds (metadata.task)."""
    kinds = [
        ("figure question answering", "How many bars are taller than {k}?"),
        ("math word problem", "What is the sum of the numbers shown in the picture?"),
        ("geometry problem solving", "What is the length of side AB? Round to one decimal place."),
        ("textbook question answering", "How many dots are in the image?"),
    ]
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        task, question = kinds[i % len(kinds)]
        value = rng.randint(0, 20)
        image = Image.new("RGB", (64, 64), (255, 255, 255))
        draw = ImageDraw.Draw(image)
        for j in range(value % 8):
            draw.rectangle([j * 8, 60 - 3 * j - value, j * 8 + 6, 63], fill=(0, 0, 200))
        answer = str(value) if i % 3 else f"{value}.5"
        rows.append({
            "pid": str(1000 + i), "question": question.format(k=rng.randint(1, 9)), "image": image,
            "choices": None, "unit": None, "precision": 1.0 if "." in answer else None, "answer": answer,
            "question_type": "free_form", "answer_type": "float" if "." in answer else "integer",
            "metadata": {"task": task, "category": "math-targeted-vqa", "skills": ["arithmetic reasoning"]},
            "query": question,
        })
    return rows


@pytest.fixture(scope="session")
def handmade_split():
    """A factory: ``handmade_split(n, seed)`` -> datasets.Dataset of MathVista-format rows."""
    def build(n: int = 16, seed: int = 0) -> datasets.Dataset:
        return datasets.Dataset.from_list(make_rows(n, seed))

    return build
