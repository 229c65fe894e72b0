"""The tiny offline Qwen3-VL: tokenizer, image-only processor, model, and its warm start.

Everything here runs on a CPU without network in seconds (docs/library-notes.md, "A tiny Qwen3-VL"):

1. :func:`build_tiny_model` trains a byte-level BPE tokenizer with ``tokenizers`` on a deterministic
   corpus (the prompt template, the tags, digits, the train questions), wraps it as a Qwen2 tokenizer
   with Qwen's special tokens and a chat template that places images, builds the image-only
   processor (``Qwen2VLImageProcessorPil``, no torchvision) and a ``Qwen3VLForConditionalGeneration``
   from a small ``Qwen3VLConfig``, and saves them (safetensors). Two builds with the same seed are
   byte-identical.
2. :func:`warm_start` fine-tunes it (all weights, cross-entropy on the completion tokens) on the
   TRAIN split, so that GSPO starts from a model with room on BOTH reward terms. A random model never
   emits the tags, so every reward would be 0 and GSPO would have nothing to learn from.

   - Format. Each question kind (``metadata.task``; each offline kind has its own question text,
     so the model can tell them apart) has a majority style: well formatted for the biggest kinds up
     to ``well_formatted_fraction`` of the items, else :data:`DEFECTS` (a second REASONING block
     before the SOLUTION: one format point lost, the answer and the tokens right before it are the
     same as in a well-formatted completion). ``minority_style_fraction`` of the visits use the
     other style. Greedy decoding follows each kind's majority; sampling sometimes the minority.
   - Correctness. With probability ``guess_fraction`` a visit's target answer is the kind's GUESS
     (its most common train answer) instead of the item's own answer. The model learns to read the
     picture from the other visits, but hedges: when it is unsure, the guess wins the argmax. So
     greedy accuracy is well below what sampling reaches (pass@k above pass@1), the regime where RL
     with a verifiable reward is known to help (it mostly moves pass@1 towards pass@k: Yue et al.
     2025, "Does Reinforcement Learning Really Incentivize Reasoning Capacity in LLMs Beyond the Base
     Model?", arXiv:2504.13837). The guess is drawn afresh at every visit, so it is a property of
     the kind, not of an item the model could memorise; and it is the same for every item of a
     kind, so only reading the picture beats it: the correctness reward is what removes it.

   ``initializer_range`` (0.02 in Qwen3-VL) is raised for the tiny widths: at 0.02 the image signal
   is so weak that the warm start learns the answers' marginal first and reads the picture only
   after a long plateau.

Determinism: seeds are set from ``seed`` and the warm start runs on ONE torch thread, so the saved
folder is byte-identical across runs and across machines with different core counts (measured: a
1-thread and a 2-thread warm start gave different weights before this was pinned, since CPU float
reductions are split per thread). Not covered: another torch build or CPU instruction set may
still change the last bits of the weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import AddedToken, Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    Qwen2Tokenizer,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
)
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX as QWEN2_PRETOKENIZE_REGEX
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from vlrl.config import ModelParams, TinyModelBuild
from vlrl.errors import ConfigError
from vlrl.io import atomic_write_json
from vlrl.modeling import (
    END_OF_TURN_TOKENS,
    KIND_BUILT,
    image_only_processor_class,
    torch_threads,
    vision_token_ids,
    write_pin,
)
from vlrl.prompts import REASONING_END, REASONING_START, SOLUTION_END, SOLUTION_START, TAGS, build_prompt

log = logging.getLogger(__name__)

#: Qwen's special tokens, in Qwen's id order (151643...): end of text, chat turns, vision placeholders.
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>")

#: A Qwen-style chat template: ``<|im_start|>role\n...<|im_end|>\n``, an image item becomes
#: ``<|vision_start|><|image_pad|><|vision_end|>`` (the processor expands the pad to the image's tokens).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' or 'image' in item %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

#: The short reasoning in every warm-start target (also in the tokenizer corpus).
REASONING_TEXT = "Read the figure and work out the value."

#: Completion styles of the warm start. Each defect costs one format point (the reference format reward).
WELL = "well_formatted"
DEFECTS = ("two_reasoning_blocks",)


# ------------------------------------------------------------------------------------------------
# Tokenizer, processor, model
# ------------------------------------------------------------------------------------------------


def tokenizer_corpus(prompt_template: str, questions: Iterable[str]) -> list[str]:
    """The text the tokenizer is trained on: the prompt template, then the questions (in order).

    >>> tokenizer_corpus("{question} {solution_start}{solution_end}", ["How many?"])[0]
    '{question} {solution_start}{solution_end}'
    """
    return [prompt_template, *questions]


def _fixed_corpus() -> list[str]:
    """Text every tiny tokenizer sees: tags, digits and the warm-start targets' words."""
    digits = " ".join("0123456789") + " . - " + " ".join(str(i) for i in range(100))
    return [" ".join(TAGS), digits, REASONING_TEXT, f"{REASONING_START}{REASONING_TEXT}{REASONING_END}\n"
            f"{SOLUTION_START}3.5{SOLUTION_END}"]


