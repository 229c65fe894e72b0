"""The GSPO train stage: settings checked before loading, exact resume after a kill, GSPO == GRPO
on-policy only, a NaN loss stops without an adapter, and RL raises held-out format compliance."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import FIXTURE_PARAMS, ROOT, edited, fixture_params, raw_params, write_params
from vlrl.config import TrainStageParams, is_off_policy, stage_view
from vlrl.errors import OutputError
from vlrl.training import TrainingDivergedError, train
from vlrl.training.callbacks import write_curves
from vlrl.training.checkpoints import (
    COMPLETE_MARKER,
    FINGERPRINT_FILE,
    last_complete_checkpoint,
    prepare_checkpoints_dir,
    write_complete_marker,
)
from vlrl.training.trainer import build_grpo_config, build_train_dataset, drop_long_prompts
from vlrl.training.trl_cpu_shim import chunked_logprob_torch

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONHASHSEED": "0"}


@pytest.fixture(scope="module")
def settings() -> TrainStageParams:
    return stage_view("train", fixture_params(), "tiny")


def _with(settings: TrainStageParams, *, train=None, gspo=None, rewards=None, model=None) -> TrainStageParams:
    return dataclasses.replace(
        settings,
        train=dataclasses.replace(settings.train, **(train or {})),
        gspo=dataclasses.replace(settings.gspo, **(gspo or {})),
        rewards=dataclasses.replace(settings.rewards, **(rewards or {})),
        model=dataclasses.replace(settings.model, **(model or {})))


def _outputs(root: Path) -> dict[str, Path]:
    return {"adapter_dir": root / "adapter", "checkpoints_dir": root / "checkpoints",
            "curves_dir": root / "curves", "metrics_path": root / "train.json"}


def _curve(curves_dir: Path, name: str) -> list[float]:
    lines = (curves_dir / f"{name}.tsv").read_text().splitlines()
    assert lines[0] == f"step\t{name}"
    return [float(line.split("\t")[1]) for line in lines[1:]]


# ------------------------------------------------------------------------------------------------
# Settings, before any model loads
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("accumulation", "steps_per_generation", "iterations", "off_policy"), [
    pytest.param(1, None, 1, False, id="reference-notebook-on-policy"),
    pytest.param(2, 2, 1, False, id="one-generation-per-optimizer-step"),
    pytest.param(1, 2, 1, True, id="generation-reused-across-two-updates"),
    pytest.param(1, None, 2, True, id="several-iterations-per-generation"),
])
def test_is_off_policy(settings, accumulation, steps_per_generation, iterations, off_policy):
    s = _with(settings, train={"gradient_accumulation_steps": accumulation},
              gspo={"steps_per_generation": steps_per_generation, "num_iterations": iterations})
    assert is_off_policy(s.train, s.gspo) is off_policy


def test_grpo_config_uses_trl_names_and_no_bf16_on_cpu(settings, tmp_path):
    s = _with(settings, gspo={"steps_per_generation": 2})
    config = build_grpo_config(s.train, s.gspo, 3407, tmp_path, device="cpu", reward_weights=[0.3, 1.0])
    seen = {name: getattr(config, name) for name in (
        "importance_sampling_level", "loss_type", "mask_truncated_completions", "beta", "epsilon",
        "num_iterations", "steps_per_generation", "reward_weights", "num_generations",
        "max_completion_length", "temperature", "learning_rate", "adam_beta2", "weight_decay", "warmup_steps",
        "max_grad_norm",
        "bf16", "save_steps", "seed", "data_seed", "logging_nan_inf_filter")}
    assert seen == {
        "importance_sampling_level": "sequence", "loss_type": "dr_grpo", "mask_truncated_completions": False,
        "beta": 0.0, "epsilon": 0.2, "num_iterations": 1, "steps_per_generation": 2,
        "reward_weights": [0.3, 1.0], "num_generations": s.train.num_generations,
        "max_completion_length": s.train.max_completion_length, "temperature": s.train.temperature,
        "learning_rate": s.train.learning_rate, "adam_beta2": 0.99, "weight_decay": 0.1,
        "warmup_steps": s.train.warmup_ratio, "max_grad_norm": s.train.max_grad_norm, "bf16": False,
        "save_steps": s.train.save_steps, "seed": 3407, "data_seed": 3407, "logging_nan_inf_filter": False}
    assert config.generation_batch_size == 2 * s.train.per_device_train_batch_size


def test_stage_reports_bad_params_in_one_line_without_loading(tmp_path):
    params = write_params(tmp_path / "params.yaml",
                          edited(raw_params(), "profiles.tiny.train.num_generations", 3))
    out = _run_stage(params, tmp_path / "no-model", tmp_path / "no-splits", tmp_path / "run")
    assert out.returncode == 1
    assert out.stderr.startswith("stages/train.py: error: params.yaml: profiles.tiny.train.num_generations = 3")
    assert "Traceback" not in out.stderr and not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------------
# Pieces without a model
# ------------------------------------------------------------------------------------------------


def test_torch_logprob_matches_log_softmax_with_softcap_and_temperature():
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(5, 4, generator=gen, requires_grad=True)
    weight = torch.randn(7, 4, generator=gen, requires_grad=True)
    targets = torch.tensor([0, 6, 3, 3, 1])
    logp, entropy, _, _, top1 = chunked_logprob_torch(hidden, weight, None, targets, 0.7, 8, 3.0, 1.5,
                                                      ("entropy", "is_top1"))
    logits = 3.0 * torch.tanh((hidden @ weight.t()) * 1.5 / 3.0) / 0.7
    ref = torch.log_softmax(logits, -1)
    torch.testing.assert_close(logp, ref.gather(-1, targets[:, None]).squeeze(-1))
    torch.testing.assert_close(entropy, -(ref.exp() * ref).sum(-1))
    assert top1.tolist() == (logits.argmax(-1) == targets).tolist()
    grad = torch.autograd.grad(logp.sum(), weight)[0]
    torch.testing.assert_close(grad, torch.autograd.grad(ref.gather(-1, targets[:, None]).sum(), weight)[0])


#: What a single-process Trainer checkpoint of a LoRA run holds.
TRAINER_FILES = ("adapter_config.json", "adapter_model.safetensors", "optimizer.pt", "scheduler.pt",
                 "rng_state.pth", "trainer_state.json")


def _fake_checkpoint(root: Path, step: int, *, marker=True, state_step=None, after_marker=None) -> Path:
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    for name in TRAINER_FILES:
        (folder / name).write_text(f"{name} of step {step}")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": state_step or step}))
    if marker:
        write_complete_marker(folder, state_step or step)
    if after_marker:
        after_marker(folder)
    return folder


@pytest.mark.parametrize(("newest", "expected"), [
    pytest.param({}, "checkpoint-20", id="newest-complete-wins"),
    pytest.param({"marker": False}, "checkpoint-10", id="killed-before-marker"),
    pytest.param({"after_marker": lambda f: (f / "optimizer.pt").unlink()}, "checkpoint-10",
                 id="optimizer-state-gone"),
    pytest.param({"after_marker": lambda f: (f / "adapter_model.safetensors").write_bytes(b"tru")}, "checkpoint-10",
                 id="truncated-adapter-behind-a-marker"),
    pytest.param({"after_marker": lambda f: (f / "rng_state.pth").write_bytes(b"garbage")}, "checkpoint-10",
                 id="garbage-rng-state"),
    pytest.param({"after_marker": lambda f: (f / COMPLETE_MARKER).write_text("{")}, "checkpoint-10",
                 id="truncated-marker"),
    pytest.param({"state_step": 19}, "checkpoint-10", id="trainer-state-of-another-step"),
])
def test_resume_uses_the_newest_intact_checkpoint(tmp_path, newest, expected):
    _fake_checkpoint(tmp_path, 10)
    _fake_checkpoint(tmp_path, 20, **newest)
    (tmp_path / "checkpoint-9").write_text("a file, not a checkpoint")
    assert last_complete_checkpoint(tmp_path).name == expected


def test_checkpoints_of_another_setup_are_not_resumed(tmp_path):
    folder = tmp_path / "checkpoints"
    assert prepare_checkpoints_dir(folder, "sha256:a") is None
    _fake_checkpoint(folder, 10)
    _fake_checkpoint(folder, 20, marker=False)
    (folder / "notes.txt").write_text("the user's own notes")
    assert prepare_checkpoints_dir(folder, "sha256:a").name == "checkpoint-10"
    assert not (folder / "checkpoint-20").exists()  # incomplete: removed
    assert prepare_checkpoints_dir(folder, "sha256:b") is None  # params changed: start over
    assert sorted(p.name for p in folder.iterdir()) == [".vlrl-output", "notes.txt", FINGERPRINT_FILE]
    (folder / FINGERPRINT_FILE).write_text("{broken")
    _fake_checkpoint(folder, 30)
    assert prepare_checkpoints_dir(folder, "sha256:b") is None, "an unreadable fingerprint is another setup"
    assert not (folder / "checkpoint-30").exists()


def test_a_folder_vlrl_did_not_write_is_never_used_for_checkpoints(tmp_path):
    (tmp_path / "thesis.tex").write_text("months of work")
    with pytest.raises(OutputError, match="refusing to keep checkpoints in this folder"):
        prepare_checkpoints_dir(tmp_path, "sha256:a")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis.tex"]


def test_curves_come_from_log_history_only(tmp_path):
    history = [{"step": 1, "loss": 0.5, "reward": 1.0, "format_rate": 0.25, "learning_rate": 0.0},
               {"step": 2, "loss": -0.1, "reward": 1.5, "format_rate": 0.5, "learning_rate": 1e-3},
               {"step": 2, "train_runtime": 3.0, "loss": 0.2}]  # the end-of-training summary: not a step
    names = sorted(p.name for p in write_curves(history, tmp_path))
    assert names == ["format_rate.tsv", "learning_rate.tsv", "loss.tsv", "reward.tsv"]
    assert (tmp_path / "loss.tsv").read_text() == "step\tloss\n1\t0.5\n2\t-0.1\n"


# ------------------------------------------------------------------------------------------------
# On the tiny model
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def train_split(tiny_splits):
    from vlrl.data import load_split

    return load_split(tiny_splits, "train")


def test_over_long_prompts_are_dropped_and_counted(settings, tiny_model_dir, train_split):
    from vlrl.generation import prompt_token_counts
    from vlrl.modeling import load_processor

    rows = train_split.select(range(24))
    processor = load_processor(settings.model, tiny_model_dir)
    lengths = prompt_token_counts(processor, rows, settings.prompt.template)
    limit = max(lengths) - 1  # drop the longest prompts, keep the others (the tiny set has few distinct lengths)
    dataset = build_train_dataset(rows, settings.prompt.template)
    kept, dropped = drop_long_prompts(dataset, processor, settings.prompt.template, limit,
                                      list(rows["question"]))
    assert (len(kept), dropped) == (sum(n <= limit for n in lengths), sum(n > limit for n in lengths))
    assert dropped > 0 and kept[0]["prompt"][0]["content"][0]["type"] == "image"


def _short_run(settings, train_split, model_dir, out: Path, **gspo) -> dict:
    s = _with(settings, train={"per_device_train_batch_size": 4, "num_generations": 4, "max_steps": 3,
                               "max_completion_length": 32, "warmup_ratio": 0.0, "save_steps": 100},
              gspo=gspo)
    return train(s, train_split.select(range(16)), model_dir=model_dir, **_outputs(out)).metrics


def test_gspo_equals_grpo_on_policy_and_differs_off_policy(settings, train_split, tiny_model_dir, tmp_path):
    runs = {(level, off): tmp_path / f"{level}-{off}" for level in ("sequence", "token") for off in (1, 2)}
    for (level, steps_per_generation), out in runs.items():
        metrics = _short_run(settings, train_split, tiny_model_dir, out, importance_sampling_level=level,
                             steps_per_generation=steps_per_generation)
        assert metrics["off_policy"] is (steps_per_generation == 2)
    # On-policy both ratios are exactly 1 and have the same gradient: same losses, same grad norms.
    on_gspo, on_grpo = (runs[("sequence", 1)] / "curves", runs[("token", 1)] / "curves")
    for curve in ("loss", "grad_norm"):
        assert _curve(on_gspo, curve) == pytest.approx(_curve(on_grpo, curve), rel=1e-4, abs=1e-7)
    # Off-policy the second step reuses the first step's completions under an updated policy: the
    # sequence-level ratio (GSPO) and the token-level one (GRPO) now give different losses.
    off_gspo, off_grpo = (_curve(runs[("sequence", 2)] / "curves", "loss"),
                          _curve(runs[("token", 2)] / "curves", "loss"))
    assert off_gspo[0] == pytest.approx(off_grpo[0], rel=1e-4, abs=1e-7)
    assert abs(off_gspo[1] - off_grpo[1]) > 1e-6


def test_nan_loss_stops_without_an_adapter(settings, train_split, tiny_model_dir, tmp_path, monkeypatch):
    import trl

    original = trl.GRPOTrainer._compute_loss
    monkeypatch.setattr(trl.GRPOTrainer, "_compute_loss",
                        lambda self, model, inputs: original(self, model, inputs) * float("nan"))
    s = _with(settings, train={"per_device_train_batch_size": 4, "max_steps": 3, "save_steps": 1,
                               "max_completion_length": 16})
    with pytest.raises(TrainingDivergedError, match=r"not finite after step 1\. No adapter was written"):
        train(s, train_split.select(range(8)), model_dir=tiny_model_dir, **_outputs(tmp_path))
    assert not (tmp_path / "adapter").exists() and not (tmp_path / "train.json").exists()
    assert last_complete_checkpoint(tmp_path / "checkpoints") is None


# ------------------------------------------------------------------------------------------------
# The stage: resume after a kill, and the RL signal
# ------------------------------------------------------------------------------------------------


def _run_stage(params: Path, model_dir: Path, splits_dir: Path, out: Path, *,
               background: bool = False) -> subprocess.CompletedProcess | subprocess.Popen:
    cmd = [sys.executable, "stages/train.py", "--profile", "tiny", "--params", str(params),
           "--model-dir", str(model_dir), "--splits-dir", str(splits_dir),
           "--adapter-dir", str(out / "adapter"), "--checkpoints-dir", str(out / "checkpoints"),
           "--curves-dir", str(out / "curves"), "--metrics", str(out / "train.json")]
    env = {**ENV, "VLRL_LOGS_DIR": str(out / "logs")}  # telemetry next to the run, not in the workspace
    if background:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)


#: A shorter run of the tiny profile for the resume test (the RL test runs the profile's own settings).
SHORT_TRAIN = {"max_steps": 12, "save_steps": 4, "per_device_train_batch_size": 4,
               "max_completion_length": 32}


@pytest.fixture(scope="module")
def short_params(tmp_path_factory) -> Path:
    raw = raw_params()
    raw["profiles"]["tiny"]["train"].update(SHORT_TRAIN)
    return write_params(tmp_path_factory.mktemp("short_params") / "params.yaml", raw)


def _stage_run(params: Path, model_dir: Path, splits_dir: Path, out: Path) -> Path:
    done = _run_stage(params, model_dir, splits_dir, out)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_resume_after_kill_gives_the_same_adapter_and_metrics(short_params, tiny_model_dir, tiny_splits,
                                                              tmp_path):
    reference = _stage_run(short_params, tiny_model_dir, tiny_splits, tmp_path / "uninterrupted")
    run = tmp_path / "interrupted"
    first_save = run / "checkpoints" / f"checkpoint-{SHORT_TRAIN['save_steps']}" / COMPLETE_MARKER
    process = _run_stage(short_params, tiny_model_dir, tiny_splits, run, background=True)
    deadline = time.monotonic() + 300
    while not first_save.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run ended before it could be killed mid-way"
    assert not (run / "adapter").exists()

    resumed = _run_stage(short_params, tiny_model_dir, tiny_splits, run)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr
    assert json.loads((run / "logs/tiny/train.json").read_text())["resumed_from_step"] >= SHORT_TRAIN["save_steps"]
    assert (run / "train.json").read_bytes() == (reference / "train.json").read_bytes(), "no telemetry inside"
    for name in ("adapter/adapter_model.safetensors", "adapter/adapter_config.json",
                 *[f"curves/{p.name}" for p in (reference / "curves").iterdir()]):
        assert (run / name).read_bytes() == (reference / name).read_bytes(), name

    # `dvc repro` after a finished run whose adapter is gone: no extra step, the same adapter.
    shutil.rmtree(run / "adapter")
    again = _run_stage(short_params, tiny_model_dir, tiny_splits, run)
    assert again.returncode == 0 and "is the end of training" in again.stderr, again.stderr[-3000:]
    assert json.loads((run / "train.json").read_text())["steps"] == SHORT_TRAIN["max_steps"]
    assert (run / "adapter/adapter_model.safetensors").read_bytes() == \
        (reference / "adapter/adapter_model.safetensors").read_bytes()


@pytest.mark.slow
def test_rl_raises_held_out_format_compliance_and_accuracy(tiny_model_dir, tiny_splits, tiny_params, tmp_path):
    """The tiny profile's own train stage, then greedy generation on the held-out split.

    Slow (about a minute and a half: 100 GSPO steps of 32 completions); `make test-pipeline` and CI run it.
    """
    from vlrl.data import load_split
    from vlrl.generation import generate_completions
    from vlrl.modeling import load_model_and_processor
    from vlrl.scoring import score_generations

    profile_run = _stage_run(FIXTURE_PARAMS, tiny_model_dir, tiny_splits, tmp_path)
    profile = tiny_params.profile("tiny")
    eval_split = load_split(tiny_splits, "eval")
    compliance, accuracy = {}, {}
    for name, adapter in (("baseline", None), ("post", profile_run / "adapter")):
        model, processor = load_model_and_processor(profile.model, tiny_model_dir, adapter_dir=adapter)
        records = generate_completions(model, processor, eval_split,
                                       prompt_template=tiny_params.prompt.template,
                                       generation=profile.generation, seed=tiny_params.seed, progress=False)
        metrics = score_generations(records, eval_split, tiny_params.rewards)[1]
        compliance[name], accuracy[name] = metrics["format_compliance"], metrics["accuracy_strict"]
    train = json.loads((profile_run / "train.json").read_text())
    assert compliance["post"] > compliance["baseline"], compliance
    assert accuracy["post"] >= accuracy["baseline"] + 0.10, accuracy
    assert train["format_rate_last_tenth"] > train["format_rate_first_tenth"], train
    assert train["reward_mean_last_tenth"] > train["reward_mean_first_tenth"], train
