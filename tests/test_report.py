"""The report: reads only metric and per-example files; every number carries its interval; gaming is
named; data cannot break the Markdown; the same inputs give the same bytes."""

from __future__ import annotations

import re

import pytest

from vlrl.config import ReportParams
from vlrl.errors import CorruptInputError
from vlrl.io import atomic_write_json, atomic_write_jsonl
from vlrl.report import ReportInputs, build_report
from vlrl.report.analysis import mean_interval, numeric_only_count, pair_by_pid, paired_test, reward_movement
from vlrl.report.document import policy_statement
from vlrl.report.markdown import cell
from vlrl.rewards import explain
from vlrl.scoring import breakdown_metrics, headline_metrics
from vlrl.stats import wilson_interval

REASONING = "<REASONING>count the bars</REASONING>"


def _record(pid: str, completion: str, gold: str = "3", task: str = "bar value") -> dict:
    """A scored record exactly as the score stage writes it (the same explain() call)."""
    breakdown = explain(completion, gold, format_weight=0.3, correctness_weight=1.0).to_dict()
    return {"pid": pid, "question_type": "free_form", "answer_type": "integer", "task": task,
            "category": "math-targeted-vqa", "context": "bar chart", "grade": "elementary school",
            "source": "vlrl-offline", "skills": ["counting"], "gold": gold, **breakdown, "completion_tokens": 9,
            "truncated": False, "completion": completion}


GOOD, WRONG = f"{REASONING}<SOLUTION>3</SOLUTION>", f"{REASONING}<SOLUTION>4</SOLUTION>"
GAMED = f"{REASONING}<SOLUTION>3</SOLUTION></SOLUTION></SOLUTION>"
NO_BLOCKS = "three bars"


@pytest.fixture
def report_inputs(tmp_path):
    # 10 items. Before: 4 strictly formatted (2 right), 6 unformatted. After: 7 strict (5 right), 3 gamed
    # (right answers under the gamed format); pid p|9 has a pipe and its completion a remote image and HTML.
    before = [_record(f"p{i}", GOOD if i < 2 else WRONG if i < 4 else NO_BLOCKS) for i in range(10)]
    after_texts = [GOOD] * 4 + [WRONG] * 2 + [GAMED] * 3 + [
        "<REASONING>![x](http://example.com/i.png) <b>3</b></REASONING><SOLUTION>3</SOLUTION>"]
    after = [_record(f"p{i}", text) for i, text in enumerate(after_texts)]
    before[9]["pid"] = after[9]["pid"] = "p|9"
    before[3]["task"] = after[3]["task"] = "rare task"
    files = {"b.json": headline_metrics(before), "p.json": headline_metrics(after),
             "bb.json": breakdown_metrics(before), "pb.json": breakdown_metrics(after),
             "t.json": {"off_policy": False, "importance_sampling_level": "sequence", "loss_type": "dr_grpo",
                        "reward_mean_first_tenth": 0.5, "reward_mean_last_tenth": 0.9,
                        "reward_format_mean_first_tenth": 1.0, "reward_format_mean_last_tenth": 1.5,
                        "reward_correctness_mean_first_tenth": 0.2, "reward_correctness_mean_last_tenth": 0.45,
                        "reward_weights": {"format": 0.3, "correctness": 1.0},
                        "format_rate_first_tenth": 0.4, "format_rate_last_tenth": 0.8, "prompts_dropped": 0},
             "m.json": {"source": "offline", "revision": None, "source_fingerprint": "abc",
                        "splits": {"train": {"n": 30}, "eval": {"n": 10}}}}
    for name, obj in files.items():
        atomic_write_json(tmp_path / name, obj)
    atomic_write_jsonl(tmp_path / "b.jsonl", before)
    atomic_write_jsonl(tmp_path / "p.jsonl", after)
    curves = tmp_path / "curves"
    curves.mkdir()
    for name, values in (("reward", (0.5, 0.7, 0.9)), ("reward_format", (1.0, 1.2, 1.5)),
                         ("reward_correctness", (0.2, 0.3, 0.45)), ("frac_reward_zero_std", (0.5, 0.25, 0.0))):
        (curves / f"{name}.tsv").write_text(f"step\t{name}\n" + "".join(f"{i}\t{v}\n" for i, v in enumerate(values)))
    return ReportInputs("tiny", tmp_path / "b.json", tmp_path / "p.json", tmp_path / "b.jsonl", tmp_path / "p.jsonl",
                        tmp_path / "t.json", tmp_path / "m.json", baseline_breakdown=tmp_path / "bb.json",
                        post_breakdown=tmp_path / "pb.json", curves_dir=curves)


@pytest.fixture
def report_text(report_inputs, tmp_path) -> str:
    return build_report(report_inputs, ReportParams(flip_examples=10, excerpt_chars=60), tmp_path / "out").read_text()


def _row(text: str, label: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(f"| {label} "))


def test_headline_shows_strict_compliance_and_the_gamed_rate_with_intervals(report_text):
    lo, hi = wilson_interval(3, 10)
    assert f"30.0% [{100 * lo:.1f}%, {100 * hi:.1f}%]" in _row(report_text, "format gamed (max reward, not strict)")
    assert "+30.0 pp" in _row(report_text, "format gamed (max reward, not strict)")
    assert "100.0%" in _row(report_text, "format compliance"), "reference compliance counts the gamed ones"
    assert "70.0%" in _row(report_text, "format compliance (strict)"), "strict compliance does not"


