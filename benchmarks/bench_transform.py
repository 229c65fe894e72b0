"""Rows per second of the data transform (decode, checks, RGB, resize to 512x512, PNG encode).

    python benchmarks/bench_transform.py [--rows 200] [--image-size 512]

Two inputs, both through :func:`vlrl.data.transform.transform_rows`:

1. ``offline@512``: the offline generator with a 512 px canvas (PNG drawings, already 512x512);
2. ``hub-like``: synthetic photos/figures like MathVista's (JPEG and PNG, 187x18 up to 1500x2000,
   noisy content so that compression behaves like real images).

Prints rows/s and MB of output PNG per row; no timing asserts (numbers depend on the machine).
"""

from __future__ import annotations

import argparse
import io
import platform
import time

import numpy as np
from datasets import Dataset
from datasets import Image as ImageFeature
from PIL import Image

from vlrl.data.offline import generate_offline
from vlrl.data.schema import HUB_FEATURES, mathvista_query
from vlrl.data.transform import transform_rows

SIZES = [(640, 480), (1500, 2000), (187, 18), (1024, 768), (800, 800)]


def hub_like_rows(n: int, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        width, height = SIZES[i % len(SIZES)]
        # Smooth gradient + noise: compresses like a real chart/photo, unlike a flat colour.
        base = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
        pixels = np.clip(base + rng.normal(0, 20, (height, width, 3)), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG" if i % 2 else "PNG")
        rows.append({
            "pid": str(i + 1), "question": "What is the value?", "image": f"images/{i + 1}.jpg",
            "decoded_image": {"bytes": buffer.getvalue(), "path": None}, "choices": None, "unit": None,
            "precision": None, "answer": str(i), "question_type": "free_form", "answer_type": "integer",
            "metadata": {"category": "math-targeted-vqa", "context": "bar chart", "grade": "college",
                         "img_height": height, "img_width": width, "language": "english", "skills": [],
                         "source": "bench", "split": "testmini", "task": "figure question answering"},
            "query": mathvista_query("What is the value?", "free_form", "integer", None),
        })
    return Dataset.from_list(rows, features=HUB_FEATURES)


def bench(name: str, dataset: Dataset, image_size: int) -> None:
    dataset = dataset.cast_column("decoded_image", ImageFeature(decode=False))
    start = time.perf_counter()
    result = transform_rows(dataset, image_size=image_size, min_image_side=8)
    seconds = time.perf_counter() - start
    out_mb = sum(len(r["image"]["bytes"]) for r in result.rows) / 1e6
    per_row = out_mb / max(1, len(result.rows))
    print(f"{name:>12}: {result.rows_in} rows in, {len(result.rows)} kept, {seconds:.2f} s, "
          f"{result.rows_in / seconds:.1f} rows/s, {per_row:.3f} MB PNG per kept row")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=512)
    args = parser.parse_args()
    machine = platform.processor() or platform.machine()
    print(f"transform to {args.image_size}x{args.image_size} on {machine}, "
          f"Python {platform.python_version()}")
    start = time.perf_counter()
    offline = generate_offline(args.rows, seed=3407, canvas_px=512)
    print(f"{'generate':>12}: {args.rows} offline items at canvas 512 in {time.perf_counter() - start:.2f} s")
    bench("offline@512", offline, args.image_size)
    bench("hub-like", hub_like_rows(args.rows), args.image_size)


if __name__ == "__main__":
    main()
