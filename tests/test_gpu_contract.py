"""The GPU path's calls checked against the REAL pinned Unsloth and TRL, on a CPU (`make test-gpu-contract`).

No GPU can run Unsloth here, so the unsloth backend is unit-tested against a fake (tests/fakes.py). These
tests keep that fake honest: they install the pinned unsloth and unsloth_zoo with ``--no-deps`` (plus the
few small packages ``import unsloth`` needs) into a throwaway folder layered on the project's venv (so
torch, transformers, TRL and PEFT are exactly the pinned ones), import them with ``UNSLOTH_ALLOW_CPU=1`` in
a separate process (tests/unsloth_probe.py; ``import unsloth`` patches classes in its process) and check:

- every keyword our unsloth backend passes (as recorded by the fake) is a NAMED parameter of the real,
  unwrapped ``FastVisionModel.from_pretrained`` and of ``FastBaseModel.get_peft_model`` (both also take
  ``**kwargs``, so a misspelt keyword would bind silently and be ignored);
- our ``GRPOConfig`` builds for ``device="cuda"``, its fields exist in TRL 1.15, and Unsloth's GRPOConfig
  keeps every value we pass (it silently rewrites some, e.g. ``scale_rewards`` under ``dr_grpo``);
- TRL's source still holds the lines Unsloth's GRPO patches anchor on (a pin bump that silently
  disables a patch fails here);
- the rewards give the same results for string completions (what Unsloth passes for vision models)
  and message-list completions (what plain TRL passes).

Marker ``contract`` (excluded by default): it downloads the pinned wheels from PyPI (about 30 MB) once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import tomllib

import pytest

from fakes import unsloth_keywords
from helpers import FIXTURE_PARAMS, ROOT, fixture_params

pytestmark = pytest.mark.contract

#: What ``import unsloth`` needs beyond torch/transformers/TRL/PEFT on a CPU (versions that import
#: with unsloth 2026.10.9), installed without their own dependencies into the throwaway folder.
SMALL_DEPS = ("tyro==1.0.17", "docstring-parser==0.18.0", "typeguard==4.6.1", "msgspec==0.22.0",
              "sentencepiece==0.2.3", "hf_transfer==0.1.9", "einops==0.8.2")


def pinned() -> dict[str, str]:
    """``name -> version`` of every ``==`` pin in pyproject.toml (dependencies and the gpu extra)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {}
    for requirement in [*project["dependencies"], *project["optional-dependencies"]["gpu"]]:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==([^;\s]+)", requirement.strip())
        if match:
            pins[match.group(1).lower().replace("-", "_")] = match.group(2)
    return pins


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("unsloth_contract")
    pins = pinned()
    site, work = root / "site", root / "work"
    work.mkdir()
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
         f"unsloth=={pins['unsloth']}", f"unsloth_zoo=={pins['unsloth_zoo']}", *SMALL_DEPS],
        capture_output=True, text=True, timeout=900, check=False)
    assert install.returncode == 0, install.stderr[-3000:]
    env = {**os.environ, "UNSLOTH_ALLOW_CPU": "1", "PYTHONPATH": str(site), "PYTHONHASHSEED": "0"}
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "unsloth_probe.py"), str(root / "probe.json"),
                           str(FIXTURE_PARAMS)], cwd=work, env=env, capture_output=True, text=True, timeout=900,
                          check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return json.loads((root / "probe.json").read_text())


def test_the_probe_ran_the_pinned_versions(probe):
    pins = pinned()
    assert probe["versions"] == {name: pins[name] for name in ("unsloth", "unsloth_zoo", "trl", "transformers",
                                                                "peft")}


# ------------------------------------------------------------------------------------------------
# Keywords: recorded by the fake, named by the real signatures
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "signature", "reason"), [
    pytest.param("from_pretrained", "from_pretrained", "load: 4-bit, context length, revision, checkpointing",
                 id="FastVisionModel.from_pretrained"),
    pytest.param("get_peft_model", "get_peft_model", "LoRA: rank, alpha, targets, layer placement, seed",
                 id="FastVisionModel.get_peft_model"),
])
def test_every_keyword_our_backend_passes_is_a_named_parameter(probe, monkeypatch, tmp_path, method, signature,
                                                               reason):
    keywords = unsloth_keywords(monkeypatch, tmp_path)
    assert keywords.get(method), f"the backend never called {method} ({reason})"
    unknown = sorted(keywords[method] - set(probe[signature]))
    assert unknown == [], f"{method} would swallow {unknown} in **kwargs"


def test_the_methods_we_call_reach_those_signatures(probe):
    """FastVisionModel is FastModel, whose get_peft_model forwards every keyword to FastBaseModel's."""
    assert probe["fast_vision_model_is_fast_model"] and probe["get_peft_model_forwards_kwargs"]


def test_unsloth_reads_hf_hub_offline_itself(probe):
    """Why the backend passes no local_files_only (not a named parameter of from_pretrained)."""
    assert (probe["offline_env_read"], probe["offline_env_unset"]) == (True, False)


# ------------------------------------------------------------------------------------------------
# GRPOConfig: builds for CUDA, TRL 1.15 field names, and Unsloth keeps every value we pass
# ------------------------------------------------------------------------------------------------


def _passed_and_built(monkeypatch, tmp_path, preset: str) -> tuple[dict, object]:
    import transformers.training_args

    from vlrl.rewards import build_reward_functions
    from vlrl.training import trainer

    params = fixture_params()
    full, gspo = params.profile("full"), dataclasses.replace(params.gspo, preset=preset)
    _, weights = build_reward_functions(params.rewards)
    args = (full.train, gspo, params.seed, tmp_path / "ckpt")
    monkeypatch.setattr(transformers.training_args, "is_torch_bf16_gpu_available", lambda: True)
    built = trainer.build_grpo_config(*args, device="cuda", reward_weights=weights)
    monkeypatch.setattr(trainer, "GRPOConfig", lambda **kwargs: kwargs)
    passed = trainer.build_grpo_config(*args, device="cuda", reward_weights=weights)
    return passed, built


