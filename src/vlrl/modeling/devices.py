"""Which device a run uses, and how many CPU threads torch may use while it runs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from vlrl.config import ModelParams
from vlrl.errors import EnvironmentProblem


def resolve_device(model: ModelParams) -> str:
    """``cpu`` or ``cuda`` for ``model.device`` (``auto`` = cuda when available).

    >>> from vlrl.config import ModelParams
    >>> resolve_device(ModelParams("transformers", "x", None, False, 1024, "cpu"))
    'cpu'
    """
    if model.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if model.device == "cuda" and not torch.cuda.is_available():
        raise EnvironmentProblem("params.yaml: profiles.<profile>.model.device = 'cuda' but no CUDA device is "
                           "visible; use device: cpu (or auto) with backend: transformers")
    return model.device


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch threads and restore the previous count (None: no change).

    CPU runs pin the count (``cpu_threads`` in params.yaml): results then do not depend on the core
    count (reduction order), and on a small model two threads gain little while a busy neighbour
    process makes them wait on each other (about 10x slower steps, measured on 2 cores).

    >>> before = torch.get_num_threads()
    >>> with torch_threads(1):
    ...     torch.get_num_threads()
    1
    >>> torch.get_num_threads() == before
    True
    """
    previous = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)

