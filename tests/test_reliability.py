"""Bad inputs and faults, as a hostile but fair user makes them: each ends in one line naming the file or
the key, a non-zero status (or a row dropped with a reason), no traceback, and no pre-existing file
changed.

One table: every row builds its own small workspace in a temporary folder (copies of intact artifacts,
then one thing broken), runs a stage, ``python -m vlrl.data``, or the ``vlrl`` command the way a user
does, and checks the outcome. Stages run in this process (``runpy``, through the same
``vlrl.entry.run_stage`` as on the command line); the few faults that need a real process (a closed or
full stdout) run as subprocesses.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import re
import runpy
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from helpers import ROOT, edited, raw_params, write_params
from vlrl.cli import main as vlrl_main
from vlrl.data.schema import HUB_FEATURES, mathvista_query
from vlrl.io import atomic_write_json, atomic_write_jsonl
from vlrl.scoring import breakdown_metrics, score_generations

# ------------------------------------------------------------------------------------------------
# An intact workspace, built once; each row copies what it needs
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def intact(tiny_splits, tiny_model_dir, tiny_params, tmp_path_factory) -> Path:
    """splits/, model/, generations/, scored/, metrics/, breakdowns/, curves/, manifest.json, adapter/."""
    from vlrl.data import load_split

    root = tmp_path_factory.mktemp("intact")
    shutil.copytree(tiny_splits, root / "splits")
    shutil.copytree(tiny_model_dir, root / "model")
    pids = list(load_split(root / "splits", "eval")["pid"])
    generations = [{"pid": pid, "completion": "<REASONING>r</REASONING><SOLUTION>3</SOLUTION>", "prompt_tokens": 30,
                    "completion_tokens": 9, "truncated": False} for pid in pids]
    eval_split = load_split(root / "splits", "eval")
    for which in ("baseline", "post"):
        atomic_write_jsonl(root / "generations" / f"{which}.jsonl", generations)
        atomic_write_json(root / "generations" / f"{which}.meta.json", {"which": which, "model": {"id": "m"}})
        records, metrics = score_generations(generations, eval_split, tiny_params.rewards)
        atomic_write_jsonl(root / "scored" / f"{which}.jsonl", records)
        atomic_write_json(root / "metrics" / f"{which}.json", metrics)
        atomic_write_json(root / "breakdowns" / f"{which}.json", breakdown_metrics(records))
    atomic_write_json(root / "metrics" / "train.json", {"steps": 2, "off_policy": False})
    atomic_write_json(root / "manifest.json", {"source": "offline", "splits": {"train": {"n": 1}}})
    (root / "curves").mkdir()
    (root / "curves" / "reward.tsv").write_text("step\treward\n1\t0.5\n2\t0.6\n")
    write_params(root / "params.yaml", raw_params())
    _fake_adapter(root / "adapter")
    _real_adapter(tiny_params, root / "model", root / "real_adapter")
    return root


def _real_adapter(params, model_dir: Path, out: Path) -> None:
    """A LoRA adapter of the tiny model, as training saves it (B matrices nudged off zero)."""
    import torch

    from vlrl.modeling import load_model_and_processor

    profile = params.profile("tiny")
    model, _ = load_model_and_processor(profile.model, model_dir, lora=profile.lora, for_training=True, seed=0)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "lora_B" in name:
                weight.fill_(0.01)
    model.save_pretrained(out, safe_serialization=True)


def _poison_adapter(w: Path) -> None:
    """The real adapter with one NaN in its weights (what a diverged run that slipped through would save)."""
    from safetensors.torch import load_file, save_file

    shutil.rmtree(w / "adapter")
    shutil.copytree(w / "real_adapter", w / "adapter")
    tensors = load_file(w / "adapter/adapter_model.safetensors")
    first = sorted(tensors)[0]
    tensors[first] = tensors[first].clone()
    tensors[first].view(-1)[0] = float("nan")
    save_file(tensors, w / "adapter/adapter_model.safetensors")


def _fake_adapter(folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    (folder / "adapter_model.safetensors").write_bytes(b"\0" * 16)


@dataclasses.dataclass
class Run:
    """How a row runs: a stage script, ``python -m <module>``, the ``vlrl`` command, or a subprocess."""

    kind: str
    target: str
    argv: list[str]
    stdin: bytes | None = None


def stage(name: str, *argv: object) -> Run:
    return Run("stage", name, [str(a) for a in argv])


def vlrl(*argv: object, stdin: bytes | None = None) -> Run:
    return Run("cli", "vlrl", [str(a) for a in argv], stdin)


def module(name: str, *argv: object) -> Run:
    return Run("module", name, [str(a) for a in argv])


def shell(command: str) -> Run:
    return Run("shell", command, [])


# ------------------------------------------------------------------------------------------------
# Building blocks for the rows
# ------------------------------------------------------------------------------------------------


def _copy(src: Path, w: Path, *names: str) -> None:
    for name in names:
        (shutil.copytree if (src / name).is_dir() else shutil.copy2)(src / name, w / name)


def score_run(w: Path, *, generations: str = "generations/baseline.jsonl", splits: str = "splits",
              metrics: str = "out/baseline.json", params: str = "params.yaml") -> Run:
    return stage("score", "--profile", "tiny", "--params", w / params, "--generations", w / generations,
                 "--splits-dir", w / splits, "--per-example", w / "out" / "scored.jsonl", "--metrics", w / metrics,
                 "--breakdown", w / "out" / "breakdown.json")


def with_params(path: str, value: object) -> Callable[[Path, Path], Run]:
    """A row: params.yaml with one bad value, run through the score stage (it loads params first)."""
    def build(src: Path, w: Path) -> Run:
        write_params(w / "params.yaml", edited(raw_params(), path, value))
        return score_run(w)
    return build


def report_run(w: Path, out_dir: str = "report") -> Run:
    return stage("report", "--profile", "tiny", "--params", w / "params.yaml", "--metrics-dir", w / "metrics",
                 "--scored-dir", w / "scored", "--breakdowns-dir", w / "breakdowns", "--generations-dir",
                 w / "generations", "--manifest", w / "manifest.json", "--curves-dir", w / "curves",
                 "--out-dir", w / out_dir)


def report_with(damage: Callable[[Path], object]) -> Callable[[Path, Path], Run]:
    def build(src: Path, w: Path) -> Run:
        _copy(src, w, "params.yaml", "metrics", "scored", "breakdowns", "generations", "manifest.json", "curves")
        damage(w)
        return report_run(w)
    return build


def score_with(damage: Callable[[Path], object]) -> Callable[[Path, Path], Run]:
    def build(src: Path, w: Path) -> Run:
        _copy(src, w, "params.yaml", "splits", "generations")
        damage(w)
        return score_run(w)
    return build


def generations_lines(lines: list[object]) -> Callable[[Path], object]:
    def damage(w: Path) -> None:
        good = (w / "generations/baseline.jsonl").read_text().splitlines()
        text = "\n".join(good[:3] + [line if isinstance(line, str) else json.dumps(line) for line in lines])
        (w / "generations/baseline.jsonl").write_text(text + "\n")
    return damage


def generate_run(w: Path, *, adapter: bool = False, model: str = "model", out: str = "out/g.jsonl") -> Run:
    return stage("generate", "--profile", "tiny", "--params", w / "params.yaml", "--model-dir", w / model,
                 "--splits-dir", w / "splits", *(["--adapter", w / "adapter"] if adapter else []), "--out", w / out)


def generate_with(damage: Callable[[Path], object], adapter: bool = False) -> Callable[[Path, Path], Run]:
    def build(src: Path, w: Path) -> Run:
        _copy(src, w, "params.yaml", "splits", "model", *(["adapter", "real_adapter"] if adapter else []))
        damage(w)
        return generate_run(w, adapter=adapter)
    return build


def train_run(w: Path, **paths: str) -> Run:
    where = {"adapter-dir": "adapter", "checkpoints-dir": "checkpoints", "curves-dir": "curves",
             "metrics": "train.json", **{k.replace("_", "-"): v for k, v in paths.items()}}
    return stage("train", "--profile", "tiny", "--params", w / "params.yaml", "--model-dir", w / "model",
                 "--splits-dir", w / "splits", *[a for key, value in where.items() for a in (f"--{key}", w / value)])


def user_folder(w: Path, name: str) -> None:
    """A folder of the user's, with work in it: vlrl must never replace or wipe it."""
    (w / name).mkdir(parents=True, exist_ok=True)
    (w / name / "thesis.tex").write_text("months of work")


