"""`unigap serve`, `promote`: start the services locally, and choose the checkpoint every server serves."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from unigap.cli.app import app, check_mode, console, fail, load_evaluator
from unigap.cli.options import field_option
from unigap.cli.runs import open_store_or_fail
from unigap.config import JudgeSettings
from unigap.paths import DEFAULT_MODEL


@app.command()
def promote(
    checkpoint: str = typer.Argument(
        ..., help="The checkpoint reference (64 hex digits) to serve, e.g. a round manifest's `checkpoint` or `base`."
    ),
    store: str = typer.Option(..., help="The store the servers follow (a directory, or s3://bucket/prefix)."),
):
    """Make CHECKPOINT the model every server following the store serves (servers started with
    --follow-s reload within that time; new ones start with it). A rollback promotes an earlier one."""
    from unigap.store import CorruptObjectError
    from unigap.store import records as rec
    from unigap.store.base import is_ref

    if not is_ref(checkpoint):
        fail(f"{checkpoint!r} is not a checkpoint reference (64 hex digits)")
    st, _ = open_store_or_fail(store)
    try:
        index = rec.get_json(st, checkpoint)
    except (KeyError, CorruptObjectError, ValueError) as e:
        fail(f"{checkpoint} is not a readable object in {store} ({e})")
    if not isinstance(index, dict) or "config.json" not in index.get("files", {}):
        fail(f"{checkpoint} in {store} is not a checkpoint (no save_pretrained file index)")
    previous = rec.get_serving(st)
    rec.set_serving(st, checkpoint, promoted_by="unigap promote")
    console.print(f"serving record: {previous or 'none'} -> {checkpoint}")


@app.command("serve")
def serve_cmd(
    model: str = typer.Option(
        str(DEFAULT_MODEL), help="Model both servers start with: a folder, or a checkpoint reference in --store."
    ),
    generation_port: int = typer.Option(50051, help="GenerationService port."),
    judge_port: int = typer.Option(50052, help="JudgeService (gRPC front of the Triton judge) port."),
    s3_port: int | None = typer.Option(
        None, help="Also start a local S3 endpoint (moto) on this port and use it as the store."
    ),
    store: str | None = typer.Option(
        None, help="Store the servers fetch checkpoint references from (a directory or s3:// URL)."
    ),
    mode: str = field_option(JudgeSettings, "mode"),
    evaluator: str = typer.Option(
        "shapes",
        help="External evaluator of the judge's NonUnification: shapes (the shapes world's exact one), none "
        "(NU only) or module:callable (your own, on the import path).",
    ),
    host: str = typer.Option("127.0.0.1", help="Address every server binds."),
    triton_http_port: int = typer.Option(8000, help="Triton's HTTP (KServe v2) port in the judge."),
    triton_grpc_port: int = typer.Option(8001, help="Triton's gRPC (KServe v2) port in the judge."),
):
    """Start the judge (Triton + gRPC front), the generation server and optionally a local S3
    endpoint; print their addresses; stop them all on Ctrl-C or SIGTERM. Servers take their
    other settings (token, TLS, limits, metrics) from UNIGAP_* environment variables."""
    from services import launcher
    from unigap.store.base import is_ref

    check_mode(mode)
    load_evaluator(evaluator)  # a bad name: one line now, not a judge that fails to start
    if not (Path(model) / "config.json").is_file() and not is_ref(model):
        fail(f"--model {model!r} is neither a model folder nor a 64-hex checkpoint reference")
    ports = [generation_port, judge_port, triton_http_port, triton_grpc_port] + (
        [s3_port] if s3_port is not None else []
    )
    if len(set(ports)) != len(ports) or not all(0 < p < 65536 for p in ports):
        fail(f"ports must be distinct and in 1..65535, got {ports}")
    try:
        children = launcher.plan(
            model,
            store,
            generation_port,
            judge_port,
            s3_port,
            mode,
            host,
            (triton_http_port, triton_grpc_port),
            evaluator,
        )
    except ValueError as e:
        fail(str(e))

    def on_ready(started):
        table = Table(title="unigap services (Ctrl-C stops them all)")
        table.add_column("service")
        table.add_column("address")
        for c in started:
            table.add_row(c.name, c.address if c.kind == "grpc" else f"http://{c.address}")
        table.add_row("triton (KServe v2)", f"http://{host}:{triton_http_port}, grpc {host}:{triton_grpc_port}")
        console.print(table)

    raise typer.Exit(launcher.serve(children, on_ready))
