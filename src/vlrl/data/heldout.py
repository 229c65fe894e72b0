"""The seeded held-out split: stratified, disjoint by pid, stable when rows are added.

Each pid gets a uniform number ``u = SHA-256(f"{seed}:{pid}") / 2**256`` in [0, 1). Within each
stratum (question_type, answer_type), the ``round(eval_fraction * n_stratum)`` rows with the smallest
``u`` go to eval, the rest to train. Hence:

- deterministic: the split depends only on (seed, pids, strata, eval_fraction), not on row order or
  PYTHONHASHSEED;
- disjoint: pids are unique after the transform, and each row lands in exactly one split;
- stratified: every stratum's eval count is within 0.5 of ``eval_fraction * n_stratum``;
- stable: a pid's ``u`` never changes, so adding ``k`` rows to a stratum moves at most ``k + 1``
  existing rows of that stratum across the boundary: the old rows in eval before and after are both
  prefixes of the same ranking of old rows, whose lengths differ by at most ``max(k, ceil(k *
  eval_fraction) + 1)``.

Pure module: imports neither torch nor DVC.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Hashable, Sequence


def pid_uniform(seed: int, pid: str) -> float:
    """The pid's uniform number in [0, 1) for this seed.

    >>> 0 <= pid_uniform(3407, "1") < 1, pid_uniform(3407, "1") == pid_uniform(3407, "1")
    (True, True)
    """
    digest = hashlib.sha256(f"{seed}:{pid}".encode()).digest()
    return int.from_bytes(digest, "big") / 2**256


def eval_quota(n_stratum: int, eval_fraction: float) -> int:
    """How many rows of a stratum go to eval: ``round(eval_fraction * n)`` (Python's round).

    >>> eval_quota(10, 0.3), eval_quota(1, 0.3), eval_quota(2, 0.3)
    (3, 0, 1)
    """
    return round(eval_fraction * n_stratum)


def assign_eval(pids: Sequence[str], strata: Sequence[Hashable], seed: int, eval_fraction: float) -> set[str]:
    """The pids that go to eval; every other pid goes to train.

    >>> sorted(assign_eval(["1", "2", "3", "4"], ["a", "a", "b", "b"], seed=0, eval_fraction=0.5))
    ['2', '4']
    """
    if len(set(pids)) != len(pids):
        raise ValueError("split: pids must be unique (the transform drops duplicate pids first)")
    by_stratum: dict[Hashable, list[str]] = defaultdict(list)
    for pid, stratum in zip(pids, strata, strict=True):
        by_stratum[stratum].append(pid)
    held_out: set[str] = set()
    for members in by_stratum.values():
        ranked = sorted(members, key=lambda pid: (pid_uniform(seed, pid), pid))
        held_out.update(ranked[:eval_quota(len(members), eval_fraction)])
    return held_out