def fetch_run(w: Path, splits: str = "splits", manifest: str = "manifest.json") -> Run:
    return stage("fetch", "--profile", "tiny", "--params", w / "params.yaml", "--splits-dir", w / splits,
                 "--manifest", w / manifest)


def _png(size=(64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (250, 250, 250)).save(buffer, format="PNG")
    return buffer.getvalue()


def mirror_row(pid: str, **changes) -> dict:
    row = {"pid": pid, "question": "How many bars?", "image": f"images/{pid}.png",
           "decoded_image": {"bytes": _png(), "path": None}, "choices": None, "unit": None, "precision": None,
           "answer": "3", "question_type": "free_form", "answer_type": "integer",
           "metadata": {"category": "c", "context": "x", "grade": "g", "img_height": 64, "img_width": 64,
                        "language": "english", "skills": ["s"], "source": "t", "split": "testmini", "task": "t"},
           "query": mathvista_query("How many bars?", "free_form", "integer", None)}
    row.update(changes)
    return row


def local_mirror(make: Callable[[Path], object]) -> Callable[[Path, Path], Run]:
    """A row: the tiny profile reading a local MathVista copy that ``make`` builds at w/mirror."""
    def build(src: Path, w: Path) -> Run:
        raw = raw_params()
        raw["profiles"]["tiny"]["data"].update(source="local", local={"path": str(w / "mirror"), "split": "testmini"})
        write_params(w / "params.yaml", raw)
        make(w)
        return fetch_run(w)
    return build


def mirror_rows(*bad_rows: dict, n_good: int = 12, features=HUB_FEATURES) -> Callable[[Path], object]:
    """A parquet mirror (written with pyarrow: ``datasets`` would read image paths to embed them)."""
    def make(w: Path) -> None:
        rows = [mirror_row(str(i)) for i in range(n_good)] + list(bad_rows)
        (w / "mirror").mkdir()
        pq.write_table(pa.Table.from_pylist(rows, schema=features.arrow_schema), w / "mirror/testmini-0.parquet")
    return make


def dropped_with(reason: str) -> Callable[[Path], None]:
    """The run succeeded and the manifest counts the bad row under ``reason``."""
    def check(w: Path) -> None:
        manifest = json.loads((w / "manifest.json").read_text())
        assert manifest["dropped"][reason] == 1, manifest["dropped"]
    return check


def _write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


# ------------------------------------------------------------------------------------------------
# The table: (id, build(src, workspace) -> Run, exit status, message regex[, check after a success])
# ------------------------------------------------------------------------------------------------

P = "params.yaml: "
CASES = [
    # ---- params.yaml: every bad value is caught at load, with the key named (through a stage) ----
    ("negative weight decay", with_params("profiles.tiny.train.weight_decay", -0.1), 1, P + r"profiles\.tiny\.train\.weight_decay = -0\.1"),
    ("all reward weights zero", lambda s, w: (write_params(w / "params.yaml", edited(edited(raw_params(), "rewards.format_weight", 0), "rewards.correctness_weight", 0)), score_run(w))[1], 1, r"rewards\.correctness_weight = 0\.0: at least one reward weight"),
    ("template placeholder the prompt cannot fill", with_params("prompt.template", "{question} {solution_start}{answer}{solution_end}"), 1, r"prompt\.template = .*unknown placeholder \{answer\}"),
    ("stray brace in the template", with_params("prompt.template", "{question} {solution_start} } {solution_end}"), 1, r"prompt\.template = .*literal brace"),
    ("template never asks for the SOLUTION tags", with_params("prompt.template", "{question}"), 1, r"prompt\.template = .*must contain"),
    ("unknown optimizer", with_params("profiles.tiny.train.optim", "adam"), 1, P + r"profiles\.tiny\.train\.optim = 'adam': allowed"),
    ("unknown scheduler", with_params("profiles.tiny.train.lr_scheduler_type", "one_cycle"), 1, r"lr_scheduler_type = 'one_cycle': allowed"),
    ("adam beta1 of one", with_params("profiles.tiny.train.adam_beta1", 1.0), 1, r"adam_beta1 = 1\.0: must be in \[0, 1\)"),
    ("negative adam beta2", with_params("profiles.tiny.train.adam_beta2", -0.1), 1, r"adam_beta2 = -0\.1"),
    ("tiny model with zero layers", with_params("profiles.tiny.model.build.text_layers", 0), 1, r"build\.text_layers = 0"),
    ("heads that do not divide the hidden size", with_params("profiles.tiny.model.build.text_heads", 3), 1, r"text_hidden_size = 64: must be divisible by text_heads \(3\)"),
    ("LoRA on no module", with_params("profiles.tiny.lora.target_modules", []), 1, r"lora\.target_modules = \(\)"),
    ("LoRA dropout of one", with_params("profiles.tiny.lora.dropout", 1.0), 1, r"lora\.dropout = 1\.0"),
    ("empty held-out split fraction", with_params("profiles.tiny.data.eval_fraction", 0), 1, r"data\.eval_fraction = 0\.0"),
    ("images smaller than Qwen3-VL accepts", with_params("profiles.tiny.data.image_size", 10), 1, r"data\.image_size = 10"),
    ("no room left for the prompt", with_params("profiles.tiny.generation.max_new_tokens", 5000), 1, r"generation\.max_new_tokens = 5000"),
    ("top_p with greedy decoding", with_params("profiles.tiny.generation.top_p", 0.9), 1, r"generation\.top_p = 0\.9: has no effect"),
    ("generation batch not divisible by the group", with_params("profiles.tiny.train.num_generations", 3), 1, r"train\.num_generations = 3: must divide"),
    ("no checkpoint before the end", with_params("profiles.tiny.train.save_steps", 10_000), 1, r"train\.save_steps = 10000: must be <= max_steps"),
    ("upper clip below the lower", with_params("gspo.epsilon_high", 0.01), 1, r"gspo\.epsilon_high = 0\.01"),
    ("a typo in a key", with_params("profiles.tiny.train.learnig_rate", 0.1), 1, r"profiles\.tiny\.train\.learnig_rate: unknown key"),
    ("a missing key", with_params("seed", KeyError), 1, r"params\.yaml: seed: missing"),
    ("a word where a number belongs", with_params("rewards.format_weight", "high"), 1, r"rewards\.format_weight = 'high': expected a number"),
    ("a number with trailing garbage", with_params("profiles.tiny.train.learning_rate", "1e-3x"), 1, r"learning_rate = '1e-3x': expected a number"),
    ("a list where a section belongs", with_params("profiles.tiny.train", [1, 2]), 1, r"profiles\.tiny\.train = \[1, 2\]: expected a mapping"),
    ("the unsloth backend on a CPU", with_params("profiles.tiny.model.backend", "unsloth"), 1, r"model\.backend = 'unsloth': the unsloth backend needs CUDA"),
    ("8-bit Adam on a CPU", with_params("profiles.tiny.train.optim", "adamw_8bit"), 1, r"train\.optim = 'adamw_8bit': adamw_8bit needs bitsandbytes"),
    ("a NaN numeric tolerance", with_params("rewards.numeric_rel_tol", ".nan"), 1, r"numeric_rel_tol = nan"),
    ("params.yaml is not YAML", lambda s, w: (_write(w / "params.yaml", "seed: [1,\n"), score_run(w))[1], 1, r"params\.yaml: not valid YAML"),
    ("params.yaml is missing", lambda s, w: score_run(w), 1, r"params\.yaml: not found; run from the repository root"),
    ("params.yaml is not UTF-8", lambda s, w: (_write(w / "params.yaml", b"seed: \xff\xfe\n"), score_run(w))[1], 1, r"params\.yaml: not valid YAML"),
    ("an unknown profile on the command line", lambda s, w: stage("score", "--profile", "huge"), 2, r"--profile: invalid choice: 'huge'"),

    # ---- never delete or replace what vlrl did not write; outputs that cannot be written ----------
    ("--splits-dir is the user's folder", lambda s, w: (_copy(s, w, "params.yaml"), user_folder(w, "mine"), fetch_run(w, splits="mine"))[2], 1, r"mine: refusing to replace this folder: it holds files vlrl did not write"),
    ("--splits-dir is a file", lambda s, w: (_copy(s, w, "params.yaml"), _write(w / "notes.txt", "x"), fetch_run(w, splits="notes.txt"))[2], 1, r"notes\.txt: refusing to replace it: it is a file"),
    ("the model stage's --out is the user's folder", lambda s, w: (_copy(s, w, "params.yaml", "splits"), user_folder(w, "mine"), stage("model", "--profile", "tiny", "--params", w / "params.yaml", "--splits-dir", w / "splits", "--out", w / "mine"))[2], 1, r"mine: refusing to replace this folder"),
    ("--adapter-dir is the user's folder", lambda s, w: (_copy(s, w, "params.yaml", "splits", "model"), user_folder(w, "mine"), train_run(w, adapter_dir="mine"))[2], 1, r"mine: refusing to replace this folder"),
    ("--curves-dir is the user's folder", lambda s, w: (_copy(s, w, "params.yaml", "splits", "model"), user_folder(w, "mine"), train_run(w, curves_dir="mine"))[2], 1, r"mine: refusing to replace this folder"),
    ("--checkpoints-dir is the user's folder", lambda s, w: (_copy(s, w, "params.yaml", "splits", "model"), user_folder(w, "mine"), train_run(w, checkpoints_dir="mine"))[2], 1, r"mine: refusing to keep checkpoints in this folder"),
    ("the report's --out-dir is the user's folder", lambda s, w: (report_with(lambda w: user_folder(w, "report"))(s, w)), 1, r"report: refusing to replace this folder"),
    ("the report's --out-dir is a file", lambda s, w: (report_with(lambda w: _write(w / "report", "x"))(s, w)), 1, r"report: refusing to replace it: it is a file"),
    ("--metrics under a file", score_with(lambda w: _write(w / "out", "a file where a folder belongs")), 1, r"cannot write .*out/scored\.jsonl: "),
    ("--metrics is a folder", lambda s, w: (_copy(s, w, "params.yaml", "splits", "generations"), (w / "out/baseline.json").mkdir(parents=True), score_run(w))[2], 1, r"cannot write .*baseline\.json: it is a folder"),

    # ---- data sources: unreadable copies, and rows that must be dropped with a reason -------------
    ("a mirror path that does not exist", local_mirror(lambda w: None), 1, r"data\.local\.path '.*mirror': not found"),
    ("an empty mirror folder", local_mirror(lambda w: (w / "mirror").mkdir()), 1, r"mirror': neither a save_to_disk folder nor parquet"),
    ("a truncated parquet file", local_mirror(lambda w: (_write(w / "full.parquet", b""), datasets.Dataset.from_list([mirror_row("1")], features=HUB_FEATURES).to_parquet(str(w / "full.parquet")), _write(w / "mirror/testmini-0.parquet", (w / "full.parquet").read_bytes()[:300]))), 1, r"mirror': cannot be read as a MathVista copy"),
    ("random bytes named .parquet", local_mirror(lambda w: _write(w / "mirror/testmini-0.parquet", os.urandom(4096))), 1, r"cannot be read as a MathVista copy"),
    ("a parquet file with no rows", local_mirror(lambda w: (w / "mirror").mkdir() or pq.write_table(pa.Table.from_pylist([], schema=HUB_FEATURES.arrow_schema), w / "mirror/testmini-0.parquet")), 1, r"mirror': cannot be read as a MathVista copy"),
    ("a copy without MathVista's columns", local_mirror(lambda w: datasets.Dataset.from_list([{"pid": "1", "text": "x"}]).save_to_disk(str(w / "mirror"))), 1, r"missing column\(s\) question, image, decoded_image"),
    ("a DatasetDict without the configured split", local_mirror(lambda w: datasets.DatasetDict({"test": datasets.Dataset.from_list([mirror_row("1")], features=HUB_FEATURES)}).save_to_disk(str(w / "mirror"))), 1, r"without the split 'testmini' \(has test\)"),
    ("a row pointing at a file outside the mirror", local_mirror(mirror_rows(mirror_row("x", decoded_image={"bytes": None, "path": "/etc/passwd"}))), 0, None, dropped_with("image_outside_source")),
    ("a row pointing at /dev/zero", local_mirror(mirror_rows(mirror_row("x", decoded_image={"bytes": None, "path": "/dev/zero"}))), 0, None, dropped_with("image_outside_source")),
    ("a row climbing out of the mirror with ..", local_mirror(mirror_rows(mirror_row("x", decoded_image={"bytes": None, "path": "../secret.png"}))), 0, None, dropped_with("image_outside_source")),
    ("a non-numeric precision", local_mirror(mirror_rows(mirror_row("x", precision="two"), features=datasets.Features({**HUB_FEATURES, "precision": datasets.Value("string")}))), 0, None, dropped_with("bad_precision")),
    ("a NaN precision", local_mirror(mirror_rows(mirror_row("x", answer_type="float", precision=float("nan")))), 0, None, dropped_with("bad_precision")),
    ("an unknown question type", local_mirror(mirror_rows(mirror_row("x", question_type="essay"))), 0, None, dropped_with("unknown_question_type")),
    ("an unknown answer type", local_mirror(mirror_rows(mirror_row("x", answer_type="fraction"))), 0, None, dropped_with("unknown_answer_type")),
    ("multiple choice without choices", local_mirror(mirror_rows(mirror_row("x", question_type="multi_choice"))), 0, None, dropped_with("choices_missing")),
    ("multiple choice whose answer is not a choice", local_mirror(mirror_rows(mirror_row("x", question_type="multi_choice", choices=["1", "2"]))), 0, None, dropped_with("answer_not_a_choice")),
    ("a row without a pid", local_mirror(mirror_rows(mirror_row(""))), 0, None, dropped_with("missing_pid")),
    ("every image unreadable", local_mirror(lambda w: datasets.Dataset.from_list([mirror_row(str(i), decoded_image={"bytes": b"\x89PNG junk", "path": None}) for i in range(5)], features=HUB_FEATURES).save_to_disk(str(w / "mirror"))), 1, r"all 5 source rows were dropped \(undecodable_image: 5\)"),
    ("the one-line mirror fetch on a missing copy", lambda s, w: (_copy(s, w, "params.yaml"), module("vlrl.data", "--local", w / "nowhere", "--splits-dir", w / "s", "--manifest", w / "m.json", "--params", w / "params.yaml"))[1], 1, r"nowhere': not found"),

    # ---- our own artifacts, damaged: named with the fix ---------------------------------------------
    ("no splits folder", lambda s, w: (_copy(s, w, "params.yaml", "generations"), score_run(w))[1], 1, r"splits/eval: no eval split here; run `dvc repro fetch@"),
    ("a split whose arrow file is truncated", score_with(lambda w: [_write(f, f.read_bytes()[:100]) for f in (w / "splits/eval").glob("*.arrow")]), 1, r"splits/eval: cannot be read as a split"),
    ("a split folder of another data set", score_with(lambda w: (shutil.rmtree(w / "splits/eval"), datasets.Dataset.from_list([{"a": 1}]).save_to_disk(str(w / "splits/eval")))), 1, r"splits/eval: not a vlrl split \(missing columns: pid"),
    ("generations with a truncated last line", score_with(generations_lines(['{"pid": "1", "completion": "<SOLU'])), 1, r"baseline\.jsonl:4: not a JSON object"),
    ("generations with a line that is not an object", score_with(generations_lines([[1, 2]])), 1, r"baseline\.jsonl:4: a list, not a JSON object"),
    ("a completion that is not text", score_with(generations_lines([{"pid": "zz", "completion": 7, "completion_tokens": 1, "truncated": False}])), 1, r"completion = 7 is a int, expected str"),
    ("truncated given as a word", score_with(generations_lines([{"pid": "zz", "completion": "x", "completion_tokens": 1, "truncated": "yes"}])), 1, r"truncated = 'yes' is a str, expected bool"),
    ("a fractional token count", score_with(generations_lines([{"pid": "zz", "completion": "x", "completion_tokens": 1.5, "truncated": False}])), 1, r"completion_tokens = 1\.5 is a float, expected int"),
    ("an empty generations file", score_with(lambda w: _write(w / "generations/baseline.jsonl", "")), 1, r"eval pids have no generation"),
    ("a pid generated twice", score_with(lambda w: _write(w / "generations/baseline.jsonl", (w / "generations/baseline.jsonl").read_text() + (w / "generations/baseline.jsonl").read_text().splitlines()[0] + "\n")), 1, r"1 pids have several generations"),
    ("a generation for a pid not in the eval split", score_with(generations_lines([{"pid": "not-a-pid", "completion": "x", "completion_tokens": 1, "truncated": False}])), 1, r"not in the eval split: \['not-a-pid'\]"),
    ("generations that are not UTF-8", score_with(lambda w: _write(w / "generations/baseline.jsonl", b'{"pid": "\xff"}\n')), 1, r"baseline\.jsonl: not UTF-8 text"),
    ("no generations file", score_with(lambda w: (w / "generations/baseline.jsonl").unlink()), 1, r"baseline\.jsonl: not found; run the stage that writes it"),
    ("a truncated headline metrics file", report_with(lambda w: _write(w / "metrics/baseline.json", '{"n": 3, "format_comp')), 1, r"baseline\.json: not valid JSON"),
    ("post metrics without a headline key", report_with(lambda w: _write(w / "metrics/post.json", '{"n": 3}')), 1, r"post\.json: missing format_compliance"),
    ("metrics that are not an object", report_with(lambda w: _write(w / "metrics/post.json", "[]")), 1, r"post\.json: a JSON list, expected an object"),
    ("scored examples with a truncated line", report_with(lambda w: _write(w / "scored/post.jsonl", (w / "scored/post.jsonl").read_text()[:-40])), 1, r"scored/post\.jsonl:\d+: not a JSON object"),
    ("scored examples without a verdict", report_with(lambda w: _write(w / "scored/post.jsonl", json.dumps({"pid": "1", "gold": "3", "completion": "x"}) + "\n")), 1, r"post\.jsonl:1: missing correctness_criterion"),
    ("baseline and post scored on different items", report_with(lambda w: _write(w / "scored/post.jsonl", "".join(line + "\n" for line in (w / "scored/post.jsonl").read_text().splitlines()[1:]))), 1, r"scored on different items"),
    ("no data manifest", report_with(lambda w: (w / "manifest.json").unlink()), 1, r"manifest\.json: not found"),
    ("a truncated train.json", report_with(lambda w: _write(w / "metrics/train.json", '{"steps": ')), 1, r"train\.json: not valid JSON"),
    ("a training curve with another header", report_with(lambda w: _write(w / "curves/reward.tsv", "x\ty\n1\t2\n")), 1, r"reward\.tsv: expected the header 'step<TAB>reward'"),
    ("a training curve with words in it", report_with(lambda w: _write(w / "curves/reward.tsv", "step\treward\n1\tlots\n")), 1, r"reward\.tsv: not a curve of numbers"),
    ("generation metadata that is not JSON", report_with(lambda w: _write(w / "generations/post.meta.json", "{")), 1, r"post\.meta\.json: not valid JSON"),
    ("no model pin", generate_with(lambda w: (w / "model/model_pin.json").unlink()), 1, r"model_pin\.json: not found; the model stage writes it"),
    ("a model pin that is not JSON", generate_with(lambda w: _write(w / "model/model_pin.json", "{")), 1, r"model_pin\.json: not valid JSON"),
    ("a model pin of another model", generate_with(lambda w: _write(w / "model/model_pin.json", json.dumps({"id": "other", "revision": "x", "backend": "transformers", "kind": "built"}))), 1, r"pins other@x .* but params\.yaml has model id 'tiny-qwen3-vl'"),
    ("no adapter folder", generate_with(lambda w: shutil.rmtree(w / "adapter"), adapter=True), 1, r"adapter: adapter folder not found; run the train stage first"),
    ("an adapter that is not LoRA", generate_with(lambda w: _write(w / "adapter/adapter_config.json", '{"peft_type": "IA3"}'), adapter=True), 1, r"adapter_config\.json: peft_type = 'IA3': expected 'LORA'"),
    ("an adapter with a NaN weight", generate_with(_poison_adapter, adapter=True), 1, r"adapter.*(not finite|NaN)"),
    ("model weights truncated", generate_with(lambda w: _write(w / "model/model.safetensors", (w / "model/model.safetensors").read_bytes()[:1000])), 1, r"model\.safetensors: not a safetensors file \(1000 bytes"),
    ("model weights empty", generate_with(lambda w: _write(w / "model/model.safetensors", b"")), 1, r"model\.safetensors: not a safetensors file \(0 bytes"),
    ("a model folder without config.json", generate_with(lambda w: (w / "model/config.json").unlink()), 1, r"model/config\.json: not found; delete .*model and run `dvc repro model@"),
    ("a config.json of another architecture", generate_with(lambda w: _write(w / "model/config.json", json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))), 1, r"config\.json: declares model_type 'llama'"),
    ("a tokenizer.json that is not a tokenizer", generate_with(lambda w: _write(w / "model/tokenizer.json", '{"x": 1}')), 1, r"tokenizer\.json: not a tokenizers file"),
    ("LoRA on a module the model does not have", lambda s, w: (_copy(s, w, "splits", "model"), write_params(w / "params.yaml", edited(raw_params(), "profiles.tiny.lora.target_modules", ["q_proj", "qkv_proj"])), train_run(w))[2], 1, r"lora\.target_modules.*qkv_proj"),
    ("an adapter config that is not JSON", generate_with(lambda w: _write(w / "adapter/adapter_config.json", "{"), adapter=True), 1, r"adapter_config\.json: corrupt"),

    # ---- the vlrl command -----------------------------------------------------------------------
    ("an empty gold answer", lambda s, w: vlrl("reward", "--gold", "", "--completion", "x"), 2, r"vlrl reward: --gold is empty"),
    ("--precision nan", lambda s, w: vlrl("reward", "--gold", "1", "--completion", "x", "--precision", "nan"), 2, r"--precision nan: must be a whole number"),
    ("a negative precision", lambda s, w: vlrl("reward", "--gold", "1", "--completion", "x", "--precision", "-1"), 2, r"--precision -1\.0: must be a whole number"),
    ("a fractional precision", lambda s, w: vlrl("reward", "--gold", "1", "--completion", "x", "--precision", "1.5"), 2, r"--precision 1\.5"),
    ("stdin that is not UTF-8", lambda s, w: vlrl("reward", "--gold", "1", stdin=b"\xff\xfe<SOLUTION>"), 2, r"stdin is not UTF-8 text \(byte 0xff at offset 0\)"),
    ("a completion file that does not exist", lambda s, w: vlrl("reward", "--gold", "1", "--completion-file", w / "none.txt"), 2, r"cannot read --completion-file .*none\.txt: No such file"),
    ("a completion file that is a folder", lambda s, w: vlrl("reward", "--gold", "1", "--completion-file", w), 2, r"cannot read --completion-file .*: Is a directory"),
    ("a completion file that is not UTF-8", lambda s, w: (_write(w / "c.txt", b"\xff"), vlrl("reward", "--gold", "1", "--completion-file", w / "c.txt"))[1], 2, r"cannot read --completion-file .*c\.txt"),
    ("a NaN weight", lambda s, w: vlrl("reward", "--gold", "1", "--completion", "x", "--format-weight", "nan"), 2, r"--format-weight nan: must be a finite number >= 0"),
    ("a bad params file for the explainer", lambda s, w: (write_params(w / "p.yaml", edited(raw_params(), "rewards.format_weight", -1)), vlrl("reward", "--params", w / "p.yaml", "--preset", "exact"))[1], 2, r"vlrl reward: params\.yaml: rewards\.format_weight = -1\.0"),
    ("stdout closed", lambda s, w: shell(f"{sys.executable} -m vlrl reward --preset exact --json >&-"), 1, r"vlrl: error: cannot write the output: stdout is closed"),
    ("stdout on a full disk", lambda s, w: shell(f"{sys.executable} -m vlrl explain-metrics > /dev/full"), 1, r"cannot write the output to stdout: No space left on device"),
    ("stdout a pipe whose reader left", lambda s, w: shell(f"(sleep 1; {sys.executable} -m vlrl explain-metrics) | true"), 1, r"cannot write the output to stdout: Broken pipe"),
    ("a PR comment against an unknown base", lambda s, w: module("vlrl.prcomment", "--base", "no-such-branch-anywhere"), 2, r"--base no-such-branch-anywhere: not a commit here"),
]


