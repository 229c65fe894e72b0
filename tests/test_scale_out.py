"""Several processes: the launch command, the shipped accelerate configs, errors once, sharded
generation, and (marked slow: `make test-pipeline`) the tiny train and generate stages as 2 processes
on CPU/gloo, killed and resumed, DeepSpeed ZeRO-2/3 on CPU, and a DVC queue running 2 experiments at once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from helpers import FIXTURE_PARAMS, ROOT, edited, fixture_params, raw_params, write_params
from vlrl import entry
from vlrl.config import ConfigError, LaunchParams, ModelParams, generation_batch_size, parse_params, stage_view
from vlrl.launch import (
    Processes,
    WorkerFailed,
    _worker_failure,
    enter_worker,
    launch_arguments,
    read_accelerate_config,
)

CONFIGS = ROOT / "configs" / "accelerate"
CPU_MODEL = ModelParams("transformers", "tiny", None, False, 1024, "cpu")


# ------------------------------------------------------------------------------------------------
# The launch command and the shipped configs (fast)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("launch", "device", "machine_rank", "expected"), [
    pytest.param(LaunchParams(num_processes=2), "cpu", 0,
                 ["--config_file", "configs/accelerate/multi_gpu.yaml", "--num_processes", "2", "--num_machines", "1",
                  "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"],
                 id="default-is-the-shipped-DDP-config-never-the-users-default-config-and-a-free-port"),
    pytest.param(LaunchParams(num_processes=4), "cuda", 0,
                 ["--config_file", "configs/accelerate/multi_gpu.yaml", "--num_processes", "4", "--num_machines", "1",
                  "--mixed_precision", "bf16", "--dynamo_backend", "no", "--main_process_port", "0"],
                 id="bf16-on-cuda-as-the-training-arguments"),
    pytest.param(LaunchParams(num_processes=2, config_file="configs/accelerate/deepspeed_zero2.yaml"), "cpu", 0,
                 ["--config_file", "configs/accelerate/deepspeed_zero2.yaml", "--num_processes", "2",
                  "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                  "--main_process_port", "0"],
                 id="the-params-config-file-is-passed"),
    pytest.param(LaunchParams(num_processes=16, config_file="configs/accelerate/multi_node.yaml", num_machines=2,
                              main_process_ip="10.1.2.3", main_process_port=29501), "cuda", 1,
                 ["--config_file", "configs/accelerate/multi_node.yaml", "--num_processes", "16", "--num_machines", "2",
                  "--mixed_precision", "bf16", "--dynamo_backend", "no", "--machine_rank", "1",
                  "--main_process_ip", "10.1.2.3", "--main_process_port", "29501", "--rdzv_backend", "c10d"],
                 id="several-machines-rendezvous-at-the-params-address-with-this-machines-rank"),
])
def test_launch_arguments(launch, device, machine_rank, expected):
    config = read_accelerate_config(launch, "full", ROOT)
    args = launch_arguments(launch, script="stages/train.py", script_args=["--profile", "tiny"], device=device,
                            machine_rank=machine_rank, config=config)
    assert args == [*expected, "stages/train.py", "--profile", "tiny"]
    assert "--cpu" not in args, "accelerate's --cpu starts ONE process"


def _resolved(launch: LaunchParams, machine_rank: int = 0) -> tuple[object, dict]:
    """What accelerate's launcher makes of our arguments: its torchrun arguments and the workers' env
    (accelerate's own functions, as `accelerate launch` calls them, without starting anything)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(launch_arguments(
        launch, script="stages/train.py", script_args=["--profile", "tiny"], device="cuda",
        machine_rank=machine_rank, config=read_accelerate_config(launch, "full", ROOT)))
    cwd = os.getcwd()
    os.chdir(ROOT)  # the config path is relative to the repository root, as in a stage
    try:
        args, defaults, _ = _validate_launch_command(args)
        if args.use_deepspeed:  # as accelerate's launch_command does before its DeepSpeed launcher
            args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        env = prepare_deepspeed_cmd_env(args)[1] if args.use_deepspeed else prepare_multi_gpu_env(args)
    finally:
        os.chdir(cwd)
    return args, env


