"""PNG plots for bench reports (matplotlib, headless)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(results: dict[str, list[dict]], path: Path) -> None:
    """Top-1 on all seen classes after each step, mean and std band over seeds."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    colours = plt.get_cmap("tab10").colors
    for i, (method, runs) in enumerate(results.items()):
        acc = np.array([[s["top1"] * 100 for s in r["steps"]] for r in runs])
        seen = np.cumsum([len(s["classes"]) for s in runs[0]["steps"]])
        colour = colours[i % 10]  # colour and line style together tell 30 methods apart
        ax.plot(seen, acc.mean(0), marker="o", label=method, color=colour,
                linestyle=("-", "--", ":")[(i // 10) % 3])
        ax.fill_between(seen, acc.mean(0) - acc.std(0), acc.mean(0) + acc.std(0), alpha=0.08,
                        color=colour)
    ax.set_xlabel("classes seen")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusions(results: dict[str, list[dict]], path: Path) -> None:
    """Final-step confusion matrix of each method's first run, rows normalised."""
    plt = _pyplot()
    n = len(results)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    for ax, (method, runs) in zip(axes.flat, results.items()):
        m = np.array(runs[0]["confusion_matrix"], dtype=float)
        m = m / np.maximum(m.sum(1, keepdims=True), 1)
        ax.imshow(m, vmin=0, vmax=1, cmap="viridis")
        ax.set_title(method, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle("true class (rows, in learning order) vs predicted", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