# ------------------------------------------------------------------------------------------------
# Running a row
# ------------------------------------------------------------------------------------------------


def _snapshot(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def _execute(run: Run, cwd: Path, monkeypatch, capsys) -> tuple[int, str]:
    logging.root.handlers.clear()  # run_stage configures logging onto this test's captured stderr
    monkeypatch.chdir(cwd)
    if run.kind == "shell":
        done = subprocess.run(["bash", "-o", "pipefail", "-c", run.target], cwd=cwd, capture_output=True,
                              text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
        return done.returncode, done.stderr
    if run.kind == "cli":
        if run.stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(run.stdin)))
        code = vlrl_main(run.argv)
        return code, capsys.readouterr().err
    if run.kind == "stage":
        monkeypatch.setattr(sys, "argv", [f"stages/{run.target}.py", *run.argv])
        runner = lambda: runpy.run_path(str(ROOT / "stages" / f"{run.target}.py"), run_name="__main__")  # noqa: E731
    else:
        monkeypatch.setattr(sys, "argv", [run.target, *run.argv])
        runner = lambda: runpy.run_module(run.target, run_name="__main__", alter_sys=True)  # noqa: E731
    with pytest.raises(SystemExit) as exited:
        runner()
    code = exited.value.code
    return (0 if code is None else code if isinstance(code, int) else 1), capsys.readouterr().err


