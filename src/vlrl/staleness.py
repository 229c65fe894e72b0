"""Pull-request guard: were params or code changed without re-running the committed pipeline?

The tiny profile's dvc.lock is committed, so a pull request that edits params.yaml or reward /
evaluation code must also carry the regenerated dvc.lock and metrics; otherwise `dvc metrics diff`
would show stale numbers. ``dvc status --json`` compares the current code and params with dvc.lock;
this module keeps only the findings a commit can fix (changed code or params), and ignores outputs
and data that simply are not in a fresh clone's cache.

    python -m vlrl.staleness --profile tiny     # exit 1 and name the stages when dvc.lock is stale

Pure module: runs the `dvc` command but does not import DVC.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from typing import Any


def stale_findings(status: dict[str, Any], profile: str, tracked: set[str]) -> list[str]:
    """Lines 'stage: what changed' for the profile's stages whose code, params or command changed.

    ``status`` is ``dvc status --json`` output; ``tracked`` the files git tracks (code, params), so
    a dep that is merely absent (an upstream output in a fresh clone) does not count.

    >>> stale_findings({"train@tiny": [{"changed deps": {"params.yaml": {"rewards.format_weight": "modified"}}}]},
    ...                "tiny", {"params.yaml"})
    ['train@tiny: params.yaml: rewards.format_weight modified']
    """
    lines = []
    for stage, entries in sorted(status.items()):
        if not stage.endswith(f"@{profile}"):
            continue
        for entry in entries if isinstance(entries, list) else [entries]:
            if isinstance(entry, str):  # "changed command", "always changed"
                lines.append(f"{stage}: {entry}")
                continue
            for path, change in entry.get("changed deps", {}).items():
                if isinstance(change, dict):  # params: {key: "modified" | "new" | "deleted"}
                    lines += [f"{stage}: {path}: {key} {what}" for key, what in sorted(change.items())]
                elif path in tracked or any(t.startswith(path.rstrip("/") + "/") for t in tracked):
                    lines.append(f"{stage}: {path} {change}")
    return lines


def _git_tracked() -> set[str]:
    out = subprocess.run(["git", "ls-files"], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="fail when dvc.lock is stale for the committed profile")
    parser.add_argument("--profile", default="tiny")
    args = parser.parse_args(argv)
    if shutil.which("dvc") is None:
        print("staleness: the `dvc` command is not on PATH; install it (make install) or activate .venv",
              file=sys.stderr)
        return 2
    stages = subprocess.run(["dvc", "stage", "list", "--name-only"], capture_output=True, text=True, check=True)
    targets = [s for s in stages.stdout.split() if s.endswith(f"@{args.profile}")]
    result = subprocess.run(["dvc", "status", "--json", *targets], capture_output=True, text=True)
    if result.returncode != 0:
        print(f"staleness: `dvc status` failed: {result.stderr.strip()}", file=sys.stderr)
        return 2
    findings = stale_findings(json.loads(result.stdout or "{}"), args.profile, _git_tracked())
    if findings:
        print(f"dvc.lock is stale for the {args.profile} profile: code or params changed but the pipeline was not "
              f"re-run. Run `make demo` (dvc repro report@{args.profile}) and commit dvc.lock, metrics/ and reports/.")
        for line in findings:
            print(f"  {line}")
        return 1
    print(f"dvc.lock is current for the {args.profile} profile")
    return 0


if __name__ == "__main__":
    sys.exit(main())
