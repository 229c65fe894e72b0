"""The ablation runner: the experiments it plans, reading `dvc exp show --json`, the table it writes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers import raw_params, write_params
from vlrl.ablate import experiment_metrics, plan
from vlrl.ablate_table import results_frame, table_markdown
from vlrl.cli import main
from vlrl.errors import UsageError


@pytest.mark.parametrize(("seeds", "names", "overrides"), [
    pytest.param(None, ["default", "seed-3408", "seed-3409", "correctness-off", "format-off"],
                 [("seed=3407",), ("seed=3408",), ("seed=3409",), ("seed=3407", "rewards.correctness_weight=0"),
                  ("seed=3407", "rewards.format_weight=0")], id="params-seed-and-the-next-two"),
    pytest.param([7, 1], ["default", "seed-1", "correctness-off", "format-off"],
                 [("seed=7",), ("seed=1",), ("seed=7", "rewards.correctness_weight=0"),
                  ("seed=7", "rewards.format_weight=0")], id="given-seeds-ablations-at-the-first"),
    pytest.param([5], ["default", "correctness-off", "format-off"],
                 [("seed=5",), ("seed=5", "rewards.correctness_weight=0"), ("seed=5", "rewards.format_weight=0")],
                 id="one-seed-no-spread"),
])
def test_plan(seeds, names, overrides):
    runs = plan(3407, 0.3, 1.0, seeds)
    assert ([r.name for r in runs], [r.overrides for r in runs]) == (names, overrides)


def test_plan_weights_and_default_flag():
    runs = {r.name: r for r in plan(3407, 0.3, 1.0)}
    assert [(r.format_weight, r.correctness_weight, r.default) for r in runs.values()] == [
        (0.3, 1.0, True), (0.3, 1.0, True), (0.3, 1.0, True), (0.3, 0.0, False), (0.0, 1.0, False)]


def test_plan_refuses_a_repeated_seed():
    with pytest.raises(UsageError, match="--seeds 1 1: a seed is repeated"):
        plan(3407, 0.3, 1.0, [1, 1])


# ------------------------------------------------------------------------------------------------
# `dvc exp show --json` (its DVC 3.67 shape: a workspace row, then the baseline commit's experiments)
# ------------------------------------------------------------------------------------------------


def _metrics(accuracy: float, fmt: float = 0.5, strict: float = 0.4, n: int = 100) -> dict:
    out = {"n": n}
    for key, value in (("accuracy_strict", accuracy), ("format_compliance", fmt), ("format_compliance_strict", strict)):
        out.update({key: value, f"{key}_ci95_low": round(value - 0.05, 6), f"{key}_ci95_high": round(value + 0.05, 6)})
    return out


def _entry(name: str, baseline: dict, post: dict, state: str = "success") -> dict:
    data = {"metrics": {"metrics/tiny/baseline.json": {"data": baseline}, "metrics/tiny/post.json": {"data": post}},
            "params": {"params.yaml": {"data": {"seed": 1}}}}
    return {"revs": [{"rev": "b" * 40, "name": name, "data": data, "error": None, "experiments": None}],
            "executor": {"state": state}, "name": name}


def _exp_show(*experiments: dict) -> list[dict]:
    workspace = {"rev": "workspace", "name": None, "data": {"metrics": {}}, "experiments": None}
    return [workspace, {"rev": "a" * 40, "name": "main", "data": {}, "experiments": list(experiments)}]


def test_exp_show_is_read_per_experiment_of_the_baseline_commit():
    shown = _exp_show(_entry("ablate-default", _metrics(0.3), _metrics(0.5)),
                      _entry("ablate-format-off", _metrics(0.3), _metrics(0.45), state="running"),
                      _entry("someone-elses-sweep", _metrics(0.1), _metrics(0.2)))
    found = experiment_metrics(shown, "tiny")
    assert sorted(found) == ["ablate-default", "ablate-format-off"]
    assert (found["ablate-default"]["state"], found["ablate-default"]["post"]["accuracy_strict"]) == ("success", 0.5)
    assert found["ablate-format-off"]["state"] == "running"


def test_exp_show_without_experiments_reads_as_none():
    assert experiment_metrics([{"rev": "workspace", "experiments": None}], "tiny") == {}


# ------------------------------------------------------------------------------------------------
# The table
# ------------------------------------------------------------------------------------------------


RUNS = plan(3407, 0.3, 1.0)
FOUND = {
    "ablate-default": {"state": "success", "baseline": _metrics(0.30), "post": _metrics(0.50, fmt=0.9)},
    "ablate-seed-3408": {"state": "success", "baseline": _metrics(0.20), "post": _metrics(0.40, fmt=0.8)},
    "ablate-seed-3409": {"state": "success", "baseline": _metrics(0.25), "post": _metrics(0.45, fmt=0.7)},
    "ablate-correctness-off": {"state": "success", "baseline": _metrics(0.30), "post": _metrics(0.31, fmt=0.9)},
    "ablate-format-off": {"state": "success", "baseline": _metrics(0.30), "post": _metrics(0.48, fmt=0.6)},
}


def _rows(markdown: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in markdown.splitlines()
            if line.startswith("|") and not line.startswith("|--")]


def test_table_rows_are_before_arrow_after_with_the_after_interval():
    rows = _rows(table_markdown(results_frame(RUNS, FOUND), "tiny"))
    header, cells = rows[0], {row[0]: dict(zip(rows[0], row, strict=True)) for row in rows[1:]}
    assert header == ["experiment", "seed", "λ format", "λ correctness", "format compliance",
                      "strict format compliance", "strict accuracy"]
    assert cells["correctness_weight = 0"]["strict accuracy"] == "30.0 → 31.0 [26.0, 36.0]"
    assert (cells["format_weight = 0"]["λ format"], cells["format_weight = 0"]["λ correctness"]) == ("0", "1")
    assert cells["default"]["format compliance"] == "50.0 → 90.0 [85.0, 95.0]"


def test_seed_row_gives_mean_sample_sd_and_range_of_the_defaults_only():
    rows = _rows(table_markdown(results_frame(RUNS, FOUND), "tiny"))
    summary = dict(zip(rows[0], rows[-1], strict=True))
    # post accuracy 50, 40, 45 -> mean 45.0, sample sd 5.0; baseline 30, 20, 25 -> 25.0
    assert summary["experiment"] == "default, mean of 3 seeds"
    assert summary["strict accuracy"] == "25.0 → 45.0 ± 5.0 sd (range 40.0–50.0)"
    assert summary["seed"] == "3407, 3408, 3409"


def test_unfinished_experiments_are_left_out_and_one_seed_has_no_spread_row():
    found = {k: v for k, v in FOUND.items() if k in ("ablate-default", "ablate-format-off")}
    rows = _rows(table_markdown(results_frame(RUNS, found), "tiny"))
    assert [row[0] for row in rows[1:]] == ["default", "format_weight = 0"]


def test_legend_names_the_held_out_size():
    assert "n = 100 held-out items" in table_markdown(results_frame(RUNS, FOUND), "tiny")


@pytest.mark.parametrize(("argv", "message"), [
    pytest.param(["ablate", "--jobs", "0"], "--jobs 0: must be >= 1", id="jobs-zero"),
    pytest.param(["ablate", "--seeds", "3", "3", "--table-only"], "a seed is repeated", id="repeated-seed"),
    pytest.param(["ablate", "--rev", "abc"], "--rev goes with --table-only", id="rev-without-table-only"),
])
def test_bad_calls_are_one_line_usage_errors(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# End to end with real DVC experiments, on a stand-in pipeline (seconds, not the tiny model's minutes)
# ------------------------------------------------------------------------------------------------


STAND_IN_STAGE = textwrap.dedent('''
    """Writes baseline/post metrics that depend on the params: accuracy rises only with correctness_weight."""
    import json, pathlib, yaml
    p = yaml.safe_load(open("params.yaml"))
    w = p["rewards"]["correctness_weight"]
    out = pathlib.Path("metrics/tiny"); out.mkdir(parents=True, exist_ok=True)
    for name, acc in (("baseline", 0.2), ("post", 0.2 + 0.2 * w + (p["seed"] % 3) / 100)):
        m = {"n": 50}
        for key, v in (("accuracy_strict", acc), ("format_compliance", 0.5), ("format_compliance_strict", 0.5)):
            m.update({key: v, key + "_ci95_low": v - 0.1, key + "_ci95_high": v + 0.1})
        (out / (name + ".json")).write_text(json.dumps(m))
''')
STAND_IN_DVC_YAML = textwrap.dedent('''
    stages:
      report:
        foreach: [tiny]
        do:
          cmd: python stage.py
          deps: [stage.py]
          params: [seed, rewards]
          metrics:
            - metrics/${item}/baseline.json:
                cache: false
            - metrics/${item}/post.json:
                cache: false
''')


@pytest.mark.slow
def test_ablate_runs_queued_experiments_and_leaves_params_yaml_alone(tmp_path):
    dvc = Path(sys.executable).parent / "dvc"
    if not dvc.exists() and shutil.which("dvc") is None:
        pytest.skip("dvc is not installed")
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": path,
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}

    def run(*cmd: str) -> subprocess.CompletedProcess:
        done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        return done

    write_params(tmp_path / "params.yaml", raw_params())
    (tmp_path / "stage.py").write_text(STAND_IN_STAGE)
    (tmp_path / "dvc.yaml").write_text(STAND_IN_DVC_YAML)
    run("git", "init", "-q", "-b", "main")
    run("dvc", "init", "-q")
    run("dvc", "repro", "-q", "report@tiny")
    run("git", "add", "-A")
    run("git", "commit", "-qm", "stand-in pipeline")
    params_before = (tmp_path / "params.yaml").read_bytes()

    done = run(sys.executable, "-m", "vlrl", "ablate", "--seeds", "3407", "3408", "--out", "table.md")
    table = (tmp_path / "table.md").read_text()
    assert (tmp_path / "params.yaml").read_bytes() == params_before
    assert run("git", "status", "--porcelain").stdout.split() == ["??", "table.md"]
    cells = {row[0]: row for row in _rows(table)[1:]}
    # post accuracy = 0.2 + 0.2 * correctness_weight + (seed % 3) / 100: 3407 % 3 = 2, 3408 % 3 = 0
    assert cells["correctness_weight = 0"][-1] == "20.0 → 22.0 [12.0, 32.0]"
    assert cells["default"][-1] == "20.0 → 42.0 [32.0, 52.0]"
    assert cells["default, seed 3408"][-1] == "20.0 → 40.0 [30.0, 50.0]"
    assert cells["default, mean of 2 seeds"][-1] == "20.0 → 41.0 ± 1.4 sd (range 40.0–42.0)"
    assert "table: table.md" in done.stdout
