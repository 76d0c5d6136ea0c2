"""Rounds of the loop driven through the services: what the retraining CronJob runs.

The loop itself (unigap.loop) is unchanged; it gets a backend whose generation and judging go
to the gRPC services and whose training goes to an executor (a subprocess or a Kubernetes Job).
After the rounds, both services are told to serve the promoted model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pipelines.executors import Executor
from pipelines.service_backend import ServiceBackend
from services.generation.client import GenerationClient
from services.judge.client import JudgeClient
from unigap.config import LoopConfig
from unigap.loop import Loop
from unigap.store.base import Store


def parse_addresses(text: str) -> tuple[str, str]:
    """`GEN_HOST:PORT,JUDGE_HOST:PORT` -> the two addresses."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not all(":" in p for p in parts):
        raise ValueError(f"--via-services wants GENERATION_ADDRESS,JUDGE_ADDRESS (host:port,host:port), not {text!r}")
    return parts[0], parts[1]


def run_via_services(
    cfg: LoopConfig,
    store: Store,
    cache: Path,
    start_model: Path,
    addresses: str,
    executor: Executor,
    token: str | None = None,
    tls_ca: str | None = None,
    more_rounds: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    gen_address, judge_address = parse_addresses(addresses)
    generation = GenerationClient(gen_address, token=token, tls_ca=tls_ca)
    judge = JudgeClient(judge_address, token=token, tls_ca=tls_ca)
    try:
        backend = ServiceBackend(generation, judge, store, executor, log)
        loop = Loop(cfg, store, cache, start_model, progress, log, backend=backend)
        if more_rounds:
            loop.extend(more_rounds)
        result = loop.run_all()
        head, head_round = loop.head(loop.cfg.rounds + 1)
        backend.promote(head, round=head_round, run=loop.run)
        log(f"services now serve the model of round {head_round} ({head[:12]})")
        result["served"] = {"checkpoint": head, "round": head_round}
        return result
    finally:
        generation.close()
        judge.close()
