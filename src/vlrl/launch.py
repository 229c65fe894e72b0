"""Several processes: the train and generate stages under ``accelerate launch``, as TRL scales GRPO.

``profiles.<p>.launch`` (:class:`~vlrl.config.LaunchParams`) decides; the stage command in ``dvc.yaml``
stays ``python stages/<stage>.py ...`` whatever it says:

1. **The launcher.** The stage, started by DVC, parses params. With ``launch.num_processes > 1`` (or a
   ``launch.config_file``) and no launcher around it, it becomes the launcher: :func:`relaunch` runs
   accelerate's own ``accelerate launch`` code in this process (``accelerate.commands.launch``, which
   hands over to torch elastic, ``torch.distributed.run``) on the same script and arguments, with
   :func:`launch_arguments`. It waits for the workers and ends with their status; it stops them when
   it is stopped (see below). An error a user can fix prints once, in one line (:func:`relaunch`).
2. **The workers.** Each worker runs the same script with ``RANK``/``WORLD_SIZE`` set by torch elastic.
   :func:`enter_worker` checks that the world size is the one params ask for, then the stage does its
   work; only the main process (:func:`is_main_process`, rank 0) writes outputs.

Traps this module exists for (accelerate 1.15, torch 2.13):

- ``accelerate launch --cpu --num_processes 2`` starts ONE process (accelerate's simple launcher; no
  ``RANK``/``WORLD_SIZE``) and exits 0. The launcher here never passes ``--cpu``: the accelerate config
  (DDP, ``distributed_type: MULTI_GPU``) starts torch elastic, which runs DDP over gloo on a CPU when
  the training arguments say ``use_cpu=True`` (vlrl.training). :func:`enter_worker` refuses a world
  size other than ``launch.num_processes``, whoever launched the stage.
- Without ``--config_file``, ``accelerate launch`` reads the user's own default config
  (``~/.cache/huggingface/accelerate/default_config.yaml``): the launcher always passes one, so a run
  depends on the repository only.
- torch elastic starts every worker in its own session (``start_new_session=True`` in
  ``torch/distributed/elastic/multiprocessing/subprocess_handler/subprocess_handler.py``): killing the
  launcher's process group does not reach them, and a launcher killed with SIGKILL would leave them
  running. On SIGTERM/SIGINT torch elastic stops them itself (``SignalException`` in
  ``torch/distributed/elastic/agent/server/api.py``); against SIGKILL each worker asks Linux to kill it
  when the launcher dies (``prctl(PR_SET_PDEATHSIG)``, :func:`enter_worker`).
- On one machine, port 29500 is taken by the first run of a DVC queue with ``-j N``: the launcher asks
  accelerate for a free port (``--main_process_port 0``); across machines the port of params is used.
- On a CPU, resuming a DDP checkpoint maps its tensors to ``cpu:<rank>`` and fails to unpickle them
  unless ``ACCELERATE_TORCH_DEVICE=cpu`` (set by :func:`enter_worker`).

The world size is part of the experiment (the global batch is per-device batch x processes x gradient
accumulation, and every process samples with its own seed: TRL's ``set_seed(args.seed,
device_specific=True)`` in ``trl/trainer/grpo_trainer.py``), so ``train.json`` and the checkpoints'
setup fingerprint record it.

Importing this module imports neither torch nor accelerate; the functions that need them import them.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vlrl.config import LaunchParams, ModelParams
from vlrl.config.launch_params import ACCELERATE_CONFIG_DIR
from vlrl.entry import LAUNCHER_PID_VARIABLE, debug_enabled
from vlrl.errors import ConfigError, VlrlError

log = logging.getLogger(__name__)

#: This machine's rank when ``launch.num_machines > 1`` (0 on the machine at ``main_process_ip``).
MACHINE_RANK_VARIABLE = "VLRL_MACHINE_RANK"
#: Linux ``prctl`` option: the signal a process receives when its parent dies.
_PR_SET_PDEATHSIG = 1
#: accelerate ``distributed_type`` values the shipped configs use (and vlrl supports).
SUPPORTED_DISTRIBUTED_TYPES = ("MULTI_GPU", "DEEPSPEED")


# ------------------------------------------------------------------------------------------------
# Where this process stands (environment only: no torch)
# ------------------------------------------------------------------------------------------------


def world_size() -> int:
    """Processes in this run: ``WORLD_SIZE`` as torch elastic sets it, else 1."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def is_main_process() -> bool:
    """Rank 0 of the run (or a plain single process): the one that writes outputs and run logs."""
    return int(os.environ.get("RANK", "0") or 0) == 0


