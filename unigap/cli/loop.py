"""`unigap loop`, `controls`: the self-improvement loop, and the ladder of controls that tells what limits it.

Their settings are options derived from `LoopConfig` / `TrainConfig` (unigap/cli/options.py), so each
default, help text and check is the dataclasses' own.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer

from unigap import world
from unigap.cli import runs
from unigap.cli.app import (
    app,
    check_device,
    check_model,
    comma_list,
    console,
    fail,
    figures_table,
    load_model,
    pct,
    write_json,
)
from unigap.cli.options import with_settings
from unigap.config import CONTROL_ARMS, LoopConfig
from unigap.paths import DEFAULT_MODEL

# `unigap controls` keeps the first defaults (config.FIRST): its ladder is measured against them.
CONTROL = LoopConfig.from_dict({})
CONTROL_SETTINGS = (
    "n",
    "seed",
    "pool",
    "judge_mode",
    "threshold",
    "max_per_prompt",
    "balance",
    "focus",
    "solved_rows",
    "min_accept_rate",
    "train.lr",
    "train.epochs",
    "train.modules",
    "train.und_anchor",
    "train.und_replay",
    "train.gen_replay",
    "train.und_flawed",
    "train.und_every",
    "eval_prompts",
    "eval_n",
    "eval_per_category",
)
SERVICES = "Through the services"


@app.command("loop")
@with_settings(LoopConfig(), recipe=True)
def loop_cmd(
    cfg: LoopConfig,
    more_rounds: int = typer.Option(
        0,
        help="Instead of --rounds: this many rounds beyond those the run has finished (what a scheduled job asks for).",
        rich_help_panel="Run",
    ),
    store: str = typer.Option(
        "runs/store",
        help="Preference store: a directory, or s3://bucket/prefix (endpoint and "
        "keys from UNIGAP_S3_*). Rerun the same command to resume.",
        rich_help_panel="Run",
    ),
    json_out: Path | None = typer.Option(
        None, "--json", help="Write the per-round figures to this JSON file.", rich_help_panel="Run"
    ),
    report: Path | None = typer.Option(
        None, help="Folder for the JSON and PNG plots of the run.", rich_help_panel="Run"
    ),
    model: Path = typer.Option(DEFAULT_MODEL, help="Starting model folder.", rich_help_panel="Run"),
    device: str = typer.Option(
        "cpu",
        help="Where the in-process loop samples, judges and trains: cpu, cuda or cuda:N. "
        "Not part of the run's key: a run resumed on another device goes on, with that device's "
        "float rounding.",
        rich_help_panel="Run",
    ),
    via_services: str | None = typer.Option(
        None,
        help="GENERATION,JUDGE gRPC addresses (host:port,host:port): generate and judge through the services (see "
        "`unigap serve`), train through --executor; the services serve the promoted model afterwards. Token "
        "from UNIGAP_TOKEN.",
        rich_help_panel=SERVICES,
    ),
    executor: str = typer.Option(
        "local",
        help="With --via-services, where training runs: local (a subprocess) or "
        "kubernetes (a batch/v1 Job; settings from UNIGAP_K8S_*).",
        rich_help_panel=SERVICES,
    ),
    trainer_procs: int = typer.Option(
        1,
        help="With --via-services, trainer processes (torchrun DDP: gloo on CPU, nccl on GPU).",
        rich_help_panel=SERVICES,
    ),
):
    """Run the self-improvement loop: sample, judge with the model's own understanding, train,
    evaluate on the test prompts (texts no pool or gate touches; external evaluator beside the own
    judge), promote on val or reject.
    A store that stays unreachable, or a stored object that fails its checksum, ends the run with
    one line and status 2; nothing half-done is published, and a rerun resumes."""
    if more_rounds < 0:
        fail(f"--more-rounds must be at least 0, not {more_rounds}")
    check_model(model)
    check_device(device)
    if via_services:
        if device != "cpu":
            fail("--device is for the in-process loop; with --via-services the services and the trainer choose theirs")
        if cfg.train.regularised and trainer_procs > 1:
            fail("--und-anchor, --und-replay and --gen-replay run in a single trainer process: use --trainer-procs 1")
        return runs.run_loop_via_services(
            cfg, store, model, via_services, executor, trainer_procs, json_out, more_rounds
        )
    return runs.run_loop(cfg, store, model, json_out, report, more_rounds, device)


@app.command("controls")
@with_settings(CONTROL, only=CONTROL_SETTINGS)
def controls_cmd(
    cfg: LoopConfig,
    arms: str = typer.Option(
        ",".join(CONTROL_ARMS),
        help="Comma-separated: render (ground-truth renders of the pool), "
        "oracle (own samples the exact evaluator accepts), judge (own samples the own judge "
        "accepts), all (every own sample).",
        rich_help_panel="Run",
    ),
    rounds: int = typer.Option(
        1, help="SFT rounds per arm, each from the arm's previous model (no gate).", rich_help_panel="Run"
    ),
    model: Path = typer.Option(DEFAULT_MODEL, help="Starting model folder.", rich_help_panel="Run"),
    json_out: Path | None = typer.Option(
        None, "--json", help="Write every arm's figures per round to this JSON file.", rich_help_panel="Run"
    ),
):
    """The ladder of controls: the loop's SFT trained on ground-truth renders, on own samples filtered by
    the EXACT evaluator, by the model's own judge, and unfiltered. A diagnostic that names what limits
    the loop (the trainer, the samples, the judge); never a recipe, since two arms train on what the
    loop must never see. Settings it has no option for stay at the first defaults (config.FIRST)."""
    from unigap.controls import run_controls
    from unigap.loop import pool_texts

    chosen = comma_list(arms)
    unknown = [a for a in chosen if a not in CONTROL_ARMS]
    if not chosen or unknown:
        fail(f"--arms must name some of {', '.join(CONTROL_ARMS)}; unknown: {', '.join(unknown) or '(none given)'}")
    try:
        cfg = replace(cfg, rounds=rounds)
    except ValueError as e:
        fail(str(e))
    check_model(model)
    try:
        prompts = pool_texts(cfg.pool, cfg.judge_mode)
    except ValueError as e:
        fail(str(e))
    for text in prompts:  # the arms render their prompts and check them exactly
        try:
            world.parse(text)
        except ValueError:
            fail(f"unigap controls runs in the shapes world: {text!r} is not one of its prompts")
    result = run_controls(load_model(model), chosen, prompts, cfg, log=console.print)
    out = figures_table(
        "Ladder of controls: held-out generation accuracy (external evaluator) and NU (own judge) per round",
        ("arm", "trained on, per round", "gen % per round", "NU % per round", "judge's false accepts % per round"),
    )
    for arm, rows in result["arms"].items():
        out.add_row(
            arm,
            ", ".join(str(r["n_train"]) for r in rows[1:]),
            " -> ".join(pct(r["gen_acc"]) for r in rows),
            " -> ".join(pct(r["nu"]) for r in rows),
            " -> ".join(pct(r["judge_on_own"]["false_accepts"]) for r in rows),
        )
    console.print(out)
    if json_out:
        write_json(json_out, result)
