"""The CI reproduction check and the pull-request staleness guard, on hand-made inputs."""

from __future__ import annotations

import pytest

from vlrl.reproduce import compare_metrics
from vlrl.staleness import stale_findings


@pytest.mark.parametrize(
    ("committed", "reproduced", "expected"),
    [
        pytest.param({"n": 10, "format_compliance": 0.5}, {"n": 10, "format_compliance": 0.5}, [], id="identical"),
        pytest.param({"format_compliance": 0.5}, {"format_compliance": 0.6},
                     ["format_compliance: committed 0.5, reproduced 0.6"], id="a rate moved"),
        pytest.param({"splits": {"eval": {"n": 5}}}, {"splits": {"eval": {"n": 6}}},
                     ["splits.eval.n: committed 5, reproduced 6"], id="nested keys are compared"),
        pytest.param({"a": 1}, {}, ["a: only committed"], id="a key disappeared"),
        pytest.param({}, {"a": 1}, ["a: only reproduced"], id="a key appeared"),
    ],
)
def test_compare_metrics(committed, reproduced, expected):
    assert compare_metrics(committed, reproduced) == expected


def test_compare_metrics_tolerance_is_opt_in():
    assert compare_metrics({"x": 1.0}, {"x": 1.0 + 1e-12})
    assert not compare_metrics({"x": 1.0}, {"x": 1.0 + 1e-12}, rel_tol=1e-9)


TRACKED = {"params.yaml", "src/vlrl/rewards.py", "stages/score.py"}


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        pytest.param({}, [], id="clean"),
        pytest.param({"score_baseline@tiny": [{"changed deps": {"src/vlrl/rewards.py": "modified"}}]},
                     ["score_baseline@tiny: src/vlrl/rewards.py modified"], id="reward code changed"),
        pytest.param({"train@tiny": [{"changed deps": {"params.yaml": {"rewards.format_weight": "modified"}}}]},
                     ["train@tiny: params.yaml: rewards.format_weight modified"], id="a weight changed"),
        pytest.param({"train@tiny": [{"changed deps": {"data/tiny/splits": "deleted"}},
                                     {"changed outs": {"data/tiny/adapter": "deleted"}}]},
                     [], id="fresh clone: data and outputs absent is not staleness"),
        pytest.param({"train@full": [{"changed deps": {"src/vlrl/rewards.py": "modified"}}]}, [],
                     id="other profile is not committed"),
        pytest.param({"report@tiny": ["changed command"]}, ["report@tiny: changed command"], id="command edited"),
    ],
)
def test_stale_findings(status, expected):
    assert stale_findings(status, "tiny", TRACKED) == expected


def test_staleness_without_dvc_says_what_to_do(monkeypatch, capsys):
    from vlrl import staleness

    monkeypatch.setenv("PATH", "")
    assert staleness.main([]) == 2
    assert "`dvc` command is not on PATH" in capsys.readouterr().err
