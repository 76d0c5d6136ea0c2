"""Start a grpc.aio server the house way: auth, metrics, error statuses, health, reflection, TLS,
message limits, a structured start line, and a graceful drain on SIGTERM / SIGINT."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from services.common.auth import AuthInterceptor
from services.common.client import aio_channel, channel  # noqa: F401  (re-exported: the client helpers)
from services.common.metrics import ServerMetrics, metrics_for, start_metrics, stop_metrics
from services.common.settings import ServerSettings
from services.common.validation import error_interceptor

SERVING = health_pb2.HealthCheckResponse.SERVING


def log_event(event: str, **fields) -> None:
    """One JSON line on stdout (what log collectors and tests parse)."""
    print(json.dumps({"ts": round(time.time(), 3), "event": event, **fields}), flush=True)


class RunningServer:
    def __init__(
        self,
        server: grpc.aio.Server,
        port: int,
        settings: ServerSettings,
        health_servicer,
        metrics: ServerMetrics,
        metrics_port: int | None,
        service_names: Sequence[str],
    ):
        self.server, self.port, self.settings = server, port, settings
        self.health, self.metrics, self.metrics_port = health_servicer, metrics, metrics_port
        self.service_names = list(service_names)
        self._on_stop: list[Callable] = []
        self._stopped = False

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.port}"

    @property
    def registry(self) -> CollectorRegistry:
        return self.metrics.registry

    def on_stop(self, callback: Callable) -> None:
        """Run `callback()` (sync or async) after the drain, e.g. to stop a batcher."""
        self._on_stop.append(callback)

    async def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING, refuse new RPCs, let in-flight ones finish for up to `grace` seconds."""
        if self._stopped:
            return
        self._stopped = True
        grace = self.settings.grace_s if grace is None else grace
        log_event("draining", address=self.address, grace_s=grace)
        await self.health.enter_graceful_shutdown()  # every service NOT_SERVING
        await self.server.stop(grace)
        for callback in self._on_stop:
            try:
                result = callback()
                if asyncio.iscoroutine(result):
                    await result
            except Exception as e:  # one failing cleanup must not skip the others
                log_event("stop_callback_failed", error=f"{type(e).__name__}: {e}")
        if self.metrics_port is not None:
            stop_metrics(self.metrics_port)
        log_event("stopped", address=self.address)

    async def wait(self) -> None:
        await self.server.wait_for_termination()

    async def run_until_signal(self) -> None:
        """Serve until SIGTERM or SIGINT, then drain (`stop`)."""
        loop, stop = asyncio.get_running_loop(), asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await self.stop()


async def serve(
    add_servicers: Callable[[grpc.aio.Server], None],
    service_names: Sequence[str],
    settings: ServerSettings,
    registry: CollectorRegistry | None = None,
) -> RunningServer:
    """Build, bind and start a server. `add_servicers(server)` registers the services named
    (full names, e.g. "unigap.v1.GenerationService"); `registry` holds the metrics
    (`metrics_for(registry)` gives servicers the same ServerMetrics, e.g. its batch_size)."""
    metrics = metrics_for(registry if registry is not None else CollectorRegistry())
    limit = settings.max_message_bytes
    server = grpc.aio.server(
        # Outermost first: metrics see every status, auth refusals included.
        interceptors=[metrics.interceptor(), AuthInterceptor(settings.token), error_interceptor()],
        options=[("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)],
    )
    add_servicers(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", *service_names):
        await health_servicer.set(name, SERVING)
    reflection.enable_server_reflection([*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)

    target = f"{settings.host}:{settings.port}"
    if settings.tls_cert:
        creds = grpc.ssl_server_credentials([(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())])
        port = server.add_secure_port(target, creds)
    else:
        port = server.add_insecure_port(target)
    await server.start()
    metrics_port = None
    if settings.metrics_port is not None:
        metrics_port = start_metrics(metrics.registry, settings.host, settings.metrics_port)
    running = RunningServer(server, port, settings, health_servicer, metrics, metrics_port, service_names)
    log_event(
        "serving",
        services=list(service_names),
        address=running.address,
        tls=settings.tls_cert is not None,
        auth=settings.token is not None,
        metrics=None if metrics_port is None else f"http://{settings.host}:{metrics_port}/metrics",
        pid=os.getpid(),
    )
    return running


def main(settings_cls: type[ServerSettings], start, prog: str, argv: Sequence[str] | None = None) -> int:
    """A server's `python -m` entry: settings from flags and env, serve until SIGTERM / SIGINT,
    drain. A model that cannot be loaded is one line and exit status 2."""
    from services.common.settings import parse_settings
    from services.common.validation import Invalid

    settings = parse_settings(settings_cls, argv, prog=prog)

    async def run() -> None:
        running = await start(settings)
        await running.run_until_signal()

    try:
        asyncio.run(run())
    except Invalid as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
