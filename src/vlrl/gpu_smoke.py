"""`make gpu-smoke`: every full-profile code path on a CUDA machine, end to end, in minutes, offline.

    python -m vlrl.gpu_smoke [--params params.yaml] [--work-dir DIR] [--keep]

The first thing to run on a new GPU box (after `make install-gpu`). It needs neither the hub nor
MathVista: the data are the generated MathVista-format set and the model is a small Qwen3-VL built
locally (the tiny profile's architecture), but every step runs the code the `full` profile runs:

1. backend: Unsloth when it imports (``FastVisionModel``), else plain transformers;
2. 4-bit loading when bitsandbytes is present (Unsloth backend), bf16 otherwise;
3. LoRA on the language model (``lora.target_modules``), a few GSPO steps with TRL's GRPOTrainer
   (the params' gspo section, ``adamw_8bit`` when bitsandbytes is present), checkpoints;
4. the adapter saved, then loaded back onto a fresh base model and verified (vlrl.modeling.adapters);
5. batched, left-padded generation on the held-out split; scoring (rewards, accuracy verdicts).

It prints a pass/fail table (one row per step, with its time and a detail), then throughput: GSPO
seconds per step and tokens per second, generation samples per second, peak GPU memory. Exit status 0
when every step passed. Without CUDA it exits at once with one line saying so. Its files go to a
temporary folder (removed after a pass unless ``--keep``) or to ``--work-dir`` (a new or empty folder,
kept); Unsloth's ``unsloth_compiled_cache/`` lands there too.

``--allow-cpu`` (for this project's own tests) runs the same steps on the CPU with the transformers
backend, so the smoke run itself is tested where no GPU is.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import importlib.util
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vlrl.config import (
    DEFAULT_PARAMS_PATH,
    GenerationParams,
    ModelParams,
    TrainStageParams,
    load_params,
)
from vlrl.errors import VlrlError

PROG = "gpu-smoke"
#: Sizes that keep the run to minutes: rows generated, warm-start steps, GSPO steps, eval rows.
N_ITEMS, WARM_START_STEPS, GSPO_STEPS, EVAL_ROWS = 96, 40, 4, 32


@dataclasses.dataclass
class Step:
    name: str
    ok: bool | None = None  # None: skipped (an earlier step failed)
    seconds: float = 0.0
    detail: str = ""


class Smoke:
    """Runs the steps in order; a failed step is recorded (one line) and the steps after it are skipped."""

    def __init__(self) -> None:
        self.steps: list[Step] = []
        self.failed = False

    def run(self, name: str, action: Callable[[], str]) -> bool:
        step = Step(name)
        self.steps.append(step)
        if self.failed:
            step.detail = "skipped: an earlier step failed"
            return False
        started = time.perf_counter()
        try:
            step.detail = action() or ""
            step.ok = True
        except Exception as exc:  # noqa: BLE001 - every failure becomes a table row
            step.ok, self.failed = False, True
            text = str(exc).strip().splitlines()
            step.detail = f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
            if os.environ.get("VLRL_DEBUG"):
                traceback.print_exc()
        step.seconds = time.perf_counter() - started
        return bool(step.ok)

    def table(self) -> str:
        rows = [(s.name, {True: "PASS", False: "FAIL", None: "skip"}[s.ok], f"{s.seconds:.1f}", s.detail)
                for s in self.steps]
        widths = [max(len(r[i]) for r in [("step", "result", "seconds", "detail"), *rows]) for i in range(3)]
        lines = [f"{'step':<{widths[0]}}  {'result':<{widths[1]}}  {'seconds':>{widths[2]}}  detail"]
        lines += [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}  {d}" for a, b, c, d in rows]
        return "\n".join(lines)


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def _import_unsloth() -> str | None:
    """Import Unsloth first (it patches transformers/TRL/PEFT); None when it is not usable here."""
    if importlib.util.find_spec("unsloth") is None:
        return None
    import unsloth  # noqa: F401, PLC0415 - before anything imports transformers

    return _version("unsloth")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS_PATH)
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="an empty or new folder, kept (default: a temporary folder, removed after a pass)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    parser.add_argument("--allow-cpu", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.work_dir is not None and args.work_dir.exists() and any(args.work_dir.iterdir()):
        print(f"{PROG}: error: --work-dir {args.work_dir} is not empty; give a new or empty folder", file=sys.stderr)
        return 1

    import torch

    on_cuda = torch.cuda.is_available()
    if not on_cuda and not args.allow_cpu:
        print(f"{PROG}: needs a CUDA GPU (torch {torch.__version__} sees none); run it on the GPU machine after "
              "`make install-gpu`", file=sys.stderr)
        return 2
    os.environ["HF_HUB_OFFLINE"] = "1"  # everything here is local: fail rather than reach for the hub
    try:
        params = load_params(args.params)
    except VlrlError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    temporary = args.work_dir is None
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="vlrl-gpu-smoke-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    cwd = Path.cwd()
    os.chdir(work)  # Unsloth writes unsloth_compiled_cache/ into the working directory
    try:
        smoke, numbers = Smoke(), {}
        _run(smoke, numbers, params, work, on_cuda)
    finally:
        os.chdir(cwd)
    print(smoke.table())
    for key, value in numbers.items():
        print(f"{key}: {value}")
    if args.keep or smoke.failed or not temporary:
        print(f"work folder: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{PROG}: {'FAILED' if smoke.failed else 'all steps passed'}")
    return 1 if smoke.failed else 0


def _run(smoke: Smoke, numbers: dict[str, Any], params: Any, work: Path, on_cuda: bool) -> None:
    import torch

    state: dict[str, Any] = {}

    def backend() -> str:
        version = _import_unsloth() if on_cuda else None
        state["backend"] = "unsloth" if version else "transformers"
        state["bnb"] = on_cuda and importlib.util.find_spec("bitsandbytes") is not None
        gpu = torch.cuda.get_device_name(0) if on_cuda else "cpu"
        return (f"{state['backend']} (unsloth {version or 'not installed'}), bitsandbytes "
                f"{_version('bitsandbytes')}, torch {torch.__version__} CUDA {torch.version.cuda}, {gpu}")

    smoke.run("backend", backend)
    tiny = params.profile("tiny")

    def data() -> str:
        from vlrl.data import fetch_splits, load_split

        offline = dataclasses.replace(tiny.data.offline, n_items=N_ITEMS)
        manifest = fetch_splits(dataclasses.replace(tiny.data, offline=offline), params.seed, work / "splits",
                                work / "manifest.json")
        state["train"], state["eval"] = load_split(work / "splits", "train"), load_split(work / "splits", "eval")
        return f"generated MathVista-format set: train {manifest['splits']['train']['n']}, eval " \
               f"{manifest['splits']['eval']['n']}"

    smoke.run("data", data)

    def build() -> str:
        from vlrl.tiny_model import build_and_warm_start

        unsloth = state["backend"] == "unsloth"
        model = ModelParams(backend=state["backend"], id="gpu-smoke-qwen3-vl", revision=None,
                            load_in_4bit=unsloth and state["bnb"], max_seq_length=1024,
                            device="cuda" if on_cuda else "cpu",
                            build=dataclasses.replace(tiny.model.build, warm_start_steps=WARM_START_STEPS))
        state["model"] = model
        build_and_warm_start(model, params.prompt.template, state["train"], params.seed, work / "model")
        return f"Qwen3-VL built offline, warm-started {WARM_START_STEPS} steps; load_in_4bit {model.load_in_4bit}"

    smoke.run("model build", build)

    def train() -> str:
        from vlrl.training import train as gspo_train

        train_params = dataclasses.replace(
            tiny.train, per_device_train_batch_size=4, num_generations=4, max_steps=GSPO_STEPS, save_steps=2,
            max_completion_length=32, warmup_ratio=0.0, cpu_threads=None,
            optim="adamw_8bit" if state["bnb"] else "adamw_torch")
        stage = TrainStageParams(profile="tiny", seed=params.seed, prompt=params.prompt, rewards=params.rewards,
                                 gspo=params.gspo, model=state["model"], lora=tiny.lora, train=train_params)
        result = gspo_train(stage, state["train"].select(range(min(32, state["train"].num_rows))),
                            model_dir=work / "model", adapter_dir=work / "adapter",
                            checkpoints_dir=work / "checkpoints", curves_dir=work / "curves",
                            metrics_path=work / "train.json")
        metrics = {**result.metrics, **result.telemetry}  # train() returns TrainResult(metrics, telemetry)
        numbers["GSPO seconds per step"] = metrics["seconds_per_step"]
        numbers["GSPO tokens per second"] = metrics["tokens_per_second"]
        return (f"{metrics['steps']} steps, {stage.gspo.preset} preset ({metrics['loss_type']}, off-policy "
                f"{metrics['off_policy']}), optim {train_params.optim}, reward {metrics['reward_mean_first_tenth']}"
                f" -> {metrics['reward_mean_last_tenth']}")

    smoke.run("LoRA + GSPO steps", train)

    def saved() -> str:
        files = sorted(p.name for p in (work / "adapter").iterdir())
        assert {"adapter_config.json", "adapter_model.safetensors"} <= set(files), files
        return f"{work / 'adapter'}: {', '.join(files)}"

    smoke.run("adapter save", saved)

    def load() -> str:
        from vlrl.modeling import load_model_and_processor

        state["net"], state["processor"] = load_model_and_processor(state["model"], work / "model",
                                                                    adapter_dir=work / "adapter")
        device = next(state["net"].parameters()).device
        return f"adapter loaded and verified (LoRA keys match, B not zero, finite) on {device}"

    smoke.run("verified adapter load", load)

    def generate() -> str:
        from vlrl.generation import generate_completions

        rows = state["eval"].select(range(min(EVAL_ROWS, state["eval"].num_rows)))
        generation = GenerationParams(batch_size=16, max_new_tokens=48)
        started = time.perf_counter()
        state["records"] = generate_completions(state["net"], state["processor"], rows,
                                                prompt_template=params.prompt.template, generation=generation,
                                                seed=params.seed, progress=False)
        seconds = time.perf_counter() - started
        state["rows"] = rows
        numbers["generation samples per second"] = round(len(rows) / seconds, 2)
        return f"{len(rows)} completions, batch 16, left-padded, greedy"

    smoke.run("batched generation", generate)

    def score() -> str:
        from vlrl.scoring import score_generations

        _, metrics = score_generations(state["records"], state["rows"], params.rewards)
        return (f"n {metrics['n']}, format_compliance {metrics['format_compliance']:.2f}, accuracy_strict "
                f"{metrics['accuracy_strict']:.2f}, reward_total_mean {metrics['reward_total_mean']:.2f}")

    smoke.run("scoring", score)
    if on_cuda:
        numbers["peak GPU memory (MB)"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)


if __name__ == "__main__":
    sys.exit(main())