def inside_launcher() -> bool:
    """Started by a launcher (ours, ``accelerate launch``, ``torchrun``) rather than by DVC or a person."""
    return "WORLD_SIZE" in os.environ or LAUNCHER_PID_VARIABLE in os.environ


def machine_rank(launch: LaunchParams) -> int:
    """``VLRL_MACHINE_RANK`` (0 when unset); must be below ``launch.num_machines``."""
    text = os.environ.get(MACHINE_RANK_VARIABLE, "0").strip() or "0"
    if not text.isdigit() or int(text) >= launch.num_machines:
        raise ConfigError(f"{MACHINE_RANK_VARIABLE}={text!r}: must be an integer from 0 to "
                          f"launch.num_machines - 1 = {launch.num_machines - 1} (0 on the machine at main_process_ip)")
    return int(text)


def run_device(model: ModelParams) -> str:
    """``cpu`` or ``cuda``: what the workers will train or generate on (``auto`` resolved here)."""
    if model.device != "auto":
        return model.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def deepspeed_enabled() -> bool:
    """The stage runs under an accelerate DeepSpeed config (accelerate's launcher sets this variable)."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").strip().lower() == "true"


def telemetry() -> dict[str, Any]:
    """What the run log records about the processes: world size and the GPUs this run could see."""
    return {"world_size": world_size(), "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}


# ------------------------------------------------------------------------------------------------
# The accelerate config and the launch command
# ------------------------------------------------------------------------------------------------


def read_accelerate_config(launch: LaunchParams, profile: str, root: Path = Path(".")) -> dict[str, Any]:
    """The accelerate config file a launch uses, checked: it exists, is a mapping, names a supported
    ``distributed_type``, and agrees with the process count."""
    key = f"params.yaml: profiles.{profile}.launch.config_file = {launch.accelerate_config!r}"
    path = Path(root) / launch.accelerate_config
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{key}: no such file; the shipped configs are in {ACCELERATE_CONFIG_DIR}/") from exc
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        reason = " ".join(str(exc).split())
        raise ConfigError(f"{key}: cannot be read as YAML ({reason})") from exc
    if not isinstance(config, dict):
        raise ConfigError(f"{key}: not a YAML mapping (an accelerate config, as `accelerate config` writes)")
    kind = config.get("distributed_type")
    if kind not in SUPPORTED_DISTRIBUTED_TYPES:
        raise ConfigError(f"{key}: distributed_type {kind!r}; vlrl supports {', '.join(SUPPORTED_DISTRIBUTED_TYPES)} "
                          "(DDP, DeepSpeed)")
    if kind == "MULTI_GPU" and launch.num_processes < 2:
        raise ConfigError(f"params.yaml: profiles.{profile}.launch.num_processes = {launch.num_processes}: the config "
                          f"{launch.accelerate_config} runs DDP, which needs at least 2 processes")
    multinode = (config.get("deepspeed_config") or {}).get("deepspeed_multinode_launcher", "standard")
    if kind == "DEEPSPEED" and multinode != "standard":
        raise ConfigError(f"{key}: deepspeed_multinode_launcher {multinode!r}; vlrl supports 'standard' (every "
                          "machine runs the stage itself, with its own VLRL_MACHINE_RANK)")
    return config


def launch_arguments(launch: LaunchParams, *, script: str, script_args: Sequence[str], device: str,
                     machine_rank: int = 0, config: Mapping[str, Any] | None = None) -> list[str]:
    """The arguments of ``accelerate launch`` that run ``script script_args`` as ``launch`` says.

    Everything params decide is passed explicitly and overrides the config file: the process and
    machine counts, the rendezvous address (several machines) or a free port (one machine), and the
    mixed precision (bf16 on CUDA as the reference run, none on CPU: vlrl.training sets ``bf16`` alike).
    Across machines, the rendezvous settings of the accelerate ``config`` are passed explicitly too:
    accelerate 1.15 takes a config value only where its command-line default is None, and the
    defaults of ``--rdzv_backend`` ("static") and ``--same_network`` (False) are not, so the file's
    values would silently never apply (``_validate_launch_command`` in accelerate/commands/launch.py).

    >>> launch_arguments(LaunchParams(num_processes=2), script="stages/train.py", script_args=["--profile", "tiny"],
    ...                  device="cpu")  # doctest: +NORMALIZE_WHITESPACE
    ['--config_file', 'configs/accelerate/multi_gpu.yaml', '--num_processes', '2', '--num_machines', '1',
     '--mixed_precision', 'no', '--dynamo_backend', 'no', '--main_process_port', '0',
     'stages/train.py', '--profile', 'tiny']
    """
    args = ["--config_file", launch.accelerate_config, "--num_processes", str(launch.num_processes),
            "--num_machines", str(launch.num_machines), "--mixed_precision", "bf16" if device == "cuda" else "no",
            "--dynamo_backend", "no"]
    if launch.num_machines > 1:
        args += ["--machine_rank", str(machine_rank), "--main_process_ip", str(launch.main_process_ip),
                 "--main_process_port", str(launch.main_process_port)]
        config = config or {}
        args += ["--rdzv_backend", str(config.get("rdzv_backend") or "static")]
        args += ["--same_network"] if config.get("same_network") else []
    else:
        args += ["--main_process_port", "0"]  # accelerate picks a free port (accelerate/utils/launch.py)
    return [*args, script, *script_args]


# ------------------------------------------------------------------------------------------------
# The launcher
# ------------------------------------------------------------------------------------------------


class WorkerFailed(VlrlError):
    """A worker of a launched stage failed; ``exit_code`` is the stage's exit status."""

    def __init__(self, message: str, exit_code: int = 1, from_worker: bool = False) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        #: The message is a worker's own (an error its user can fix), not the launcher's account of a crash.
        self.from_worker = from_worker


