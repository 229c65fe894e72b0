"""`make install-gpu` keeps the machine's torch (scripts/install_gpu.py).

Fast rows (default suite): the refusals, read from fake package metadata, no pip run. Contract rows
(``-m contract``, `make test-gpu-contract`; they ask PyPI): `make install-gpu DRY_RUN=1` in throwaway venvs
holding FAKE torch (and torchvision) distributions (a dist-info folder is all pip's resolver looks at),
asserting from pip's own report that torch is not in what would be installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from helpers import ROOT

SCRIPT = ROOT / "scripts" / "install_gpu.py"


def fake_distribution(site: Path, name: str, version: str) -> None:
    """A dist-info folder: what importlib.metadata and pip's resolver read of an installed package."""
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "INSTALLER").write_text("pip\n")
    (info / "RECORD").write_text("")


def _run_without_site(tmp_path: Path, dists: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """The script under a Python that sees only the fake distributions (-S: no site-packages)."""
    site = tmp_path / "site"
    site.mkdir()
    for name, version in dists.items():
        fake_distribution(site, name, version)
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, "-S", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60, check=False)


@pytest.mark.parametrize(("dists", "message"), [
    pytest.param({}, "torch is not installed in", id="no-torch"),
    pytest.param({"torch": "2.4.1"}, "torch 2.4.1 is outside the range .* .torch>=2.5,<2.15.",
                 id="older-than-the-torch-floor"),
    pytest.param({"torch": "2.15.0"}, "torch 2.15.0 is outside the range", id="newer-than-unsloth-allows"),
    pytest.param({"torch": "2.13.0+cpu"}, "torch 2.13.0.cpu in .* is a CPU build", id="cpu-build"),
])
def test_refuses_in_one_line_without_running_pip(tmp_path, dists, message):
    done = _run_without_site(tmp_path, dists, "--dry-run")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("install-gpu: error: ")
    assert __import__("re").search(message, done.stderr), done.stderr


# ------------------------------------------------------------------------------------------------
# The dry run against PyPI (marker: contract)
# ------------------------------------------------------------------------------------------------

#: (installed torch, installed torchvision or None, the torchvision pip must end up with), one per row.
CASES = {
    "torch-2.11-alone": ("2.11.0", None, "0.26."),  # the case: pip installed torch 2.14.1 here
    "torch-2.11-with-torchvision": ("2.11.0", "0.26.0", None),
    "torch-2.10-alone": ("2.10.0", None, "0.25."),
    "torch-2.10-with-torchvision": ("2.10.0", "0.25.0", None),
    "torch-2.8-alone": ("2.8.0", None, "0.23."),
    "torch-2.8-with-torchvision": ("2.8.0", "0.23.0", None),  # the other case
}


def _dry_run(root: Path, case: str) -> subprocess.CompletedProcess:
    torch_version, torchvision, _ = CASES[case]
    venv = root / case
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    fake_distribution(site, "torch", torch_version)
    if torchvision:
        fake_distribution(site, "torchvision", torchvision)
    # Exactly the README's command, with this venv first on PATH (the Makefile calls `python`).
    env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}"}
    return subprocess.run(["make", "--no-print-directory", "install-gpu", "DRY_RUN=1"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900, check=False)


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory) -> dict:
    """All six dry runs, three at a time (each resolution spends about half its time waiting on PyPI)."""
    root = tmp_path_factory.mktemp("install_gpu")
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {case: pool.submit(_dry_run, root, case) for case in CASES}
        return {case: future.result() for case, future in futures.items()}


@pytest.mark.contract
@pytest.mark.parametrize("case", list(CASES))
def test_dry_run_keeps_the_installed_torch(dry_runs, case):
    done = dry_runs[case]
    assert done.returncode == 0, done.stderr[-3000:]
    would = [line for line in done.stdout.splitlines() if line.startswith("Would install ")]
    assert len(would) == 1, done.stdout[-3000:]
    # pip's line: "Would install name-version name-version ..."
    names = dict(item.rsplit("-", 1) for item in would[0].removeprefix("Would install ").split())
    names = {name.lower().replace("_", "-"): version for name, version in names.items()}
    assert "torch" not in names, would[0]
    assert {"unsloth", "unsloth-zoo", "bitsandbytes", "xformers"} <= set(names)
    _, torchvision, expected = CASES[case]
    if torchvision:
        assert "torchvision" not in names  # the installed one is kept too
    else:
        assert names["torchvision"].startswith(expected), names["torchvision"]

