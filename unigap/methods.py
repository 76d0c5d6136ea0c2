"""`unigap table`: loop runs of several training seeds -> one row per recipe, in the shape of the
paper's Table 1 (Gen / Und win rate / NU), with the mean over seeds and its 95% interval.

Pure functions over the JSON that `unigap loop --json` writes; nothing here runs a model.

A run's result is its SHIPPED model: the last round the gate promoted (round 0, the starting
model, when none was). That is what the loop hands on, and it was chosen on `val`, so the
held-out figures reported for it are not selected on.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from unigap.config import first_defaults

# The required outcome, after the rounds, on held-out prompts (mean over seeds).
TARGET = {"nu_rel_drop": 0.30, "gen_gain": 0.10, "und_max_drop": 0.02}


FLAGS = {"judge_mode": "mode"}  # config fields whose `unigap loop` flag has another name


def _flat(config: dict) -> dict:
    """A loop's settings in one level, the trainer's under `train.`."""
    return {
        **{k: v for k, v in config.items() if k != "train"},
        **{f"train.{k}": v for k, v in config["train"].items()},
    }


def recipe(config: dict) -> str:
    """What distinguishes a recipe: the `unigap loop` flags of its settings that differ from the
    FIRST defaults (unigap/config.py), the training seed left out. Against those, a row keeps its
    name when a default changes; to run it, put `$FIRST` (docs/findings.md) before its flags."""
    defaults = _flat(first_defaults())
    flags = [f"--method {config['method']}"]
    for k, v in sorted(_flat(config).items()):
        if k in ("method", "seed", "train.seed") or defaults.get(k) == v:
            continue
        name = FLAGS.get(k, k.split(".")[-1].replace("_", "-"))
        flags.append((f"--{name}" if v else f"--no-{name}") if isinstance(v, bool) else f"--{name} {v}")
    return " ".join(flags)


def shipped(rounds: list[dict]) -> dict:
    """The last promoted round (round 0 when the gate promoted none)."""
    return [r for r in rounds if r["round"] == 0 or r["promoted"]][-1]


def mean_ci(values, level: float = 0.95, bounds: tuple[float, float] | None = None) -> dict:
    """Mean and Student-t interval over seeds (a single seed has no interval), clipped to
    `bounds` for a figure that cannot leave them (a share stays within [0, 1])."""
    x = np.asarray([v for v in values if v is not None], dtype=float)
    if len(x) == 0:
        return {"mean": None, "ci": [None, None], "n": 0}
    m = float(x.mean())
    if len(x) < 2:
        return {"mean": m, "ci": [None, None], "n": 1}
    half = float(stats.t.ppf((1 + level) / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    lo, hi = (m - half, m + half) if bounds is None else (max(bounds[0], m - half), min(bounds[1], m + half))
    return {"mean": m, "ci": [lo, hi], "n": int(len(x))}


def run_figures(result: dict) -> dict:
    """One run: start vs shipped model on held-out prompts, and what changed."""
    rounds = result["rounds"]
    start, final = rounds[0], shipped(rounds)
    wins = [r["win_rate"] for r in rounds[1:] if r["promoted"] and r["win_rate"] is not None]
    last = rounds[-1]
    return {
        "seed": result["config"]["seed"],
        "rounds": len(rounds) - 1,
        "shipped_round": final["round"],
        "gen_start": start["gen_acc"],
        "gen": final["gen_acc"],
        "gen_gain": final["gen_acc"] - start["gen_acc"],
        "nu_start": start["nu"],
        "nu": final["nu"],
        "nu_rel_drop": (start["nu"] - final["nu"]) / start["nu"] if start["nu"] else 0.0,
        "und_start": start["und_acc"],
        "und": final["und_acc"],
        "und_drop": start["und_acc"] - final["und_acc"],
        "win_rate": float(np.mean(wins)) if wins else None,
        "diversity_ratio": final["diversity"] / start["diversity"] if start["diversity"] else None,
        "novel_gen_start": (start.get("novel") or {}).get("gen_acc"),
        "novel_gen_last": (last.get("novel") or {}).get("gen_acc"),
        "by_category_start": start["by_category"],
        "by_category": final["by_category"],
        "gen_by_round": [r["gen_acc"] for r in rounds[1:]],  # every round's model, promoted or not
    }


FIGURES = (
    "gen_start",
    "gen",
    "gen_gain",
    "nu_start",
    "nu",
    "nu_rel_drop",
    "und_start",
    "und",
    "und_drop",
    "win_rate",
    "diversity_ratio",
    "novel_gen_start",
    "novel_gen_last",
)
SHARES = {"gen_start", "gen", "nu_start", "nu", "und_start", "und", "win_rate", "novel_gen_start", "novel_gen_last"}


def method_table(results: list[dict]) -> list[dict]:
    """Runs grouped by recipe; each figure's mean and 95% interval over the group's seeds."""
    groups: dict[str, list[dict]] = {}
    for res in results:
        groups.setdefault(recipe(res["config"]), []).append(run_figures(res))
    rows = []
    for name, runs in groups.items():
        seeds = sorted(r["seed"] for r in runs)
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"recipe {name!r} has the same seed twice ({seeds}): pass each run once")
        row = {"recipe": name, "seeds": seeds, "runs": runs}
        row |= {f: mean_ci([r[f] for r in runs], bounds=(0.0, 1.0) if f in SHARES else None) for f in FIGURES}
        # what the training recipe does, the gate left out: round k's model over the seeds that ran it
        depth = max(len(r["gen_by_round"]) for r in runs)
        row["gen_by_round"] = [
            mean_ci([r["gen_by_round"][k] for r in runs if len(r["gen_by_round"]) > k], bounds=(0.0, 1.0))
            for k in range(depth)
        ]
        cats = runs[0]["by_category"]
        row["by_category"] = {
            c: {
                "start": mean_ci([r["by_category_start"][c] for r in runs], bounds=(0.0, 1.0)),
                "shipped": mean_ci([r["by_category"][c] for r in runs], bounds=(0.0, 1.0)),
            }
            for c in cats
        }
        row["target_met"] = (
            row["nu_rel_drop"]["mean"] >= TARGET["nu_rel_drop"]
            and row["gen_gain"]["mean"] >= TARGET["gen_gain"]
            and row["und_drop"]["mean"] <= TARGET["und_max_drop"]
        )
        rows.append(row)
    return rows


def pct_ci(m: dict, signed: bool = False, interval: bool = True) -> str:
    """A mean_ci as percent, e.g. "+3.2 [1.0, 5.4]" (the start model's figures need no interval:
    every seed starts from the same model and is evaluated on the same seeds)."""
    if m["mean"] is None:
        return "-"
    s = f"{100 * m['mean']:+.1f}" if signed else f"{100 * m['mean']:.1f}"
    if interval and m["ci"][0] is not None:
        s += f" [{100 * m['ci'][0]:.1f}, {100 * m['ci'][1]:.1f}]"
    return s


def markdown(rows: list[dict]) -> str:
    """The table as Markdown, one line per recipe (means over seeds, 95% intervals in brackets),
    then each recipe's accuracy per category, on `novel` prompts, and the diversity it kept, then
    every round's generation accuracy whether the gate promoted it or not."""
    head = (
        "| recipe | seeds | Gen % start -> shipped | Gen gain, points | NU % start -> shipped | NU relative drop % "
        "| Und % (rendered) drop, points | Und win rate % | target met |\n|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"| `{r['recipe']}` | {len(r['seeds'])} | {pct_ci(r['gen_start'], interval=False)} -> {pct_ci(r['gen'])} | {pct_ci(r['gen_gain'], True)} "
            f"| {pct_ci(r['nu_start'], interval=False)} -> {pct_ci(r['nu'])} | {pct_ci(r['nu_rel_drop'], True)} | {pct_ci(r['und_drop'], True)} "
            f"| {pct_ci(r['win_rate'])} | {'yes' if r['target_met'] else 'no'} |"
        )
    cats = list(rows[0]["by_category"]) if rows else []
    lines += [
        "",
        "| recipe | " + " | ".join(f"{c} gen %" for c in cats) + " | novel gen % (last round) | diversity kept % |",
        "|---|" + "---|" * (len(cats) + 2),
    ]
    for r in rows:
        per = [
            f"{pct_ci(r['by_category'][c]['start'], interval=False)} -> {pct_ci(r['by_category'][c]['shipped'])}"
            for c in cats
        ]
        novel = f"{pct_ci(r['novel_gen_start'], interval=False)} -> {pct_ci(r['novel_gen_last'])}"
        lines.append(f"| `{r['recipe']}` | " + " | ".join(per) + f" | {novel} | {pct_ci(r['diversity_ratio'])} |")
    depth = max((len(r["gen_by_round"]) for r in rows), default=0)
    lines += [
        "",
        "| recipe (every round's model, promoted or not) | "
        + " | ".join(f"round {k + 1} gen %" for k in range(depth))
        + " |",
        "|---|" + "---|" * depth,
    ]
    for r in rows:
        cells = [pct_ci(m) for m in r["gen_by_round"]] + ["-"] * (depth - len(r["gen_by_round"]))
        lines.append(f"| `{r['recipe']}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)