def should_relaunch(launch: LaunchParams) -> bool:
    """The stage must start itself under ``accelerate launch``: params ask for it and no launcher runs it."""
    return launch.launched and not inside_launcher()


def launch_or_enter(launch: LaunchParams, model: ModelParams, profile: str) -> int | None:
    """The first step of a stage that may run as several processes (train, generate).

    Returns the launcher's exit status when this process has to start the stage under ``accelerate
    launch`` (:func:`relaunch`; the stage then returns it and does nothing else), else ``None`` after
    this process passed :func:`enter_worker` (the stage goes on with its work).
    """
    if should_relaunch(launch):
        return relaunch(launch, model, profile)
    enter_worker(launch, model, profile)
    return None


def relaunch(launch: LaunchParams, model: ModelParams, profile: str, argv: Sequence[str] | None = None) -> int:
    """Run this stage's command (``argv``, default ``sys.argv``) under ``accelerate launch``; its exit status.

    The launcher is accelerate's CLI code, run in this process (``accelerate launch`` would be the same
    code in a child process): the workers are this process's children, which lets them die with it.
    A worker that failed with an error a user can fix left its one-line message in torch elastic's
    error file (:func:`vlrl.entry.leave_error_for_launcher`); it is raised here as
    :class:`WorkerFailed`, so that it prints once.
    """
    script, *script_args = list(sys.argv if argv is None else argv)
    config = read_accelerate_config(launch, profile)
    args = launch_arguments(launch, script=script, script_args=script_args, device=run_device(model),
                            machine_rank=machine_rank(launch), config=config)
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    _quiet_launcher_logs()
    log.info("accelerate launch %s", " ".join(args))
    os.environ[LAUNCHER_PID_VARIABLE] = str(os.getpid())
    started = time.perf_counter()
    try:
        launch_command(launch_command_parser().parse_args(args))
    except ChildFailedError as exc:
        failure = _worker_failure(exc, launch.num_processes)
        if not failure.from_worker:
            print(file=sys.stderr)  # the workers' progress bar may have left the line unfinished
        raise failure from None
    except SignalException as exc:  # torch elastic stopped the workers before raising this
        print(f"{script}: interrupted ({exc.sigval.name}); the {launch.num_processes} processes were stopped",
              file=sys.stderr)
        return 128 + int(exc.sigval)
    finally:
        os.environ.pop(LAUNCHER_PID_VARIABLE, None)
    print(f"launch: {launch.num_processes} processes finished in {time.perf_counter() - started:.1f} s")
    return 0


def _quiet_launcher_logs() -> None:
    """torch elastic reports a failed worker as log lines and a formatted exception; the launcher
    reports it in one line instead (VLRL_DEBUG=1 keeps them)."""
    if not debug_enabled():
        logging.getLogger("torch.distributed").setLevel(logging.CRITICAL)


