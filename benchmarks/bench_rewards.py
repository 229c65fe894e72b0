"""Reward throughput of vlrl.rewards vs the notebook-style implementation, typical and adversarial inputs.

    .venv/bin/python benchmarks/bench_rewards.py

Prints completions per second of format + correctness reward for:

- typical completions (~1 KB: a reasoning paragraph and a SOLUTION block);
- adversarial completions of 1 MB (``"<SOLUTION>" * 100_000`` style: many opening tags, no closing tag),
  where the reference's lazy ``re.findall`` is quadratic.

The notebook-style implementation is ``tests/naive_reference.py`` (``re.findall`` on f-string patterns in
every call, as the reference notebook writes it; ``re`` caches the compiled pattern, so "per call" costs
a cache lookup, not a compilation). It is far too slow on 1 MB, so it is timed on smaller adversarial
sizes (doubling, until one call takes over ``--naive-budget`` seconds); the printed 1 MB figure for it is an
extrapolation from the largest size, with the growth exponent measured over the last doubling.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from naive_reference import naive_correctness_reward, naive_format_reward  # noqa: E402
from vlrl.rewards import correctness_reward, format_reward  # noqa: E402

RewardPair = Callable[[list[str], list[str]], None]


def ours(completions: list[str], answers: list[str]) -> None:
    format_reward(completions)
    correctness_reward(completions, answer=answers)


def notebook(completions: list[str], answers: list[str]) -> None:
    naive_format_reward(completions)
    naive_correctness_reward(completions, answer=answers)


def typical_completion(i: int) -> str:
    reasoning = (f"The chart has {i % 7 + 3} bars. Reading the y-axis, the tallest bar ends just below the "
                 "1000 gridline; its label says 991. The other bars are shorter, so the maximum is 991. ") * 6
    return f"<REASONING>{reasoning}</REASONING>\n<SOLUTION>{991 + i % 2}</SOLUTION>"


def adversarial_completion(n_chars: int) -> str:
    tag = "<SOLUTION>"
    return (tag * (n_chars // len(tag) + 1))[:n_chars]


def per_second(func: RewardPair, completions: list[str], answers: list[str],
               min_seconds: float = 0.5) -> float:
    """Completions scored per second (repeats the batch until ``min_seconds`` have passed)."""
    done, start = 0, time.perf_counter()
    while True:
        func(completions, answers)
        done += len(completions)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return done / elapsed


def seconds_per_call(func: RewardPair, completion: str) -> float:
    start = time.perf_counter()
    func([completion], ["991"])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--naive-budget", type=float, default=4.0,
                        help="stop growing the notebook-style adversarial input once a call takes this long")
    args = parser.parse_args()

    typical = [typical_completion(i) for i in range(256)]
    answers = ["991"] * len(typical)
    size = sum(map(len, typical)) / len(typical)
    ours_typical = per_second(ours, typical, answers)
    naive_typical = per_second(notebook, typical, answers)
    print(f"typical completions (~{size:.0f} chars, batch of {len(typical)}):")
    print(f"  vlrl.rewards    {ours_typical:12,.0f} completions/s")
    print(f"  notebook-style  {naive_typical:12,.0f} completions/s")
    print(f"  ratio (ours / notebook) {ours_typical / naive_typical:.2f}x")

    megabyte = 1_000_000
    ours_mb = min(seconds_per_call(ours, adversarial_completion(megabyte)) for _ in range(5))
    print(f"\nadversarial completion, {megabyte:,} chars ('<SOLUTION>' repeated, never closed):")
    print(f"  vlrl.rewards    {1 / ours_mb:12,.1f} completions/s  ({ours_mb * 1e3:.2f} ms per completion)")

    n_chars, timings = 1_000, []
    while True:
        elapsed = seconds_per_call(notebook, adversarial_completion(n_chars))
        timings.append((n_chars, elapsed))
        ours_here = min(seconds_per_call(ours, adversarial_completion(n_chars)) for _ in range(3))
        print(f"  notebook-style at {n_chars:>9,} chars: {elapsed * 1e3:10.1f} ms per completion "
              f"(vlrl.rewards {ours_here * 1e3:.3f} ms, ratio {elapsed / ours_here:,.0f}x)")
        if elapsed > args.naive_budget or n_chars >= megabyte:
            break
        n_chars *= 2
    (_, t1), (n2, t2) = timings[-2], timings[-1]
    power = math.log2(t2 / t1)  # time ~ size ** power, measured over the last doubling
    extrapolated = t2 * (megabyte / n2) ** power
    print(f"  notebook-style time grows {t2 / t1:.1f}x per doubling of the input (size ** {power:.2f}; "
          "quadratic is 4x)")
    print(f"  notebook-style at {megabyte:,} chars, extrapolated from {n2:,}: ~{extrapolated:,.0f} s per "
          f"completion; ratio (notebook / ours) ~{extrapolated / ours_mb:,.0f}x")

if __name__ == "__main__":
    main()
