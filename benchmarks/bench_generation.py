"""Benchmark: batched vs one-at-a-time generation on the tiny model, and scoring throughput.

    .venv/bin/python benchmarks/bench_generation.py [--batch-size 16] [--single-n 48] [--threads N]

Uses data/tiny/{splits,model} when the pipeline has produced them, else builds both in a temporary
folder (fetch + model stage logic, ~15 s). Prints samples/s for each mode and their ratio (target:
>= 8x at batch 16 on 2 CPU cores), and examples/s for scoring. Numbers, not asserts.

Each mode runs ``--repeats`` times, interleaved, and the best run counts (as ``timeit`` does): on a
shared machine other processes only ever slow a run down, and torch's threads suffer badly when a
core is taken. The 1-minute load average is printed so that a noisy measurement can be recognised.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import tempfile
import time
from pathlib import Path

import torch

from vlrl.config import load_params
from vlrl.data import fetch_splits, load_split
from vlrl.generation import generate_completions
from vlrl.modeling import load_model_and_processor
from vlrl.scoring import score_generations
from vlrl.tiny_model import build_and_warm_start

ROOT = Path(__file__).resolve().parents[1]


def _inputs(params, workdir: Path) -> tuple[Path, Path]:
    splits, model_dir = ROOT / "data/tiny/splits", ROOT / "data/tiny/model"
    if splits.is_dir() and (model_dir / "model_pin.json").is_file():
        return splits, model_dir
    profile = params.profile("tiny")
    splits, model_dir = workdir / "splits", workdir / "model"
    fetch_splits(profile.data, params.seed, splits, workdir / "manifest.json")
    build_and_warm_start(profile.model, params.prompt.template, load_split(splits, "train"), params.seed,
                         model_dir)
    return splits, model_dir


def _rate(model, processor, split, params, generation) -> tuple[float, list[dict]]:
    started = time.perf_counter()
    records = generate_completions(model, processor, split, prompt_template=params.prompt.template,
                                   generation=generation, seed=params.seed, progress=False)
    return len(records) / (time.perf_counter() - started), records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--single-n", type=int, default=48, help="examples generated one at a time")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads while generating (default: params generation.cpu_threads)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    params = load_params(ROOT / "params.yaml")
    profile = params.profile("tiny")

    with tempfile.TemporaryDirectory() as tmp:
        splits, model_dir = _inputs(params, Path(tmp))
        eval_split = load_split(splits, "eval")
        model, processor = load_model_and_processor(profile.model, model_dir)
        threads = args.threads or profile.generation.cpu_threads or torch.get_num_threads()
        batched_params = dataclasses.replace(profile.generation, batch_size=args.batch_size,
                                             cpu_threads=threads)
        single_params = dataclasses.replace(batched_params, batch_size=1)
        _rate(model, processor, eval_split.select(range(4)), params, single_params)  # warm-up

        single_split = eval_split.select(range(min(args.single_n, len(eval_split))))
        batched_rate = single_rate = 0.0
        for _ in range(args.repeats):
            rate, batched = _rate(model, processor, eval_split, params, batched_params)
            batched_rate = max(batched_rate, rate)
            rate, single = _rate(model, processor, single_split, params, single_params)
            single_rate = max(single_rate, rate)
        same = batched[:len(single)] == single

        rounds, started = 0, time.perf_counter()
        while time.perf_counter() - started < 2.0:
            score_generations(batched, eval_split, params.rewards)
            rounds += 1
        scoring_rate = rounds * len(batched) / (time.perf_counter() - started)

    tokens = sum(r["completion_tokens"] for r in batched) / len(batched)
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"tiny model, {threads} torch thread(s) while generating, eval split n={len(eval_split)}, "
          f"max_new_tokens={profile.generation.max_new_tokens}, mean completion tokens {tokens:.1f}")
    best = f"best of {args.repeats}"
    print(f"generation batched (batch {args.batch_size}): {batched_rate:8.1f} samples/s ({best})")
    print(f"generation one at a time (n={len(single)}):   {single_rate:8.1f} samples/s ({best})")
    print(f"batched / one-at-a-time ratio:          {batched_rate / single_rate:8.1f}x")
    print(f"batched outputs == one-at-a-time outputs: {same}")
    print(f"scoring: {scoring_rate:10.0f} examples/s ({rounds} rounds of {len(batched)})")


if __name__ == "__main__":
    main()