@pytest.mark.parametrize(("config", "num_processes", "num_machines", "expected_env", "expected_args"), [
    pytest.param("multi_gpu.yaml", 2, 1, {}, {"nproc_per_node": "2", "use_deepspeed": False},
                 id="DDP-one-machine"),
    pytest.param("deepspeed_zero2.yaml", 2, 1,
                 {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"},
                 {"nproc_per_node": "2", "use_deepspeed": True}, id="ZeRO-2"),
    pytest.param("deepspeed_zero3.yaml", 4, 1,
                 {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
                  "ACCELERATE_DEEPSPEED_ZERO3_INIT": "true", "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL": "true"},
                 {"nproc_per_node": "4", "use_deepspeed": True}, id="ZeRO-3"),
    pytest.param("multi_node.yaml", 16, 2, {},
                 {"nproc_per_node": "8", "nnodes": "2", "node_rank": 1, "rdzv_backend": "c10d",
                  "rdzv_endpoint": "10.1.2.3:29501"}, id="two-machines-c10d-rendezvous"),
])
def test_shipped_configs_pass_through_the_launcher(config, num_processes, num_machines, expected_env,
                                                   expected_args):
    launch = LaunchParams(num_processes=num_processes, config_file=f"configs/accelerate/{config}",
                          num_machines=num_machines, main_process_ip="10.1.2.3", main_process_port=29501)
    args, env = _resolved(launch, machine_rank=1 if num_machines > 1 else 0)
    seen_args = {name: getattr(args, name) for name in expected_args}
    seen_env = {name: env.get(name) for name in expected_env}
    assert (seen_args, seen_env) == (expected_args, expected_env)
    # Params decide the precision and the accumulation (DeepSpeed's "auto"), never the shipped file.
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    assert "ACCELERATE_GRADIENT_ACCUMULATION_STEPS" not in env and "ACCELERATE_GRADIENT_CLIPPING" not in env


def test_every_shipped_config_is_tested_and_documented():
    shipped = sorted(p.name for p in CONFIGS.glob("*.yaml"))
    assert shipped == ["deepspeed_zero2.yaml", "deepspeed_zero3.yaml", "multi_gpu.yaml", "multi_node.yaml"]
    readme = (ROOT / "README.md").read_text()
    assert all(f"configs/accelerate/{name}" in readme for name in shipped)


@pytest.mark.parametrize(("text", "launch", "message"), [
    pytest.param(None, LaunchParams(2, "configs/accelerate/missing.yaml"), "no such file", id="missing-file"),
    pytest.param("distributed_type: FSDP\n", LaunchParams(2, "configs/accelerate/x.yaml"),
                 "distributed_type 'FSDP'; vlrl supports MULTI_GPU, DEEPSPEED", id="untested-strategy"),
    pytest.param("distributed_type: MULTI_GPU\n", LaunchParams(1, "configs/accelerate/x.yaml"),
                 "runs DDP, which needs at least 2 processes", id="ddp-with-one-process"),
    pytest.param("distributed_type: DEEPSPEED\ndeepspeed_config: {deepspeed_multinode_launcher: pdsh}\n",
                 LaunchParams(4, "configs/accelerate/x.yaml", 2, "10.0.0.1"),
                 "deepspeed_multinode_launcher 'pdsh'; vlrl supports 'standard'",
                 id="ssh-launcher-would-start-workers-elsewhere"),
    pytest.param("[1, 2]\n", LaunchParams(2, "configs/accelerate/x.yaml"), "not a YAML mapping", id="not-a-mapping"),
])
def test_accelerate_config_problems_name_the_params_key(tmp_path, text, launch, message):
    if text is not None:
        (tmp_path / launch.config_file).parent.mkdir(parents=True)
        (tmp_path / launch.config_file).write_text(text)
    with pytest.raises(ConfigError, match=rf"profiles\.tiny\.launch\..*{message}"):
        read_accelerate_config(launch, "tiny", tmp_path)


@pytest.mark.parametrize(("path", "value", "message"), [
    pytest.param("profiles.tiny.launch.num_processes", 0, r"launch\.num_processes = 0: must be an integer >= 1",
                 id="no-process"),
    pytest.param("profiles.tiny.launch", {"num_processes": 3, "num_machines": 2},
                 r"num_processes = 3: must be a multiple of num_machines \(2\)", id="processes-split-evenly"),
    pytest.param("profiles.tiny.launch", {"num_processes": 4, "num_machines": 2},
                 r"main_process_ip = None: num_machines is 2", id="several-machines-need-an-address"),
    pytest.param("profiles.tiny.launch.config_file", "/etc/accelerate.yaml",
                 r"config_file = '/etc/accelerate.yaml': must be a \.yaml file in configs/accelerate/",
                 id="config-outside-the-repository-is-no-dvc-dependency"),
    pytest.param("profiles.tiny.launch.main_process_port", 0, r"main_process_port = 0: must be a TCP port",
                 id="port-zero"),
    pytest.param("profiles.full.launch.num_processes", 2,
                 r"profiles\.full\.launch\.num_processes = 2: Unsloth runs one process on one GPU; set "
                 r"profiles\.full\.model\.backend: transformers", id="unsloth-is-single-gpu"),
])
def test_bad_launch_params_name_key_value_and_rule(path, value, message):
    with pytest.raises(ConfigError, match=message):
        parse_params(edited(raw_params(), path, value))


def test_group_size_must_divide_the_global_generation_batch():
    # A group twice one process's generation round is refused on one process and fits two (TRL splits a
    # round over all processes, so only the global batch must hold whole groups).
    params = fixture_params()
    one_process = generation_batch_size(params.profile("tiny").train, params.gspo)
    with pytest.raises(ConfigError, match=rf"per_device_train_batch_size x steps_per_generation = {one_process}\)"):
        fixture_params(profiles__tiny__train__num_generations=2 * one_process)
    raw = edited(raw_params(), "profiles.tiny.train.num_generations", 2 * one_process)
    two_processes = parse_params(edited(raw, "profiles.tiny.launch.num_processes", 2))
    assert two_processes.profile("tiny").train.num_generations == 2 * one_process


@pytest.mark.parametrize(("world", "launch", "message"), [
    pytest.param("1", LaunchParams(2), r"num_processes = 2, but this stage runs as 1 process\(es\).*--cpu",
                 id="a-launcher-that-started-one-process"),
    pytest.param("2", LaunchParams(1), r"num_processes = 1, but this stage runs as 2 process\(es\)",
                 id="a-hand-made-torchrun-that-params-do-not-describe"),
])
def test_worker_refuses_a_world_size_params_do_not_ask_for(monkeypatch, world, launch, message):
    monkeypatch.setenv("WORLD_SIZE", world)
    with pytest.raises(ConfigError, match=message):
        enter_worker(launch, CPU_MODEL, "tiny")


def _run_stage_main(monkeypatch, capsys, env: dict[str, str]) -> tuple[int, str]:
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    def main():
        raise ConfigError("params.yaml: profiles.tiny.train.num_generations = 3: must divide ...")

    with pytest.raises(SystemExit) as exited:
        entry.run_stage(main, prog="stages/train.py")
    return exited.value.code, capsys.readouterr().err


def test_a_user_error_prints_once_across_processes(monkeypatch, capsys, tmp_path):
    error_file = tmp_path / "attempt_0" / "1" / "error.json"
    code, err = _run_stage_main(monkeypatch, capsys, {"RANK": "1", "VLRL_LAUNCHER_PID": "1",
                                                      "TORCHELASTIC_ERROR_FILE": str(error_file)})
    assert (code, err) == (1, ""), "a worker of vlrl's launcher leaves the message to the launcher"
    assert json.loads(error_file.read_text())["message"].startswith("params.yaml: profiles.tiny.train")
    code, err = _run_stage_main(monkeypatch, capsys, {"RANK": "1", "VLRL_LAUNCHER_PID": "",
                                                      "TORCHELASTIC_ERROR_FILE": ""})
    assert (code, err) == (1, ""), "rank 1 under another launcher stays silent"
    code, err = _run_stage_main(monkeypatch, capsys, {"RANK": "0"})
    assert code == 1 and err.count("\n") == 1 and err.startswith("stages/train.py: error: params.yaml")


def test_launcher_reports_a_worker_failure_in_one_line(tmp_path):
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    error_file = tmp_path / "error.json"
    error_file.write_text(json.dumps({"message": "splits/eval: no eval split here", "timestamp": 5,
                                      "vlrl": {"exit_code": 1}}))
    user = ChildFailedError("stages/train.py", {
        0: ProcessFailure(0, 100, 1, str(error_file)),
        1: ProcessFailure(1, 101, -int(signal.SIGTERM), str(tmp_path / "none.json"))})
    killed = ChildFailedError("stages/train.py", {1: ProcessFailure(1, 101, -int(signal.SIGKILL), "<N/A>")})
    crashed = ChildFailedError("stages/train.py", {0: ProcessFailure(0, 100, 1, "<N/A>")})
    seen = [(str(e), e.exit_code) for e in map(lambda exc: _worker_failure(exc, 2), (user, killed, crashed))]
    assert seen == [
        ("splits/eval: no eval split here", 1),
        ("process 1 of 2 (pid 101) was killed by SIGKILL; the other processes were stopped. Run the stage again: "
         "training resumes from its last complete checkpoint", 137),
        ("process 0 of 2 (pid 100) failed with exit status 1 (its output is above); the other processes were "
         "stopped", 1)]
    assert all(isinstance(_worker_failure(e, 2), WorkerFailed) for e in (user, killed, crashed))


def test_setup_fingerprint_counts_processes_not_addresses(tmp_path):
    from vlrl.modeling import KIND_BUILT, write_pin
    from vlrl.training.checkpoints import setup_fingerprint

    write_pin(tmp_path, model_id="tiny", revision=None, backend="transformers", kind=KIND_BUILT)
    settings = stage_view("train", fixture_params(), "tiny")
    moved = dataclasses.replace(settings, launch=dataclasses.replace(settings.launch, main_process_port=29999))
    one, two = (setup_fingerprint(settings, tmp_path, "sha256:d", world_size=n) for n in (1, 2))
    assert one != two, "a checkpoint of 2 processes (rng_state_<rank>.pth, seeds per rank) is another run"
    assert setup_fingerprint(moved, tmp_path, "sha256:d", world_size=1) == one


def test_training_config_suppresses_vision_tokens(tmp_path):
    # (A config for several processes, or for CUDA, needs them to be built: the slow tests do.)
    from vlrl.training.trainer import build_grpo_config

    s = stage_view("train", fixture_params(), "tiny")
    cpu = build_grpo_config(s.train, s.gspo, 1, tmp_path, device="cpu", reward_weights=[0.3, 1.0],
                            suppress_tokens=[7, 8])
    assert (cpu.generation_kwargs, cpu.use_cpu, cpu.ddp_backend, cpu.ddp_find_unused_parameters) == (
        {"suppress_tokens": [7, 8]}, True, None, False)


# ------------------------------------------------------------------------------------------------
# On the tiny model, in this process (fast)
# ------------------------------------------------------------------------------------------------


def test_image_pad_is_never_sampled_in_training(tiny_params, tiny_model_dir, tiny_splits, tmp_path, monkeypatch):
    """Push <|image_pad|> to the top of every generation step: TRL 1.15 would sample it and the next
    forward pass would fail ("Image features and image tokens do not match")."""
    import trl

    from vlrl.data import load_split
    from vlrl.training import train

    original_init = trl.GRPOTrainer.__init__

    def boosting_init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        pad = self.processing_class.tokenizer.convert_tokens_to_ids("<|image_pad|>")

        def boost(_module, _inputs, logits):
            logits[..., pad] += 1e4
            return logits

        self.model.get_output_embeddings().register_forward_hook(boost)

    monkeypatch.setattr(trl.GRPOTrainer, "__init__", boosting_init)
    s = stage_view("train", tiny_params, "tiny")
    s = dataclasses.replace(s, train=dataclasses.replace(
        s.train, per_device_train_batch_size=4, max_steps=2, save_steps=2, max_completion_length=8))
    result = train(s, load_split(tiny_splits, "train").select(range(8)), model_dir=tiny_model_dir,
                   adapter_dir=tmp_path / "adapter", checkpoints_dir=tmp_path / "checkpoints",
                   curves_dir=tmp_path / "curves", metrics_path=tmp_path / "train.json")
    assert (result.metrics["steps"], result.metrics["world_size"]) == (2, 1)


class _Shard(Processes):
    """Process ``index`` of ``count``, alone: ``gather`` returns this process's own items only."""

    def gather(self, items: list) -> list:
        return list(items)


def test_generation_deals_whole_batches_and_gathers_in_row_order(tiny_params, tiny_model_dir, tiny_splits):
    from vlrl.data import load_split
    from vlrl.generation import generate_completions
    from vlrl.modeling import load_model_and_processor

    profile = tiny_params.profile("tiny")
    generation = dataclasses.replace(profile.generation, batch_size=8)
    split = load_split(tiny_splits, "eval").select(range(36))  # 5 batches over 3 processes: 2, 2, 1
    model, processor = load_model_and_processor(profile.model, tiny_model_dir)

    def run(processes):
        return generate_completions(model, processor, split, prompt_template=tiny_params.prompt.template,
                                    generation=generation, seed=tiny_params.seed, progress=False,
                                    processes=processes)

    single = run(None)
    shards = [run(_Shard(index, 3)) for index in range(3)]
    done = [[i for i, r in enumerate(shard) if r] for shard in shards]
    assert sorted(sum(done, [])) == list(range(36)), "every row generated by exactly one process"
    assert [len(rows) for rows in done] == [16, 12, 8]
    merged = [next(shard[i] for shard in shards if shard[i]) for i in range(36)]
    assert merged == single


# ------------------------------------------------------------------------------------------------
# The stages as several processes (slow)
# ------------------------------------------------------------------------------------------------

#: A short run of the tiny profile: 2 processes x 4 prompts-worth of completions per step.
SHORT_TRAIN = {"max_steps": 8, "save_steps": 2, "per_device_train_batch_size": 4, "max_completion_length": 32}
#: Records every os.replace (every vlrl output is written through one) with the RANK of the process.
_REPLACE_HOOK = '''
import json, os
_log, _replace = os.environ.get("VLRL_TEST_REPLACE_LOG"), os.replace
def _logged_replace(src, dst, *args, **kwargs):
    _replace(src, dst, *args, **kwargs)
    with open(_log, "a") as handle:
        handle.write(json.dumps({"rank": os.environ.get("RANK"), "pid": os.getpid(), "dst": os.fspath(dst)}) + "\\n")
if _log:
    os.replace = _logged_replace
'''


def _params(tmp_path: Path, name: str, launch: dict, train: dict | None = None) -> Path:
    raw = raw_params()
    raw["profiles"]["tiny"]["launch"].update(launch)
    raw["profiles"]["tiny"]["train"].update(train or {})
    return write_params(tmp_path / f"{name}.yaml", raw)


def _stage_env(out: Path) -> dict[str, str]:
    hooks = out.parent / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(_REPLACE_HOOK)
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONHASHSEED": "0", "VLRL_LOGS_DIR": str(out / "logs"),
            "VLRL_TEST_REPLACE_LOG": str(out.parent / "replaced.jsonl"),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(hooks), os.environ.get("PYTHONPATH")]))}


