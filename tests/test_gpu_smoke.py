"""`make gpu-smoke`: one line without CUDA; on a CPU (``--allow-cpu``, slow) the same steps pass end to end."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from helpers import FIXTURE_PARAMS, ROOT

ENV = {**os.environ, "PYTHONHASHSEED": "0", "CUDA_VISIBLE_DEVICES": ""}


def test_make_gpu_smoke_without_cuda_says_so_in_one_line():
    done = subprocess.run(["make", "--no-print-directory", "gpu-smoke", f"GPU_PYTHON={sys.executable}"], cwd=ROOT,
                          env=ENV, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode != 0 and done.stdout == ""
    lines = [line for line in done.stderr.splitlines() if not line.startswith("make:")]
    assert lines == [lines[0]] and lines[0].startswith("gpu-smoke: needs a CUDA GPU"), done.stderr


@pytest.mark.slow
def test_every_step_passes_on_a_cpu_with_the_transformers_backend(tmp_path):
    done = subprocess.run([sys.executable, "-m", "vlrl.gpu_smoke", "--allow-cpu", "--params", str(FIXTURE_PARAMS),
                           "--work-dir", str(tmp_path / "work")], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    table = done.stdout[done.stdout.index("step  "):]
    steps = {line.split("  ")[0]: line for line in table.splitlines()[1:9]}
    assert list(steps) == ["backend", "data", "model build", "LoRA + GSPO steps", "adapter save",
                           "verified adapter load", "batched generation", "scoring"]
    assert all(" PASS " in line for line in steps.values()), table
    assert "GSPO seconds per step:" in done.stdout and "generation samples per second:" in done.stdout
    assert (tmp_path / "work" / "adapter" / "adapter_model.safetensors").is_file()  # a given --work-dir is kept


def test_a_non_empty_work_dir_is_refused(tmp_path):
    (tmp_path / "mine.txt").write_text("not vlrl's")
    done = subprocess.run([sys.executable, "-m", "vlrl.gpu_smoke", "--allow-cpu", "--work-dir", str(tmp_path)],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1 and "is not empty" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]
