#!/usr/bin/env python3
"""Install vlrl's GPU extras (Unsloth, bitsandbytes) into THIS Python, keeping the torch it has.

    python scripts/install_gpu.py             # what `make install-gpu` runs
    python scripts/install_gpu.py --dry-run   # `make install-gpu DRY_RUN=1`: resolve only, print pip's plan

Why: Unsloth requires torchvision, xformers and triton without pinning them, and their wheels pin torch
exactly (torchvision 0.26.0 needs torch 2.11.0; xformers 0.0.35 needs torch >= 2.10). A plain
``pip install -e ".[gpu,dev]"`` on a machine with torch 2.11 and no torchvision therefore resolves the
newest torchvision and REPLACES the machine's torch (2.14.1 plus the CUDA-13 wheels, several GB, which
a CUDA-12 driver cannot run). This script:

1. reads the installed torch (and torchvision, triton) from this interpreter's package metadata;
2. refuses, in one line, when torch is missing, is a CPU build, or is outside the range pyproject.toml
   allows (the range Unsloth supports);
3. writes a pip constraints file pinning torch (and torchvision/triton when present) to the installed
   versions, and asks for the torchvision series that matches torch when it is missing (torchvision
   0.(m+15) goes with torch 2.m); a CUDA build of torch (``+cu126``) also gets the PyTorch index of that
   CUDA variant, so torchvision comes built for the same CUDA;
4. runs ``pip install --dry-run --report`` with those constraints and checks that pip would neither
   install nor replace torch (or the installed torchvision/triton); then, unless ``--dry-run``, runs the
   same install for real.

Standard library only: it runs before vlrl (and anything else) is installed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROG = "install-gpu"
#: What ``--extras`` installs by default: the project, editable, with its GPU and dev extras.
DEFAULT_TARGET = ".[gpu,dev]"
#: Distributions whose installed version is kept when present (their wheels are built for one torch).
KEPT = ("torch", "torchvision", "triton")
#: The PyTorch wheel index of a CUDA variant (``cu126`` -> .../whl/cu126).
TORCH_INDEX = "https://download.pytorch.org/whl/{variant}"


class Refusal(Exception):
    """A reason not to install, said in one line."""


def installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def release(version: str) -> tuple[int, ...]:
    """The numeric release of a PEP 440 version: ``2.11.0+cu128`` -> (2, 11, 0).

    >>> release("2.11.0+cu128"), release("2.8.0rc1"), release("2.10")
    ((2, 11, 0), (2, 8, 0), (2, 10))
    """
    match = re.match(r"\d+(?:\.\d+)*", version)
    if match is None:
        raise Refusal(f"cannot read the version {version!r}")
    return tuple(int(part) for part in match.group(0).split("."))


def _padded(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    width = max(len(a), len(b))
    return a + (0,) * (width - len(a)), b + (0,) * (width - len(b))


def satisfies(version: str, specifier: str) -> bool:
    """Whether ``version`` meets a comma-separated specifier of ``>=, >, <=, <, ==, !=`` clauses.

    >>> satisfies("2.11.0+cu128", ">=2.5,<2.15"), satisfies("2.4.1", ">=2.5,<2.15"), satisfies("2.15.0", "<2.15")
    (True, False, False)
    """
    ours = release(version)
    for clause in filter(None, (c.strip() for c in specifier.split(","))):
        op, bound = re.match(r"(>=|<=|==|!=|>|<)\s*(\S+)", clause).groups()
        a, b = _padded(ours, release(bound))
        ok = {">=": a >= b, "<=": a <= b, ">": a > b, "<": a < b, "==": a == b, "!=": a != b}[op]
        if not ok:
            return False
    return True


def torch_requirement(pyproject: Path = ROOT / "pyproject.toml") -> str:
    """The torch specifier pyproject.toml declares (Unsloth's supported range), e.g. ``>=2.5,<2.15``."""
    dependencies = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["dependencies"]
    for dependency in dependencies:
        match = re.fullmatch(r"torch\s*([<>=!].*)", dependency.strip())
        if match:
            return match.group(1).replace(" ", "")
    raise Refusal(f"{pyproject}: no torch requirement in [project].dependencies")


def matching_torchvision(torch_version: str) -> str:
    """The torchvision series built for a torch release: 0.(minor + 15).* for torch 2.minor.

    >>> matching_torchvision("2.11.0+cu128"), matching_torchvision("2.8.0")
    ('0.26.*', '0.23.*')
    """
    major, minor = release(torch_version)[:2]
    if major != 2:
        raise Refusal(f"torch {torch_version}: no known torchvision series for torch {major}.x")
    return f"0.{minor + 15}.*"


def cuda_variant(torch_version: str) -> str | None:
    """The CUDA variant of a torch build from its local version label: ``2.11.0+cu126`` -> ``cu126``.

    >>> cuda_variant("2.11.0+cu126"), cuda_variant("2.11.0"), cuda_variant("2.13.0+cpu")
    ('cu126', None, None)
    """
    match = re.search(r"\+(cu\d+)$", torch_version)
    return match.group(1) if match else None


def plan(target: str, torch_index: str | None) -> tuple[list[str], list[str], list[str]]:
    """(constraints lines, extra requirements, extra pip options) that keep the installed torch."""
    torch_version = installed("torch")
    if torch_version is None:
        raise Refusal(f"torch is not installed in {sys.executable}; install the CUDA build of torch that matches "
                      "your driver first (https://pytorch.org/get-started/locally/), then re-run `make install-gpu`")
    if "+cpu" in torch_version:
        raise Refusal(f"torch {torch_version} in {sys.executable} is a CPU build; Unsloth needs CUDA: install a "
                      "CUDA build of torch (https://pytorch.org/get-started/locally/), then re-run")
    allowed = torch_requirement()
    if not satisfies(torch_version, allowed):
        raise Refusal(f"torch {torch_version} is outside the range Unsloth 2026.10.9 and pyproject.toml allow "
                      f"(torch{allowed}); install a torch in that range first, then re-run `make install-gpu`")
    constraints = [f"{name}=={version}" for name in KEPT if (version := installed(name)) is not None]
    requirements = [target]
    options: list[str] = []
    if installed("torchvision") is None:
        requirements.append(f"torchvision=={matching_torchvision(torch_version)}")
        variant = cuda_variant(torch_version)
        index = torch_index if torch_index is not None else (TORCH_INDEX.format(variant=variant) if variant else "")
        if index:
            options += ["--extra-index-url", index]
    return constraints, requirements, options


def pip(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], cwd=ROOT, capture_output=True, text=True,
                          check=False, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})