@pytest.mark.parametrize("case", [pytest.param(c, id=c[0]) for c in CASES])
def test_bad_input_or_fault(case, intact, tmp_path, monkeypatch, capsys):
    _, build, status, message, *check = case
    workspace = tmp_path / "w"
    workspace.mkdir()
    run = build(intact, workspace)
    before = _snapshot(workspace)
    code, err = _execute(run, workspace, monkeypatch, capsys)
    assert "Traceback" not in err, err[-3000:]
    assert code == status, f"exit status {code}, expected {status}: {err[-2000:]}"
    if message is not None:
        lines = [line for line in err.splitlines() if re.search(message, line)]
        assert len(lines) == 1, f"expected one line matching {message!r} in:\n{err[-3000:]}"
    for check_after in check:
        check_after(workspace)
    after = _snapshot(workspace)
    changed = sorted(name for name, digest in before.items() if after.get(name) != digest)
    assert not changed, f"pre-existing files changed or deleted: {changed}"


def test_the_table_covers_enough_cases_of_every_class():
    assert len(CASES) >= 80
    statuses = {case[2] for case in CASES}
    assert statuses == {0, 1, 2}, "failures, usage errors and dropped-with-a-reason rows are all present"
    assert len({case[0] for case in CASES}) == len(CASES), "ids are unique"


def test_debug_variable_shows_the_traceback(intact, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VLRL_DEBUG", "1")
    with pytest.raises(Exception, match="not found; run from the repository root"):
        _execute(score_run(tmp_path), tmp_path, monkeypatch, capsys)


def test_unexpected_exceptions_keep_their_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-c", "from vlrl.entry import run_stage\n"
                           "def main():\n    raise KeyError('a bug')\nrun_stage(main)"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "Traceback" in done.stderr and "KeyError: 'a bug'" in done.stderr

