"""PNG charts for reports (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from unigap.config import LoopConfig  # noqa: E402


def save(fig, path: str | Path, dpi: int = 110) -> Path:
    """Lay out, write and close a figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return Path(path)


def plot_score(report: dict, path: str | Path) -> None:
    """NU (own judge) against generation and understanding accuracy, per category and tier."""
    groups = list(report["by_category"].items()) + [(f"tier {k}", v) for k, v in report["by_tier"].items()]
    groups.append(("overall", report["overall"]))
    names = [g for g, _ in groups]
    x = np.arange(len(groups))
    fig, ax = plt.subplots(figsize=(max(8, len(groups) * 1.1), 4.2))
    series = (
        ("nu", "NU (own judge rejects)"),
        ("gen_acc", "generation acc (external)"),
        ("und_acc", "judge agrees with external"),
    )
    for i, (key, label) in enumerate(series):
        vals = [np.nan if r[key] is None else 100 * r[key] for _, r in groups]  # absent (no evaluator): no bar, not 0
        absent = all(np.isnan(vals))
        ax.bar(x + (i - 1) * 0.27, vals, 0.27, label=label + (": absent (no external evaluator)" if absent else ""))
    nu_lo = [100 * r["nu_ci"][0] for _, r in groups]
    nu_hi = [100 * r["nu_ci"][1] for _, r in groups]
    nu = [100 * r["nu"] for _, r in groups]
    ax.errorbar(
        x - 0.27, nu, yerr=[np.subtract(nu, nu_lo), np.subtract(nu_hi, nu)], fmt="none", ecolor="black", capsize=3
    )
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title("The internal gap: NU with 95% CI, generation and understanding accuracy")
    save(fig, path)


def image_grid(images: np.ndarray, labels: list[str], path: str | Path, cols: int = 8, scale: int = 3) -> None:
    """A grid of small images with their prompts underneath."""
    rows = (len(images) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * 1.9), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, im, label in zip(axes.flat, images, labels):
        ax.imshow(im, interpolation="nearest")
        ax.set_title(label, fontsize=5)
    save(fig, path, dpi=80 * scale // 2)


def plot_rounds(result: dict, folder: str | Path) -> list[Path]:
    """The loop's report: NU per round, generation vs understanding per round, categories before/after."""
    folder = Path(folder)
    rows = result["rounds"]
    cfg = LoopConfig.from_dict(result["config"])
    split = cfg.reported_on
    r = [row["round"] for row in rows]
    paths = []

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    nu = np.array([row["nu"] for row in rows]) * 100
    lo = np.array([row["nu_ci"][0] for row in rows]) * 100
    hi = np.array([row["nu_ci"][1] for row in rows]) * 100
    ax.plot(r, nu, "o-")
    ax.fill_between(r, lo, hi, alpha=0.2)
    for row in rows[1:]:
        ax.annotate(
            "promoted" if row["promoted"] else "rejected",
            (row["round"], row["nu"] * 100),
            fontsize=7,
            xytext=(3, 5),
            textcoords="offset points",
        )
    ax.set_xlabel("round")
    ax.set_ylabel(f"NU % ({split}, 95% CI)")
    ax.set_xticks(r)
    ax.set_title("Non-unification score per round")
    paths.append(save(fig, folder / "nu_per_round.png"))

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for key, style, label, why in (
        ("gen_acc", "o-", f"generation acc on {split} (external evaluator)", "no external evaluator"),
        ("und_acc", "s-", "understanding acc (rendered pairs)", "prompts outside the shapes world"),
        ("und_acc_own", "^--", "judge agrees with evaluator (own images)", "no external evaluator"),
    ):
        vals = [np.nan if row[key] is None else 100 * row[key] for row in rows]  # absent: no point, not 0
        ax.plot(r, vals, style, label=label + (f": absent ({why})" if all(np.isnan(vals)) else ""))
    # The gate's val texts are in the default pool: beside the reported split, generation on texts
    # the loop trains on shows how much of a gain is test-time improvement rather than transfer.
    val = [(row.get("val") or {}).get("gen_acc") for row in rows]
    if split != "val" and all(v is not None for v in val):
        whose = "texts in the pool" if "val" in cfg.pool.split("+") else "the gate's split"
        ax.plot(r, [100 * v for v in val], "o:", label=f"generation acc on val ({whose}, external)")
    ax.set_xlabel("round")
    ax.set_ylabel(f"% ({split})")
    ax.set_xticks(r)
    ax.set_ylim(0, 105)
    ax.legend(fontsize=7)
    ax.set_title("Generation vs understanding per round")
    paths.append(save(fig, folder / "gen_vs_und_per_round.png"))

    before, after = rows[0]["by_category"], rows[-1]["by_category"]
    cats = list(before)
    x = np.arange(len(cats))
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    ax.bar(x - 0.2, [100 * before[c] for c in cats], 0.4, label="round 0")
    ax.bar(x + 0.2, [100 * after.get(c, 0) for c in cats], 0.4, label=f"round {rows[-1]['round']}")
    ax.set_xticks(x, cats, rotation=20)
    ax.set_ylabel(f"generation acc % ({split}, external)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8)
    ax.set_title("Per category, before and after")
    paths.append(save(fig, folder / "categories_before_after.png"))
    return paths


def plot_dynamics(results: dict[str, dict], path: str | Path) -> None:
    """Predicted vs observed one-step change per branch, and the gen-vs-und gradient cosines."""
    names = list(results)
    fig, axes = plt.subplots(len(names), 3, figsize=(12, 3.6 * len(names)), squeeze=False)
    for row, name in zip(axes, names):
        r = results[name]
        for ax, b in zip(row[:2], ("gen", "und")):
            p, o = np.array(r[f"{b}_predicted"]), np.array(r[f"{b}_observed"])
            ax.scatter(p, o, s=8, alpha=0.6)
            lim = [min(p.min(), o.min()), max(p.max(), o.max())]
            ax.plot(lim, lim, "k--", lw=0.8)
            corr = r[f"{b}_correlation"]
            ax.set_title(
                f"{name}: {'generation' if b == 'gen' else 'understanding'} branch (r = {corr:.2f})"
                if corr is not None
                else name,
                fontsize=9,
            )
            ax.set_xlabel("eNTK prediction of delta log p")
            ax.set_ylabel("observed delta log p")
        im = row[2].imshow(np.array(r["cosine_matrix"]), cmap="coolwarm", vmin=-1, vmax=1)
        row[2].set_title(f"cos(grad gen_i, grad und_j): matched {r['cos_gen_und_matched']:.2f}", fontsize=9)
        row[2].set_xlabel("understanding sample j")
        row[2].set_ylabel("generation sample i")
        fig.colorbar(im, ax=row[2], fraction=0.046)
    fig.suptitle("One generation step moves both branches: empirical NTK over the shared LM", fontsize=10)
    save(fig, path, dpi=100)
