"""`unigap demo`: the gap of the shipped model, then the default loop on it, on one machine."""

from __future__ import annotations

from pathlib import Path

import typer

from unigap.cli import runs
from unigap.cli.app import app, console, write_json
from unigap.cli.options import field_option
from unigap.cli.reports import print_co_improvement
from unigap.cli.score import PER_CATEGORY, report_gap
from unigap.config import JudgeSettings, LoopConfig, Sampling
from unigap.paths import DEFAULT_MODEL


@app.command("demo")
def demo_cmd(
    out: Path = typer.Option(Path("reports/demo"), help="Folder for the JSON reports and PNG plots."),
    rounds: int = field_option(LoopConfig, "rounds"),
):
    """The whole loop on the shipped model, on one machine: measure the gap, run rounds of
    self-judged SFT with the default recipe and evaluate each on the test prompts (texts the loop
    never samples), then ask whether the shipped model is also a better judge."""
    from unigap.co_improvement import co_improvement

    out.mkdir(parents=True, exist_ok=True)
    console.rule("1. The internal gap of the shipped tiny model (test prompts)")
    report_gap(
        DEFAULT_MODEL, "test", PER_CATEGORY, JudgeSettings.mode, Sampling(), out / "score.json", out / "score.png"
    )
    console.rule(f"2. The self-improvement loop: {rounds} rounds of SFT on the model's own judgment")
    result = runs.run_loop(LoopConfig(rounds=rounds), str(out / "store"), DEFAULT_MODEL, None, out)
    console.rule("3. Co-improvement: is the shipped model also a better judge? (the paper's win rate)")
    store, cache = runs.open_store_or_fail(str(out / "store"))
    figures = co_improvement(store, result, cache)
    print_co_improvement(figures)
    write_json(out / "co-improvement.json", {"run": result["run"], **figures})
