"""TRL 1.15 on a CPU: a plain-torch path for the fused LM head that scores completions.

TRL 1.15's ``GRPOTrainer`` computes completion log-probabilities through
``trl.trainer.utils._ChunkedLogProbFunction``, whose only implementation is a Triton kernel
(``trl/kernels/chunked_logprob.py``). Without Triton (every CPU install) that name is ``None`` and
training fails with ``'NoneType' object has no attribute 'apply'``. :func:`ensure_trl_logprob_kernel`
puts a dispatcher there that keeps the Triton kernel for CUDA/XPU tensors and runs
:func:`chunked_logprob_torch` for the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from vlrl.errors import EnvironmentProblem

#: The TRL release whose private kernel this module replaces (pyproject.toml pins it).
PATCHED_TRL_VERSION = "1.15.0"


def chunked_logprob_torch(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                          targets: torch.Tensor, temperature: float, chunk_size: int,
                          final_logit_softcapping: float | None = None, logit_scale: float = 1.0,
                          outputs: Sequence[str] = ("entropy",)) -> tuple[torch.Tensor | None, ...]:
    """Plain-torch twin of TRL's Triton ``ChunkedLogProbFunction`` (``trl/kernels/chunked_logprob.py``).

    TRL 1.15's ``GRPOTrainer`` scores completions through a fused LM head whose only implementation is a
    Triton kernel (``trl.trainer.utils._ChunkedLogProbFunction``); without Triton (every CPU install)
    that name is ``None`` and training fails with ``'NoneType' object has no attribute 'apply'``. Same
    transform as the kernel's ``_transform`` (``z * logit_scale``, optional tanh soft-cap, ``/ temperature``),
    same outputs (log-probs, entropy, log sum p^2, mean logit, target-is-argmax), logits materialised
    (fine for CPU-sized vocabularies); autograd gives the gradients. ``hidden``: (N, H), ``weight``:
    (V, H), ``targets``: (N,). ``chunk_size`` is unused (kept for the signature).

    >>> h, w = torch.eye(2), torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    >>> logp, ent, *_ = chunked_logprob_torch(h, w, None, torch.tensor([0, 2]), 1.0, 8)
    >>> [round(x, 4) for x in logp.tolist()]
    [-0.2395, -2.2395]
    """
    z = hidden.float() @ weight.float().t()
    if bias is not None:
        z = z + bias.float()
    z = z * logit_scale
    if final_logit_softcapping is not None:
        z = final_logit_softcapping * torch.tanh(z / final_logit_softcapping)
    z = z / temperature
    log_z = torch.logsumexp(z, dim=-1)
    logprobs = z.gather(-1, targets[:, None]).squeeze(-1) - log_z
    probs = torch.softmax(z, dim=-1)
    entropy = log_z - (probs * z).sum(-1) if "entropy" in outputs else None
    with torch.no_grad():  # the kernel marks these non-differentiable
        log_sum_sq = torch.log((probs * probs).sum(-1)) if "log_sum_sq_probs" in outputs else None
        mean_logits = z.mean(-1) if "mean_logits" in outputs else None
        is_top1 = z.argmax(-1) == targets if "is_top1" in outputs else None  # first maximum, as the kernel
    return logprobs, entropy, log_sum_sq, mean_logits, is_top1


class _ChunkedLogProbDispatch:
    """``.apply`` like TRL's autograd Function: the Triton kernel on CUDA/XPU when present, else torch."""

    def __init__(self, triton_function: Any) -> None:
        self.triton_function = triton_function

    def apply(self, hidden: torch.Tensor, *args: Any) -> tuple[torch.Tensor | None, ...]:
        if self.triton_function is not None and hidden.device.type in ("cuda", "xpu"):
            return self.triton_function.apply(hidden, *args)
        return chunked_logprob_torch(hidden, *args)


def ensure_trl_logprob_kernel() -> None:
    """Give TRL's fused LM head a non-CUDA path (see :func:`chunked_logprob_torch`); idempotent.

    Call only when training off CUDA: on CUDA, TRL's own kernel (or Unsloth's fused head) stays as is.
    Written against TRL :data:`PATCHED_TRL_VERSION`; another version refuses with one line rather than
    patching a function whose signature may have changed.
    """
    import trl
    from trl.trainer import utils as trl_utils

    if trl.__version__ != PATCHED_TRL_VERSION:
        raise EnvironmentProblem(
            f"trl {trl.__version__} is installed, but vlrl's CPU path patches TRL {PATCHED_TRL_VERSION}'s "
            f"log-prob kernel; install the pinned version (`make install`) or train on CUDA")
    current = getattr(trl_utils, "_ChunkedLogProbFunction", None)
    if not isinstance(current, _ChunkedLogProbDispatch):
        trl_utils._ChunkedLogProbFunction = _ChunkedLogProbDispatch(current)
