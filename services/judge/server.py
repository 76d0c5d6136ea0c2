"""Wiring: the model holder, Triton with `unigap_judge` bound, and the JudgeService front, in one process."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Literal

from grpc_health.v1.health_pb2 import HealthCheckResponse
from prometheus_client import CollectorRegistry
from pydantic import field_validator

from services.api import judge_pb2_grpc, model_pb2
from services.common.metrics import metrics_for
from services.common.models import ModelHolder, follow_promotions
from services.common.server import SERVING, RunningServer, log_event, serve
from services.common.settings import ServerSettings
from services.generation.client import GenerationClient
from services.generation.server import DEFAULT_CFG, DEFAULT_TEMPERATURE
from services.judge.front import DEFAULT_NU_N, DEFAULT_THRESHOLD, SERVICE_NAME, JudgeServicer, TritonJudge
from services.judge.supervisor import TritonSupervisor
from services.judge.triton_model import JudgeModel, start_triton
from unigap.evaluators import get_evaluator
from unigap.paths import DEFAULT_MODEL

NOT_SERVING = HealthCheckResponse.NOT_SERVING


class JudgeSettings(ServerSettings):
    model: str = str(DEFAULT_MODEL)
    """Checkpoint to serve: a store reference (64 hex digits) or a save_pretrained folder."""
    mode: Literal["likelihood", "probability", "decision"] = "likelihood"
    """The judge's reading of the understanding branch (see unigap.model.judge)."""
    evaluator: str = "shapes"
    """External evaluator NonUnification checks images with: shapes (the shapes world's exact check;
    it cannot tell on free text), none (NU only), or a callable of yours by import path, module:callable
    (see unigap.evaluators)."""
    generation: str | None = None
    """GenerationService address (host:port) NonUnification samples from; none = NonUnification off."""
    tls_ca: Path | None = None
    """CA bundle (PEM) to verify the generation server's TLS certificate; none = plaintext."""
    triton_host: str = "127.0.0.1"
    """Address Triton's HTTP, gRPC and metrics endpoints bind."""
    triton_http_port: int = 0
    """Triton HTTP (KServe v2) port; 0 = a free port (logged)."""
    triton_grpc_port: int = 0
    """Triton gRPC (KServe v2) port; 0 = a free port (logged)."""
    triton_metrics_port: int = 0
    """Triton's own Prometheus port; 0 = a free port (logged)."""
    triton_queue_delay_us: int = 2000
    """How long Triton's dynamic batcher holds a request for others to join its batch."""
    triton_log: Path | None = None
    """tritonserver's log file; none = a file in its temporary folder."""

    @field_validator("evaluator", mode="before")
    @classmethod
    def _evaluator_loads(cls, name):
        name = "none" if name is None else name  # the settings' CLI reads the word none as None
        get_evaluator(name)  # a name that is none of them, or cannot be imported: exit 2 at start
        return name


async def start(settings: JudgeSettings, registry: CollectorRegistry | None = None) -> RunningServer:
    """Load the model, start Triton, then serve JudgeService; `stop()` drains, then stops Triton.

    Must run on the main thread's event loop (see `start_triton`). The Triton model runs in
    pytriton's thread and asks the holder for its model on this loop, so reloads and the LRU of
    explicit checkpoints are shared with the front. A TritonSupervisor restarts tritonserver when
    it dies; health says NOT_SERVING until the new one is ready.
    """
    registry = registry if registry is not None else CollectorRegistry()
    metrics = metrics_for(registry)
    defaults = model_pb2.RequestDefaults(
        n=DEFAULT_NU_N, cfg_scale=DEFAULT_CFG, temperature=DEFAULT_TEMPERATURE, threshold=DEFAULT_THRESHOLD
    )
    holder = await asyncio.to_thread(ModelHolder, settings.model, settings, settings.mode, defaults=defaults)
    loop = asyncio.get_running_loop()

    def model_for(ref: str):
        return asyncio.run_coroutine_threadsafe(holder.get(ref), loop).result().model

    infer = JudgeModel(model_for, settings.mode, on_batch=metrics.batch_size.labels("judge").observe)

    def start_triton_on(http_port: int, grpc_port: int, metrics_port: int):
        return start_triton(
            infer,
            settings.triton_host,
            http_port,
            grpc_port,
            metrics_port,
            settings.triton_queue_delay_us,
            access_token=settings.token,  # one token for the front and Triton's protected endpoints
            log_file=str(settings.triton_log) if settings.triton_log else None,
        )

    triton = start_triton_on(settings.triton_http_port, settings.triton_grpc_port, settings.triton_metrics_port)
    try:
        scorer = TritonJudge(triton.grpc)
        generation = (
            GenerationClient(settings.generation, settings.token, settings.tls_ca) if settings.generation else None
        )
        servicer = JudgeServicer(holder, scorer, settings, generation)
        running = await serve(
            lambda s: judge_pb2_grpc.add_JudgeServiceServicer_to_server(servicer, s), [SERVICE_NAME], settings, registry
        )
    except BaseException:
        triton.stop()
        raise

    async def set_health(status) -> None:
        for name in ("", SERVICE_NAME):
            await running.health.set(name, status)  # ignored once the server drains

    async def down() -> None:
        servicer.triton.down = True  # Score answers UNAVAILABLE at once, not a half-started Triton's errors
        await set_health(NOT_SERVING)

    clients = [scorer]  # closed at the stop: a request may still hold an old one

    async def use(new) -> None:
        """A fresh client for the new tritonserver (the old channel may sit in reconnect backoff)."""
        servicer.triton = TritonJudge(new.grpc)
        clients.append(servicer.triton)
        running.triton = new
        await set_health(SERVING)

    async def close_clients() -> None:
        for client in clients:
            await client.close()

    running.servicer, running.triton, running.infer = servicer, triton, infer
    running.supervisor = TritonSupervisor(
        triton,
        start_triton_on,
        on_down=lambda: asyncio.run_coroutine_threadsafe(down(), loop).result(10),
        on_up=lambda new: asyncio.run_coroutine_threadsafe(use(new), loop).result(10),
    )
    if generation is not None:
        running.on_stop(generation.close)
    # After the drain (requests in flight still reach Triton), off the loop: a plain Triton client's
    # batch may still be asking the holder for its model on this loop while tritonserver exits.
    running.on_stop(lambda: asyncio.to_thread(running.supervisor.stop))
    running.on_stop(close_clients)
    follow_promotions(holder, running)
    log_event(
        "judge",
        front=running.address,
        triton_http=triton.http,
        triton_grpc=triton.grpc,
        triton_metrics=triton.metrics,
        triton_pid=triton.pid,
        mode=settings.mode,
        evaluator=settings.evaluator,
        generation=settings.generation,
        metrics=None if running.metrics_port is None else f"http://{settings.host}:{running.metrics_port}/metrics",
    )
    return running
