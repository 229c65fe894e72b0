#!/usr/bin/env bash
# Runs in pull requests (and locally): write the metric and param diffs against the base branch as
# Markdown, then fail if params or code changed without a regenerated dvc.lock.
#   .github/scripts/pr-metrics.sh BASE_REV [OUT_MD]
set -euo pipefail
base=${1:?usage: pr-metrics.sh BASE_REV [OUT_MD]}
out=${2:-pr-metrics.md}
export DVC_NO_ANALYTICS=1
{
  echo "## dvc metrics diff (vs ${base})"
  echo
  dvc metrics diff --md --precision 4 "$base" || true
  echo
  echo "## dvc params diff (vs ${base})"
  echo
  dvc params diff --md "$base" || true
} > "$out"
cat "$out"
python -m vlrl.staleness --profile tiny
