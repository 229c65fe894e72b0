"""What each stage may read of params.yaml: one frozen view per stage, built from the parsed params.

A view's fields ARE the stage's params: a shared section (``seed``, ``prompt``, ``rewards``, ``gspo``,
``report``) by its name, a profile section (``data``, ``model``, ``lora``, ``generation``, ``train``,
``launch``) as ``profiles.<profile>.<name>``. :func:`params_keys` derives the keys from the fields, and
``tests/test_pipeline_spec.py`` checks that ``dvc.yaml`` declares exactly those for the stage, so a
stage cannot read a parameter that DVC does not track.

Pure module: imports neither torch nor DVC.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from vlrl.config.loading import DEFAULT_PARAMS_PATH, load_params
from vlrl.config.sections import (
    DataParams,
    GenerationParams,
    GSPOParams,
    LaunchParams,
    LoraParams,
    ModelParams,
    Params,
    ProfileParams,
    PromptParams,
    ReportParams,
    RewardParams,
    TrainParams,
)
from vlrl.errors import ConfigError

_SHARED = {f.name for f in dataclasses.fields(Params)} - {"profiles"}
_PER_PROFILE = {f.name for f in dataclasses.fields(ProfileParams)}


@dataclass(frozen=True)
class FetchStageParams:
    profile: str
    seed: int
    data: DataParams


@dataclass(frozen=True)
class ModelStageParams:
    profile: str
    seed: int
    prompt: PromptParams
    model: ModelParams


@dataclass(frozen=True)
class GenerateStageParams:
    profile: str
    seed: int
    prompt: PromptParams
    model: ModelParams
    generation: GenerationParams
    #: One plain process unless given (views built in code, e.g. by vlrl.gpu_smoke, need not say).
    launch: LaunchParams = field(default_factory=LaunchParams)


@dataclass(frozen=True)
class ScoreStageParams:
    profile: str
    rewards: RewardParams


@dataclass(frozen=True)
class TrainStageParams:
    profile: str
    seed: int
    prompt: PromptParams
    rewards: RewardParams
    gspo: GSPOParams
    model: ModelParams
    lora: LoraParams
    train: TrainParams
    #: One plain process unless given (views built in code, e.g. by vlrl.gpu_smoke, need not say).
    launch: LaunchParams = field(default_factory=LaunchParams)


@dataclass(frozen=True)
class ReportStageParams:
    profile: str
    report: ReportParams


#: Stage kind (the name stages/*.py pass to :func:`load_stage_params`) -> its view.
STAGE_VIEWS: dict[str, type] = {
    "fetch": FetchStageParams,
    "model": ModelStageParams,
    "generate": GenerateStageParams,
    "score": ScoreStageParams,
    "train": TrainStageParams,
    "report": ReportStageParams,
}


def _view(stage: str) -> type:
    if stage not in STAGE_VIEWS:
        raise ConfigError(f"unknown stage {stage!r}; known stages: {', '.join(STAGE_VIEWS)}")
    return STAGE_VIEWS[stage]


def params_keys(stage: str, profile: str) -> list[str]:
    """The params keys a stage reads, as ``dvc.yaml`` must declare them.

    >>> params_keys("train", "tiny")
    ['seed', 'prompt', 'rewards', 'gspo', 'profiles.tiny.model', 'profiles.tiny.lora', 'profiles.tiny.train', ...]
    >>> params_keys("train", "tiny")[-1]
    'profiles.tiny.launch'
    """
    keys = []
    for f in dataclasses.fields(_view(stage)):
        if f.name in _SHARED:
            keys.append(f.name)
        elif f.name in _PER_PROFILE:
            keys.append(f"profiles.{profile}.{f.name}")
    return keys


def stage_view(stage: str, params: Params, profile: str) -> object:
    """The view of one stage for one profile, from already parsed params."""
    sections = params.profile(profile)
    values = {}
    for f in dataclasses.fields(_view(stage)):
        if f.name == "profile":
            values[f.name] = profile
        elif f.name in _SHARED:
            values[f.name] = getattr(params, f.name)
        else:
            values[f.name] = getattr(sections, f.name)
    return _view(stage)(**values)


def load_stage_params(stage: str, profile: str, path: str | Path = DEFAULT_PARAMS_PATH):
    """Validate params.yaml (all of it) and return the view of one stage for one profile."""
    return stage_view(stage, load_params(path), profile)
