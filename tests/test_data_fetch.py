"""fetch/load_split end to end: offline, hub (no network: a fixture with the hub's exact features),
local mirrors (save_to_disk, parquet), atomic writes, and the errors users see."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict
from PIL import Image

from fakes import DATA_COMMIT, fake_dataset_hub
from helpers import FIXTURE_PARAMS, ROOT
from vlrl.config import DataParams, HubSource, LocalSource, OfflineSource
from vlrl.data import fetch_splits, load_split
from vlrl.data.cli import main as cli_main
from vlrl.data.schema import HUB_FEATURES, SPLIT_FEATURES, mathvista_query
from vlrl.data.sources import DataNotAvailableError, DataSourceError, load_source
from vlrl.errors import EnvironmentProblem

SEED = 3407


def _jpeg(size: tuple[int, int], mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    image = Image.new(mode, size, 128)
    image.save(buffer, format="PNG" if mode != "RGB" else "JPEG")
    return buffer.getvalue()


def hub_like(n: int = 60) -> Dataset:
    """Rows as AI4Math/MathVista testmini has them: string answers (some non-numeric), float64 nullable
    precision, None choices for free-form, numeric multi-choice answers, mixed image modes/sizes."""
    rows = []
    for i in range(n):
        pid = str(i + 1)
        kind = i % 6
        question_type = "multi_choice" if kind == 4 else "free_form"
        answer_type, answer, precision, choices = {
            0: ("integer", str(i), None, None),
            1: ("float", f"{i / 10:.1f}", 1.0, None),
            2: ("float", f"{i / 100:.2f}", 2.0, None),
            3: ("text", "Yes", None, None),                    # dropped by the numeric filter
            4: ("integer", "3", None, ["1", "2", "3", "4"]),    # numeric multi-choice: kept
            5: ("list", "[1, 2]", None, None),                 # dropped by the numeric filter
        }[kind]
        size = [(187, 18), (640, 480), (300, 900)][i % 3]
        rows.append({
            "pid": pid, "question": f"Question {kind}?", "image": f"images/{pid}.jpg",
            "decoded_image": {"bytes": _jpeg(size, "RGBA" if i % 5 == 0 else "RGB"), "path": None},
            "choices": choices, "unit": "cm" if kind == 1 else None, "precision": precision, "answer": answer,
            "question_type": question_type, "answer_type": answer_type,
            "metadata": {"category": "math-targeted-vqa", "context": "scientific figure", "grade": "college",
                         "img_height": size[1], "img_width": size[0], "language": "english",
                         "skills": ["arithmetic reasoning"], "source": "FigureQA", "split": "testmini",
                         "task": "figure question answering"},
            "query": mathvista_query(f"Question {kind}?", question_type, answer_type, precision,
                                     None, choices),
        })
    return Dataset.from_list(rows, features=HUB_FEATURES)


def full_like(source: str, **sections) -> DataParams:
    data = DataParams(source=source, image_size=48, eval_fraction=0.3, min_image_side=8, **sections)
    data.validate("profiles.test.data")
    return data


OFFLINE = DataParams(source="offline", image_size=32, eval_fraction=0.3, min_image_side=8,
                     offline=OfflineSource(n_items=120, canvas_px=48))


def pids(splits: Path, name: str) -> list[str]:
    return load_split(splits, name)["pid"]


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("offline")
    manifest = fetch_splits(OFFLINE, SEED, root / "splits", root / "manifest.json")
    return root, manifest


def test_offline_splits_are_disjoint_and_match_the_manifest(offline_run) -> None:
    root, manifest = offline_run
    train, eval_ = pids(root / "splits", "train"), pids(root / "splits", "eval")
    assert (set(train) & set(eval_), len(train), len(eval_)) == (
        set(), manifest["splits"]["train"]["n"], manifest["splits"]["eval"]["n"])
    assert manifest["rows_after_image"] == len(train) + len(eval_)
    assert json.loads((root / "manifest.json").read_text()) == manifest
    assert json.loads((root / "splits" / "manifest.json").read_text()) == manifest


def test_split_rows_have_the_documented_schema(offline_run) -> None:
    root, _ = offline_run
    split = load_split(root / "splits", "eval")
    row = split[0]
    assert (split.features, row["image"].size, row["image"].mode) == (SPLIT_FEATURES, (32, 32), "RGB")


def test_offline_fetch_is_byte_identical_across_runs(offline_run, tmp_path) -> None:
    root, manifest = offline_run
    assert fetch_splits(OFFLINE, SEED, tmp_path / "splits", tmp_path / "m.json") == manifest
    for name in ("train", "eval"):
        for f in sorted((root / "splits" / name).iterdir()):
            assert f.read_bytes() == (tmp_path / "splits" / name / f.name).read_bytes(), f


def test_hub_path_downloads_only_testmini_and_uses_the_same_transform(monkeypatch, tmp_path) -> None:
    requests = fake_dataset_hub(monkeypatch, tmp_path / "hub", hub_like())
    hub = HubSource(path="AI4Math/MathVista", split="testmini", revision="abc123")
    manifest = fetch_splits(full_like("hub", hub=hub), SEED, tmp_path / "splits", tmp_path / "m.json")
    # 60 rows: kinds 3 (text) and 5 (list) fail float() -> 40 kept, like testmini's filter.
    assert (manifest["source"], manifest["revision"], manifest["rows_in"],
            manifest["rows_after_numeric_answer"], manifest["dropped"]["non_numeric_answer"]) == (
        "hub", DATA_COMMIT, 60, 40, 20)
    assert requests == [("dataset_info", "AI4Math/MathVista", "abc123"),
                        ("snapshot_download", "AI4Math/MathVista", DATA_COMMIT,
                         ("data/testmini-*.parquet", "data/testmini.parquet"), False)]
    downloaded = sorted(p.name for p in (tmp_path / "hub" / "cache").rglob("*") if p.is_file())
    assert downloaded == ["testmini-00000-of-00001-725687bf7a18d64b.parquet"]  # no test split, no images
    split = load_split(tmp_path / "splits", "train")
    assert {r["image"].size for r in split} == {(48, 48)}
    assert {t: manifest["splits"]["eval"]["by_answer_type"][t] for t in ("integer", "float")} == {
        "integer": round(0.3 * 20), "float": round(0.3 * 20)}


@pytest.mark.parametrize("layout", [
    pytest.param("save_to_disk", id="dataset-folder"),
    pytest.param("dataset_dict", id="datasetdict-folder"),
    pytest.param("parquet_file", id="one-parquet-file"),
    pytest.param("hub_snapshot", id="parquet-folder-like-hub-snapshot"),
])
def test_local_mirror_gives_the_same_splits_as_the_hub(layout, monkeypatch, tmp_path) -> None:
    ds = hub_like()
    mirror = tmp_path / "mirror"
    if layout == "save_to_disk":
        ds.save_to_disk(str(mirror))
    elif layout == "dataset_dict":
        DatasetDict({"testmini": ds, "test": ds.select(range(3))}).save_to_disk(str(mirror))
    elif layout == "parquet_file":
        mirror = tmp_path / "testmini.parquet"
        ds.to_parquet(str(mirror))
    else:
        (mirror / "data").mkdir(parents=True)
        ds.to_parquet(str(mirror / "data" / "testmini-00000-of-00001.parquet"))
        ds.select(range(3)).to_parquet(str(mirror / "data" / "test-00000-of-00001.parquet"))
    local = full_like("local", local=LocalSource(path=str(mirror)))
    manifest = fetch_splits(local, SEED, tmp_path / "splits", tmp_path / "m.json")

    fake_dataset_hub(monkeypatch, tmp_path / "hub", hub_like())
    hub = full_like("hub", hub=HubSource(path="AI4Math/MathVista", split="testmini", revision="x"))
    from_hub = fetch_splits(hub, SEED, tmp_path / "hub_splits", tmp_path / "hub.json")
    assert (manifest["splits"], manifest["source_fingerprint"]) == (
        from_hub["splits"], from_hub["source_fingerprint"])


@pytest.mark.parametrize(("offline_env", "reachable", "cached", "outcome"), [
    pytest.param(False, True, False, "fetched", id="online"),
    pytest.param(False, False, True, "cached", id="no-network-warm-cache"),
    pytest.param(True, True, True, "cached", id="hf-hub-offline-warm-cache"),
    pytest.param(False, False, False, "the hub could not be reached (ConnectError", id="no-network-no-cache"),
    pytest.param(True, True, False, "HF_HUB_OFFLINE is set (HF_HUB_OFFLINE is set)", id="offline-no-cache"),
])
def test_hub_uses_the_network_else_the_cache_else_one_line(monkeypatch, tmp_path, offline_env, reachable, cached,
                                                            outcome) -> None:
    if cached:  # a previous online fetch filled the cache
        fake_dataset_hub(monkeypatch, tmp_path / "hub", hub_like())
        load_source(full_like("hub", hub=HubSource(path="AI4Math/MathVista", split="testmini", revision="x")), SEED)
    requests = fake_dataset_hub(monkeypatch, tmp_path / "hub", hub_like(), reachable=reachable, cached=cached)
    if offline_env:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = full_like("hub", hub=HubSource(path="AI4Math/MathVista", split="testmini", revision="2b6ad69"))
    if outcome in ("fetched", "cached"):
        source = load_source(hub, SEED)
        assert (source.dataset.num_rows, source.revision) == (60, DATA_COMMIT)
        assert [r[0] for r in requests] == {"fetched": ["dataset_info", "snapshot_download"],
                                            "cached": (["snapshot_download"] if offline_env else
                                                       ["dataset_info", "snapshot_download"])}[outcome]
        return
    with pytest.raises(DataNotAvailableError) as error:
        fetch_splits(hub, SEED, tmp_path / "splits", tmp_path / "m.json")
    message = str(error.value)
    assert "\n" not in message and outcome in message and isinstance(error.value, EnvironmentProblem)
    for needed in ("'AI4Math/MathVista'", "'testmini'", "'2b6ad69'", "HF_HUB_OFFLINE", "data.source: local",
                   "tiny profile"):
        assert needed in message
    assert not (tmp_path / "splits").exists() and not (tmp_path / "m.json").exists()


@pytest.mark.parametrize(("make", "match"), [
    pytest.param(lambda p: None, "not found", id="missing-path"),
    pytest.param(lambda p: hub_like(5).remove_columns(["query"]).save_to_disk(str(p)), "missing column",
                 id="missing-hub-column"),
    pytest.param(lambda p: DatasetDict({"test": hub_like(5)}).save_to_disk(str(p)), "without the split",
                 id="datasetdict-without-split"),
    pytest.param(lambda p: (p.mkdir(), (p / "x.csv").write_text("a\n")), "neither a save_to_disk",
                 id="no-parquet"),
])
def test_bad_local_mirror_errors_name_the_path(make, match, tmp_path) -> None:
    mirror = tmp_path / "mirror"
    make(mirror)
    with pytest.raises(DataSourceError, match=match) as error:
        fetch_splits(full_like("local", local=LocalSource(path=str(mirror))), SEED, tmp_path / "s",
              tmp_path / "m.json")
    assert str(mirror) in str(error.value)


def test_too_few_rows_for_a_split_is_a_clear_error(tmp_path) -> None:
    tiny = dataclasses.replace(OFFLINE, offline=OfflineSource(n_items=10, canvas_px=48), eval_fraction=0.05)
    with pytest.raises(ValueError, match="the eval split would be empty"):
        fetch_splits(tiny, SEED, tmp_path / "splits", tmp_path / "m.json")


def test_load_split_missing_says_which_stage_to_run(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"dvc repro fetch@tiny"):
        load_split(tmp_path / "data" / "tiny" / "splits", "eval")


# ---------------------------------------------------------------------------------------------
# Atomic writes: an interrupted run leaves the previous complete output (or nothing), never a half.
# ---------------------------------------------------------------------------------------------


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_exception_mid_write_keeps_previous_output_intact(monkeypatch, tmp_path) -> None:
    splits, manifest = tmp_path / "splits", tmp_path / "manifest.json"
    fetch_splits(OFFLINE, SEED, splits, manifest)
    before, manifest_before = _snapshot(splits), manifest.read_bytes()
    original = Dataset.save_to_disk
    written = []

    def fail_on_second(self, path, *args, **kwargs):
        if written:
            raise RuntimeError("interrupted while writing the eval split")
        written.append(path)
        return original(self, path, *args, **kwargs)

    monkeypatch.setattr(Dataset, "save_to_disk", fail_on_second)
    other_split = dataclasses.replace(OFFLINE, eval_fraction=0.5)
    with pytest.raises(RuntimeError, match="interrupted"):
        fetch_splits(other_split, SEED, splits, manifest)
    assert (_snapshot(splits), manifest.read_bytes()) == (before, manifest_before)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # temp folder removed


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from datasets import Dataset
    from vlrl.config import DataParams, OfflineSource
    from vlrl.data import fetch_splits

    original = Dataset.save_to_disk
    def kill_after_train(self, path, *args, **kwargs):
        original(self, path, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally: like a power cut or OOM kill
    Dataset.save_to_disk = kill_after_train
    data = DataParams(source="offline", image_size=32, eval_fraction=0.3, min_image_side=8,
                      offline=OfflineSource(n_items=40, canvas_px=48))
    fetch_splits(data, 3407, Path(sys.argv[1]), Path(sys.argv[2]))
""")


