"""The report's figures (matplotlib, Agg backend: no display needed; same inputs, same bytes)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend

from vlrl.metrics import RATES  # noqa: E402
from vlrl.report.analysis import rolling_mean  # noqa: E402

#: PNG metadata without the matplotlib version, so the committed figure does not change with it.
_METADATA = {"Software": None}


def plot_before_after(base: dict, post: dict, path: Path) -> Path:
    """Bars of the paired rates before and after, with their 95% Wilson intervals."""
    rates = [r for r in RATES if r.paired and r.key in base and r.key in post]
    fig, ax = plt.subplots(figsize=(8, 3.8), dpi=110)
    width = 0.38
    for offset, (metrics, name, colour) in enumerate(((base, "baseline", "#8c8c8c"), (post, "after GSPO", "#1f77b4"))):
        xs = [i + (offset - 0.5) * width for i in range(len(rates))]
        values = [metrics[r.key] for r in rates]
        lows = [metrics[r.key] - metrics[f"{r.key}_ci95_low"] for r in rates]
        highs = [metrics[f"{r.key}_ci95_high"] - metrics[r.key] for r in rates]
        ax.bar(xs, values, width, label=name, color=colour, yerr=[lows, highs], capsize=3)
    ax.set_xticks(range(len(rates)), [r.label.replace(" (", "\n(") for r in rates], fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("rate (95% Wilson CI)")
    ax.legend(fontsize=8)
    ax.set_title(f"Held-out before/after (n = {base.get('n')})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, metadata=_METADATA)
    plt.close(fig)
    return path


def plot_training(curves: dict[str, Sequence[tuple[float, float]]], window: int, path: Path) -> Path:
    """Training curves, one panel per group, each series with its trailing ``window``-step mean.

    ``curves``: name -> (step, value) pairs; panels: the weighted reward; its format and correctness parts;
    the format rate and the share of groups with zero reward variance (no learning signal).
    """
    panels = [("weighted reward", ("reward",)),
              ("reward parts (unweighted)", ("reward_format", "reward_correctness")),
              ("shares", ("format_rate", "frac_reward_zero_std"))]
    panels = [(title, [n for n in names if curves.get(n)]) for title, names in panels]
    panels = [(title, names) for title, names in panels if names]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.4 * len(panels)), dpi=110, sharex=True, squeeze=False)
    for ax, (title, names) in zip(axes[:, 0], panels, strict=True):
        for colour, name in zip(("#1f77b4", "#d62728", "#2ca02c"), names, strict=False):
            steps, values = zip(*curves[name], strict=True)
            ax.plot(steps, values, color=colour, alpha=0.3, linewidth=0.8)
            ax.plot(steps, rolling_mean(values, window), color=colour, linewidth=1.6,
                    label=f"{name} ({window}-step mean)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    axes[-1, 0].set_xlabel("training step")
    fig.tight_layout()
    fig.savefig(path, metadata=_METADATA)
    plt.close(fig)
    return path