def _train(params: Path, model_dir: Path, splits: Path, out: Path, *, background: bool = False):
    cmd = [sys.executable, "stages/train.py", "--profile", "tiny", "--params", str(params), "--model-dir",
           str(model_dir), "--splits-dir", str(splits), "--adapter-dir", str(out / "adapter"),
           "--checkpoints-dir", str(out / "checkpoints"), "--curves-dir", str(out / "curves"),
           "--metrics", str(out / "train.json")]
    if background:
        return subprocess.Popen(cmd, cwd=ROOT, env=_stage_env(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    return subprocess.run(cmd, cwd=ROOT, env=_stage_env(out), capture_output=True, text=True, timeout=600,
                          check=False)


def _generate(params: Path, model_dir: Path, splits: Path, out: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "stages/generate.py", "--profile", "tiny", "--params", str(params), "--model-dir",
           str(model_dir), "--splits-dir", str(splits), "--out", str(out / "baseline.jsonl")]
    return subprocess.run(cmd, cwd=ROOT, env=_stage_env(out), capture_output=True, text=True, timeout=600,
                          check=False)


def _ok(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _children(pid: int) -> dict[int, str]:
    """The live child processes of ``pid`` with their RANK (torch elastic's workers, in their own sessions)."""
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            if proc.name.isdigit() and int(stat[1]) == pid and stat[0] != "Z":
                environ = dict(item.split("=", 1) for item in (proc / "environ").read_text().split("\0") if "=" in item)
                found[int(proc.name)] = environ.get("RANK", "")
        except (OSError, IndexError, ValueError):
            continue
    return found


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert path.exists() and process.poll() is None, "the run ended before it could be killed mid-way"


def _alive(pids) -> list[int]:
    alive = []
    for pid in pids:
        try:
            if (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                alive.append(pid)
        except OSError:
            continue
    return alive


def _same_outputs(run: Path, reference: Path) -> None:
    for name in ("train.json", "adapter/adapter_model.safetensors", "adapter/adapter_config.json",
                 *[f"curves/{p.name}" for p in (reference / "curves").iterdir()]):
        assert (run / name).read_bytes() == (reference / name).read_bytes(), name


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find the workers")
def test_two_processes_train_once_and_resume_after_their_workers_are_killed(tiny_model_dir, tiny_splits, tmp_path):
    from vlrl.training.checkpoints import COMPLETE_MARKER

    params = _params(tmp_path, "ddp", {"num_processes": 2}, SHORT_TRAIN)
    reference = tmp_path / "uninterrupted"
    first = _ok(_train(params, tiny_model_dir, tiny_splits, reference))
    assert first.stdout.count("train: 8 steps") == 1, "one summary: the main process's"
    train = json.loads((reference / "train.json").read_text())
    assert (train["world_size"], train["global_batch_size"]) == (2, 8)
    assert json.loads((reference / "logs/tiny/train.json").read_text())["world_size"] == 2
    assert sorted(p.name for p in (reference / "checkpoints/checkpoint-8").glob("rng_state*")) == [
        "rng_state_0.pth", "rng_state_1.pth"]

    # 1. A worker dies (rank 1, SIGKILL) after the first checkpoint: torch elastic stops the other one
    #    (which may first print the broken connection it saw), and the stage ends with one line naming
    #    the cause.
    run = tmp_path / "interrupted"
    process = _train(params, tiny_model_dir, tiny_splits, run, background=True)
    _wait_for(run / "checkpoints/checkpoint-2" / COMPLETE_MARKER, process)
    workers = _children(process.pid)
    assert sorted(workers.values()) == ["0", "1"]
    os.kill(next(pid for pid, rank in workers.items() if rank == "1"), signal.SIGKILL)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGKILL
    errors = [line for line in err.splitlines() if line.startswith("stages/train.py: error:")]
    assert errors == [f"stages/train.py: error: process 1 of 2 (pid {next(p for p, r in workers.items() if r == '1')})"
                      " was killed by SIGKILL; the other processes were stopped. Run the stage again: training "
                      "resumes from its last complete checkpoint"], err[-2000:]
    assert err.rstrip().endswith(errors[0]) and not _alive(workers) and not (run / "adapter").exists()

    # 2. Resumed, then the launcher itself is killed (SIGKILL, which it cannot pass on): its workers,
    #    in sessions of their own, die with it.
    process = _train(params, tiny_model_dir, tiny_splits, run, background=True)
    _wait_for(run / "checkpoints/checkpoint-4" / COMPLETE_MARKER, process)
    workers = _children(process.pid)
    assert len(workers) == 2
    process.kill()
    process.communicate(timeout=60)
    deadline = time.monotonic() + 20
    while _alive(workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(workers), "the workers outlived their killed launcher"

    # 3. Resumed again: the same adapter, curves and train.json as the uninterrupted run.
    resumed = _ok(_train(params, tiny_model_dir, tiny_splits, run))
    assert "resuming from" in resumed.stderr
    _same_outputs(run, reference)

    # Only rank 0 ever wrote an output, and each output of a run once.
    replaced = [json.loads(line) for line in (tmp_path / "replaced.jsonl").read_text().splitlines()]
    assert {r["rank"] for r in replaced} == {"0"}, Counter(r["rank"] for r in replaced)
    finals = Counter(Path(r["dst"]).relative_to(tmp_path).as_posix() for r in replaced
                     if Path(r["dst"]).name in ("train.json", "adapter", COMPLETE_MARKER) and "logs" not in r["dst"])
    assert finals["uninterrupted/train.json"] == finals["interrupted/train.json"] == 1
    assert finals["uninterrupted/adapter"] == finals["interrupted/adapter"] == 1
    assert finals[f"uninterrupted/checkpoints/checkpoint-8/{COMPLETE_MARKER}"] == 1


@pytest.mark.slow
def test_sharded_generation_writes_the_single_process_file(tiny_model_dir, tiny_splits, tmp_path):
    single = tmp_path / "one"
    _ok(_generate(FIXTURE_PARAMS, tiny_model_dir, tiny_splits, single))
    # 3 processes: the 8 batches of the eval split are dealt 3, 3, 2 (an uneven share).
    sharded = tmp_path / "three"
    done = _ok(_generate(_params(tmp_path, "three", {"num_processes": 3}), tiny_model_dir, tiny_splits, sharded))
    assert done.stdout.count("generations: ") == 1
    for name in ("baseline.jsonl", "baseline.meta.json"):
        assert (sharded / name).read_bytes() == (single / name).read_bytes(), name
    assert json.loads((sharded / "logs/tiny/generate_baseline.json").read_text())["world_size"] == 3
    replaced = [json.loads(line) for line in (tmp_path / "replaced.jsonl").read_text().splitlines()]
    assert {r["rank"] for r in replaced if "three" in r["dst"]} == {"0"}

    # An error a user can fix, met by every process: printed once, in one line, by the launcher.
    two = _params(tmp_path, "two", {"num_processes": 2})
    failed = _generate(two, tiny_model_dir, tmp_path / "no-splits", tmp_path / "failed")
    errors = [line for line in failed.stderr.splitlines() if "error" in line.lower()]
    assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed.stderr[-2000:]
    assert errors == [f"stages/generate.py: error: {tmp_path / 'no-splits' / 'eval'}: no eval split here; run "
                      "`dvc repro fetch@<profile>` (or `python stages/fetch.py --profile <profile> ...`) first"]


@pytest.mark.slow
def test_deepspeed_zero2_and_zero3_train_on_cpu_and_resume(tiny_model_dir, tiny_splits, tmp_path):
    pytest.importorskip("deepspeed", reason="make test-pipeline installs the deepspeed extra")
    from safetensors.torch import load_file

    from vlrl.training.checkpoints import COMPLETE_MARKER, FINGERPRINT_FILE

    short = {**SHORT_TRAIN, "max_steps": 4}
    zero2 = _params(tmp_path, "zero2", {"num_processes": 2, "config_file": "configs/accelerate/deepspeed_zero2.yaml"},
                    short)
    reference = tmp_path / "zero2"
    _ok(_train(zero2, tiny_model_dir, tiny_splits, reference))
    checkpoint = reference / "checkpoints/checkpoint-2"
    listed = json.loads((checkpoint / COMPLETE_MARKER).read_text())["files"]
    assert "optimizer.pt" not in listed, "DeepSpeed keeps the optimizer in its own shards"
    assert {"global_step2/zero_pp_rank_0_mp_rank_00_optim_states.pt",
            "global_step2/zero_pp_rank_1_mp_rank_00_optim_states.pt"} <= set(listed)

    # Resume from the middle checkpoint (as after a kill there): the same adapter as the uninterrupted run.
    run = tmp_path / "zero2-resumed"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copytree(checkpoint, run / "checkpoints" / checkpoint.name)
    shutil.copy2(reference / "checkpoints" / FINGERPRINT_FILE, run / "checkpoints" / FINGERPRINT_FILE)
    resumed = _ok(_train(zero2, tiny_model_dir, tiny_splits, run))
    assert "resuming from" in resumed.stderr and "checkpoint-2" in resumed.stderr
    _same_outputs(run, reference)

    # ZeRO-3 shards the weights too: the adapter is gathered before it is saved, the same weights as ZeRO-2's.
    zero3 = _params(tmp_path, "zero3", {"num_processes": 2, "config_file": "configs/accelerate/deepspeed_zero3.yaml"},
                    short)
    _ok(_train(zero3, tiny_model_dir, tiny_splits, tmp_path / "zero3"))
    two, three = (load_file(out / "adapter/adapter_model.safetensors") for out in (reference, tmp_path / "zero3"))
    assert two.keys() == three.keys()
    for name, weight in two.items():
        torch.testing.assert_close(three[name], weight, rtol=1e-4, atol=1e-5)