def test_sigkill_mid_write_leaves_no_valid_looking_split(tmp_path) -> None:
    splits, manifest = tmp_path / "splits", tmp_path / "manifest.json"
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(splits), str(manifest)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not splits.exists() and not manifest.exists()
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert all(name.startswith(".splits.") and name.endswith(".tmp") for name in leftovers), leftovers
    with pytest.raises(FileNotFoundError):
        load_split(splits, "train")


def test_sigkill_mid_rewrite_keeps_the_previous_complete_split(tmp_path) -> None:
    splits, manifest = tmp_path / "splits", tmp_path / "manifest.json"
    previous = fetch_splits(OFFLINE, SEED, splits, manifest)
    before = _snapshot(splits)
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(splits), str(manifest)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert (_snapshot(splits), json.loads(manifest.read_text())) == (before, previous)
    assert len(load_split(splits, "eval")) == previous["splits"]["eval"]["n"]


# ---------------------------------------------------------------------------------------------
# Entry points: the stage script and the one-line local-mirror command.
# ---------------------------------------------------------------------------------------------


def test_local_mirror_one_liner(tmp_path) -> None:
    mirror = tmp_path / "mirror"
    hub_like().save_to_disk(str(mirror))
    code = cli_main(["--local", str(mirror), "--splits-dir", str(tmp_path / "s"), "--manifest",
                     str(tmp_path / "m.json"), "--image-size", "40", "--eval-fraction", "0.5", "--seed", "7",
                     "--params", str(FIXTURE_PARAMS)])
    manifest = json.loads((tmp_path / "m.json").read_text())
    seen = [manifest[k] for k in ("source", "image_size", "eval_fraction", "seed")]
    assert (code, seen) == (0, ["local", 40, 0.5, 7])


