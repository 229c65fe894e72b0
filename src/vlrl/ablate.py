"""λ ablations and seed spread as DVC experiments, summarised in one markdown table.

    vlrl ablate                     # tiny profile: queue, run and wait for the experiments, write the table
    vlrl ablate --table-only        # the table from experiments already run on this commit (--rev: another)
    make ablate                     # the same as `vlrl ablate`

The experiments (:func:`plan`): the default settings at ``--seeds`` (the first seed is params.yaml's),
and, at the first seed, ``rewards.correctness_weight=0`` and ``rewards.format_weight=0``. Each one is
``dvc exp run --queue --name ablate-<name> -S <key>=<value> report@<profile>``; ``dvc queue start``
runs them in temporary copies of the repository, so the workspace's params.yaml, dvc.lock and
outputs are left as they were (DVC's queued experiments, https://dvc.org/doc/command-reference/exp/run).
Stages whose deps and params did not change are restored from the DVC cache instead of re-run: the
λ ablations re-run the score, train and post-training stages only, a new seed re-runs everything.

The results are read back from ``dvc exp show --json``: the baseline and post-training metric files
of each experiment (``metrics/<profile>/{baseline,post}.json``, Wilson intervals included);
:mod:`vlrl.ablate_table` turns them into the table. ``dvc queue start`` also runs any other
experiment already in the queue. Runs the ``dvc`` command and imports no DVC module.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlrl.config import DEFAULT_PARAMS_PATH, load_params
from vlrl.errors import EnvironmentProblem, UsageError, VlrlError

#: Prefix of the DVC experiment names this module creates (and reads back).
NAME_PREFIX = "ablate-"
#: How many extra seeds of the default run (besides params.yaml's seed) by default.
DEFAULT_EXTRA_SEEDS = 2
#: Queue states of ``dvc exp show --json`` (executor.state) that mean "not finished yet".
PENDING_STATES = frozenset({"queued", "running"})


@dataclass(frozen=True)
class Experiment:
    """One DVC experiment: its name, the params it sets, and what the table calls it."""

    name: str
    label: str
    seed: int
    format_weight: float
    correctness_weight: float
    #: ``-S`` overrides, in order (``key=value``).
    overrides: tuple[str, ...]
    #: True for the default settings (any seed): these rows are aggregated across seeds.
    default: bool

    @property
    def exp_name(self) -> str:
        return f"{NAME_PREFIX}{self.name}"


def plan(seed: int, format_weight: float, correctness_weight: float,
         seeds: Sequence[int] | None = None) -> list[Experiment]:
    """The experiments of one ablation run: default at each seed, then the two λ ablations.

    ``seeds`` defaults to ``seed`` and the :data:`DEFAULT_EXTRA_SEEDS` following integers; the λ
    ablations run at the first seed.

    >>> [e.exp_name for e in plan(3407, 0.3, 1.0)]
    ['ablate-default', 'ablate-seed-3408', 'ablate-seed-3409', 'ablate-correctness-off', 'ablate-format-off']
    >>> plan(3407, 0.3, 1.0)[3].overrides
    ('seed=3407', 'rewards.correctness_weight=0')
    """
    seeds = list(seeds) if seeds else [seed + i for i in range(DEFAULT_EXTRA_SEEDS + 1)]
    if len(set(seeds)) != len(seeds):
        raise UsageError(f"vlrl ablate: --seeds {' '.join(map(str, seeds))}: a seed is repeated")
    first = seeds[0]
    runs = [Experiment("default" if i == 0 else f"seed-{s}", "default" if i == 0 else f"default, seed {s}", s,
                       format_weight, correctness_weight, (f"seed={s}",), True)
            for i, s in enumerate(seeds)]
    runs.append(Experiment("correctness-off", "correctness_weight = 0", first, format_weight, 0.0,
                           (f"seed={first}", "rewards.correctness_weight=0"), False))
    runs.append(Experiment("format-off", "format_weight = 0", first, 0.0, correctness_weight,
                           (f"seed={first}", "rewards.format_weight=0"), False))
    return runs


# ------------------------------------------------------------------------------------------------
# Reading `dvc exp show --json`
# ------------------------------------------------------------------------------------------------


def _file_data(entry: Mapping[str, Any], kind: str, path: str) -> dict[str, Any]:
    files = (entry.get("data") or {}).get(kind) or {}
    return dict((files.get(path) or {}).get("data") or {})


def experiment_metrics(exp_show: Sequence[Mapping[str, Any]], profile: str) -> dict[str, dict[str, Any]]:
    """Experiment name -> {"state", "baseline": metrics, "post": metrics} from ``dvc exp show --json``.

    Only experiments of the baseline commit (the first entry that is not the ``workspace`` row: HEAD
    unless ``--rev`` said otherwise) whose name starts with :data:`NAME_PREFIX`. A queued or running
    experiment's entry carries the workspace's metrics, so only its state is meaningful.
    """
    found: dict[str, dict[str, Any]] = {}
    commits = [c for c in exp_show if c.get("rev") != "workspace"]
    for commit in commits[:1]:
        for experiment in commit.get("experiments") or []:
            name = experiment.get("name") or ""
            revs = experiment.get("revs") or []
            if not name.startswith(NAME_PREFIX) or not revs or name in found:
                continue
            entry = revs[0]
            executor = experiment.get("executor") or entry.get("executor") or {}
            state = executor.get("state") or ("failed" if entry.get("error") else "success")
            found[name] = {
                "state": state,
                "baseline": _file_data(entry, "metrics", f"metrics/{profile}/baseline.json"),
                "post": _file_data(entry, "metrics", f"metrics/{profile}/post.json"),
            }
    return found


# ------------------------------------------------------------------------------------------------
# Running (the `dvc` command)
# ------------------------------------------------------------------------------------------------


def _dvc_env() -> dict[str, str]:
    # Queue workers run `python stages/...`: put this interpreter's folder (the venv) first on PATH.
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1"}


def _dvc(args: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["dvc", *args], capture_output=True, text=True, env=_dvc_env(), check=False)
    if check and done.returncode != 0:
        raise EnvironmentProblem(f"`dvc {' '.join(args)}` failed (exit {done.returncode}): "
                                 f"{(done.stderr or done.stdout).strip()[-2000:]}")
    return done


def _require_dvc() -> None:
    on_path = shutil.which("dvc", path=_dvc_env()["PATH"])
    if on_path is None:
        raise EnvironmentProblem("vlrl ablate: the `dvc` command is not on PATH; install it (make install) "
                                 "or activate .venv")


def head_commit() -> str:
    done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise EnvironmentProblem(f"vlrl ablate: `git rev-parse HEAD` failed: {done.stderr.strip()}; "
                                 "DVC experiments need a git repository with a commit")
    return done.stdout.strip()


def exp_show(profile: str, rev: str) -> dict[str, dict[str, Any]]:
    """The ablation experiments based on commit ``rev``, read with ``dvc exp show --json``."""
    done = _dvc(["exp", "show", "--json", "--force", "--rev", rev])
    return experiment_metrics(json.loads(done.stdout or "[]"), profile)


def queue(experiments: Iterable[Experiment], profile: str, rev: str) -> None:
    """Queue the experiments, removing earlier ones of the same name on commit ``rev`` (HEAD) first."""
    experiments = list(experiments)
    existing = exp_show(profile, rev)
    stale = [e.exp_name for e in experiments if e.exp_name in existing]
    if stale:
        _dvc(["exp", "remove", *stale])
    for experiment in experiments:
        args = ["exp", "run", "--queue", "--name", experiment.exp_name]
        for override in experiment.overrides:
            args += ["-S", override]
        _dvc([*args, f"report@{profile}"])
        print(f"queued {experiment.exp_name}: {' '.join(experiment.overrides)}", flush=True)


def wait(experiments: Sequence[Experiment], profile: str, rev: str, *,
         poll_s: float = 15.0) -> dict[str, dict[str, Any]]:
    """Block until none of the experiments is queued or running; returns their metrics.

    They are looked up under the commit they were queued on (``rev``), so a commit made meanwhile
    does not hide them.
    """
    names = {e.exp_name for e in experiments}
    shown: list[str] = []
    while True:
        found = exp_show(profile, rev)
        pending = sorted(n for n in names if found.get(n, {}).get("state") in PENDING_STATES)
        if not pending:
            return found
        if pending != shown:  # one line per change, not one per poll
            print(f"waiting for {len(pending)} experiment(s): {', '.join(pending)}", flush=True)
            shown = pending
        time.sleep(poll_s)


def start_workers(jobs: int) -> None:
    """``dvc queue start``: its workers are daemons that inherit the caller's stdout/stderr, so capturing
    them would block until the last experiment ends; they write their own logs (``dvc queue logs``)."""
    done = subprocess.run(["dvc", "queue", "start", "--jobs", str(jobs)], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, env=_dvc_env(), check=False)
    if done.returncode != 0:
        raise EnvironmentProblem(f"`dvc queue start --jobs {jobs}` failed (exit {done.returncode}); "
                                 "see `dvc queue status`")


def run_ablations(experiments: Sequence[Experiment], profile: str, jobs: int) -> dict[str, dict[str, Any]]:
    _require_dvc()
    rev = head_commit()
    queue(experiments, profile, rev)
    start_workers(jobs)
    found = wait(experiments, profile, rev)
    failed = sorted(e.exp_name for e in experiments if found.get(e.exp_name, {}).get("state") != "success")
    if failed:
        raise EnvironmentProblem(f"vlrl ablate: experiment(s) {', '.join(failed)} did not succeed; see "
                                 f"`dvc queue logs <name>`")
    return found


# ------------------------------------------------------------------------------------------------
# `vlrl ablate`
# ------------------------------------------------------------------------------------------------


def add_ablate_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ablate", help="run the λ ablations and seeds as DVC experiments; write one markdown table",
        description="Queue the default settings at several seeds and the two λ ablations "
        "(rewards.correctness_weight=0, rewards.format_weight=0) as DVC experiments, run them with "
        "`dvc queue start` (params.yaml and the workspace stay as they are), and write one markdown "
        "table of format compliance, strict format compliance and strict accuracy.")
    parser.add_argument("--profile", default="tiny", help="profile to run (default: %(default)s)")
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS_PATH,
                        help="params file for the seed and weights (default: %(default)s)")
    parser.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                        help=f"seeds of the default settings (default: params.yaml's seed and the next "
                             f"{DEFAULT_EXTRA_SEEDS}); the λ ablations run at the first")
    parser.add_argument("--jobs", type=int, default=1, help="experiments run at a time (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="markdown file (default: reports/ablations_<profile>.md)")
    parser.add_argument("--table-only", action="store_true",
                        help="do not run anything: build the table from finished experiments")
    parser.add_argument("--rev", metavar="COMMIT",
                        help="with --table-only: the commit the experiments were queued on (default: HEAD)")
    parser.set_defaults(handler=_run_ablate)


def _run_ablate(args: argparse.Namespace) -> int:
    if args.jobs < 1:
        raise UsageError(f"vlrl ablate: --jobs {args.jobs}: must be >= 1")
    params = load_params(args.params)
    params.profile(args.profile)  # names the allowed profiles if this one does not exist
    experiments = plan(params.seed, params.rewards.format_weight, params.rewards.correctness_weight, args.seeds)
    if args.rev and not args.table_only:
        raise UsageError("vlrl ablate: --rev goes with --table-only (a new run queues on HEAD)")
    if args.table_only:
        _require_dvc()
        found = exp_show(args.profile, args.rev or head_commit())
    else:
        found = run_ablations(experiments, args.profile, args.jobs)
    # Imported here: pandas adds about a second to the start-up of every `vlrl` command otherwise.
    from vlrl.ablate_table import results_frame, table_markdown  # noqa: PLC0415

    frame = results_frame(experiments, found)
    if frame.empty:
        raise VlrlError(f"vlrl ablate: no finished ablation experiment for profile {args.profile!r} on commit "
                        f"{args.rev or 'HEAD'}; run `vlrl ablate` (or `make ablate`) first, or pass the commit "
                        "they were queued on with --rev")
    markdown = table_markdown(frame, args.profile)
    out = args.out or Path("reports") / f"ablations_{args.profile}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown, encoding="utf-8")
    print(markdown)
    print(f"table: {out}")
    return 0
