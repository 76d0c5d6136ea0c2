"""docs/results.md, generated from results/: `python -m unigap.results_doc` (what `make results` runs).

Supports: a results folder holding one sub-folder per recipe, `results/<recipe>/s<seed>.json`, each
the JSON `unigap loop --recipe recipes/<recipe>.yaml --seed <seed> --json ...` wrote, and
results/by-depth/ (`depth_lines`); other files and folders under results/ (controls, audits,
rescoring) are not loop runs and are left out. Every row
names its recipe file; a recipe file with no results folder is listed as not yet measured.

Assumes (and checks, raising ValueError with the file): the runs of a folder share one config, the
seed aside, and a file's name says its config's seed. The tables are `unigap.methods.markdown`'s,
the same as `unigap table` writes, so one function computes them.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import asdict
from pathlib import Path

from unigap import world
from unigap.co_improvement import pooled
from unigap.config import SAMPLER, LoopConfig
from unigap.methods import markdown, mean_ci, method_table, pct_ci, shipped

ROOT = Path(__file__).resolve().parent.parent
RUN_FILE = re.compile(r"s(\d+)\.json")
SEED_IN_NAME = re.compile(r"(?:^|-)s(\d+)\.json$")
FIRST_ROW = "default"  # what `unigap loop` runs leads the tables; the rest follow by name
# A loop JSON names its sampler's noise; one without the field was sampled before the name was recorded,
# from a CPU generator per candidate drawing all its noise up front.
EARLIER_NOISE = "per-candidate streams"


def _unseeded(config: dict) -> dict:
    """A run's full settings (a JSON written before a setting existed meant its FIRST default, as
    `LoopConfig.from_dict` reads it) with the training seed left out."""
    full = asdict(LoopConfig.from_dict(config))
    return {
        **{k: v for k, v in full.items() if k != "seed"},
        "train": {k: v for k, v in full["train"].items() if k != "seed"},
    }


def load_runs(files: list[Path]) -> list[dict]:
    """The loop JSONs `files`, each checked to be one, to say its seed in its name (`s<seed>` or
    `<anything>-s<seed>`) and to share the first's settings (the seed aside) and sampler."""
    runs = []
    for f in files:
        try:
            run = json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{f}: not JSON ({e})") from None
        if not isinstance(run, dict) or not {"config", "rounds"} <= run.keys():
            raise ValueError(f"{f}: not a `unigap loop --json` result (it needs config and rounds)")
        seed = int(SEED_IN_NAME.search(f.name)[1])
        if run["config"].get("seed") != seed:
            raise ValueError(f"{f}: its config's seed is {run['config'].get('seed')}, its name says {f.name}")
        if runs and _unseeded(run["config"]) != _unseeded(runs[0]["config"]):
            raise ValueError(f"{f}: its settings differ from {files[0].name}'s (one recipe per folder)")
        if runs and run.get("sampler") != runs[0].get("sampler"):
            raise ValueError(f"{f}: sampled by other noise than {files[0].name} (one sampler per folder)")
        runs.append(run)
    return runs


def recipe_runs(results: Path) -> dict[str, list[dict]]:
    """Each recipe's loop JSONs, `{name: [run, ...]}`, by seed, `default` first, then by name."""
    found = {}
    for folder in sorted(p for p in results.iterdir() if p.is_dir()):
        files = sorted((f for f in folder.iterdir() if RUN_FILE.fullmatch(f.name)), key=lambda f: int(f.name[1:-5]))
        if files:
            found[folder.name] = load_runs(files)
    return dict(sorted(found.items(), key=lambda kv: (kv[0] != FIRST_ROW, kv[0])))


CO_FILE = re.compile(r"co-improvement-s(\d+)\.json")


def _pooled_cells(reports: list[dict]) -> str:
    """Seeds' co-improvement reports as table cells: the pooled win rate with its interval, the
    disagreements, and the judges' mean agreement with the evaluator (start -> trained)."""
    both = pooled(reports)
    old, new = (sum(c[k] for c in reports) / len(reports) for k in ("agreement_old", "agreement_new"))
    lo, hi = both["win_rate_ci"]
    rate = "-" if both["win_rate"] is None else f"{100 * both['win_rate']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"
    return f"{rate} | {both['n_disagree']} | {100 * old:.1f} -> {100 * new:.1f}"


