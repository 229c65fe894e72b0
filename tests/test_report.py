"""The report: reads only metric and per-example files; every number carries its interval."""

from __future__ import annotations

import re

import pytest

from vlrl.config import ReportParams
from vlrl.io import atomic_write_json, atomic_write_jsonl
from vlrl.report import (
    ReportInputs,
    build_report,
    mean_interval,
    numeric_only_count,
    pair_by_pid,
    paired_test,
    policy_statement,
)
from vlrl.stats import wilson_interval


def _record(pid, fmt, strict, numeric=None, criterion=None, completion="<REASONING>r</REASONING>"):
    numeric = strict if numeric is None else numeric
    criterion = criterion or ("exact" if strict else "numeric" if numeric else "none")
    correctness = {"exact": 2.0, "numeric": 1.5, "none": 0.0}[criterion]
    fmt_reward = 2.0 if fmt else 1.0
    return {"pid": pid, "gold": "3", "format_compliant": fmt, "accuracy_strict": strict, "accuracy_numeric": numeric,
            "accuracy_mathvista": numeric, "correctness_criterion": criterion, "format": fmt_reward,
            "correctness": correctness, "total": 0.3 * fmt_reward + correctness, "completion": completion}


def _metrics(records):
    n = len(records)
    out = {"n": n}
    for key, field in (("format_compliance", "format_compliant"), ("accuracy_strict", "accuracy_strict"),
                       ("accuracy_numeric", "accuracy_numeric"), ("accuracy_mathvista", "accuracy_mathvista")):
        k = sum(r[field] for r in records)
        out[key] = k / n
        out[f"{key}_ci95_low"], out[f"{key}_ci95_high"] = wilson_interval(k, n)
    for key, field in (("reward_format_mean", "format"), ("reward_correctness_mean", "correctness"),
                       ("reward_total_mean", "total")):
        out[key] = sum(r[field] for r in records) / n
    return out


@pytest.fixture
def report_inputs(tmp_path):
    # 10 items: format flips 0->1 on pids 0-5 and 1->0 on pid 9; pid 1 is a numeric-only "991.0" answer after.
    before = [_record(f"p{i}", fmt=i >= 6, strict=(i == 8)) for i in range(10)]
    after = [_record(f"p{i}", fmt=i != 9, strict=(i in (2, 8)), numeric=(i in (1, 2, 8)),
                     completion=f"<SOLUTION>after {i}</SOLUTION>") for i in range(10)]
    paths = {name: tmp_path / name for name in ("b.json", "p.json", "b.jsonl", "p.jsonl", "t.json", "m.json")}
    atomic_write_json(paths["b.json"], _metrics(before))
    atomic_write_json(paths["p.json"], _metrics(after))
    atomic_write_jsonl(paths["b.jsonl"], before)
    atomic_write_jsonl(paths["p.jsonl"], after)
    atomic_write_json(paths["t.json"], {"off_policy": False, "importance_sampling_level": "sequence",
                                        "loss_type": "dr_grpo", "reward_mean_first_tenth": 0.5,
                                        "reward_mean_last_tenth": 0.9, "format_rate_first_tenth": 0.4,
                                        "format_rate_last_tenth": 0.8, "prompts_dropped": 0})
    atomic_write_json(paths["m.json"], {"source": "offline", "revision": None, "source_fingerprint": "abc",
                                        "splits": {"train": {"n": 30}, "eval": {"n": 10}}})
    curves = tmp_path / "curves" / "plots" / "metrics"
    curves.mkdir(parents=True)
    (curves / "reward.tsv").write_text("step\treward\n0\t0.5\n1\t0.7\n2\t0.9\n")
    return ReportInputs("tiny", paths["b.json"], paths["p.json"], paths["b.jsonl"], paths["p.jsonl"], paths["t.json"],
                        paths["m.json"], curves_dir=tmp_path / "curves")


def test_report_states_intervals_tests_gap_flips_and_policy(report_inputs, tmp_path):
    path = build_report(report_inputs, ReportParams(flip_examples=2, excerpt_chars=40), tmp_path / "out")
    text = path.read_text()
    lo, hi = wilson_interval(4, 10)
    assert f"40.0% [{100 * lo:.1f}%, {100 * hi:.1f}%]" in text, "baseline format compliance with its Wilson CI"
    assert "90.0% [" in text and "+50.0 pp" in text, "post format compliance and the change"
    # format: 6 improved, 1 regressed, exact McNemar p = 2 * P[X<=1 | n=7] = 16/128 = 0.125
    assert re.search(r"\| format compliance +\| +3 \| +6 \| +1 \|", text), "right both, improved, regressed"
    assert "0.125" in text
    assert "**0** of 10 before, **1** of 10 after" in text, "the 991.0 gap counts numeric-only answers"
    assert "mathematically a GRPO run" in text, "on-policy statement"
    assert "(6 improved, 1 regressed)" in text
    assert text.count("after 0") == 1 and "after 5" not in text, "flip tables respect flip_examples"
    assert "&lt;SOLUTION&gt;after 0" in text, "tags in excerpts are escaped, not swallowed as HTML"
    assert (tmp_path / "out" / "before_after.png").stat().st_size > 1000
    assert (tmp_path / "out" / "train_reward.png").stat().st_size > 1000


def test_report_refuses_mismatched_items():
    with pytest.raises(ValueError, match="different items; pids only in one: \\['b'\\]"):
        pair_by_pid([{"pid": "a"}, {"pid": "b"}], [{"pid": "a"}])


def test_paired_test_counts_each_cell():
    pairs = [({"v": b}, {"v": a}) for b, a in [(1, 1), (0, 1), (0, 1), (1, 0), (0, 0)]]
    t = paired_test(pairs, "v", "v")
    assert (t.both, t.improved, t.regressed, t.neither) == (1, 2, 1, 1)
    assert t.p_value == 1.0


def test_numeric_only_count_is_the_991_effect():
    records = [{"correctness_criterion": c} for c in ("exact", "numeric", "numeric", "none")]
    assert numeric_only_count(records) == 2


def test_mean_interval_shrinks_with_n():
    _, lo5, hi5 = mean_interval([0.0, 1.0] * 5)
    _, lo50, hi50 = mean_interval([0.0, 1.0] * 50)
    assert hi50 - lo50 < hi5 - lo5


def test_policy_statement_off_policy_says_gspo_differs():
    assert "genuinely GSPO" in policy_statement({"off_policy": True})

