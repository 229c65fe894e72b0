"""Model folders and configs checked before any weights are allocated.

Why: ``Qwen3VLForConditionalGeneration.from_pretrained(folder)`` on a folder without ``config.json``
builds a default, full-size Qwen3-VL in RAM (the host's out-of-memory killer ended one at about 24 GB),
and a truncated or random ``model.safetensors``, or a missing ``tokenizer.json``, surfaces as a raw
crash or as "Image features and image tokens do not match" long after loading. These checks read only
small JSON files and the safetensors header (its first 8 bytes give the header length, the JSON header
gives every tensor's dtype, shape and byte range: https://github.com/huggingface/safetensors#format),
so they cost milliseconds, and each failure is one line naming the file and the fix.

Pure of torch and transformers: the standard library only.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from vlrl.errors import CorruptInputError, MissingInputError
from vlrl.io import read_json

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILE = "tokenizer.json"
#: Files a built (tiny) model folder must hold besides its weights (vlrl.tiny_model writes them).
BUILT_FILES = (CONFIG_FILE, TOKENIZER_FILE, "tokenizer_config.json", "processor_config.json")

#: The one architecture vlrl loads (transformers' ``Qwen3VLForConditionalGeneration``).
MODEL_TYPE = "qwen3_vl"
ARCHITECTURE = "Qwen3VLForConditionalGeneration"

#: Bytes per element of the safetensors dtypes (the format's dtype names).
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
                "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
#: A safetensors header larger than this is not a header (the format's own limit is 100 MB).
_MAX_HEADER_BYTES = 100 * 2**20
#: Name of the input embedding in a Qwen3-VL state dict: its shape is (vocab_size, hidden_size).
_EMBED_SUFFIX = "language_model.embed_tokens.weight"


def rebuild_hint(model_dir: Path) -> str:
    """How to get a fresh model folder: the model stage of the folder's profile.

    >>> rebuild_hint(Path("data/tiny/model"))
    'delete data/tiny/model and run `dvc repro model@tiny`'
    """
    profile = Path(model_dir).parent.name if Path(model_dir).parent.name in ("tiny", "full") else "<profile>"
    return f"delete {model_dir} and run `dvc repro model@{profile}`"


def read_json_file(path: Path, fix: str) -> Any:
    """A JSON file's content, or one line naming the file, what is wrong and ``fix``."""
    return read_json(path, fix)


def check_architecture(config: Any, where: str, fix: str) -> dict:
    """``config`` (a parsed config.json) must declare Qwen3-VL; returns it.

    >>> check_architecture({"model_type": "qwen3_vl", "architectures": [ARCHITECTURE]}, "x", "")["model_type"]
    'qwen3_vl'
    >>> check_architecture({"model_type": "llama"}, "m/config.json", "use a Qwen3-VL model")
    Traceback (most recent call last):
    vlrl.errors.CorruptInputError: m/config.json: declares model_type 'llama' and architectures None; ...
    """
    model_type = config.get("model_type") if isinstance(config, dict) else None
    architectures = config.get("architectures") if isinstance(config, dict) else None
    if model_type != MODEL_TYPE or (architectures is not None and ARCHITECTURE not in architectures):
        raise CorruptInputError(f"{where}: declares model_type {model_type!r} and architectures {architectures!r}; "
                                f"vlrl loads Qwen3-VL (model_type {MODEL_TYPE!r}, {ARCHITECTURE}); {fix}")
    return config


