"""The ``vlrl`` console command.

Subcommands:

- ``vlrl reward``: the reward explainer, the command-line form of the case study's live calculator::

      vlrl reward --gold 991 --completion '<REASONING>...</REASONING><SOLUTION>991</SOLUTION>'
      vlrl reward --gold 991 --completion-file completion.txt --json
      some-generator | vlrl reward --gold 991
      vlrl reward --preset numeric

Adding a subcommand: write ``_add_<name>_parser(subparsers)`` that registers its arguments and sets
``handler=`` to a function ``(args) -> int``, and call it from :func:`build_parser`. Handlers raise
:class:`~vlrl.errors.UsageError` for a bad call (one line on stderr, exit status 2) and any other
:class:`~vlrl.errors.VlrlError` for a problem the user can fix (``vlrl: error: ...``, its status).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from vlrl.ablate import add_ablate_parser
from vlrl.config import DEFAULT_PARAMS_PATH, RewardParams, load_params
from vlrl.entry import debug_enabled, emit, report_error
from vlrl.errors import ConfigError, UsageError, VlrlError
from vlrl.mathvista import ANSWER_TYPES, QUESTION_TYPES
from vlrl.metrics import glossary_text
from vlrl.rewards import PRESETS, REFERENCE_REWARDS, RewardBreakdown, explain


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage block), reported by :func:`main`."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


# --------------------------------------------------------------------------------------------
# vlrl reward
# --------------------------------------------------------------------------------------------


def _add_reward_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "reward",
        help="explain the reward of one completion",
        description="Score one completion with the experiment's reward functions and answer checks, and "
        "show each criterion that fired, the weighted contributions and the total. The completion comes "
        "from --completion, --completion-file or stdin.",
    )
    source = parser.add_argument_group("completion and gold answer")
    source.add_argument("--gold", help="the gold answer string, e.g. 991 (required unless --preset)")
    source.add_argument("--completion", help="the completion text")
    source.add_argument("--completion-file", type=Path, metavar="FILE",
                        help="read the completion from FILE (UTF-8)")
    source.add_argument("--preset", choices=sorted(PRESETS),
                        help="a case-study example (gold and completion); excludes --gold/--completion*")
    weights = parser.add_argument_group("weights (default: params.yaml rewards.*)")
    weights.add_argument("--params", type=Path, default=DEFAULT_PARAMS_PATH,
                         help="params file for the default weights (default: %(default)s)")
    weights.add_argument("--format-weight", type=float, metavar="W")
    weights.add_argument("--correctness-weight", type=float, metavar="W")
    weights.add_argument("--numeric-rel-tol", type=float, metavar="TOL",
                         help="tolerance of the numeric criterion, |x - gold| <= TOL * max(|gold|, 1)")
    item = parser.add_argument_group("MathVista item metadata (for the MathVista verdict)")
    item.add_argument("--question-type", choices=QUESTION_TYPES)
    item.add_argument("--answer-type", choices=ANSWER_TYPES,
                      help="default: inferred from the gold (integer, float with its decimals, else text)")
    item.add_argument("--precision", type=float, help="decimals for answer type float")
    item.add_argument("--choices", nargs="+", metavar="CHOICE", help="the multiple-choice options, in order")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object instead of the explanation")
    parser.set_defaults(handler=_run_reward)


def _read_completion(args: argparse.Namespace) -> str:
    if args.completion is not None and args.completion_file is not None:
        raise UsageError("vlrl reward: give either --completion or --completion-file, not both")
    if args.completion is not None:
        return args.completion
    if args.completion_file is not None:
        try:
            return args.completion_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise UsageError(f"vlrl reward: cannot read --completion-file {args.completion_file}: "
                             f"{reason}") from exc
    if sys.stdin is None or sys.stdin.isatty():
        raise UsageError("vlrl reward: no completion: give --completion TEXT, --completion-file FILE, "
                         "pipe it on stdin, or use --preset")
    try:
        data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read()
    except OSError as exc:
        raise UsageError(f"vlrl reward: cannot read the completion from stdin: {exc.strerror or exc}") from exc
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"vlrl reward: stdin is not UTF-8 text (byte {data[exc.start]:#04x} at offset "
                         f"{exc.start}); pass a UTF-8 completion") from exc


def _reward_params(args: argparse.Namespace) -> RewardParams:
    """Weights and tolerance: command-line overrides, else params.yaml, else the reference values."""
    overrides = {"format_weight": args.format_weight, "correctness_weight": args.correctness_weight,
                 "numeric_rel_tol": args.numeric_rel_tol}
    if all(value is not None for value in overrides.values()):
        base = REFERENCE_REWARDS
    elif not Path(args.params).is_file():
        print(f"vlrl reward: note: {args.params} not found; using the reference weights "
              f"(format {REFERENCE_REWARDS.format_weight:g}, correctness {REFERENCE_REWARDS.correctness_weight:g}, "
              f"numeric_rel_tol {REFERENCE_REWARDS.numeric_rel_tol:g})", file=sys.stderr)
        base = REFERENCE_REWARDS
    else:
        try:
            base = load_params(args.params).rewards
        except ConfigError as exc:  # a bad --params file is a bad call of this command
            raise UsageError(f"vlrl reward: {exc}") from exc
    for name, value in overrides.items():
        if value is not None and not (math.isfinite(value) and value >= 0):
            option = "--" + name.replace("_", "-")
            raise UsageError(f"vlrl reward: {option} {value!r}: must be a finite number >= 0")
    merged = RewardParams(**{name: value if value is not None else getattr(base, name)
                             for name, value in overrides.items()})
    return merged


def _run_reward(args: argparse.Namespace) -> int:
    if args.preset is not None:
        if args.gold is not None or args.completion is not None or args.completion_file is not None:
            raise UsageError("vlrl reward: --preset brings its own gold and completion; "
                             "drop --gold/--completion/--completion-file")
        gold, completion = PRESETS[args.preset]
    else:
        if args.gold is None:
            raise UsageError("vlrl reward: --gold is required (or use --preset NAME)")
        gold, completion = args.gold, _read_completion(args)
    if gold == "":
        raise UsageError("vlrl reward: --gold is empty; give the gold answer string, e.g. --gold 991")
    if args.precision is not None and not (math.isfinite(args.precision) and args.precision >= 0
                                           and float(args.precision).is_integer()):
        raise UsageError(f"vlrl reward: --precision {args.precision!r}: must be a whole number of decimals >= 0")
    if args.question_type == "multi_choice" and not args.choices:
        raise UsageError("vlrl reward: --question-type multi_choice needs --choices")
    rewards = _reward_params(args)
    breakdown = explain(completion, gold, format_weight=rewards.format_weight,
                        correctness_weight=rewards.correctness_weight, rel_tol=rewards.numeric_rel_tol,
                        question_type=args.question_type, answer_type=args.answer_type,
                        precision=args.precision, choices=args.choices)
    if args.json:
        emit(json.dumps({"gold": gold, **breakdown.to_dict()}, ensure_ascii=False))
    else:
        emit(render_breakdown(breakdown, gold))
    return 0


def _mark(fired: bool) -> str:
    return "[x]" if fired else "[ ]"


def render_breakdown(b: RewardBreakdown, gold: str) -> str:
    """The human-readable explanation printed by ``vlrl reward``."""
    shown = "(no single SOLUTION block)" if b.solution is None else json.dumps(b.solution, ensure_ascii=False)
    lines = [
        f"gold {json.dumps(gold, ensure_ascii=False)}, solution {shown}",
        "",
        f"format reward (weight {b.format_weight:g})",
        f"  {_mark(b.reasoning_blocks == 1)} one REASONING block   +1.0   (found {b.reasoning_blocks})",
        f"  {_mark(b.solution_blocks == 1)} one SOLUTION block    +1.0   (found {b.solution_blocks})",
        f"  {_mark(b.addcriterion_penalty)} addCriterion penalty  -2.0   (addCriterion + newlines are "
        f"{b.addcriterion_share:.1%} of the text; fires at >= 50%)",
        f"  format = {b.format:g}  x {b.format_weight:g} = {b.format_weighted:.2f}",
        "",
        f"correctness reward (weight {b.correctness_weight:g})",
        f"  {_mark(b.correctness_criterion == 'exact')} exact match    2.0   (SOLUTION, newlines removed, "
        f"equals the gold string)",
        f"  {_mark(b.correctness_criterion == 'numeric')} numeric match  1.5   "
        "(both are equal finite numbers)",
        f"  {_mark(b.correctness_criterion == 'none')} none           0.0",
        f"  correctness = {b.correctness:g}  x {b.correctness_weight:g} = {b.correctness_weighted:.2f}",
        "",
        f"total = {b.format_weighted:.2f} + {b.correctness_weighted:.2f} = {b.total:.2f}",
        f"format compliant: {_yes(b.format_compliant)}; accuracy: strict {_yes(b.verdicts.strict)}, "
        f"numeric {_yes(b.verdicts.numeric)}, mathvista {_yes(b.verdicts.mathvista)}",
    ]
    return "\n".join(lines)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def _add_explain_metrics_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "explain-metrics", help="what each key in metrics/<profile>/*.json means",
        description="Print the meaning of every metric key written by the score stages (the report's glossary).")
    parser.set_defaults(handler=_run_explain_metrics)


def _run_explain_metrics(args: argparse.Namespace) -> int:
    emit(glossary_text())
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``vlrl`` parser with every subcommand registered."""
    parser = _Parser(prog="vlrl", description="Reproducible visual RL (GSPO on MathVista): tools.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_reward_parser(subparsers)
    _add_explain_metrics_parser(subparsers)
    add_ablate_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``vlrl``; returns the exit status (0 ok, 2 bad call)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "handler", None):
            raise UsageError("vlrl: a command is required (see vlrl --help)")
        return args.handler(args)
    except UsageError as exc:  # its message already names the command
        if debug_enabled():
            raise
        with contextlib.suppress(OSError, ValueError):
            print(str(exc), file=sys.stderr)
        return exc.exit_code
    except VlrlError as exc:
        if debug_enabled():
            raise
        return report_error("vlrl", exc)
    except SystemExit as exc:  # --help and --version exit through argparse
        return exc.code if isinstance(exc.code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
