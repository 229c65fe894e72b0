"""dvc.yaml must declare exactly what each stage reads: its script, every package module the script
imports (transitively), and exactly the params sections of the view the config package hands that stage.

A missing dep means `dvc repro` silently reuses stale results; an extra one re-runs work for nothing.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from vlrl.config import STAGE_VIEWS, params_keys

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PROFILES = ("tiny", "full")
#: dvc.yaml stage name -> the config.STAGE_VIEWS view its script loads.
STAGE_KIND = {
    "fetch": "fetch", "model": "model", "generate_baseline": "generate", "score_baseline": "score",
    "train": "train", "generate_post": "generate", "score_post": "score", "report": "report",
}


def _stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _resolve(obj, profile: str):
    text = yaml.safe_dump(obj)
    return yaml.safe_load(text.replace("${item}", profile))


def _dep_paths(deps: list) -> list[str]:
    return [next(iter(d)) if isinstance(d, dict) else d for d in deps]


def _module_file(module: str) -> Path | None:
    parts = module.split(".")
    base = SRC.joinpath(*parts)
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _vlrl_imports(path: Path) -> set[str]:
    """Modules under `vlrl` imported anywhere in the file (top level or inside functions)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    package = ".".join(path.relative_to(SRC).with_suffix("").parts[:-1]) if path.is_relative_to(SRC) else ""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "vlrl")
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import inside the package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] != "vlrl":
                continue
            found.add(module)
            for alias in node.names:  # `from vlrl import rewards` imports a module
                if _module_file(f"{module}.{alias.name}"):
                    found.add(f"{module}.{alias.name}")
    return found


def transitive_module_files(script: Path) -> set[Path]:
    todo, seen = [script], set()
    files: set[Path] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in _vlrl_imports(path):
            # importing vlrl.a.b runs vlrl/a/__init__.py too
            parts = module.split(".")
            for i in range(2, len(parts) + 1):
                f = _module_file(".".join(parts[:i]))
                if f is not None:
                    files.add(f)
                    todo.append(f)
    return files


def _covered(file: Path, code_deps: list[str]) -> bool:
    rel = file.relative_to(ROOT).as_posix()
    return any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in code_deps)


CASES = [pytest.param(name, profile, id=f"{name}@{profile}") for name in STAGE_KIND for profile in PROFILES]


def test_every_stage_is_checked():
    assert set(_stages()) == set(STAGE_KIND), "a stage was added to dvc.yaml: add it to STAGE_KIND"
    assert set(STAGE_KIND.values()) == set(STAGE_VIEWS), "every view is used by a stage"


def test_package_init_has_no_logic():
    # Every `import vlrl.x` runs vlrl/__init__.py; keeping it free of imports is what lets the deps
    # below omit it.
    tree = ast.parse((SRC / "vlrl" / "__init__.py").read_text())
    assert all(isinstance(n, ast.Expr | ast.Assign) for n in tree.body)


@pytest.mark.parametrize(("name", "profile"), CASES)
def test_deps_are_exactly_the_imported_modules(name, profile):
    stage = _resolve(_stages()[name]["do"], profile)
    script = re.search(r"python (stages/\S+\.py)", stage["cmd"]).group(1)
    deps = _dep_paths(stage["deps"])
    assert script in deps, f"{name}: its script {script} is not a dep"
    code_deps = [d for d in deps if d.startswith("src/")]
    needed = {f for f in transitive_module_files(ROOT / script) if f.name != "__init__.py" or
              f.parent != SRC / "vlrl"}
    missing = sorted(f.relative_to(ROOT).as_posix() for f in needed if not _covered(f, code_deps))
    assert not missing, f"{name}@{profile}: imports not declared in deps: {missing}"
    unused = [d for d in code_deps if not any(_covered(f, [d]) for f in needed)]
    assert not unused, f"{name}@{profile}: deps the script never imports: {unused}"


@pytest.mark.parametrize(("name", "profile"), CASES)
def test_params_are_exactly_what_the_stage_reads(name, profile):
    stage = _resolve(_stages()[name]["do"], profile)
    kind = STAGE_KIND[name]
    declared = sorted(stage.get("params", []))
    expected = sorted(params_keys(kind, profile))
    assert declared == expected


@pytest.mark.parametrize("name", sorted(set(STAGE_KIND)))
def test_script_loads_the_view_of_its_kind(name):
    """The script asks config for the same view the params above were compared with."""
    stage = _stages()[name]["do"]
    script = re.search(r"python (stages/\S+\.py)", stage["cmd"]).group(1)
    tree = ast.parse((ROOT / script).read_text())
    calls = [n for n in ast.walk(tree)
             if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "load_stage_params"]
    assert calls, f"{script} does not call load_stage_params"
    assert {c.args[0].value for c in calls} == {STAGE_KIND[name]}


@pytest.mark.parametrize(("name", "profile"), CASES)
def test_stages_that_can_launch_processes_depend_on_the_accelerate_configs(name, profile):
    """A stage run under `accelerate launch` (vlrl.launch) reads configs/accelerate/ (launch.config_file):
    editing a config must re-run it, and only it."""
    stage = _resolve(_stages()[name]["do"], profile)
    script = re.search(r"python (stages/\S+\.py)", stage["cmd"]).group(1)
    launches = SRC / "vlrl" / "launch.py" in transitive_module_files(ROOT / script)
    declares = "configs/accelerate" in _dep_paths(stage["deps"])
    assert (launches, declares) == (launches, launches)
    assert (f"profiles.{profile}.launch" in stage["params"]) == launches