def _pip_failure(done: subprocess.CompletedProcess) -> Refusal:
    lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()
             and not line.startswith("WARNING: Location")]
    errors = [line for line in lines if line.startswith("ERROR")] or lines[-3:]
    return Refusal("pip could not resolve the GPU extras with the installed torch kept: " + " | ".join(errors[-3:]))


def would_install(report_path: Path) -> list[tuple[str, str]]:
    """(name, version) of every distribution a ``pip install --report`` would install."""
    report = json.loads(report_path.read_text(encoding="utf-8"))
    return [(item["metadata"]["name"].lower().replace("_", "-"), item["metadata"]["version"])
            for item in report.get("install", [])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="resolve only and print what pip would install")
    parser.add_argument("--target", default=DEFAULT_TARGET, help="what to install (default: %(default)s, editable)")
    parser.add_argument("--torch-index", default=None,
                        help="extra index for a missing torchvision ('' for none; default: the PyTorch index of "
                             "torch's CUDA variant)")
    parser.add_argument("--report", type=Path, default=None, help="also keep pip's JSON report here")
    args = parser.parse_args(argv)
    try:
        constraints, requirements, options = plan(args.target, args.torch_index)
        editable = args.target.startswith((".", "/"))
        target_args = [*(("-e",) if editable else ()), args.target, *requirements[1:]]
        with tempfile.TemporaryDirectory(prefix="vlrl-install-gpu-") as tmp:
            constraints_file = Path(tmp) / "keep-torch.txt"
            constraints_file.write_text("\n".join(constraints) + "\n", encoding="utf-8")
            report = args.report or Path(tmp) / "report.json"
            common = ["install", "-c", str(constraints_file), *options, *target_args]
            print(f"{PROG}: keeping {', '.join(constraints)}"
                  + (f"; adding {', '.join(requirements[1:])}" if requirements[1:] else ""), flush=True)
            done = pip([*common, "--dry-run", "--report", str(report)])
            if done.returncode != 0:
                raise _pip_failure(done)
            planned = would_install(report)
            replaced = [f"{name} {version}" for name, version in planned if name in KEPT and installed(name)]
            if replaced or any(name == "torch" for name, _ in planned):
                raise Refusal(f"pip would replace the installed {', '.join(replaced) or 'torch'}; nothing was "
                              "installed (report this with the output of `pip --version` and `pip list`)")
            print(next((line for line in done.stdout.splitlines() if line.startswith("Would install")),
                       "Would install nothing (everything is installed already)"), flush=True)
            if args.dry_run:
                return 0
            done = subprocess.run([sys.executable, "-m", "pip", *common], cwd=ROOT, check=False)
            if done.returncode != 0:
                raise Refusal(f"pip install failed (status {done.returncode}); see pip's messages above")
    except Refusal as refusal:
        print(f"{PROG}: error: {refusal}", file=sys.stderr)
        return 1
    print(f"{PROG}: done; torch {installed('torch')} kept. Next: `make gpu-smoke`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