def co_improvement_lines(results: Path, by_recipe: dict[str, list[dict]]) -> list[str]:
    """The co-improvement table: each recipe folder's `co-improvement-s<seed>.json` files (`unigap
    co-improvement results/<recipe>/s<seed>.json --store ... --json ...`), per seed and pooled."""
    lines = []
    for name, runs in by_recipe.items():
        by_run = {r["run"]: r for r in runs}
        files = sorted((results / name).glob("co-improvement-s*.json"), key=lambda f: int(CO_FILE.fullmatch(f.name)[1]))
        reports = []
        for f in files:
            co = json.loads(f.read_text())
            seed = int(CO_FILE.fullmatch(f.name)[1])
            if co.get("run") not in by_run or by_run[co["run"]]["config"]["seed"] != seed:
                raise ValueError(f"{f}: measures no run of results/{name}/s{seed}.json")
            reports.append((seed, co))
        if not reports:
            continue
        per_seed = ", ".join(
            f"{100 * c['win_rate']:.1f} ({c['n_disagree']})" for _, c in reports if c["win_rate"] is not None
        )
        lines.append(
            f"| `recipes/{name}.yaml` | {', '.join(str(s) for s, _ in reports)} | {reports[0][1]['n_images']} "
            f"| {per_seed or '-'} | {_pooled_cells([c for _, c in reports])} |"
        )
    if not lines:
        return []
    return [
        "## Co-improvement: is the self-improved model a better judge?",
        "",
        (
            "As the paper measures it: the shipped model's judge against the starting model's judge, both on the "
            "starting model's held-out images (its round-0 evaluation); where the two disagree, the external "
            "evaluator decides. The win rate is the share of disagreements the shipped model's judge gets right "
            "(50: no change; the paper reports 58.4 for SFT). Pooled over seeds, with a 95% bootstrap interval over "
            "(seed, prompt) groups. Made by `unigap co-improvement results/<recipe>/sS.json --store <the run's "
            "store> --json results/<recipe>/co-improvement-sS.json`."
        ),
        "",
        "| recipe | seeds | images | win rate % per seed (disagreements) | pooled win rate % | disagreements "
        "| judge agrees with the evaluator % (start -> shipped) |",
        "|---|---|---|---|---|---|---|",
        *lines,
        "",
    ]


DEPTH_RUN = re.compile(r"L(\d+)-s(\d+)\.json")


def _json(f: Path, what: str) -> dict:
    """A JSON file the depth table needs (`what` says which command writes it)."""
    if not f.is_file():
        raise ValueError(f"{f}: missing ({what})")
    return json.loads(f.read_text())


def _cosines(dynamics: dict) -> str:
    """The matched pairs' mean cosine with its t-interval over the pairs (the cosine matrix's diagonal)."""
    c = mean_ci([row[i] for i, row in enumerate(dynamics["cosine_matrix"])])
    return f"{c['mean']:.4f} [{c['ci'][0]:.4f}, {c['ci'][1]:.4f}]"


def depth_lines(folder: Path) -> list[str]:
    """Co-improvement over model depth, from `folder` (results/by-depth): for each depth L, the
    default recipe's first round from the model grown to L layers (`L<L>-s<seed>.json`), that
    round's judge against the start's (`co-L<L>-s<seed>.json`) and the start's gradient cosines
    between the branches (`dynamics-L<L>.json`)."""
    if not folder.is_dir():
        return []
    depths = sorted({int(m[1]) for f in folder.iterdir() if (m := DEPTH_RUN.fullmatch(f.name))})
    lines = []
    for depth in depths:
        files = sorted(folder.glob(f"L{depth}-s*.json"), key=lambda f: int(DEPTH_RUN.fullmatch(f.name)[2]))
        runs = load_runs(files)
        reports = []
        for f, run in zip(files, runs):
            co = _json(folder / f"co-{f.name}", "its `unigap co-improvement --round 1`")
            if co.get("run") != run["run"] or co.get("final_round") != 1:
                raise ValueError(f"{folder / ('co-' + f.name)}: measures no first round of {f.name}")
            reports.append(co)
        dyn = _json(folder / f"dynamics-L{depth}.json", "its `unigap dynamics`")["before"]
        gen = [mean_ci([r["rounds"][k]["gen_acc"] for r in runs], bounds=(0.0, 1.0)) for k in (0, 1)]
        lines.append(
            f"| {depth} | {dyn['n_shared_parameters'] / 1e6:.2f} M | {len(runs)} "
            f"| {pct_ci(gen[0], interval=False)} -> {pct_ci(gen[1])} | {sum(r['rounds'][1]['promoted'] for r in runs)} "
            f"| {_pooled_cells(reports)} | {_cosines(dyn)} | {dyn['cos_gen_und_mismatched']:.4f} |"
        )
    if not lines:
        return []
    return [
        "## Co-improvement over model depth",
        "",
        (
            "Does a larger model co-improve where the shipped one does not? Each depth is the shipped model's "
            "language model grown to L layers and trained 800 more joint steps (`unigap grow --out runs/grown<L> "
            "--layers <L> --steps 800`; at 2 layers the same steps without growing, the control), then one round of "
            "the default recipe from it (`unigap loop --recipe recipes/default.yaml --model runs/grown<L> --rounds 1 "
            "--seed <S> --store runs/by-depth-L<L>-s<S> --json results/by-depth/L<L>-s<S>.json`). The win rate is that "
            "round's judge against its start's on the start's `test` images, promoted or not (`unigap "
            "co-improvement results/by-depth/L<L>-s<S>.json --store runs/by-depth-L<L>-s<S> --round 1 --json "
            "results/by-depth/co-L<L>-s<S>.json`), pooled over seeds with a 95% bootstrap interval over (seed, prompt) "
            "groups. The cosines are between per-sample gradients of the generation loss and the caption loss over "
            "the shared language model, for the same prompt and image (matched, with a t-interval over the 32 "
            "pairs) and for different ones (mismatched), on the start's own samples (`unigap dynamics --model "
            "runs/grown<L> --n-train 32 --json results/by-depth/dynamics-L<L>.json`)."
        ),
        "",
        "| layers | shared parameters | seeds | Gen % (test) start -> round 1 | promoted | win rate % "
        "| disagreements | judge agrees with the evaluator % (start -> round 1) | cos(gen, und) matched "
        "| mismatched |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *lines,
        "",
    ]


