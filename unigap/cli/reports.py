"""`unigap table`, `audit`, `co-improvement`: compare loop recipes over seeds, audit the data a run
trained on, and measure whether the run made the model a better judge."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from unigap.cli.app import app, console, fail, figures_table, pct, write_json
from unigap.cli.runs import open_store_or_fail
from unigap.config import LoopConfig


@app.command("table")
def table_cmd(
    runs: list[Path] = typer.Argument(
        ..., help="JSON files written by `unigap loop --json`, one per training seed and recipe."
    ),
    json_out: Path | None = typer.Option(
        None, "--json", help="Write the table (with every run's figures) to this JSON file."
    ),
    markdown_out: Path | None = typer.Option(None, "--markdown", help="Write the table as Markdown to this file."),
):
    """Compare loop recipes over training seeds, in the shape of the paper's Table 1: for each recipe,
    held-out generation accuracy, NU and understanding of the starting and the shipped (last
    promoted) model, as means over seeds with 95% intervals, and whether the required outcome is met."""
    from unigap.methods import markdown, method_table, pct_ci

    results = []
    for path in runs:
        try:
            res = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            fail(f"{path}: cannot be read as JSON ({e})")
        if not (isinstance(res, dict) and isinstance(res.get("config"), dict) and res.get("rounds")):
            fail(f"{path}: not a `unigap loop --json` result (it needs `config` and `rounds`)")
        results.append(res)
    try:
        rows = method_table(results)
    except ValueError as e:
        fail(str(e))
    out = figures_table(
        "Loop recipes on held-out prompts: start -> shipped model, mean over seeds [95% interval]",
        ("recipe", "seeds", "gen %", "gen gain", "NU %", "NU rel. drop", "und drop", "win rate %", "target"),
    )
    for r in rows:

        def m(f: str, signed: bool = False, r=r) -> str:
            return pct_ci(r[f], signed, interval=not f.endswith("_start"))

        out.add_row(
            r["recipe"],
            ",".join(map(str, r["seeds"])),
            f"{m('gen_start')} -> {m('gen')}",
            m("gen_gain", True),
            f"{m('nu_start')} -> {m('nu')}",
            m("nu_rel_drop", True),
            m("und_drop", True),
            m("win_rate"),
            "met" if r["target_met"] else "not met",
        )
    console.print(out)
    if json_out:
        write_json(json_out, {"rows": rows})
    if markdown_out:
        markdown_out.write_text(markdown(rows) + "\n")


@app.command("audit")
def audit_cmd(
    run: Path = typer.Argument(..., help="A JSON file written by `unigap loop --json`."),
    store_url: str = typer.Option(..., "--store", help="The run's store: a folder or an s3:// URL."),
    json_out: Path | None = typer.Option(None, "--json", help="Write every round's figures to this JSON file."),
):
    """How clean is the data the loop trained on? Each round's judged candidates and SFT rows,
    decoded and checked by the external evaluator, per task category: the judge's precision and
    recall, the prompts SFT could learn from, and the share of SFT rows that are right; and how the
    held-out prompts moved, by the SFT rows each round gave them and whether its candidates called
    them solved (what --focus does to those), from the head model to the round's and, before, from
    the head's own head to the head. A report only: the loop never sees these figures."""
    from unigap.audit import SOLVED_RATE, audit_run
    from unigap.loop import baseline_record, evaluated_in_world, evaluation_prompts
    from unigap.store import StoreError

    try:
        result = json.loads(run.read_text())
        key, per_category = result["run"], result["config"]["eval_per_category"]
        cfg = LoopConfig.from_dict(result["config"])
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        fail(f"{run}: not a `unigap loop --json` result ({e.__class__.__name__}: {e})")
    if cfg.evaluator != "shapes" or not evaluated_in_world(cfg):  # the audit checks with the world's evaluator
        fail(
            f"{run}: the audit needs a run evaluated by the shapes evaluator on a split of the world, "
            f"not --evaluator {cfg.evaluator}" + (f" --eval-prompts {cfg.eval_prompts}" if cfg.eval_prompts else "")
        )
    try:
        baseline = baseline_record(cfg, result["rounds"][0]["checkpoint"])
    except (ValueError, KeyError, TypeError, IndexError) as e:
        fail(f"{run}: not a `unigap loop --json` result ({e.__class__.__name__}: {e})")
    store, cache = open_store_or_fail(store_url)
    try:
        specs = evaluation_prompts(cfg.eval_prompts, "heldout", per_category)
        rounds = audit_run(store, key, cache, specs, baseline=baseline)
    except StoreError as e:
        fail(str(e))
    if not rounds:
        fail(f"{store_url} holds no finished round of {key}: is it the store the run wrote to?")
    out = Table(title="Training data on the external evaluator: candidates (all judged) and SFT rows (trained on)")
    for col in (
        "round",
        "category",
        "images",
        "right %",
        "accepted %",
        "judge precision %",
        "judge recall %",
        "prompts to learn %",
        "SFT rows",
        "SFT right %",
    ):
        out.add_column(col, justify="right" if col != "category" else "left")
    for r in rounds:
        for cat, c in r["candidates"].items():
            s = r.get("sft", {}).get(cat, {"rows": 0, "precision": None})
            out.add_row(
                str(r["round"]),
                cat,
                str(c["images"]),
                pct(c["truth"]),
                pct(c["accepted"]),
                pct(c["judge_precision"]),
                pct(c["judge_recall"]),
                pct(c["judge_coverage"]),
                str(s["rows"]),
                pct(s["precision"]),
            )
    console.print(out)
    rates = Table(title="The judge's precision by how often it accepts a prompt's candidates")
    for col in ("round", "prompt acceptance rate", "prompts", "accepted images", "judge precision %"):
        rates.add_column(col, justify="right")
    for r in rounds:
        for b in r["by_acceptance"]:
            rates.add_row(
                str(r["round"]),
                f"{b['rate_from']:.3g}-{b['rate_to']:.3g}",
                str(b["prompts"]),
                str(b["accepted"]),
                pct(b["judge_precision"]),
            )
    console.print(rates)
    if any("change_by_rows" in r for r in rounds):
        change = Table(
            title="Held-out prompts from the head model to the round's, by the SFT rows the round gave each prompt "
            f"and whether its candidates called it solved (accepted in over {SOLVED_RATE:.0%}); "
            "before: from the head's own head to the head"
        )
        for col in (
            "round",
            "SFT rows",
            "solved",
            "prompts",
            "NU change, points",
            "gen change, points",
            "before: NU",
            "before: gen",
        ):
            change.add_column(col, justify="right")

        def points(g: dict, name: str) -> str:
            return f"{100 * g[name]:+.1f}" if name in g else ""

        for r in rounds:
            for g in r.get("change_by_rows", []):
                change.add_row(
                    str(r["round"]),
                    str(g["rows"]),
                    "yes" if g["solved"] else "no",
                    str(g["prompts"]),
                    *(points(g, k) for k in ("nu_change", "gen_change", "nu_change_before", "gen_change_before")),
                )
        console.print(change)
    own = Table(
        title="The judge on each model's own held-out images, against the external evaluator: accepted = right - false "
        "rejects + false accepts, so NU can fall by right images or by a judge that lets more wrong ones through"
    )
    for col in (
        "model",
        "images",
        "right %",
        "accepted %",
        "agreement %",
        "accepts right %",
        "accepts wrong %",
        "false accepts %",
        "false rejects %",
    ):
        own.add_column(col, justify="right")
    judged = [("start", rounds[0]["judge_on_own_start"])] if "judge_on_own_start" in rounds[0] else []
    for model, j in judged + [(f"round {r['round']}", r["judge_on_own"]) for r in rounds]:
        own.add_row(
            model,
            str(j["images"]),
            *(
                pct(j[k])
                for k in (
                    "right",
                    "accepted",
                    "agreement",
                    "accepts_right",
                    "accepts_wrong",
                    "false_accepts",
                    "false_rejects",
                )
            ),
        )
    console.print(own)
    if json_out:
        write_json(json_out, {"run": key, "rounds": rounds})


