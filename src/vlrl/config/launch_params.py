"""``profiles.<profile>.launch``: how many processes the train and generate stages run, and where.

Pure module: imports neither torch nor DVC.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlrl.config.checks import require

#: The folder of the accelerate configs ``launch.config_file`` may name (relative to the repository root).
ACCELERATE_CONFIG_DIR = "configs/accelerate"
#: The config used when ``launch.config_file`` is null and the stage runs several processes: plain DDP.
DEFAULT_ACCELERATE_CONFIG = f"{ACCELERATE_CONFIG_DIR}/multi_gpu.yaml"


@dataclass(frozen=True)
class LaunchParams:
    """How the train and generate stages run: one process, or several under ``accelerate launch``.

    ``num_processes`` counts every process of the run, on all machines (accelerate's meaning); each
    machine runs ``num_processes / num_machines`` of them, one per GPU. With ``num_processes > 1`` (or
    a ``config_file``) the stage starts itself under ``accelerate launch`` (:mod:`vlrl.launch`), with
    ``config_file`` (default :data:`DEFAULT_ACCELERATE_CONFIG`, plain DDP) for the distribution
    strategy and these values for the sizes, which override the file's. ``main_process_ip`` and
    ``main_process_port`` only matter across machines; on one machine a free port is picked, so that
    several runs (a DVC queue with ``-j N``) never collide. The machine's rank is not a parameter (it
    differs per machine and does not change the experiment): ``VLRL_MACHINE_RANK`` (default 0).
    """

    num_processes: int = 1
    config_file: str | None = None
    num_machines: int = 1
    main_process_ip: str | None = None
    main_process_port: int = 29500

    def validate(self, key: str) -> None:
        require(self.num_processes >= 1, f"{key}.num_processes", self.num_processes, "must be an integer >= 1")
        require(self.num_machines >= 1, f"{key}.num_machines", self.num_machines, "must be an integer >= 1")
        require(self.num_processes % self.num_machines == 0, f"{key}.num_processes", self.num_processes,
                f"must be a multiple of num_machines ({self.num_machines}): every machine runs "
                "num_processes / num_machines processes")
        if self.config_file is not None:
            path = self.config_file
            require(path.startswith(f"{ACCELERATE_CONFIG_DIR}/") and "/" not in path[len(ACCELERATE_CONFIG_DIR) + 1:]
                    and path.endswith((".yaml", ".yml")), f"{key}.config_file", path,
                    f"must be a .yaml file in {ACCELERATE_CONFIG_DIR}/ (a dependency of the stages in dvc.yaml), "
                    f"e.g. {ACCELERATE_CONFIG_DIR}/deepspeed_zero2.yaml")
        require(self.num_machines == 1 or bool(self.main_process_ip), f"{key}.main_process_ip",
                self.main_process_ip, f"num_machines is {self.num_machines}: give the address of the machine "
                "with VLRL_MACHINE_RANK=0, which every machine can reach")
        require(1 <= self.main_process_port <= 65535, f"{key}.main_process_port", self.main_process_port,
                "must be a TCP port (1-65535)")

    @property
    def launched(self) -> bool:
        """Whether the stages run under ``accelerate launch`` (else as one plain process)."""
        return self.num_processes > 1 or self.config_file is not None

    @property
    def accelerate_config(self) -> str:
        """The accelerate config file the launcher gets (relative to the repository root)."""
        return self.config_file or DEFAULT_ACCELERATE_CONFIG