def _pool(pool: str) -> str:
    """A pool as the table says it, with what it means for the held-out figures."""
    if pool == "heldout+val":
        return "heldout+val (the evaluated texts)"
    if pool == "pool+val":
        return "pool+val (no test text)"
    if pool == "pool":
        return "pool (no val or test text)"
    return pool


MEASURED_ON = {
    "test": (
        "**Measured on `test`:** {n} prompts whose texts no loop pool, recipe choice or gate ever touched, drawn "
        "from the same distribution as the `pool` split the loop improves on (both are halves of `heldout`: "
        "prompts generation never saw in pretraining, understanding did). These are the headline figures."
    ),
    "heldout": (
        "**Measured on `heldout`, test-time improvement, not generalisation:** {n} prompts, recipes from before "
        "the test split. A recipe whose pool is `heldout+val` samples, judges and trains on the very texts it is "
        "measured on (never on their labels or renders): its gain says how far the loop improves the model on "
        "prompts it has practised. Recipes on the `train+heldout` pool practise them too, among {n_train} `train` "
        "texts."
    ),
}


def tables(by_recipe: dict[str, list[dict]], split: str) -> list[str]:
    """Table 1, per category and per round for the recipes that report `split`."""
    rows = []
    for name, runs in by_recipe.items():
        (row,) = method_table(runs)  # one folder, one config: one row
        rows.append({**row, "recipe": f"recipes/{name}.yaml"})
    n = len(world.split(split)) if split in world.SPLIT_NAMES else len(next(iter(by_recipe.values()))[0]["rounds"])
    configs = [LoopConfig.from_dict(r[0]["config"]) for r in by_recipe.values()]
    n_images = " or ".join(f"{n * k:,} ({n} x {k})" for k in sorted({c.eval_n for c in configs}))
    seeds = " or ".join(str(s) for s in sorted({c.eval_seed for c in configs}))
    headline, per_category, per_round = markdown(rows).split("\n\n")
    return [
        f"## Table 1 on `{split}`: generation, NU and understanding",
        "",
        MEASURED_ON.get(split, "**Measured on `{n}`.**").format(n=n, n_train=len(world.split("train"))),
        f"{n_images} images per evaluation, evaluation seed {seeds}.",
        "",
        headline,
        "",
        f"### Per category, `novel` prompts and diversity (`{split}`)",
        "",
        (
            "Generation accuracy per category (start -> shipped), on `novel` prompts (objects never seen in "
            "pretraining, by either branch: evaluated beside `heldout` only; the last round's model) and the sample "
            "diversity the shipped model kept."
        ),
        "",
        per_category,
        "",
        f"### Every round's model (`{split}`)",
        "",
        "Round k's model whether the gate promoted it or not: what the training recipe does, the gate left out.",
        "",
        per_round,
        "",
    ]


VAL_FIGURES = ("gen_acc", "nu", "und_acc")  # a split's figures that val_lines reports


