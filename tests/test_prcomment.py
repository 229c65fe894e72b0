"""The pull-request comment, produced locally on two commits of a temporary repository (no CML, no network)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vlrl.io import atomic_write_json
from vlrl.scoring import headline_metrics

ENV = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
       "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
       "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{cmd}: {result.stdout}\n{result.stderr}"
    return result


def _records(n_right: int, n_gamed: int, n: int = 10) -> list[dict]:
    rows = []
    for i in range(n):
        right, gamed = i < n_right, n_right <= i < n_right + n_gamed
        rows.append({"format_compliant": right or gamed, "format_compliant_strict": right, "format_gamed": gamed,
                     "accuracy_strict": right, "accuracy_numeric": right, "accuracy_mathvista": right,
                     "addcriterion_penalty": False, "truncated": False, "format": 2.0 if right or gamed else 0.0,
                     "correctness": 2.0 if right else 0.0, "total": 2.6 if right else 0.0, "completion_tokens": 5})
    return rows


def _write_results(repo: Path, post_right: int, weight: float) -> None:
    (repo / "params.yaml").write_text(f"rewards:\n  format_weight: {weight}\n")
    atomic_write_json(repo / "metrics/tiny/baseline.json", headline_metrics(_records(1, 0)))
    atomic_write_json(repo / "metrics/tiny/post.json", headline_metrics(_records(post_right, 2)))
    atomic_write_json(repo / "metrics/tiny/train.json", {"reward_mean_first_tenth": 0.5, "reward_mean_last_tenth":
                                                         0.5 + post_right / 10})


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("pr")
    _run(["git", "init", "-q", "-b", "main"], repo)
    _run(["dvc", "init", "-q"], repo)
    (repo / "dvc.yaml").write_text("stages:\n  score:\n    cmd: echo\n    params:\n      - rewards\n")
    _write_results(repo, post_right=2, weight=0.3)
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "base"], repo)
    _run(["git", "checkout", "-q", "-b", "change"], repo)
    _write_results(repo, post_right=5, weight=0.5)
    (repo / "reports/tiny").mkdir(parents=True)
    (repo / "reports/tiny/before_after.png").write_bytes(b"\x89PNG fake")
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "head"], repo)
    return repo


def test_comment_puts_the_headline_first_with_intervals_base_and_change(repo):
    text = _run([sys.executable, "-m", "vlrl.prcomment", "--base", "main"], repo).stdout
    sections = [line for line in text.splitlines() if line.startswith("### ")]
    assert sections[0].startswith("### Headline metrics"), sections
    strict = next(line for line in text.splitlines() if line.startswith("| accuracy (strict, case study)"))
    # head: baseline 1/10, after 5/10; base after 2/10 -> +30 pp.
    assert "| 10.0% [" in strict and "| 50.0% [" in strict and "| 20.0% [" in strict and "+30.0 pp" in strict
    gamed = next(line for line in text.splitlines() if line.startswith("| format gamed"))
    assert "20.0% [" in gamed, "the gamed rate is in the comment"
    reward = next(line for line in text.splitlines() if line.startswith("| weighted reward"))
    assert reward.split("|")[2:4] == [" 0.500 -> 1.000 ", " 0.500 -> 0.700 "], "training: head, then base"


def test_comment_shows_the_params_diff_and_the_head_figures(repo):
    text = _run([sys.executable, "-m", "vlrl.prcomment", "--base", "main"], repo).stdout
    params = text.split("### Parameters changed")[1].split("###")[0]
    assert "rewards.format_weight" in params and "0.3" in params and "0.5" in params
    assert "![before/after](./reports/tiny/before_after.png)" in text
    assert "train_curves.png" not in text, "a figure that is not there is not linked"


def test_comment_writes_the_file_and_refuses_an_unknown_base(repo):
    _run([sys.executable, "-m", "vlrl.prcomment", "--base", "main", "--out", "c.md"], repo)
    assert (repo / "c.md").read_text().startswith("## vlrl `tiny` results")
    bad = subprocess.run([sys.executable, "-m", "vlrl.prcomment", "--base", "no-such-branch"], cwd=repo, env=ENV,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "not a commit here" in bad.stderr