def train_tokenizer(corpus: Iterable[str], vocab_size: int) -> Qwen2Tokenizer:
    """Byte-level BPE trained offline, wrapped as a Qwen2 tokenizer with Qwen's special tokens.

    The tags are added as NON-special tokens: TRL decodes completions with
    ``skip_special_tokens=True``, which would erase special tags before the rewards see them.
    ``len(tokenizer) <= vocab_size``.

    >>> tok = train_tokenizer(["How many bars are there?"], 320)
    >>> tok.decode(tok("<SOLUTION>7</SOLUTION>")["input_ids"], skip_special_tokens=True)
    '<SOLUTION>7</SOLUTION>'
    """
    texts = [*_fixed_corpus(), *corpus]
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    # Qwen2's pre-tokenizer (transformers' Qwen2Tokenizer): digits split one by one.
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    n_added = len(SPECIAL_TOKENS) + len(TAGS)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - n_added, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    bpe.train_from_iterator(texts, trainer)
    model = json.loads(bpe.to_str())["model"]
    tokenizer = Qwen2Tokenizer(vocab=model["vocab"], merges=[tuple(m) for m in model["merges"]],
                               unk_token=None, eos_token=SPECIAL_TOKENS[0], pad_token=SPECIAL_TOKENS[0])
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS[1:])})
    # Qwen3-VL instruct ends a turn with <|im_end|> and pads with <|endoftext|>.
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.add_tokens([AddedToken(tag, special=False, normalized=False) for tag in TAGS])
    tokenizer.chat_template = CHAT_TEMPLATE
    if len(tokenizer) > vocab_size:  # cannot happen unless the trainer overshoots: keep the contract
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens > vocab_size {vocab_size}")
    return tokenizer


def build_processor(tokenizer: Qwen2Tokenizer, build: TinyModelBuild) -> Any:
    """The image-only Qwen3-VL processor with the PIL image processor (no torchvision)."""
    factor = build.patch_size * build.spatial_merge_size
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=build.patch_size, merge_size=build.spatial_merge_size, temporal_patch_size=2,
        min_pixels=factor * factor, max_pixels=build.image_max_pixels)
    return image_only_processor_class()(image_processor=image_processor, tokenizer=tokenizer,
                                        chat_template=CHAT_TEMPLATE)


