"""`gspo.preset: paper`: GSPO as in the paper (TRL's gspo_vlm.py) in one switch, off-policy on the tiny model.

The reference preset (the default) is on-policy, where GSPO's sequence-level importance ratio is exactly 1
and the run is mathematically GRPO (tests/test_training.py shows that). The paper preset generates once per
four optimizer steps, so the later steps train on completions of an older policy: ratios differ from 1,
and with epsilon 3e-4 / 4e-4 the clipping is active and logged.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from helpers import edited, fixture_params, raw_params
from vlrl.config import ConfigError, is_off_policy, parse_params, stage_view


@pytest.mark.parametrize(("preset", "expected"), [
    pytest.param("reference", {"loss_type": "dr_grpo", "epsilon": 0.2, "epsilon_high": None, "scale_rewards": "none",
                               "steps_per_generation": None}, id="reference-fields-as-written"),
    pytest.param("paper", {"loss_type": "grpo", "epsilon": 3e-4, "epsilon_high": 4e-4, "scale_rewards": "group",
                           "steps_per_generation": 4}, id="gspo_vlm-settings"),
])
def test_preset_sets_loss_clipping_and_generation_reuse(preset, expected):
    params = fixture_params(gspo__preset=preset)
    train = params.profile("tiny").train
    effective = params.gspo.effective(train.gradient_accumulation_steps)
    assert {k: getattr(effective, k) for k in expected} == expected
    assert effective.importance_sampling_level == "sequence" and effective.beta == 0.0
    assert is_off_policy(train, params.gspo) is (preset == "paper")


def test_paper_steps_per_generation_follow_gradient_accumulation():
    """gspo_vlm.py: 8 steps per generation with 2 accumulation steps: each generation feeds 4 optimizer steps."""
    params = fixture_params(gspo__preset="paper", profiles__tiny__train__gradient_accumulation_steps=2)
    assert params.gspo.effective(2).steps_per_generation == 8


def test_default_is_the_reference_preset():
    assert fixture_params().gspo.preset == "reference"


@pytest.mark.parametrize(("path", "value", "message"), [
    pytest.param("gspo.preset", "papers", "gspo.preset = 'papers': allowed: 'reference', 'paper'", id="typo"),
    pytest.param("gspo.scale_rewards", "std", "gspo.scale_rewards = 'std': allowed: 'group', 'batch', 'none'",
                 id="unknown-scaling"),
    pytest.param("profiles.tiny.train.num_generations", 3, "must divide the generation batch .* = 32, with "
                 "gspo.preset 'paper'", id="group-size-checked-against-the-paper-batch"),
])
def test_preset_values_are_checked_at_load(path, value, message):
    raw = edited(raw_params(), "gspo.preset", "paper")
    with pytest.raises(ConfigError, match=message):
        parse_params(edited(raw, path, value))


def test_paper_preset_trains_off_policy_with_ratios_off_one_and_logs_clipping(tiny_model_dir, tiny_splits, tmp_path,
                                                                            monkeypatch):
    import trl
    from transformers import TrainerCallback

    from vlrl.data import load_split
    from vlrl.training import train

    settings = stage_view("train", fixture_params(gspo__preset="paper"), "tiny")
    settings = dataclasses.replace(settings, train=dataclasses.replace(
        settings.train, per_device_train_batch_size=4, num_generations=4, max_steps=4, max_completion_length=32,
        warmup_ratio=0.0, save_steps=100))

    # The sequence-level ratio each optimizer step trains with: exp(mean log(pi_theta / pi_old)) over
    # each completion's tokens, from the log-probs TRL computes (TRL logs clipping, not the ratio itself).
    ratios: list[torch.Tensor | None] = []
    last: dict = {}
    logps, compute_loss = trl.GRPOTrainer._get_per_token_logps_and_entropies, trl.GRPOTrainer._compute_loss

    def logps_spy(self, *args, **kwargs):
        out = logps(self, *args, **kwargs)
        last["logps"] = out[0]
        return out

    def loss_spy(self, model, inputs):
        loss = compute_loss(self, model, inputs)
        old, mask = inputs.get("old_per_token_logps"), inputs["completion_mask"]
        ratios.append(None if old is None else
                      (((last["logps"].detach() - old) * mask).sum(-1) / mask.sum(-1).clamp(min=1)).exp())
        return loss

    monkeypatch.setattr(trl.GRPOTrainer, "_get_per_token_logps_and_entropies", logps_spy)
    monkeypatch.setattr(trl.GRPOTrainer, "_compute_loss", loss_spy)

    class Logs(TrainerCallback):
        seen: list[dict] = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                Logs.seen.append(dict(logs))

    metrics = train(settings, load_split(tiny_splits, "train").select(range(16)), model_dir=tiny_model_dir,
                    adapter_dir=tmp_path / "adapter", checkpoints_dir=tmp_path / "ckpt", curves_dir=tmp_path / "curves",
                    metrics_path=tmp_path / "train.json", extra_callbacks=[Logs()]).metrics

    assert (metrics["off_policy"], metrics["gspo_preset"], metrics["loss_type"]) == (True, "paper", "grpo")
    assert len(ratios) == 4 and all(r is not None for r in ratios)  # old log-probs kept: off-policy
    assert torch.allclose(ratios[0], torch.ones_like(ratios[0]), atol=1e-5)  # first step: the sampling policy
    assert max(float((r - 1).abs().max()) for r in ratios[1:]) > 1e-3  # later steps: an updated policy
    assert len(Logs.seen) == 4 and all("clip_ratio/region_mean" in logs for logs in Logs.seen)
    assert max(logs["clip_ratio/region_mean"] for logs in Logs.seen[1:]) > 0
