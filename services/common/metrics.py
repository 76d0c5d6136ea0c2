"""Prometheus metrics of one server: its own registry, an interceptor, and the HTTP endpoint."""

from __future__ import annotations

import asyncio
import time
import weakref
from contextlib import asynccontextmanager

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from services.common.interceptors import GuardInterceptor, status_name

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter("unigap_grpc_requests", "gRPC requests finished", ["method", "code"], registry=r)
        self.errors = Counter(
            "unigap_grpc_errors", "gRPC requests that ended in an error", ["method", "code"], registry=r
        )
        self.latency = Histogram(
            "unigap_grpc_latency_seconds",
            "gRPC request latency (streams: until the last message)",
            ["method"],
            registry=r,
        )
        self.batch_size = Histogram(
            "unigap_batch_size",
            "Items per model call (servicers observe it)",
            ["op"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )

    @asynccontextmanager
    async def _observe(self, method: str, context):
        start, code = time.perf_counter(), "UNKNOWN"
        try:
            yield
            code = status_name(context) or "OK"
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except BaseException:
            code = status_name(context) or "UNKNOWN"
            raise
        finally:
            method = method.lstrip("/")
            self.requests.labels(method, code).inc()
            if code != "OK":
                self.errors.labels(method, code).inc()
            self.latency.labels(method).observe(time.perf_counter() - start)

    def interceptor(self) -> GuardInterceptor:
        return GuardInterceptor(self._observe)


_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, ServerMetrics] = weakref.WeakKeyDictionary()


def metrics_for(registry: CollectorRegistry) -> ServerMetrics:
    """The one ServerMetrics of a registry (a metric can be registered once per registry)."""
    if registry not in _by_registry:
        _by_registry[registry] = ServerMetrics(registry)
    return _by_registry[registry]


_endpoints: dict[int, tuple] = {}


def start_metrics(registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 0) -> int:
    """Serve /metrics over HTTP in a daemon thread; returns the bound port (port 0 = ephemeral)."""
    server, thread = start_http_server(port, addr=host, registry=registry)
    bound = server.server_port
    _endpoints[bound] = (server, thread)
    return bound


def stop_metrics(port: int) -> None:
    server, thread = _endpoints.pop(port, (None, None))
    if server is not None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
