"""Stand-ins for what a CPU machine without network lacks: ``unsloth.FastVisionModel`` and the hub.

- :class:`FakeFastVisionModel` records every call vlrl's unsloth backend makes. The unit tests
  (tests/test_modeling.py) run the backend against it, and the contract test (tests/test_gpu_contract.py)
  takes the keywords it recorded (:func:`unsloth_keywords`) and checks each against the real, pinned
  Unsloth's signatures, so the fake cannot accept what Unsloth would not.
- :func:`fake_hub`: ``huggingface_hub``'s metadata call, download and cache lookup replaced by a
  dictionary of repositories (id -> {revision -> commit}), each holding a Qwen3-VL config.json.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import torch

from vlrl import modeling
from vlrl.config import LoraParams, ModelParams

UNSLOTH = ModelParams(backend="unsloth", id="unsloth/Qwen3-VL-8B-Instruct-unsloth-bnb-4bit",
                      revision="main", load_in_4bit=True, max_seq_length=16384, device="cuda")
#: What the fake hub resolves UNSLOTH's ``main`` to.
COMMIT = "0123456789abcdef0123456789abcdef01234567"
QWEN3_VL_CONFIG = {"architectures": ["Qwen3VLForConditionalGeneration"], "model_type": "qwen3_vl"}


def fake_qwen_net() -> torch.nn.Module:
    """A module tree with Qwen3-VL's names: language model attention + MLP projections, a vision block."""
    def block(names: tuple[str, ...]) -> torch.nn.ModuleDict:
        return torch.nn.ModuleDict({name: torch.nn.Linear(4, 4) for name in names})

    layer = torch.nn.Module()
    layer.self_attn = block(("q_proj", "k_proj", "v_proj", "o_proj"))
    layer.mlp = block(("gate_proj", "up_proj", "down_proj"))
    language, vision_block, visual, inner, net = (torch.nn.Module() for _ in range(5))
    language.layers = torch.nn.ModuleList([layer])
    vision_block.attn = block(("qkv", "proj"))
    visual.blocks = torch.nn.ModuleList([vision_block])
    inner.language_model, inner.visual = language, visual
    net.model, net.lm_head = inner, torch.nn.Linear(4, 4)
    return net


class FakeFastVisionModel:
    """``unsloth.FastVisionModel`` as vlrl uses it; ``calls`` lists (method, args, kwargs)."""

    calls: list[tuple[str, tuple, dict]] = []

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        cls.calls.append(("from_pretrained", args, kwargs))
        return fake_qwen_net(), types.SimpleNamespace(name="processor")

    @classmethod
    def get_peft_model(cls, *args: Any, **kwargs: Any) -> Any:
        cls.calls.append(("get_peft_model", args, kwargs))
        return types.SimpleNamespace(name="peft-net")

    @classmethod
    def for_inference(cls, *args: Any, **kwargs: Any) -> None:
        cls.calls.append(("for_inference", args, kwargs))


def install_fake_unsloth(monkeypatch: Any) -> type[FakeFastVisionModel]:
    """``import unsloth`` gives the fake; CUDA looks available."""
    FakeFastVisionModel.calls = []
    monkeypatch.setitem(sys.modules, "unsloth", types.SimpleNamespace(FastVisionModel=FakeFastVisionModel))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    return FakeFastVisionModel


def fake_hub(monkeypatch: Any, root: Path, repos: dict[str, dict[str, str]], *, reachable: bool = True,
             cached: bool = True) -> list[str]:
    """Replace huggingface_hub's model_info, hf_hub_download, try_to_load_from_cache and snapshot_download.

    ``repos``: model id -> {revision (branch or commit) -> commit}. ``reachable``: the metadata call
    answers (else it raises a connection error, as without network). ``cached``: the cache holds each
    commit's config.json. Returns the list of hub requests made (for assertions).
    """
    import httpx
    import huggingface_hub
    from huggingface_hub import errors

    requests: list[str] = []

    def config_path(repo_id: str, commit: str) -> str:
        path = root / repo_id.replace("/", "--") / commit / "config.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(QWEN3_VL_CONFIG))
        return str(path)

    def not_found(cls: type, url: str) -> Exception:
        return cls(f"404 Client Error: {url}", response=httpx.Response(404, request=httpx.Request("GET", url)))

    def commit_of(repo_id: str, revision: str | None) -> str:
        if repo_id not in repos:
            raise not_found(errors.RepositoryNotFoundError, f"https://huggingface.co/api/models/{repo_id}")
        revisions = repos[repo_id]
        if (revision or "main") in revisions:
            return revisions[revision or "main"]
        if revision in revisions.values():
            return revision
        raise not_found(errors.RevisionNotFoundError,
                        f"https://huggingface.co/api/models/{repo_id}/revision/{revision}")

    def model_info(self, repo_id, *, revision=None, **kwargs):
        requests.append(f"model_info {repo_id}@{revision}")
        if not reachable:
            raise httpx.ConnectError("[Errno -2] Name or service not known")
        return types.SimpleNamespace(sha=commit_of(repo_id, revision))

    def hf_hub_download(repo_id, filename, *, revision=None, **kwargs):
        requests.append(f"download {repo_id}@{revision}/{filename}")
        if not reachable:
            raise errors.LocalEntryNotFoundError("cannot reach the hub")
        return config_path(repo_id, commit_of(repo_id, revision))

    def try_to_load_from_cache(repo_id, filename, *, revision=None, **kwargs):
        if not cached or repo_id not in repos:
            return None
        try:
            return config_path(repo_id, commit_of(repo_id, revision))
        except errors.HfHubHTTPError:
            return None

    def snapshot_download(repo_id, *, revision=None, local_files_only=False, **kwargs):
        assert local_files_only, "vlrl only reads snapshots from the cache"
        if not cached or repo_id not in repos:
            raise errors.LocalEntryNotFoundError("not in the cache")
        return str(Path(config_path(repo_id, commit_of(repo_id, revision))).parent)

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", try_to_load_from_cache)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return requests


