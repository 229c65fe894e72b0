"""Machine telemetry of a run (wall time, throughput, memory, the git commit): logged, never committed.

Committed results must be byte-reproducible, so nothing that depends on the machine or on when and
how often a stage ran goes into DVC-tracked files or ``dvc.lock``. Each stage writes its telemetry to
an untracked run log, ``logs/<profile>/<name>.json`` (git-ignored; ``VLRL_LOGS_DIR`` moves it), and
prints it on stdout.
"""

from __future__ import annotations

import datetime
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

from vlrl.io import atomic_write_json

#: Environment variable naming another folder for the run logs (tests use it).
LOGS_VARIABLE = "VLRL_LOGS_DIR"


def logs_dir(profile: str) -> Path:
    """``logs/<profile>`` (relative to the working directory), or ``$VLRL_LOGS_DIR/<profile>``."""
    return Path(os.environ.get(LOGS_VARIABLE) or "logs") / profile


def git_commit() -> str | None:
    """The commit checked out in the working directory, or None outside git."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                                check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def peak_memory_mb() -> dict[str, float]:
    """Peak GPU memory allocated by torch when CUDA was used, else this process's peak RSS, in MiB."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
        return {"peak_gpu_mem_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return {"peak_rss_mb": round(rss / (2**20 if sys.platform == "darwin" else 2**10), 1)}


def write_run_log(profile: str, name: str, telemetry: dict[str, Any]) -> Path:
    """Write ``logs/<profile>/<name>.json``: the telemetry plus the commit and the time of the run.

    >>> import tempfile
    >>> os.chdir(tempfile.mkdtemp())
    >>> write_run_log("tiny", "score_post", {"wall_time_s": 0.5}).as_posix()
    'logs/tiny/score_post.json'
    """
    record = {**telemetry, "git_commit": git_commit(),
              "finished_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    return atomic_write_json(logs_dir(profile) / f"{name}.json", record)


def describe(telemetry: dict[str, Any]) -> str:
    """One line for stdout: ``key value`` pairs, numbers as given.

    >>> describe({"wall_time_s": 1.25, "peak_rss_mb": 512.0})
    'wall_time_s 1.25, peak_rss_mb 512.0'
    """
    return ", ".join(f"{key} {value}" for key, value in telemetry.items())