def _worker_failure(exc: Any, count: int) -> WorkerFailed:
    """One :class:`WorkerFailed` for torch elastic's ``ChildFailedError``: a worker's own message when
    one left it (the first by time, then by rank), else what happened to the first worker that failed."""
    messages = sorted((int(f.timestamp), rank, f.error_file_data["vlrl"], f.message)
                      for rank, f in exc.failures.items() if isinstance(f.error_file_data, dict)
                      and isinstance(f.error_file_data.get("vlrl"), dict))
    if messages:
        _, _, extra, message = messages[0]
        return WorkerFailed(message, int(extra.get("exit_code", 1)), from_worker=True)
    rank, failure = exc.get_first_failure()
    if failure.exitcode < 0:
        name = signal.Signals(-failure.exitcode).name
        return WorkerFailed(f"process {rank} of {count} (pid {failure.pid}) was killed by {name}; the other processes "
                            "were stopped. Run the stage again: training resumes from its last complete checkpoint",
                            128 - failure.exitcode)
    return WorkerFailed(f"process {rank} of {count} (pid {failure.pid}) failed with exit status {failure.exitcode} "
                        "(its output is above); the other processes were stopped", failure.exitcode or 1)


# ------------------------------------------------------------------------------------------------
# The workers
# ------------------------------------------------------------------------------------------------


def enter_worker(launch: LaunchParams, model: ModelParams, profile: str) -> None:
    """Checks and settings every process of a stage goes through before it loads anything.

    - The world size must be ``launch.num_processes`` (1 without a launcher): a launcher that started
      another number (``accelerate launch --cpu`` starts one) or a hand-made ``torchrun`` with other
      settings would otherwise train another experiment than params (and dvc.lock) say.
    - Started by :func:`relaunch`: die with the launcher (Linux ``PR_SET_PDEATHSIG``), also when it is
      killed with SIGKILL, which it cannot pass on.
    - On a CPU: ``ACCELERATE_TORCH_DEVICE=cpu`` (resume maps checkpoints to that device).
    """
    processes = world_size()
    expected = launch.num_processes if launch.launched else 1
    if processes != expected:
        hint = ("the launcher started a different number (`accelerate launch --cpu` starts one); run the stage "
                "command without a launcher: it starts itself under `accelerate launch`") if inside_launcher() \
            else "run the stage command as dvc.yaml has it"
        raise ConfigError(f"params.yaml: profiles.{profile}.launch.num_processes = {launch.num_processes}, but this "
                          f"stage runs as {processes} process(es) (WORLD_SIZE); {hint}")
    if LAUNCHER_PID_VARIABLE in os.environ:
        _die_with_launcher(int(os.environ[LAUNCHER_PID_VARIABLE]))
    if processes > 1 and run_device(model) == "cpu":
        os.environ.setdefault("ACCELERATE_TORCH_DEVICE", "cpu")


def _die_with_launcher(launcher_pid: int) -> None:
    """Ask Linux for SIGKILL when the parent (the launcher) dies; if it already died, stop now."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed (errno %d): this process may outlive a killed launcher",
                    ctypes.get_errno())
        return
    if os.getppid() != launcher_pid:  # the launcher died before the request took effect
        os._exit(128 + int(signal.SIGKILL))


@dataclass(frozen=True)
class Processes:
    """This process's place among the processes of a run, and the few collective steps vlrl needs.

    ``Processes()`` is a plain single process: every method is then a no-op or the identity, so that
    code written for several processes runs unchanged in one.
    """

    index: int = 0
    count: int = 1

    @classmethod
    def start(cls, model: ModelParams) -> Processes:
        """Join the run's process group (accelerate's ``PartialState``; gloo on CPU, NCCL on GPUs, each
        process on its own GPU) before a model is loaded; a plain process when there is one."""
        if world_size() == 1:
            return cls()
        from accelerate import PartialState

        state = PartialState(cpu=run_device(model) == "cpu")
        return cls(state.process_index, state.num_processes)

    @classmethod
    def of(cls, training_args: Any) -> Processes:
        """The processes of a ``TrainingArguments`` (which joined the process group when built)."""
        return cls(training_args.process_index, training_args.world_size)

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def wait(self) -> None:
        """Until every process gets here (after the main process wrote something the others read)."""
        if self.count > 1:
            from accelerate import PartialState

            PartialState().wait_for_everyone()

    def gather(self, items: list) -> list:
        """Every process's ``items`` concatenated in process order, on every process."""
        if self.count == 1:
            return list(items)
        from accelerate.utils import gather_object

        return gather_object(list(items))

    def finish(self) -> None:
        """Meet the other processes a last time and leave the process group (torch warns at exit about
        a group left open)."""
        if self.count > 1:
            from accelerate import PartialState

            state = PartialState()
            state.wait_for_everyone()
            state.destroy_process_group()

    def broadcast(self, value: Any) -> Any:
        """The main process's ``value``, on every process (any picklable object)."""
        if self.count == 1:
            return value
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value], from_process=0)[0]

