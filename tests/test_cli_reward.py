"""`vlrl reward`: the reward explainer on the command line (in-process via main(), and the console script)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import FIXTURE_PARAMS, ROOT
from vlrl.cli import main
from vlrl.rewards import PRESETS

REPO = ROOT
PARAMS = FIXTURE_PARAMS
VLRL = Path(sys.executable).parent / "vlrl"
GOOD = "<REASONING>The bar reads 991.</REASONING>\n<SOLUTION>991</SOLUTION>"


def run_json(capsys, *argv: str) -> dict:
    assert main(["reward", "--params", str(PARAMS), *argv, "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1, "one JSON object on one line"
    return json.loads(out)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        pytest.param(["--preset", "exact"], {"total": 2.6, "format": 2.0, "correctness": 2.0},
                     id="exact preset"),
        pytest.param(["--preset", "numeric"], {"total": 2.1, "correctness": 1.5, "accuracy_strict": False,
                                               "accuracy_numeric": True}, id="numeric preset"),
        pytest.param(["--preset", "addcriterion"],
                     {"format": -2.0, "addcriterion_penalty": True, "total": -0.6}, id="addcriterion preset"),
        pytest.param(["--gold", "991", "--completion", GOOD, "--format-weight", "0.5",
                      "--correctness-weight", "2"],
                     {"format_weighted": 1.0, "correctness_weighted": 4.0, "total": 5.0},
                     id="weights overridden"),
        pytest.param(["--gold", "5", "--completion", "<SOLUTION>B</SOLUTION>",
                      "--question-type", "multi_choice", "--answer-type", "integer", "--choices", "3", "5"],
                     {"accuracy_strict": False, "accuracy_mathvista": True, "format": 1.0},
                     id="multiple choice"),
        pytest.param(["--gold", "1.5", "--completion", "<SOLUTION>1.54</SOLUTION>", "--answer-type", "float",
                      "--precision", "1"], {"accuracy_numeric": False, "accuracy_mathvista": True},
                     id="precision rounding"),
        pytest.param(["--gold", "991", "--completion", "<SOLUTION>995</SOLUTION>",
                      "--numeric-rel-tol", "0.01"],
                     {"correctness": 1.5, "correctness_criterion": "numeric"}, id="tolerance overridden"),
        pytest.param(["--gold", "7", "--completion", ""], {"total": 0.0, "solution": None},
                     id="empty completion"),
    ],
)
def test_reward_json(capsys, argv, expected):
    got = run_json(capsys, *argv)
    assert {key: got[key] for key in expected} == pytest.approx(expected)


def test_json_has_the_documented_keys(capsys):
    got = run_json(capsys, "--preset", "exact")
    assert {"format", "correctness", "total", "format_weighted", "correctness_weighted", "accuracy_strict",
            "accuracy_numeric", "accuracy_mathvista", "format_compliant", "gold"} <= set(got)


def test_human_output_lists_criteria_weights_and_total(capsys):
    assert main(["reward", "--params", str(PARAMS), "--preset", "numeric"]) == 0
    out = capsys.readouterr().out
    assert "[x] one REASONING block" in out and "[x] one SOLUTION block" in out
    assert "[ ] addCriterion penalty" in out
    assert "[ ] exact match" in out and "[x] numeric match" in out
    assert "format = 2  x 0.3 = 0.60" in out and "correctness = 1.5  x 1 = 1.50" in out
    assert "total = 0.60 + 1.50 = 2.10" in out
    assert "strict no, numeric yes" in out


def test_completion_from_file_and_from_stdin(capsys, tmp_path, monkeypatch):
    path = tmp_path / "completion.txt"
    path.write_text(PRESETS["numeric"][1], encoding="utf-8")
    assert run_json(capsys, "--gold", "991", "--completion-file", str(path))["total"] == pytest.approx(2.1)
    monkeypatch.setattr(sys, "stdin", io.StringIO(GOOD))
    assert run_json(capsys, "--gold", "991")["total"] == pytest.approx(2.6)


def test_weights_default_to_params_file(capsys, tmp_path):
    params = yaml.safe_load(PARAMS.read_text())
    params["rewards"].update(format_weight=0.5, correctness_weight=2.0)
    custom = tmp_path / "params.yaml"
    custom.write_text(yaml.safe_dump(params))
    assert main(["reward", "--params", str(custom), "--preset", "exact", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total"] == pytest.approx(0.5 * 2 + 2.0 * 2)


def test_missing_params_falls_back_to_reference_weights_with_a_note(capsys, tmp_path):
    assert main(["reward", "--params", str(tmp_path / "absent.yaml"), "--preset", "exact", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["total"] == pytest.approx(2.6)
    assert "absent.yaml not found; using the reference weights" in captured.err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(["reward", "--completion", GOOD], "--gold is required", id="missing --gold"),
        pytest.param(["reward", "--preset", "nope"], "invalid choice: 'nope'", id="unknown preset"),
        pytest.param(["reward", "--gold", "1", "--completion-file", "/nonexistent/c.txt"],
                     "cannot read --completion-file /nonexistent/c.txt", id="unreadable file"),
        pytest.param(["reward", "--gold", "1", "--completion", "x", "--completion-file", "f"],
                     "either --completion or --completion-file", id="conflicting completion sources"),
        pytest.param(["reward", "--preset", "exact", "--gold", "1"], "--preset brings its own",
                     id="preset and gold"),
        pytest.param(["reward", "--gold", "1", "--completion", "x", "--format-weight", "-1"],
                     "--format-weight -1.0: must be a finite number >= 0", id="negative weight"),
        pytest.param(["reward", "--gold", "1", "--completion", "x", "--correctness-weight", "abc"],
                     "invalid float value: 'abc'", id="non-numeric weight"),
        pytest.param(["reward", "--gold", "1", "--completion", "x", "--question-type", "multi_choice"],
                     "needs --choices", id="multiple choice without choices"),
        pytest.param(["reward", "--gold", "1", "--completion", "x", "--bogus"], "unrecognized arguments",
                     id="unknown option"),
        pytest.param([], "a command is required", id="no subcommand"),
    ],
)
def test_bad_calls_exit_2_with_one_line(capsys, argv, message):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and message in captured.err


def test_bad_params_file_exits_2_naming_the_key(capsys, tmp_path):
    params = yaml.safe_load(PARAMS.read_text())
    params["rewards"]["format_weight"] = "high"
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(params))
    assert main(["reward", "--params", str(bad), "--preset", "exact"]) == 2
    assert "rewards.format_weight = 'high'" in capsys.readouterr().err


def test_no_completion_and_interactive_stdin_exits_2(capsys, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Terminal())
    assert main(["reward", "--params", str(PARAMS), "--gold", "991"]) == 2
    assert "no completion" in capsys.readouterr().err


@pytest.mark.skipif(not VLRL.exists(), reason="console script not installed next to this interpreter")
def test_console_script(tmp_path):
    # --params: the installed command's default is the workspace params.yaml, which `dvc exp run -S` rewrites.
    ok = subprocess.run([str(VLRL), "reward", "--preset", "exact", "--json", "--params", str(PARAMS)], cwd=REPO,
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and json.loads(ok.stdout)["total"] == pytest.approx(2.6)
    piped = subprocess.run([str(VLRL), "reward", "--gold", "991", "--json", "--params", str(PARAMS)], cwd=REPO,
                           input=GOOD, capture_output=True, text=True, timeout=60)
    assert piped.returncode == 0 and json.loads(piped.stdout)["total"] == pytest.approx(2.6)
    bad = subprocess.run([str(VLRL), "reward", "--preset", "nope"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert (bad.returncode, bad.stdout, bad.stderr.count("\n")) == (2, "", 1)


def test_explain_metrics_lists_every_metric_key_of_the_design(capsys):
    # docs/design.md, "Interfaces": the keys every metrics file must carry.
    assert main(["explain-metrics"]) == 0
    out = capsys.readouterr().out
    for key in ("n", "format_compliance", "accuracy_strict", "accuracy_numeric", "accuracy_mathvista",
                "reward_format_mean", "reward_correctness_mean", "reward_total_mean"):
        assert any(line.startswith(key + " ") for line in out.splitlines()), key
