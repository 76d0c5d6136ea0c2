"""PNG charts for reports (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_score(report: dict, path: str | Path) -> None:
    """NU (own judge) against generation and understanding accuracy, per category and tier."""
    groups = list(report["by_category"].items()) + [(f"tier {k}", v) for k, v in report["by_tier"].items()]
    groups.append(("overall", report["overall"]))
    names = [g for g, _ in groups]
    x = np.arange(len(groups))
    fig, ax = plt.subplots(figsize=(max(8, len(groups) * 1.1), 4.2))
    series = (("nu", "NU (own judge rejects)"), ("gen_acc", "generation acc (external)"), ("und_acc", "judge agrees with external"))
    for i, (key, label) in enumerate(series):
        vals = [100 * (r[key] or 0) for _, r in groups]
        ax.bar(x + (i - 1) * 0.27, vals, 0.27, label=label)
    nu_lo = [100 * r["nu_ci"][0] for _, r in groups]
    nu_hi = [100 * r["nu_ci"][1] for _, r in groups]
    nu = [100 * r["nu"] for _, r in groups]
    ax.errorbar(x - 0.27, nu, yerr=[np.subtract(nu, nu_lo), np.subtract(nu_hi, nu)], fmt="none", ecolor="black", capsize=3)
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title("The internal gap: NU with 95% CI, generation and understanding accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def image_grid(images: np.ndarray, labels: list[str], path: str | Path, cols: int = 8, scale: int = 3) -> None:
    """A grid of small images with their prompts underneath."""
    rows = (len(images) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * 1.9), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, im, label in zip(axes.flat, images, labels):
        ax.imshow(im, interpolation="nearest")
        ax.set_title(label, fontsize=5)
    fig.tight_layout()
    fig.savefig(path, dpi=80 * scale // 2)
    plt.close(fig)