def unsloth_keywords(monkeypatch: Any, tmp_path: Path) -> dict[str, set[str]]:
    """Every keyword vlrl's unsloth backend passes, per FastVisionModel method, over all its uses:
    training, generation, generation offline (the calls :class:`FakeFastVisionModel` records)."""
    fake = install_fake_unsloth(monkeypatch)
    fake_hub(monkeypatch, tmp_path / "hub", {UNSLOTH.id: {"main": COMMIT}})
    model_dir = tmp_path / "model"
    modeling.pin_hub_model(UNSLOTH, model_dir)
    lora = LoraParams(16, 16, 0.0, modeling.DEFAULT_LORA_TARGETS)
    modeling.load_model_and_processor(UNSLOTH, model_dir, lora=lora, for_training=True, seed=3407)
    modeling.load_model_and_processor(UNSLOTH, model_dir)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    modeling.load_model_and_processor(UNSLOTH, model_dir)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    keywords: dict[str, set[str]] = {}
    for method, _, kwargs in fake.calls:
        keywords.setdefault(method, set()).update(kwargs)
    return keywords


#: The commit the fake data set hub resolves every revision to.
DATA_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


def fake_dataset_hub(monkeypatch: Any, root: Path, testmini: Any, *, reachable: bool = True,
                     cached: bool = True) -> list[tuple]:
    """A hub data set repository laid out as MathVista's (``data/testmini-*.parquet``, ``data/test-*``,
    an images archive), behind fakes of ``HfApi.dataset_info`` and ``snapshot_download``.

    ``testmini``: the rows (a ``datasets.Dataset``) of the testmini file. Downloads copy only the files
    matching ``allow_patterns``, as huggingface_hub does. Returns the requests made.
    """
    import fnmatch
    import shutil

    import httpx
    import huggingface_hub
    from huggingface_hub import errors

    repo = root / "repo"
    (repo / "data").mkdir(parents=True, exist_ok=True)
    testmini.to_parquet(str(repo / "data" / "testmini-00000-of-00001-725687bf7a18d64b.parquet"))
    testmini.select(range(3)).to_parquet(str(repo / "data" / "test-00000-of-00002-aaaa.parquet"))
    (repo / "images.zip").write_bytes(b"PK" + b"\0" * 64)
    files = sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file())
    cache = root / "cache" / DATA_COMMIT
    requests: list[tuple] = []

    def dataset_info(self, repo_id, *, revision=None, **kwargs):
        requests.append(("dataset_info", repo_id, revision))
        if not reachable:
            raise httpx.ConnectError("[Errno -2] Name or service not known")
        return types.SimpleNamespace(sha=DATA_COMMIT, siblings=[types.SimpleNamespace(rfilename=f) for f in files])

    def snapshot_download(repo_id, *, repo_type=None, revision=None, allow_patterns=None, local_files_only=False,
                          **kwargs):
        requests.append(("snapshot_download", repo_id, revision, tuple(allow_patterns or ()), local_files_only))
        if local_files_only:
            if not cached or not cache.is_dir():
                raise errors.LocalEntryNotFoundError("not in the cache")
            return str(cache)
        for name in files:
            if allow_patterns is None or any(fnmatch.fnmatch(name, p) for p in allow_patterns):
                (cache / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(repo / name, cache / name)
        return str(cache)

    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", dataset_info)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return requests
