"""Batched generation on the eval split: one record per example, written atomically.

Why it looks like this:
- LEFT padding: the reference's ``addCriterion`` gibberish has been tied to batched right-padded
  inference (docs/library-notes.md); with left padding every prompt ends where generation starts.
- The prompt is the chat template applied to :func:`vlrl.prompts.build_prompt` (image first, then the
  question and the format instruction), exactly what TRL feeds the policy in training.
- Vision placeholders (``<|image_pad|>`` and friends) are suppressed: plain ``generate`` may emit
  them, TRL suppresses them in training (docs/library-notes.md).
- The ``GenerationConfig`` is built from params and the tokenizer only (:func:`build_generation_config`):
  a model's shipped generation config (a ``repetition_penalty``, say) never applies, and the effective
  config is recorded in ``<out>.meta.json``. ``pad_token_id`` is passed to ``generate`` explicitly
  (docs/library-notes.md, Unsloth).
- Completions are decoded with ``skip_special_tokens=True``, as TRL does, so the rewards see the same
  text in training and in evaluation (the tags are non-special tokens).
- Restartability: the stage collects all records in memory and writes the JSONL once, atomically
  (:func:`vlrl.io.atomic_write_jsonl`); an interrupted run leaves no file, never a partial one that looks
  complete. Re-running regenerates from the start (greedy decoding makes it reproducible).
- Several processes (:mod:`vlrl.launch`): the batches of the single-process plan are dealt out to the
  processes and the records gathered back in row order, so the output does not depend on the number
  of processes (:func:`generate_completions`).

Record: ``{"pid", "completion", "prompt_tokens", "completion_tokens", "truncated"}`` where
``truncated`` means the completion hit ``max_new_tokens`` without an end-of-turn token.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from vlrl.config import GenerationParams, ModelParams
from vlrl.errors import ConfigError, EnvironmentProblem
from vlrl.launch import Processes
from vlrl.modeling.devices import torch_threads
from vlrl.modeling.processor import end_of_turn_ids, vision_token_ids
from vlrl.prompts import build_prompt

log = logging.getLogger(__name__)


def check_prompt_lengths(prompt_tokens: Sequence[int], pids: Sequence[str], generation: GenerationParams,
                         model: ModelParams, profile: str = "<profile>") -> None:
    """Every prompt plus ``max_new_tokens`` must fit in ``max_seq_length``.

    >>> from vlrl.config import GenerationParams, ModelParams
    >>> model = ModelParams("transformers", "m", None, False, 64)
    >>> check_prompt_lengths([10], ["1"], GenerationParams(1, 48), model)
    """
    worst = max(range(len(prompt_tokens)), key=lambda i: prompt_tokens[i], default=None)
    if worst is not None and prompt_tokens[worst] + generation.max_new_tokens > model.max_seq_length:
        raise ConfigError(
            f"params.yaml: profiles.{profile}.generation.max_new_tokens = {generation.max_new_tokens}: the "
            f"longest prompt (pid {pids[worst]}, {prompt_tokens[worst]} tokens) plus max_new_tokens exceeds "
            f"profiles.{profile}.model.max_seq_length = {model.max_seq_length}; lower max_new_tokens or "
            "raise max_seq_length")


def prompt_texts(processor: Any, questions: Sequence[str], prompt_template: str) -> list[str]:
    """Chat-templated prompt strings (generation prompt appended), one per question."""
    return [processor.apply_chat_template(build_prompt(q, prompt_template), tokenize=False,
                                          add_generation_prompt=True) for q in questions]


def prompt_token_counts(processor: Any, dataset: Any, prompt_template: str) -> list[int]:
    """Prompt length in tokens (image placeholders expanded) per example; cheap, no model needed."""
    texts = prompt_texts(processor, list(dataset["question"]), prompt_template)
    counts = []
    for text, row in zip(texts, dataset, strict=True):
        enc = processor(text=[text], images=[row["image"]], return_tensors="pt")
        counts.append(int(enc["attention_mask"].sum()))
    return counts


def _model_device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def build_generation_config(generation: GenerationParams, processor: Any) -> Any:
    """The ``GenerationConfig`` of an evaluation run, built from params and the tokenizer only.

    Nothing comes from the model's shipped ``generation_config.json``: transformers 5 fills every field
    a passed config leaves ``None`` from ``model.generation_config`` (``GenerationMixin.
    _prepare_generation_config``), so a ``repetition_penalty`` or ``top_k`` shipped with the model would
    still apply, under greedy decoding too. Every field that transformers has a global default for is
    therefore set here explicitly (to that default unless params say otherwise), and
    :func:`install_generation_config` makes this config the model's own for the run.
    """
    from transformers import GenerationConfig

    tokenizer = processor.tokenizer
    eos_ids = end_of_turn_ids(processor)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    sampling: dict[str, Any] = {"do_sample": False} if generation.greedy else {
        "do_sample": True, "temperature": generation.temperature, "top_p": generation.top_p, "top_k": 0}
    # max_length is left out: max_new_tokens bounds the run (both set makes generate() warn).
    defaults = {k: v for k, v in GenerationConfig()._get_default_generation_params().items() if k != "max_length"}
    return GenerationConfig(**{**defaults, **sampling, "max_new_tokens": generation.max_new_tokens,
                               "suppress_tokens": vision_token_ids(processor), "eos_token_id": eos_ids,
                               "pad_token_id": pad_id})


def install_generation_config(model: Any, config: Any) -> None:
    """Make ``config`` the generation config of ``model`` (and of the base model under a PEFT wrapper).

    ``generate()`` fills a passed config's unset fields from the model's own one, and Unsloth's generate
    wrapper reads the model's, so the run's config replaces it; :func:`run_metadata` records it.
    """
    model.generation_config = config
    base = model.get_base_model() if hasattr(model, "get_base_model") else None
    if base is not None and base is not model:
        base.generation_config = config


def effective_generation_config(model: Any) -> dict | None:
    """The generation config a run used, as its non-default fields: :func:`run_metadata`'s
    ``generation_config`` (the config :func:`generate_completions` built from params and installed on
    ``model``)."""
    config = getattr(model, "generation_config", None)
    if config is None or not hasattr(config, "to_diff_dict"):
        return None
    return {k: v for k, v in sorted(config.to_diff_dict().items()) if k != "transformers_version"}


def generate_completions(model: Any, processor: Any, dataset: Any, *, prompt_template: str,
                         generation: GenerationParams, seed: int, progress: bool = True,
                         profile: str = "<profile>", processes: Processes | None = None) -> list[dict]:
    """Generate one completion per dataset row, ``generation.batch_size`` at a time; records in row order.

    Rows are batched in order of question length (ties by position): similar questions tend to get
    completions of similar length, and a batch runs until its longest completion ends, so this
    wastes fewer steps on finished rows (measured on the tiny profile: see benchmarks/). Greedy
    results do not depend on the batching (tests/test_generation.py). Greedy when
    ``temperature == 0``; otherwise sampled with ``temperature``/``top_p`` from torch's generator
    seeded with ``seed + b`` for batch ``b``.

    ``processes`` (several processes, :class:`vlrl.launch.Processes`): the batches are planned as for
    one process, process ``k`` of ``n`` generates batches ``k, k + n, k + 2n, ...`` (the batches are
    sorted by question length, so every process gets a similar share of long and short ones), and the
    records are gathered in row (pid) order on every process. Each batch is exactly the batch, with
    the seed, of a single-process run, so the gathered records are those of a single-process run, greedy
    or sampled (tests/test_scale_out.py checks the files are byte-identical on the tiny profile). Why
    not contiguous rows per process (accelerate's ``split_between_processes``): each process would
    batch its own rows, and greedy decoding can in principle change with the batch a row is in: the
    padded length changes the shapes of the matrix products and so the order of floating-point sums,
    which can flip a near-tie between two tokens (measured identical on the tiny profile nonetheless;
    README "Scaling out").
    """
    processes = processes or Processes()
    tokenizer = processor.tokenizer
    eos_ids = end_of_turn_ids(processor)
    config = build_generation_config(generation, processor)
    install_generation_config(model, config)
    pad_id = config.pad_token_id
    device = _model_device(model)
    threads = generation.cpu_threads if device.type == "cpu" else None
    questions = list(dataset["question"])
    order = sorted(range(len(questions)), key=lambda i: (len(questions[i]), i))
    batches = [order[start:start + generation.batch_size] for start in range(0, len(order), generation.batch_size)]
    mine = list(range(processes.index, len(batches), processes.count))  # this process's batches
    done: list[tuple[int, dict]] = []  # (row, record)
    bar = tqdm(total=sum(len(batches[b]) for b in mine), desc="generate", unit="ex",
               disable=not progress or not processes.is_main)
    with torch_threads(threads), bar:
        for b in mine:
            indices = batches[b]
            rows = dataset.select(indices)
            texts = prompt_texts(processor, list(rows["question"]), prompt_template)
            enc = processor(text=texts, images=list(rows["image"]), padding=True, padding_side="left",
                            return_tensors="pt").to(device)
            if not generation.greedy:
                torch.manual_seed(seed + b)
            try:
                with torch.inference_mode():
                    # pad_token_id again as a keyword: Unsloth's generate wrapper sets it from
                    # config.eos_token_id unless passed (None for Qwen3-VL, whose eos is per sub-config).
                    out = model.generate(**enc, generation_config=config, pad_token_id=pad_id)
            except torch.OutOfMemoryError as exc:
                raise EnvironmentProblem(
                    f"out of GPU memory generating a batch of {len(rows)}: lower "
                    f"profiles.{profile}.generation.batch_size (now {generation.batch_size}) in params.yaml"
                ) from exc
            batch = _records(rows, enc, out, tokenizer, eos_ids, pad_id, generation.max_new_tokens)
            done.extend(zip(indices, batch, strict=True))
            bar.update(len(rows))
    records: list[dict] = [{}] * len(order)
    for index, record in processes.gather(done):
        records[index] = record
    return records


def _records(rows: Any, enc: Any, out: torch.Tensor, tokenizer: Any, eos_ids: list[int], pad_id: int,
             max_new_tokens: int) -> list[dict]:
    """Split generate()'s output into per-example records.

    ``out``: (batch, prompt_len + new_len), left-padded prompts then the new tokens; after an eos,
    generate() fills with ``pad_id``.
    """
    prompt_len = enc["input_ids"].shape[1]
    new = out[:, prompt_len:].tolist()
    prompt_tokens = enc["attention_mask"].sum(dim=1).tolist()
    records = []
    for pid, ids, n_prompt in zip(rows["pid"], new, prompt_tokens, strict=True):
        end = next((i for i, t in enumerate(ids) if t in eos_ids), None)
        kept = ids if end is None else ids[:end]
        records.append({
            "pid": str(pid),
            "completion": tokenizer.decode(kept, skip_special_tokens=True),
            "prompt_tokens": int(n_prompt),
            # Count the eos token too: it is generated (as TRL counts completion length).
            "completion_tokens": len(kept) + (0 if end is None else 1),
            "truncated": end is None and len(kept) >= max_new_tokens,
        })
    return records


def run_metadata(which: str, *, model: Any, pin: dict, adapter_dir: Path | None, generation: GenerationParams,
                 records: Sequence[dict]) -> dict:
    """What a generation run was (``<out>.meta.json``, read by the report): model pin, adapter, device,
    generation params and library versions. Deterministic for a given setup: timings and the commit
    of the run are telemetry (:mod:`vlrl.telemetry`), not part of the committed results.
    """
    versions = {}
    for package in ("torch", "transformers", "peft", "tokenizers", "unsloth"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {
        "which": which,
        "model": pin,
        "adapter": str(adapter_dir) if adapter_dir is not None else None,
        "device": str(_model_device(model)),
        "generation": dataclasses.asdict(generation),
        "generation_config": effective_generation_config(model),
        "n": len(records),
        "versions": versions,
    }
