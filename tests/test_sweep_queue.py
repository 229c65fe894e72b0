"""A λ sweep through DVC's experiment queue, two experiments at once, each worker with its own device
(marked slow: `make test-pipeline`).

DVC has no notion of GPUs: `dvc queue start` spawns workers that inherit its environment (dvc_task's
``ManagedProcess.spawn`` without ``env``), and a later `dvc queue start -j N` adds only the workers
numbered up to N that are not running yet (``start_workers`` in dvc/repo/experiments/queue/celery.py).
Starting the workers one at a time, each with its own ``CUDA_VISIBLE_DEVICES``, therefore gives every
worker one GPU (README "Scaling out"). On this CPU machine the variable changes nothing but is recorded
in each run log, which is how this test sees which worker ran what.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from helpers import FIXTURE_PARAMS, ROOT

pytestmark = pytest.mark.slow

#: The two λ values (rewards.format_weight) of the sweep.
WEIGHTS = (0.5, 1.0)


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONHASHSEED": "0",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com", **extra}


def _run(cmd: list[str], cwd: Path, **extra: str) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=_env(**extra), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _copy_repo(repo: Path) -> None:
    """The committed and untracked files of this checkout (no results), with the fixture params made small."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    for rel in listed:
        src = ROOT / rel
        if src.is_file() and not rel.startswith(("metrics/", "reports/", "data/", "plots/")) and rel != "dvc.lock":
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / rel)
    params = yaml.safe_load(FIXTURE_PARAMS.read_text())
    tiny = params["profiles"]["tiny"]
    tiny["data"]["offline"]["n_items"] = 120
    tiny["train"].update(max_steps=4, save_steps=2)
    tiny["model"]["build"]["warm_start_steps"] = 10  # the queue is under test, not the model
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _start_worker(repo: Path, jobs: int, **extra: str) -> None:
    """`dvc queue start -j jobs`, its output to a file: the worker it spawns keeps the output open, so
    waiting for a pipe's end would wait for the worker to finish the queue."""
    with (repo.parent / f"queue-start-{jobs}.log").open("w") as log:
        started = subprocess.run(["dvc", "queue", "start", "-j", str(jobs)], cwd=repo, env=_env(**extra),
                                 stdout=log, stderr=subprocess.STDOUT, timeout=120)
    assert started.returncode == 0, (repo.parent / f"queue-start-{jobs}.log").read_text()


def _queue_rows(repo: Path) -> list[str]:
    """The states (Queued, Running, Success, Failed) `dvc queue status` lists, one per experiment."""
    out = subprocess.run(["dvc", "queue", "status"], cwd=repo, env=_env(), capture_output=True, text=True).stdout
    return re.findall(r"\b(Queued|Running|Success|Failed)\b", out)


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_queued_sweep_runs_two_experiments_at_once_one_device_per_worker(tmp_path):
    repo = tmp_path / "repo"
    _copy_repo(repo)
    _run(["git", "init", "-q", "-b", "main"], repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "sweep"], repo)
    _run(["dvc", "repro", "model@tiny"], repo)  # data and model once, in the cache every experiment shares
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "data and model"], repo)

    for weight in WEIGHTS:
        _run(["dvc", "exp", "run", "--queue", "-S", f"rewards.format_weight={weight}", "train@tiny"], repo)
    logs = {gpu: tmp_path / f"logs-gpu{gpu}" for gpu in (0, 1)}
    # One worker per device: each `dvc queue start` adds the workers up to -j that are not running yet.
    _start_worker(repo, 1, CUDA_VISIBLE_DEVICES="0", VLRL_LOGS_DIR=str(logs[0]))
    _wait(lambda: "Running" in _queue_rows(repo), 300, "the first worker to take an experiment")
    _start_worker(repo, 2, CUDA_VISIBLE_DEVICES="1", VLRL_LOGS_DIR=str(logs[1]))

    most_running = 0

    def finished() -> bool:
        nonlocal most_running
        states = _queue_rows(repo)
        most_running = max(most_running, states.count("Running"))
        return len(states) == len(WEIGHTS) and all(s in ("Success", "Failed") for s in states)

    try:
        _wait(finished, 900, "both experiments")
    finally:
        subprocess.run(["dvc", "queue", "stop"], cwd=repo, env=_env(), capture_output=True, timeout=120)
    assert _queue_rows(repo) == ["Success", "Success"]
    assert most_running == 2, "the two experiments never ran at the same time"

    # Each worker ran one experiment with its own device, and each experiment trained with its own λ.
    seen = {gpu: json.loads((folder / "tiny" / "train.json").read_text()) for gpu, folder in logs.items()}
    assert {gpu: log["cuda_visible_devices"] for gpu, log in seen.items()} == {0: "0", 1: "1"}
    shown = json.loads(_run(["dvc", "exp", "show", "--json"], repo))
    experiments = [exp for entry in shown for exp in (entry.get("experiments") or [])]
    weights = sorted(
        rev["data"]["params"]["params.yaml"]["data"]["rewards"]["format_weight"]
        for exp in experiments for rev in exp["revs"])
    assert weights == list(WEIGHTS)
