"""Does a re-run of the pipeline reproduce the committed metrics?

CI re-runs the tiny pipeline in a fresh clone and requires a clean ``git status`` afterwards; when a
file differs, this names the metric values that moved, committed vs reproduced. Pure module: imports
neither torch nor DVC.

    python -m vlrl.reproduce --profile tiny            # compare metrics/tiny/*.json with git HEAD
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {"a.b.c": leaf}; lists stay leaves."""
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: obj}


def compare_metrics(committed: dict, reproduced: dict, *, rel_tol: float = 0.0) -> list[str]:
    """Differences between two metric objects, one line each; [] when they agree. Every key counts:
    metric files hold no machine telemetry (that goes to the run logs, :mod:`vlrl.telemetry`).

    >>> compare_metrics({"n": 3}, {"n": 4})
    ['n: committed 3, reproduced 4']
    """
    a, b = flatten(committed), flatten(reproduced)
    lines = []
    for key in sorted(set(a) | set(b)):
        if key not in a or key not in b:
            lines.append(f"{key}: {'only reproduced' if key not in a else 'only committed'}")
            continue
        x, y = a[key], b[key]
        same = (math.isclose(x, y, rel_tol=rel_tol, abs_tol=0.0)
                if isinstance(x, int | float) and isinstance(y, int | float)
                and not isinstance(x, bool) and rel_tol > 0 else x == y)
        if not same:
            lines.append(f"{key}: committed {x!r}, reproduced {y!r}")
    return lines


def committed_json(path: Path, rev: str = "HEAD") -> dict | None:
    result = subprocess.run(["git", "show", f"{rev}:{path.as_posix()}"], capture_output=True, text=True)
    return json.loads(result.stdout) if result.returncode == 0 else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="compare re-run metrics with the committed ones")
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--rev", default="HEAD", help="git revision holding the committed metrics")
    parser.add_argument("--rel-tol", type=float, default=0.0, help="relative tolerance for numbers (0 = exact)")
    args = parser.parse_args(argv)
    files = sorted(Path("metrics", args.profile).glob("*.json"))
    if not files:
        print(f"reproduce: no metrics under metrics/{args.profile}/: run `dvc repro report@{args.profile}` first",
              file=sys.stderr)
        return 2
    failures = 0
    for path in files:
        committed = committed_json(path, args.rev)
        if committed is None:
            print(f"{path}: not committed at {args.rev}; nothing to compare")
            continue
        diffs = compare_metrics(committed, json.loads(path.read_text()), rel_tol=args.rel_tol)
        print(f"{path}: {'reproduced' if not diffs else f'{len(diffs)} difference(s)'}")
        for line in diffs:
            print(f"  {line}")
        failures += bool(diffs)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