def val_lines(on_test: dict[str, list[dict]]) -> list[str]:
    """Where recipes are chosen: each recipe that reports `test` (`on_test`), its start and shipped
    model on the gate's `val` texts, mean over seeds with its interval: for these recipes `val` is
    the one split a choice may look at."""
    lines = []
    for name, runs in on_test.items():
        start, final = [r["rounds"][0]["val"] for r in runs], [shipped(r["rounds"])["val"] for r in runs]
        share = {k: [mean_ci([v[k] for v in vals], bounds=(0.0, 1.0)) for vals in (start, final)] for k in VAL_FIGURES}
        cells = [f"{pct_ci(a, interval=False)} -> {pct_ci(b)}" for a, b in share.values()]
        lines.append(f"| `recipes/{name}.yaml` | {len(runs)} | {' | '.join(cells)} |")
    if not lines:
        return []
    return [
        "## Where recipes are chosen: the gate's `val` texts",
        "",
        (
            "The same runs on `val`, the texts the gate decides on: a recipe is chosen on these, and reported on "
            "`test`. Where the pool holds `val` (`pool+val`), these figures are test-time improvement, not "
            "generalisation; where it is `pool` alone, `val` is as unseen as `test`."
        ),
        "",
        "| recipe | seeds | Gen % start -> shipped | NU % start -> shipped | Und % (rendered) start -> shipped |",
        "|---|---|---|---|---|",
        *lines,
        "",
    ]


def render(results: Path = ROOT / "results", recipes: Path = ROOT / "recipes") -> str:
    """The whole of docs/results.md as text (deterministic: the same results give the same bytes)."""
    by_recipe = recipe_runs(results)
    by_split: dict[str, dict] = {}
    for name, runs in by_recipe.items():
        by_split.setdefault(LoopConfig.from_dict(runs[0]["config"]).reported_on, {})[name] = runs
    order = sorted(by_split, key=lambda s: (s != "test", s))  # the headline split first

    recipe_lines = [
        "| recipe | method | pool the loop samples | measured on | rounds x epochs | seeds | sampler noise |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, runs in by_recipe.items():
        cfg = LoopConfig.from_dict(runs[0]["config"])
        seeds = ", ".join(str(r["config"]["seed"]) for r in runs)
        recipe_lines.append(
            f"| `recipes/{name}.yaml` | {cfg.method} | {_pool(cfg.pool)} | {cfg.reported_on} "
            f"| {cfg.rounds} x {cfg.train.epochs} | {seeds} | {runs[0].get('sampler', EARLIER_NOISE)} |"
        )
    unmeasured = sorted(p.stem for p in recipes.glob("*.yaml") if p.stem not in by_recipe) if recipes.is_dir() else []
    out = [
        "# Results",
        "",
        (
            "<!-- Generated by `make results` (python -m unigap.results_doc) from results/<recipe>/s<seed>.json; "
            "do not edit. -->"
        ),
        "",
        (
            "Each row is one recipe file, run once per training seed (`unigap loop --recipe recipes/<recipe>.yaml "
            "--seed S --json results/<recipe>/sS.json`); the figures are the mean over its seeds with a 95% "
            "t-interval in brackets. Each run reports its **shipped** model, the last round the gate promoted on "
            "`val` (the starting model when it promoted none), against the starting model. Generation is scored "
            "by the world's exact external evaluator, understanding on rendered pairs; NU is the non-unification "
            "score by the model's own judge. Each recipe's table is the split it reports (`eval_prompts`)."
        ),
        "",
        (
            f"**Sampler noise:** `{SAMPLER}` draws each candidate's Gumbel noise on the model's device, one step "
            "at a time, from a hash of (candidate, step, code); runs marked `"
            + EARLIER_NOISE
            + "` drew it from a CPU generator per candidate, all up front. Both sample the same distribution, "
            "but not the same images: rerunning such a recipe today gives other figures of the same spread, "
            "not its digits."
        ),
        "",
        "## Recipes",
        "",
        *recipe_lines,
        "",
        *(line for split in order for line in tables(by_split[split], split)),
        *val_lines(by_split.get("test", {})),
        *co_improvement_lines(results, by_recipe),
        *depth_lines(results / "by-depth"),
    ]
    if unmeasured:
        out += ["## Not yet measured", "", *(f"- `recipes/{name}.yaml`" for name in unmeasured), ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unigap.results_doc", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--results", type=Path, default=ROOT / "results", help="folder of results/<recipe>/s<seed>.json"
    )
    parser.add_argument("--recipes", type=Path, default=ROOT / "recipes", help="folder of <recipe>.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results.md", help="where to write the Markdown")
    args = parser.parse_args(argv)
    if not args.results.is_dir():
        parser.exit(2, f"error: --results {args.results} is not a folder\n")
    try:
        text = render(args.results, args.recipes)
    except ValueError as e:
        parser.exit(2, f"error: {e}\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
