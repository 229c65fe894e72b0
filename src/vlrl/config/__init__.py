"""The only reader of ``params.yaml``: parsed once into frozen, validated objects.

- :mod:`~vlrl.config.sections`: one dataclass per section, each validating its own values
  (:mod:`~vlrl.config.launch_params`: the launch section; :mod:`~vlrl.config.checks`: the error's shape);
- :mod:`~vlrl.config.rules`: the rules across sections (batch vs group size, lengths, devices, launch);
- :mod:`~vlrl.config.loading`: YAML (1.1 and 1.2 number spellings) -> typed objects, errors with key paths;
- :mod:`~vlrl.config.views`: the part of the params each stage reads, as ``dvc.yaml`` declares it.

Pure package: imports neither torch nor DVC.
"""

from vlrl.config.loading import DEFAULT_PARAMS_PATH, load_params, parse_params, read_yaml
from vlrl.config.rules import generation_batch_size, is_off_policy
from vlrl.config.sections import (
    PROFILES,
    DataParams,
    GenerationParams,
    GSPOParams,
    HubSource,
    LaunchParams,
    LocalSource,
    LoraParams,
    ModelParams,
    OfflineSource,
    Params,
    ProfileParams,
    PromptParams,
    ReportParams,
    RewardParams,
    TinyModelBuild,
    TrainParams,
)
from vlrl.config.views import (
    STAGE_VIEWS,
    FetchStageParams,
    GenerateStageParams,
    ModelStageParams,
    ReportStageParams,
    ScoreStageParams,
    TrainStageParams,
    load_stage_params,
    params_keys,
    stage_view,
)
from vlrl.errors import ConfigError

__all__ = [
    "DEFAULT_PARAMS_PATH", "PROFILES", "STAGE_VIEWS", "ConfigError", "DataParams", "FetchStageParams",
    "GSPOParams", "GenerateStageParams", "GenerationParams", "HubSource", "LaunchParams", "LocalSource", "LoraParams",
    "ModelParams", "ModelStageParams", "OfflineSource", "Params", "ProfileParams", "PromptParams",
    "ReportParams", "ReportStageParams", "RewardParams", "ScoreStageParams", "TinyModelBuild", "TrainParams",
    "TrainStageParams", "generation_batch_size", "is_off_policy", "load_params", "load_stage_params", "params_keys",
    "parse_params", "read_yaml", "stage_view",
]
