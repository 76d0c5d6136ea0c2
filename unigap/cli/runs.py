"""What `unigap loop`, `controls` and `demo` share: a loop run in process or through the services, the store
opened and its failures reported in one line, and the rounds printed."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from rich.table import Table

from unigap.cli.app import console, fail, pct, write_json
from unigap.config import LoopConfig


def open_store_or_fail(url: str):
    """The store at a path or s3:// URL, and a local folder for fetched checkpoints."""
    from unigap.store import StoreError, open_store

    try:
        store = open_store(url)
    except (ValueError, StoreError) as e:
        fail(str(e))
    cache = Path(url) / "cache" if "://" not in url else Path("runs/cache")
    return store, cache


@contextmanager
def store_failures():
    """The store failing mid-run (unreachable after its retries, an object whose checksum does not
    match) ends the run with one line and status 2. Finished steps stay in the store and no
    manifest is written for the interrupted round: rerunning the same command resumes it."""
    from unigap.store import CorruptObjectError, StoreError

    try:
        yield
    except StoreError as e:
        fail(
            f"{e}; the round was not published and its finished steps are kept: "
            "rerun the same command once the store is back"
        )
    except CorruptObjectError as e:
        fail(f"{e}; nothing was trained on it and the round was not published")


def run_loop(
    cfg: LoopConfig,
    store_url: str,
    model: Path,
    json_out: Path | None,
    report: Path | None,
    more_rounds: int = 0,
    device: str = "cpu",
) -> dict:
    from unigap.loop import Loop
    from unigap.store import StoreError

    store, cache = open_store_or_fail(str(store_url))
    try:
        runner = Loop(cfg, store, cache, model, log=console.print, device=device)
    except (ValueError, StoreError) as e:
        fail(str(e))
    if more_rounds:
        runner.extend(more_rounds)
    with store_failures():
        result = runner.run_all()
    print_rounds(result)
    if json_out:
        write_json(json_out, result)
    if report:
        write_loop_report(runner, result, report)
    return result


def run_loop_via_services(
    cfg: LoopConfig,
    store_url: str,
    model: Path,
    addresses: str,
    executor: str,
    procs: int,
    json_out: Path | None,
    more_rounds: int = 0,
) -> dict:
    """The loop through the gRPC services (the service layers are imported only here)."""
    import os

    from pipelines.executors import executor_from_env
    from pipelines.orchestrator import parse_addresses, run_via_services
    from services.common.client import ServiceError

    try:
        parse_addresses(addresses)
        runner = executor_from_env(executor, store_url, procs)
    except ValueError as e:
        fail(str(e))
    store, cache = open_store_or_fail(store_url)
    try:
        with store_failures():
            result = run_via_services(
                cfg,
                store,
                cache,
                model,
                addresses,
                runner,
                token=os.environ.get("UNIGAP_TOKEN"),
                tls_ca=os.environ.get("UNIGAP_TLS_CA"),
                more_rounds=more_rounds,
                log=console.print,
            )
    except ServiceError as e:  # the clients turn every failed RPC into one
        fail(f"a service failed: {e}")
    except ValueError as e:
        fail(str(e))
    print_rounds(result)
    if json_out:
        write_json(json_out, result)
    return result


def print_rounds(result: dict) -> None:
    split = LoopConfig.from_dict(result["config"]).reported_on
    table = Table(title=f"Self-improvement rounds (prompts: {split}; external evaluator beside the own judge)")
    for col in (
        "round",
        "NU %",
        "gen acc %",
        "und acc %",
        "val gen acc %",
        "win rate %",
        "diversity",
        "SFT",
        "pairs",
        "discard",
        "promoted",
    ):
        table.add_column(col, justify="right")
    for row in result["rounds"]:
        table.add_row(
            str(row["round"]),
            pct(row["nu"]),
            pct(row["gen_acc"]),
            pct(row["und_acc"]),
            pct((row.get("val") or {}).get("gen_acc")),  # the gate's split: in the default pool
            pct(row["win_rate"]),
            f"{row['diversity']:.3f}",
            str(row["n_sft"]),
            str(row["n_pairs"]),
            str(row["n_discard"]),
            "start" if row["round"] == 0 else ("yes" if row["promoted"] else "no: " + "; ".join(row["reasons"])),
        )
    console.print(table)


def write_loop_report(runner, result: dict, folder: Path) -> None:
    import numpy as np

    from unigap.plots import image_grid, plot_rounds

    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "loop.json", result)
    paths = plot_rounds(result, folder)
    last = result["rounds"][-1]["round"]
    before, prompts, ok0 = runner.heldout_samples(0)
    after, _, ok1 = runner.heldout_samples(last)
    pick = list(range(0, len(before), max(1, len(before) // 8)))[:8]
    labels = [f"r0 {'ok' if ok0[i] else 'x'}: {prompts[i]}" for i in pick] + [
        f"r{last} {'ok' if ok1[i] else 'x'}: {prompts[i]}" for i in pick
    ]
    image_grid(np.concatenate([before[pick], after[pick]]), labels, folder / "samples_before_after.png", cols=len(pick))
    console.print(f"report: {folder} ({', '.join(p.name for p in paths)}, samples_before_after.png, loop.json)")