def model_config(build: TinyModelBuild, tokenizer: Qwen2Tokenizer) -> Qwen3VLConfig:
    """A small ``Qwen3VLConfig``: the real architecture (mRoPE, deepstack, patch merger), tiny sizes."""
    head_dim = build.text_hidden_size // build.text_heads
    # mRoPE splits head_dim/2 rotary frequencies over (time, height, width); Qwen3-VL uses 24/20/20 of 64.
    half = head_dim // 2
    section = [half - 2 * (half * 5 // 16), half * 5 // 16, half * 5 // 16]
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    return Qwen3VLConfig(
        text_config={
            "vocab_size": len(tokenizer), "hidden_size": build.text_hidden_size,
            "intermediate_size": build.text_intermediate_size, "num_hidden_layers": build.text_layers,
            "num_attention_heads": build.text_heads, "num_key_value_heads": build.text_kv_heads,
            "head_dim": head_dim, "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section,
                                "mrope_interleaved": True},
            "pad_token_id": tokenizer.pad_token_id, "initializer_range": build.initializer_range,
        },
        vision_config={
            "depth": build.vision_layers, "hidden_size": build.vision_hidden_size,
            "intermediate_size": 2 * build.vision_hidden_size, "num_heads": build.vision_heads,
            "patch_size": build.patch_size, "spatial_merge_size": build.spatial_merge_size,
            "temporal_patch_size": 2, "out_hidden_size": build.text_hidden_size,
            # Learned position grid (a square; Qwen3-VL interpolates it to each image's patch grid).
            "num_position_embeddings": max(4, math.isqrt(build.image_max_pixels) // build.patch_size) ** 2,
            "deepstack_visual_indexes": [0], "initializer_range": build.initializer_range,
        },
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )


def _generation_config(tokenizer: Qwen2Tokenizer) -> GenerationConfig:
    """Greedy, stop at the end of turn, never emit a vision placeholder.

    ``suppress_tokens`` is saved with the model because TRL 1.15 builds its training-time
    ``GenerationConfig`` without it, and ``generate()`` fills unset fields from the model's own config
    (transformers ``GenerationMixin._prepare_generation_config``): without it a sampled
    ``<|image_pad|>`` makes the next training forward fail ("Image features and image tokens do not
    match").
    """
    eos = [tokenizer.convert_tokens_to_ids(t) for t in END_OF_TURN_TOKENS]
    return GenerationConfig(eos_token_id=eos, pad_token_id=tokenizer.pad_token_id, do_sample=False,
                            suppress_tokens=vision_token_ids(tokenizer))


def build_tiny_model(build: TinyModelBuild, seed: int, out_dir: Path, corpus: Iterable[str]) -> None:
    """Build tokenizer, processor and a randomly initialised tiny Qwen3-VL into ``out_dir``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(corpus, build.vocab_size)
    processor = build_processor(tokenizer, build)
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(model_config(build, tokenizer))
    model.generation_config = _generation_config(tokenizer)
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    log.info("tiny Qwen3-VL built: %d parameters, %d tokens -> %s",
             sum(p.numel() for p in model.parameters()), len(tokenizer), out_dir)


# ------------------------------------------------------------------------------------------------
# Warm start
# ------------------------------------------------------------------------------------------------


def question_kind(row: dict) -> str:
    """The kind of a question: ``metadata.task`` (else ``metadata.category``, else question_type).

    >>> question_kind({"metadata": {"task": "figure question answering"}, "question_type": "free_form"})
    'figure question answering'
    """
    metadata = row.get("metadata") or {}
    return str(metadata.get("task") or metadata.get("category") or row.get("question_type") or "unknown")


def completion_text(answer: str, style: str) -> str:
    """A warm-start target completion in one style (without the end-of-turn token).

    >>> completion_text("12", "well_formatted")
    '<REASONING>Read the figure and work out the value.</REASONING>\\n<SOLUTION>12</SOLUTION>'
    >>> completion_text("12", "two_reasoning_blocks").count("<REASONING>")
    2
    """
    reasoning = f"{REASONING_START}{REASONING_TEXT}{REASONING_END}\n"
    solution = f"{SOLUTION_START}{answer}{SOLUTION_END}"
    if style == WELL:
        return reasoning + solution
    if style == "two_reasoning_blocks":
        return reasoning + reasoning + solution
    raise ValueError(f"unknown completion style {style!r}; known: {WELL}, {', '.join(DEFECTS)}")


def kind_styles(kinds: Sequence[str], well_formatted_fraction: float) -> dict[str, str]:
    """Majority style per kind: well-formatted kinds until they cover ``well_formatted_fraction`` of
    the items, the others a characteristic defect (cycled), biggest kinds first, ties by name.

    >>> kind_styles(["a", "a", "b", "b"], 0.5)
    {'a': 'well_formatted', 'b': 'two_reasoning_blocks'}
    """
    counts = Counter(kinds)
    total = sum(counts.values())
    styles: dict[str, str] = {}
    well, n_defect = 0, 0
    order = sorted(counts, key=lambda kind: (-counts[kind], kind))
    for kind in order:
        if well < well_formatted_fraction * total:
            styles[kind], well = WELL, well + counts[kind]
        else:
            styles[kind], n_defect = DEFECTS[n_defect % len(DEFECTS)], n_defect + 1
    if len(order) > 1 and (set(styles.values()) == {WELL} or WELL not in styles.values()):
        # Every kind landed on one side (e.g. fraction 0 or 1): flip the last so both sides exist,
        # otherwise greedy compliance would be 0% or 100% and no longer a starting point for RL.
        styles[order[-1]] = DEFECTS[0] if styles[order[-1]] == WELL else WELL
    return styles


def kind_guesses(rows: Sequence[dict], kinds: Sequence[str]) -> dict[str, str]:
    """Each kind's guess: its most common answer among ``rows`` (ties: the smallest string).

    >>> kind_guesses([{"answer": "3"}, {"answer": "5"}, {"answer": "5"}, {"answer": "9"}], ["a", "a", "a", "b"])
    {'a': '5', 'b': '9'}
    """
    counts: dict[str, Counter] = {}
    for row, kind in zip(rows, kinds, strict=True):
        counts.setdefault(kind, Counter())[str(row["answer"])] += 1
    return {kind: min(c, key=lambda a: (-c[a], a)) for kind, c in counts.items()}


@dataclass(frozen=True)
class WarmStartTargets:
    """What the warm start draws its targets from: each row's kind, each kind's majority style and guess."""

    majority: dict[str, str]
    kinds: list[str]
    guesses: dict[str, str]
    summary: dict[str, dict]


def warm_start_targets(rows: Sequence[dict], build: TinyModelBuild) -> WarmStartTargets:
    """The kinds of the train rows, with each kind's majority style and guess (module docstring)."""
    kinds = [question_kind(r) for r in rows]
    if len(set(kinds)) < 2:
        # One kind only: key the style on the answer type instead (the model sees its own answer).
        kinds = [str(r.get("answer_type") or "unknown") for r in rows]
        log.warning("warm start: fewer than two question kinds; keying completion style on answer_type")
    majority = kind_styles(kinds, build.well_formatted_fraction)
    guesses = kind_guesses(rows, kinds)
    counts = Counter(kinds)
    summary = {kind: {"n": counts[kind], "majority_style": majority[kind], "guess": guesses[kind]}
               for kind in sorted(majority)}
    return WarmStartTargets(majority, kinds, guesses, summary)


def _batch(processor: Any, rows: Sequence[dict], targets: Sequence[str], template: str) -> dict:
    """Tokenised prompt + target batch (right padding), labels only on the completion tokens."""
    prompts = [processor.apply_chat_template(build_prompt(r["question"], template), tokenize=False,
                                             add_generation_prompt=True) for r in rows]
    images = [r["image"] for r in rows]
    full = [p + t + "<|im_end|>\n" for p, t in zip(prompts, targets, strict=True)]
    enc = processor(text=full, images=images, padding=True, padding_side="right", return_tensors="pt")
    prompt_lens = processor(text=prompts, images=images, padding=True,
                            return_tensors="pt")["attention_mask"].sum(dim=1)
    labels = enc["input_ids"].clone()
    positions = torch.arange(labels.shape[1])[None, :]
    labels[(positions < prompt_lens[:, None]) | (enc["attention_mask"] == 0)] = -100
    enc["labels"] = labels
    return enc


def warm_start(model_dir: Path, train_split: Any, prompt_template: str, build: TinyModelBuild,
               seed: int) -> dict:
    """Supervised warm start on the TRAIN split; overwrites the weights in ``model_dir``.

    Returns a summary (steps, first/last loss, styles per question kind) that the model stage saves
    as ``warm_start.json``.
    """
    with torch_threads(WARM_START_THREADS):
        return _warm_start(Path(model_dir), train_split, prompt_template, build, seed)


#: Torch threads used by the warm start (see the module docstring on determinism).
WARM_START_THREADS = 1


def _warm_start(model_dir: Path, train_split: Any, prompt_template: str, build: TinyModelBuild,
                seed: int) -> dict:
    processor = image_only_processor_class().from_pretrained(model_dir)
    model = Qwen3VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32,
                                                            use_safetensors=True)
    rows = [dict(r) for r in train_split]
    if not rows:
        raise ConfigError("warm_start: the train split is empty; raise data.offline.n_items or lower "
                          "data.eval_fraction in params.yaml")
    plan = warm_start_targets(rows, build)
    torch.manual_seed(seed)
    rng, target_rng = random.Random(seed + 1), random.Random(seed + 2)
    guessed = well = 0
    optimizer = torch.optim.AdamW(model.parameters(), lr=build.warm_start_learning_rate, weight_decay=0.0)
    model.train()
    losses: list[float] = []
    order: list[int] = []
    for step in range(build.warm_start_steps):
        if len(order) < build.warm_start_batch_size:  # reshuffle epoch by epoch
            epoch = list(range(len(rows)))
            rng.shuffle(epoch)
            order.extend(epoch)
        idx, order = order[:build.warm_start_batch_size], order[build.warm_start_batch_size:]
        # Style and guess drawn afresh at each visit: properties of the kind, not of items to memorise.
        targets = []
        for i in idx:
            kind = plan.kinds[i]
            minority = DEFECTS[0] if plan.majority[kind] == WELL else WELL
            style = minority if target_rng.random() < build.minority_style_fraction else plan.majority[kind]
            guess = target_rng.random() < build.guess_fraction
            guessed, well = guessed + guess, well + (style == WELL)
            targets.append(completion_text(plan.guesses[kind] if guess else str(rows[i]["answer"]), style))
        batch = _batch(processor, [rows[i] for i in idx], targets, prompt_template)
        # Constant LR with a short linear warmup.
        for group in optimizer.param_groups:
            group["lr"] = build.warm_start_learning_rate * min(1.0, (step + 1) / 10)
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(round(loss.item(), 6))
    model.eval()
    model.save_pretrained(model_dir, safe_serialization=True)
    visits = build.warm_start_steps * build.warm_start_batch_size
    return {
        "steps": build.warm_start_steps,
        "train_items": len(rows),
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "well_formatted_target_share": round(well / visits, 6) if visits else None,
        "guessed_target_share": round(guessed / visits, 6) if visits else None,
        "kinds": plan.summary,
    }


# ------------------------------------------------------------------------------------------------
# The model stage's whole job for a built model
# ------------------------------------------------------------------------------------------------


def weights_digest(model_dir: Path) -> str:
    """``sha256:<hex>`` of the safetensors weights: the built model's "revision" in its pin."""
    digest = hashlib.sha256()
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        digest.update(path.read_bytes())
    return f"sha256:{digest.hexdigest()}"


def build_and_warm_start(model: ModelParams, prompt_template: str, train_split: Any, seed: int,
                         out_dir: Path) -> dict:
    """Build, warm-start and pin the tiny model into ``out_dir`` (the model stage and test fixtures).

    Writes ``warm_start.json`` and ``model_pin.json`` (kind ``built``, revision = weights digest);
    returns the pin.
    """
    if model.build is None:
        raise ConfigError(f"params.yaml: profiles.<profile>.model.build is null for model {model.id!r}: "
                         "only a model with a build section is built offline")
    questions = [str(q) for q in train_split["question"]]
    build_tiny_model(model.build, seed, out_dir, tokenizer_corpus(prompt_template, questions))
    summary = warm_start(out_dir, train_split, prompt_template, model.build, seed)
    atomic_write_json(Path(out_dir) / "warm_start.json", summary)
    return write_pin(out_dir, model_id=model.id, revision=weights_digest(out_dir), backend=model.backend,
                     kind=KIND_BUILT)