def test_paired_counts_and_exact_p_values(report_text):
    # strict accuracy: right before p0, p1; after p0-p3, the gamed p6-p8 and p9 -> 6 improved, 0 regressed.
    assert re.search(r"\| accuracy \(strict, case study\) +\| +2 \| +6 \| +0 \| +2 \| +0\.03125 +\|", report_text)


def test_gaming_is_counted_by_pattern_with_escaped_excerpts(report_text):
    section = report_text.split("## Format gaming")[1].split("\n## ")[0]
    assert "**0** of 10 before, **3** of 10 after GSPO" in section
    assert re.search(r"\| stray closing tag +\| +0 \| +3 \|", section)
    assert "```text\n<REASONING>count the bars</REASONING><SOLUTION>3</SOLUTION></SOLUTION>" in section


def test_training_section_explains_the_total_from_its_parts(report_text):
    assert ("format part contributed 0.3 x (1.000 -> 1.500) = +0.150 and the correctness part 1 x "
            "(0.200 -> 0.450) = +0.250, so the correctness reward drove the change") in report_text
    assert "zero advantage, no learning signal): 50.0% over the first tenth of the steps, 0.0% over the last" \
        in report_text
    assert "![training curves](train_curves.png)" in report_text


def test_breakdowns_mark_small_cells_and_do_not_hide_them(report_text):
    assert re.search(r"\| `rare task` +\| 1 \(small\) +\|", report_text)
    assert re.search(r"\| `bar value` +\| 9 +\|", report_text)


def test_data_cannot_break_the_markdown(report_text):
    assert "&lt;" not in report_text, "completions are shown in code spans, not entity-escaped"
    assert "`p\\|9`" in report_text, "a pipe in a pid is escaped inside its code span"
    # The remote image and the HTML stay inside a code span: shown as text, never rendered or fetched.
    row = next(line for line in report_text.splitlines() if line.startswith("| `p\\|9`"))
    assert "`<REASONING>![x](http://example.com/i.png) <b>3</b></REASONI…`" in row, "cut, inside its code span"
    assert not re.search(r"(?<!`<REASONING>)!\[x\]\(http", report_text), "never outside a code span"


def test_empty_sections_say_none(report_inputs, tmp_path):
    same = build_report(ReportInputs(**{**report_inputs.__dict__, "post_metrics": report_inputs.baseline_metrics,
                                        "post_scored": report_inputs.baseline_scored}),
                        ReportParams(), tmp_path / "same").read_text()
    assert "## Examples that flipped: strict accuracy (0 improved, 0 regressed)\n\nnone." in same
    assert "Gaming patterns: none." in same


def test_no_machine_telemetry_and_the_same_bytes_every_time(report_inputs, report_text, tmp_path):
    assert not re.search(r"wall time|seconds per step|peak (rss|gpu)|git commit|samples per second", report_text, re.I)
    again = build_report(report_inputs, ReportParams(flip_examples=10, excerpt_chars=60), tmp_path / "again")
    assert again.read_text() == report_text
    for png in ("before_after.png", "train_curves.png"):
        assert (tmp_path / "again" / png).read_bytes() == (tmp_path / "out" / png).read_bytes(), png


@pytest.mark.parametrize(("damage", "message"), [
    pytest.param(lambda p: p.write_text('{"n": 10, "format_compliance": 0.'), r"b\.json: not valid JSON",
                 id="truncated metrics file"),
    pytest.param(lambda p: p.write_text('{"n": 10}'), r"b\.json: missing format_compliance",
                 id="metrics without the headline keys"),
    pytest.param(lambda p: p.write_text("[1, 2]"), r"b\.json: a JSON list, expected an object", id="not an object"),
])
def test_broken_inputs_are_named(report_inputs, tmp_path, damage, message):
    damage(report_inputs.baseline_metrics)
    with pytest.raises(CorruptInputError, match=message):
        build_report(report_inputs, ReportParams(), tmp_path / "out")


def test_report_refuses_mismatched_items():
    with pytest.raises(CorruptInputError, match="different items; pids only in one: \\['b'\\]"):
        pair_by_pid([{"pid": "a"}, {"pid": "b"}], [{"pid": "a"}])


def test_mcnemar_counts_discordant_pairs_only():
    pairs = [({"v": b}, {"v": a}) for b, a in [(0, 1)] * 6 + [(1, 0)] + [(1, 1)] * 3]
    test = paired_test(pairs, "v", "v")
    assert (test.both, test.improved, test.regressed, test.neither) == (3, 6, 1, 0)
    assert test.p_value == pytest.approx(0.125)


def test_numeric_only_answers_are_the_gap():
    assert numeric_only_count([{"correctness_criterion": c} for c in ("exact", "numeric", "none", "numeric")]) == 2


def test_mean_interval_shrinks_with_n():
    narrow, wide = mean_interval([0.0, 1.0] * 50), mean_interval([0.0, 1.0])
    assert wide[1] < narrow[1] < 0.5 < narrow[2] < wide[2]


def test_reward_movement_needs_every_part():
    assert reward_movement({"reward_mean_first_tenth": 0.1}, 0.3, 1.0) is None


@pytest.mark.parametrize(("train", "text"), [
    pytest.param({"off_policy": False}, "mathematically a GRPO run", id="on-policy is GRPO"),
    pytest.param({"off_policy": True}, "genuinely GSPO", id="off-policy is GSPO"),
])
def test_policy_statement(train, text):
    assert text in policy_statement(train)


@pytest.mark.parametrize("text", ["a|b", "`x` | `y`", "```", "<SOLUTION>|</SOLUTION>\n\n| x |"])
def test_cells_keep_table_rows_intact(text):
    rendered = cell(text)
    assert "\n" not in rendered and "|" not in rendered.replace("\\|", "")
