"""The tiny pipeline under real `dvc repro` in a temporary git repo (marked slow: `make test-pipeline`).

Proves the promises users rely on when they edit params.yaml:
- a reward-weight change re-runs train, the post evaluation and the report, re-scores the baseline,
  and does NOT regenerate the baseline completions (the expensive part on a GPU);
- a report-only change re-runs only the report;
- `dvc metrics diff` shows the changed metrics; a no-op `dvc repro` takes under 2 s;
- the PR script flags a params change that was not followed by `dvc repro` and passes once it was.

The copy runs the fixture params (tests/fixtures/params.yaml, not the workspace's) with fewer training
steps and items (this checks DVC wiring, not RL).
"""

from __future__ import annotations

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

TINY_STAGES = ["fetch", "model", "generate_baseline", "score_baseline", "train", "generate_post", "score_post",
               "report"]


def _run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONHASHSEED": "0",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def _ran(output: str) -> set[str]:
    """Stage names (without @tiny) that `dvc repro` actually ran."""
    return {m.group(1) for m in re.finditer(r"Running stage '([a-z_]+)@tiny'", output)}


def _edit_params(repo: Path, edit) -> None:
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    edit(params)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("pipeline")
    tracked = _run(["git", "ls-files"], ROOT).stdout.split()
    untracked = _run(["git", "ls-files", "--others", "--exclude-standard"], ROOT).stdout.split()
    for rel in tracked + untracked:
        src = ROOT / rel
        if not src.is_file() or rel.startswith(("metrics/", "reports/")) or rel == "dvc.lock":
            continue
        dst = repo / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    shutil.copy2(FIXTURE_PARAMS, repo / "params.yaml")

    def smaller(params):
        tiny = params["profiles"]["tiny"]
        tiny["train"]["max_steps"] = 4
        tiny["train"]["save_steps"] = 2
        tiny["data"]["offline"]["n_items"] = 120

    _edit_params(repo, smaller)
    _run(["git", "init", "-q", "-b", "main"], repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "pipeline"], repo)
    first = _run(["dvc", "repro", "report@tiny"], repo)
    assert _ran(first.stdout) == set(TINY_STAGES), first.stdout
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "results"], repo)
    return repo


def test_noop_repro_is_fast_and_runs_nothing(repo):
    start = time.perf_counter()
    result = _run(["dvc", "repro", "report@tiny"], repo)
    elapsed = time.perf_counter() - start
    assert _ran(result.stdout) == set()
    # The budget is 2 s; python + dvc start-up is most of it.
    assert elapsed < 2.0 + 3.0, f"no-op dvc repro took {elapsed:.1f} s"
    print(f"no-op dvc repro: {elapsed:.2f} s")


def test_pr_script_flags_stale_lock_then_passes(repo):
    _edit_params(repo, lambda p: p["rewards"].__setitem__("correctness_weight", 0.9))
    try:
        stale = _run([sys.executable, "-m", "vlrl.staleness", "--profile", "tiny"], repo, check=False)
    finally:
        _restore(repo)
    # dvc reports params at the granularity the stage declares them (the `rewards` section).
    assert stale.returncode == 1, stale.stdout + stale.stderr
    assert "score_baseline@tiny: params.yaml: rewards modified" in stale.stdout
    assert "train@tiny: params.yaml: rewards modified" in stale.stdout
    assert "generate_baseline@tiny" not in stale.stdout, "generation does not read the rewards"
    clean = _run([sys.executable, "-m", "vlrl.staleness", "--profile", "tiny"], repo, check=False)
    assert clean.returncode == 0, clean.stdout + clean.stderr


def test_report_only_change_reruns_only_the_report(repo):
    _edit_params(repo, lambda p: p["report"].__setitem__("flip_examples", 3))
    try:
        result = _run(["dvc", "repro", "report@tiny"], repo)
    finally:
        _restore(repo)
    assert _ran(result.stdout) == {"report"}


def test_reward_weight_change_rescores_but_does_not_regenerate_baseline(repo):
    _edit_params(repo, lambda p: p["rewards"].__setitem__("format_weight", 0.5))
    try:
        result = _run(["dvc", "repro", "report@tiny"], repo)
        diff = _run(["dvc", "metrics", "diff", "--md"], repo).stdout
    finally:
        _restore(repo)
    assert _ran(result.stdout) == {"score_baseline", "train", "generate_post", "score_post", "report"}
    assert "metrics/tiny/baseline.json" in diff and "reward_total_mean" in diff, diff


def _restore(repo: Path) -> None:
    """Back to the committed params and results, so each test starts from the same state."""
    _run(["git", "checkout", "--", "params.yaml", "dvc.lock", "metrics", "reports", "data"], repo)
    _run(["dvc", "checkout", "-q"], repo, check=False)