@pytest.mark.parametrize("preset", ["reference", "paper"])
def test_grpo_config_for_cuda_uses_trl_1_15_fields_and_unsloth_keeps_our_values(probe, monkeypatch, tmp_path,
                                                                               preset):
    import trl

    passed, built = _passed_and_built(monkeypatch, tmp_path, preset)
    assert trl.__version__ == pinned()["trl"]
    fields = {f.name for f in dataclasses.fields(trl.GRPOConfig)}
    assert sorted(set(passed) - fields) == []
    assert built.bf16 and not built.use_cpu and built.gradient_checkpointing
    ours = {name: getattr(built, name) for name in passed if name not in ("output_dir", "reward_weights")}
    theirs = probe["vlrl_configs"][preset]
    changed = {name: (value, theirs.get(name)) for name, value in ours.items()
               if isinstance(value, (bool, int, float, str, type(None))) and theirs.get(name) != value}
    assert changed == {}, f"Unsloth's GRPOConfig rewrites (ours, Unsloth's): {changed}"
    assert probe["vlrl_config_is_unsloths"]  # the comparison above was against Unsloth's class


# ------------------------------------------------------------------------------------------------
# TRL source: the lines Unsloth's GRPO patches anchor on
# ------------------------------------------------------------------------------------------------

#: TRL method -> (prefixes of the literal anchors that must still match, why the patch matters to us).
#: Measured at the pinned versions; anchors that already miss there (for older TRLs) are not listed.
ANCHORS = {
    "_prepare_inputs": (("unsplit_pixel_values_by_grid(batch) for batch in generation_batches",),
                        "keeps each image's pixel rows with its sample when TRL shuffles a generation batch"),
    "_generate_single_turn": (("            generate_inputs = super()._prepare_inputs(generate_inputs)",),
                              "rebuilds mm_token_type_ids for Qwen-VL prompts before generation"),
    "_generate_and_score_completions": (
        ('batch_size = self.args.per_device_train_batch_size if mode == "train"',
         "        rewards_per_func = self._calculate_rewards(inputs, prompts, completions, completio",
         'prompts = [x["prompt"] for x in inputs]', "\n        else:\n            forward_kwargs = {}\n",
         "        ) = self._generate(prompts)", "        # For VLM tool images: build token type IDs",
         'if "token_type_ids" in forward_kwargs:\n            output["token_type_ids"]', "        return output",
         'self._metrics[mode]["frac_reward_zero_std"]', "        if old_per_token_logps is not None:\n"),
        "the rollout: vision inputs, rewards, old log-probs for the importance ratio, completion strings"),
}
#: TRL methods that Unsloth replaces whole (by name): they must exist, or the replacement is skipped.
REPLACED = {"compute_loss": "dr_grpo and sequence-level importance sampling (unsloth_zoo's GRPO loss)",
            "_get_per_token_logps_and_entropies": "log-probs through Unsloth's fused head",
            "_generate": "weight sync guard"}


@pytest.mark.parametrize("method", list(ANCHORS))
def test_trl_still_holds_the_anchors_of_unsloth_s_patches(probe, method):
    anchors, reason = ANCHORS[method]
    patch = next(p for p in probe["grpo_patches"] if p["target"] == method)
    assert patch["exists"] and patch["changes_source"], f"TRL has no {method} to patch ({reason})"
    for prefix in anchors:
        found = [hit for anchor, hit in patch["anchors"].items() if anchor.startswith(prefix)]
        assert found, f"Unsloth no longer anchors on {prefix!r}: update this table"
        assert all(found), f"TRL's {method} lost {prefix!r}: Unsloth's patch ({reason}) no longer applies"


@pytest.mark.parametrize("method", list(REPLACED))
def test_trl_still_has_the_methods_unsloth_replaces(probe, method):
    patch = next(p for p in probe["grpo_patches"] if p["target"] == method)
    assert patch["exists"] and patch["changes_source"], f"{method}: {REPLACED[method]} would not apply"


def test_unsloth_builds_its_grpo_trainer_and_config_from_this_trl(probe):
    assert probe["patched_trainer"] and probe["patched_config"]


# ------------------------------------------------------------------------------------------------
# Rewards: strings (Unsloth, vision models) and message lists (plain TRL) score alike
# ------------------------------------------------------------------------------------------------

COMPLETIONS = [
    pytest.param("<REASONING>3 bars</REASONING><SOLUTION>3</SOLUTION>", id="exact"),
    pytest.param("<REASONING>x</REASONING>\n<SOLUTION>3.0</SOLUTION>", id="numeric-match"),
    pytest.param("<SOLUTION>4</SOLUTION>", id="no-reasoning-wrong"),
    pytest.param("addCriterion\n\n\n\naddCriterion <SOLUTION>3</SOLUTION>", id="addcriterion-gibberish"),
    pytest.param("", id="empty"),
]


@pytest.mark.parametrize("text", COMPLETIONS)
def test_rewards_are_the_same_for_strings_and_message_lists(text):
    from vlrl.rewards import build_reward_functions

    funcs, _ = build_reward_functions(fixture_params().rewards)
    forms = {"string": [text], "messages": [[{"role": "assistant", "content": text}]],
             "content-parts": [[{"role": "assistant", "content": [{"type": "text", "text": text}]}]]}
    scores = {form: [f(completions=c, answer=["3"], prompts=[None]) for f in funcs] for form, c in forms.items()}
    assert scores["string"] == scores["messages"] == scores["content-parts"]