def safetensors_header(path: Path, fix: str) -> dict:
    """The tensors a safetensors file declares (name -> dtype, shape, data_offsets), the file checked whole.

    Refuses an empty, truncated, padded or random file: the header must be JSON, and the tensors' byte
    ranges must tile the data section exactly, each as long as its dtype and shape say.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: not found; {fix}")
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or n > min(size - 8, _MAX_HEADER_BYTES):
            raise CorruptInputError(f"{path}: not a safetensors file ({size} bytes; empty, truncated or "
                                    f"overwritten); {fix}")
        raw = handle.read(n)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptInputError(f"{path}: the safetensors header is not JSON (corrupt file); {fix}") from exc
    if not isinstance(header, dict):
        raise CorruptInputError(f"{path}: the safetensors header is not a JSON object (corrupt file); {fix}")
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    spans = []
    for name, entry in tensors.items():
        try:
            start, end = (int(x) for x in entry["data_offsets"])
            numel = math.prod(int(d) for d in entry["shape"])
            expected = numel * _DTYPE_BYTES[entry["dtype"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptInputError(f"{path}: tensor {name!r} has a malformed header entry; {fix}") from exc
        if end - start != expected:
            raise CorruptInputError(f"{path}: tensor {name!r} spans {end - start} bytes but its shape and dtype "
                                    f"need {expected} (corrupt file); {fix}")
        spans.append((start, end))
    spans.sort()
    position = 0
    for start, end in spans:
        if start != position:
            raise CorruptInputError(f"{path}: the tensors' byte ranges overlap or leave gaps (corrupt file); {fix}")
        position = end
    if 8 + n + position != size:
        raise CorruptInputError(f"{path}: {size} bytes, but its header describes {8 + n + position} "
                                f"({'truncated' if size < 8 + n + position else 'trailing bytes'}); {fix}")
    return tensors


def weight_headers(model_dir: Path, fix: str) -> dict:
    """All tensors of a folder's weights: ``model.safetensors``, or the shards its index names."""
    model_dir = Path(model_dir)
    index_path = model_dir / WEIGHTS_INDEX_FILE
    if not (model_dir / WEIGHTS_FILE).is_file() and index_path.is_file():
        index = read_json_file(index_path, fix)
        shards = sorted(set((index.get("weight_map") or {}).values())) if isinstance(index, dict) else []
        if not shards:
            raise CorruptInputError(f"{index_path}: names no weight files; {fix}")
        tensors: dict = {}
        for shard in shards:
            tensors.update(safetensors_header(model_dir / shard, fix))
        return tensors
    return safetensors_header(model_dir / WEIGHTS_FILE, fix)


def check_built_folder(model_dir: Path) -> dict:
    """A built (tiny) model folder is whole and declares Qwen3-VL; returns its parsed config.json.

    Checks, before anything is allocated: the files :data:`BUILT_FILES` parse as JSON, config.json
    declares Qwen3-VL, the weights are complete safetensors whose embedding matches the declared
    vocabulary and width and whose layer count matches the declared depth (so a config.json that
    declares a bigger model than its weights is refused, not allocated), and the tokenizer knows the
    image placeholder token the config names.
    """
    model_dir = Path(model_dir)
    fix = rebuild_hint(model_dir)
    if not model_dir.is_dir():
        raise MissingInputError(f"{model_dir}: model folder not found; run `dvc repro model@<profile>`")
    for name in BUILT_FILES:
        read_json_file(model_dir / name, fix)
    config = check_architecture(read_json_file(model_dir / CONFIG_FILE, fix), str(model_dir / CONFIG_FILE), fix)
    text = config.get("text_config") or {}
    tensors = weight_headers(model_dir, fix)
    embed = next((entry for name, entry in tensors.items() if name.endswith(_EMBED_SUFFIX)), None)
    declared = [text.get("vocab_size"), text.get("hidden_size")]
    if embed is None or list(embed["shape"]) != declared:
        raise CorruptInputError(
            f"{model_dir / CONFIG_FILE}: declares vocab_size x hidden_size = {declared}, but the weights hold "
            f"{'no input embedding' if embed is None else 'an embedding of ' + str(list(embed['shape']))}; "
            f"config and weights belong to different models: {fix}")
    layers = {name.split("language_model.layers.")[1].split(".")[0] for name in tensors
              if "language_model.layers." in name}
    if len(layers) != text.get("num_hidden_layers"):
        raise CorruptInputError(f"{model_dir / CONFIG_FILE}: declares {text.get('num_hidden_layers')} text layers, "
                                f"the weights hold {len(layers)}; {fix}")
    tokenizer = read_json_file(model_dir / TOKENIZER_FILE, fix)
    added = {t.get("content"): t.get("id") for t in (tokenizer.get("added_tokens") or [])
             if isinstance(t, dict)} if isinstance(tokenizer, dict) else {}
    if not isinstance(tokenizer, dict) or not isinstance(tokenizer.get("model"), dict):
        raise CorruptInputError(f"{model_dir / TOKENIZER_FILE}: not a tokenizers file (no model section); {fix}")
    if added.get("<|image_pad|>") != config.get("image_token_id"):
        raise CorruptInputError(
            f"{model_dir / TOKENIZER_FILE}: the image placeholder <|image_pad|> has id {added.get('<|image_pad|>')}, "
            f"config.json says image_token_id {config.get('image_token_id')}; tokenizer and model do not belong "
            f"together: {fix}")
    return config