def test_stage_script_runs_from_the_repo_root(tmp_path) -> None:
    params = tmp_path / "params.yaml"
    text = FIXTURE_PARAMS.read_text().replace("n_items: 480", "n_items: 60")
    assert "n_items: 60" in text
    params.write_text(text)
    proc = subprocess.run([sys.executable, "stages/fetch.py", "--profile", "tiny", "--params", str(params),
                           "--splits-dir", str(tmp_path / "splits"), "--manifest", str(tmp_path / "m.json")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONHASHSEED": "0"})
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "m.json").read_text())
    assert (manifest["source"], manifest["rows_in"]) == ("offline", 60)


def test_loaded_split_never_writes_into_the_split_folder(tmp_path):
    # A cache-*.arrow file written by .map() into data/<p>/splits made DVC re-run every stage after fetch.
    from vlrl.config import DataParams, OfflineSource
    from vlrl.data import fetch_splits, load_split

    data = DataParams(source="offline", image_size=32, eval_fraction=0.3, offline=OfflineSource(n_items=40))
    fetch_splits(data, 1, tmp_path / "splits", tmp_path / "manifest.json")
    before = sorted(p.name for p in (tmp_path / "splits").rglob("*"))
    split = load_split(tmp_path / "splits", "train")
    split.map(lambda row: {"n": len(row["question"])}).filter(lambda row: row["n"] > 0)
    assert sorted(p.name for p in (tmp_path / "splits").rglob("*")) == before
