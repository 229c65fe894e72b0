"""Train-stage numbers on the tiny profile: seconds per step, peak RSS, time to resume after a kill,
held-out format compliance before and after.

    .venv/bin/python benchmarks/bench_training.py [--work-dir /tmp/vlrl_bench_training] [--params params.yaml]

Builds the tiny splits and model with the fetch and model stages into the work dir (reused when
present), then runs stages/train.py three times: uninterrupted; killed (SIGKILL) right after its first
checkpoint; resumed. Prints numbers; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def stage(*args: str) -> list[str]:
    return [sys.executable, *args]


def train_cmd(params: Path, work: Path, out: Path) -> list[str]:
    return stage("stages/train.py", "--profile", "tiny", "--params", str(params),
                 "--model-dir", str(work / "model"), "--splits-dir", str(work / "splits"),
                 "--adapter-dir", str(out / "adapter"),
                 "--checkpoints-dir", str(out / "checkpoints"), "--curves-dir", str(out / "curves"),
                 "--metrics", str(out / "train.json"))


def run_env(out: Path) -> dict[str, str]:
    """The stage's environment, with its run log (telemetry) written under ``out/logs``."""
    return {**ENV, "VLRL_LOGS_DIR": str(out / "logs")}


def run_record(out: Path) -> dict:
    """train.json (what the run learned) merged with its run log (what it cost)."""
    return {**json.loads((out / "train.json").read_text()), **json.loads((out / "logs/tiny/train.json").read_text())}


def format_compliance(params_path: Path, work: Path, adapter: Path | None) -> float:
    from vlrl.config import load_params
    from vlrl.data import load_split
    from vlrl.generation import generate_completions
    from vlrl.modeling import load_model_and_processor
    from vlrl.scoring import score_generations

    params = load_params(params_path)
    profile = params.profile("tiny")
    eval_split = load_split(work / "splits", "eval")
    model, processor = load_model_and_processor(profile.model, work / "model", adapter_dir=adapter)
    records = generate_completions(model, processor, eval_split, prompt_template=params.prompt.template,
                                   generation=profile.generation, seed=params.seed, progress=False)
    return score_generations(records, eval_split, params.rewards)[1]["format_compliance"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/vlrl_bench_training"))
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    args = parser.parse_args()
    work, params = args.work_dir, args.params.resolve()
    if not (work / "model" / "model_pin.json").is_file():
        subprocess.run(stage("stages/fetch.py", "--profile", "tiny", "--params", str(params), "--splits-dir",
                             str(work / "splits"), "--manifest", str(work / "manifest.json")),
                       cwd=ROOT, env=ENV, check=True, capture_output=True)
        subprocess.run(stage("stages/model.py", "--profile", "tiny", "--params", str(params), "--splits-dir",
                             str(work / "splits"), "--out", str(work / "model")),
                       cwd=ROOT, env=ENV, check=True, capture_output=True)
    for name in ("uninterrupted", "interrupted"):
        shutil.rmtree(work / name, ignore_errors=True)

    started = time.perf_counter()
    subprocess.run(train_cmd(params, work, work / "uninterrupted"), cwd=ROOT, env=run_env(work / "uninterrupted"),
                   check=True, capture_output=True)
    stage_s = time.perf_counter() - started
    full = run_record(work / "uninterrupted")

    run = work / "interrupted"
    process = subprocess.Popen(train_cmd(params, work, run), cwd=ROOT, env=run_env(run), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    marker = "checkpoint-*/vlrl_checkpoint_complete.json"
    while process.poll() is None and not list((run / "checkpoints").glob(marker)):
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    started = time.perf_counter()
    subprocess.run(train_cmd(params, work, run), cwd=ROOT, env=run_env(run), check=True, capture_output=True)
    resume_s = time.perf_counter() - started
    resumed = run_record(run)
    same = (run / "adapter" / "adapter_model.safetensors").read_bytes() == \
        (work / "uninterrupted" / "adapter" / "adapter_model.safetensors").read_bytes()

    before = format_compliance(params, work, None)
    after = format_compliance(params, work, work / "uninterrupted" / "adapter")
    print(f"train stage (process, uninterrupted): {stage_s:.1f} s for {full['steps']} steps")
    print(f"train loop: {full['wall_time_s']} s, {full['seconds_per_step']} s/step, "
          f"{full['tokens_per_second']} tokens/s, peak RSS {full.get('peak_rss_mb')} MB")
    print(f"resume: killed after checkpoint, resumed from step {resumed['resumed_from_step']}; "
          f"resumed process {resume_s:.1f} s ({resumed['wall_time_s']} s in the train loop); "
          f"adapter identical: {same}")
    print(f"train format rate: {full['format_rate_first_tenth']} -> {full['format_rate_last_tenth']}; "
          f"reward {full['reward_mean_first_tenth']} -> {full['reward_mean_last_tenth']}")
    print(f"held-out format compliance (greedy): baseline {before:.3f} -> post {after:.3f}")


if __name__ == "__main__":
    main()