@app.command("co-improvement")
def co_improvement_cmd(
    run: Path = typer.Argument(..., help="A JSON file written by `unigap loop --json`."),
    store_url: str = typer.Option(..., "--store", help="The run's store: a folder or an s3:// URL."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the figures and each disagreement here."),
    round_: int | None = typer.Option(
        None,
        "--round",
        help="Compare this round's model, promoted or not, instead of the served one: the judge "
        "training made, whatever the gate did.",
    ),
):
    """Did self-improvement make the model a better judge, as the paper measures it? The served
    (self-improved) model's judge against the starting model's, both on the starting model's held-out
    images; where they disagree the external evaluator decides. Prints the win rate with its interval
    over prompts and the number of disagreements. A report only: the loop never sees it."""
    from unigap.co_improvement import co_improvement
    from unigap.store import StoreError

    try:
        result = json.loads(run.read_text())
        LoopConfig.from_dict(result["config"])
        result["rounds"][0]["checkpoint"]
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        fail(f"{run}: not a `unigap loop --json` result ({e.__class__.__name__}: {e})")
    store, cache = open_store_or_fail(store_url)
    try:
        out = co_improvement(store, result, cache, round_)
    except (ValueError, StoreError) as e:
        fail(f"{run}: {e}")
    print_co_improvement(out)
    if json_out:
        write_json(json_out, {"run": result["run"], **out})


def print_co_improvement(out: dict) -> None:
    """`unigap.co_improvement.co_improvement`'s figures as a table."""
    table = Table(title="Co-improvement: the trained model's judge vs the starting model's, on the start's images")
    for col in (
        "round",
        "images",
        "disagreements",
        "win rate %",
        "95% CI",
        "agreement start %",
        "agreement trained %",
    ):
        table.add_column(col, justify="right")
    lo, hi = out["win_rate_ci"]
    table.add_row(
        f"{out['final_round']}{'' if out.get('final_promoted', True) else ' (not promoted)'}",
        str(out["n_images"]),
        str(out["n_disagree"]),
        pct(out["win_rate"]),
        f"[{pct(lo)}, {pct(hi)}]" if out["n_disagree"] else "-",
        pct(out["agreement_old"]),
        pct(out["agreement_new"]),
    )
    console.print(table)
