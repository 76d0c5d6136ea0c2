"""Client side: channels with the servers' message size, the bearer token and TLS; errors."""

from __future__ import annotations

import collections
import math
import os
from contextlib import contextmanager
from pathlib import Path

import grpc

from services.common.auth import bearer_metadata
from services.common.settings import MiB, ServerSettings

DEFAULT_MAX_MESSAGE_BYTES = 64 * MiB
DEFAULT_MAX_BATCH = ServerSettings.model_fields["max_batch"].default
# Every call has a deadline, so a stuck server cannot hang its caller: generous, since one Generate
# call of up to max_batch prompts runs the model; UNIGAP_RPC_TIMEOUT_S or `timeout=` changes it.
DEFAULT_TIMEOUT_S = 600.0


def default_timeout() -> float:
    """UNIGAP_RPC_TIMEOUT_S (seconds, > 0) if set, else DEFAULT_TIMEOUT_S."""
    text = os.environ.get("UNIGAP_RPC_TIMEOUT_S")
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0 or math.isinf(value):
        raise ValueError(f"UNIGAP_RPC_TIMEOUT_S must be a number of seconds > 0, not {text!r}")
    return value


class ServiceError(Exception):
    """A failed RPC: `code` (grpc.StatusCode) and the server's `details`."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self.code, self.details = code, details


@contextmanager
def rpc_errors():
    """Turn grpc.RpcError into ServiceError inside the block."""
    try:
        yield
    except grpc.RpcError as e:
        raise ServiceError(e.code(), e.details() or "") from None


def _options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [("grpc.max_send_message_length", max_message_bytes), ("grpc.max_receive_message_length", max_message_bytes)]


def _credentials(tls_ca) -> grpc.ChannelCredentials:
    """tls_ca: a PEM file path or PEM bytes; True = the system's roots."""
    if tls_ca is True:
        return grpc.ssl_channel_credentials()
    pem = tls_ca if isinstance(tls_ca, bytes) else Path(tls_ca).read_bytes()
    return grpc.ssl_channel_credentials(root_certificates=pem)


class _Details(
    collections.namedtuple(
        "_Details", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
    ),
    grpc.ClientCallDetails,
):
    pass


class _Bearer(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds the bearer token to every call of a sync channel."""

    def __init__(self, token: str):
        self.metadata = bearer_metadata(token)

    def _details(self, d):
        return _Details(
            d.method,
            d.timeout,
            tuple(d.metadata or ()) + self.metadata,
            d.credentials,
            d.wait_for_ready,
            getattr(d, "compression", None),
        )

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    intercept_unary_stream = intercept_unary_unary
    intercept_stream_unary = intercept_unary_unary
    intercept_stream_stream = intercept_unary_unary


def channel(
    address: str, token: str | None = None, tls_ca=None, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> grpc.Channel:
    """A sync channel (thread-safe); TLS when `tls_ca` is given, the token on every call."""
    opts = _options(max_message_bytes)
    ch = grpc.secure_channel(address, _credentials(tls_ca), opts) if tls_ca else grpc.insecure_channel(address, opts)
    return grpc.intercept_channel(ch, _Bearer(token)) if token else ch


class _AioBearer:
    def __init__(self, token: str):
        self.metadata = bearer_metadata(token)

    def _details(self, d):
        metadata = grpc.aio.Metadata(*tuple(d.metadata or ()), *self.metadata)
        return grpc.aio.ClientCallDetails(d.method, d.timeout, metadata, d.credentials, d.wait_for_ready)

    async def _call(self, continuation, details, request):
        return await continuation(self._details(details), request)


# grpc.aio files an interceptor under the first shape it implements only: one class per shape.
class _AioBearerUU(_AioBearer, grpc.aio.UnaryUnaryClientInterceptor):
    intercept_unary_unary = _AioBearer._call


class _AioBearerUS(_AioBearer, grpc.aio.UnaryStreamClientInterceptor):
    intercept_unary_stream = _AioBearer._call


class _AioBearerSU(_AioBearer, grpc.aio.StreamUnaryClientInterceptor):
    intercept_stream_unary = _AioBearer._call


class _AioBearerSS(_AioBearer, grpc.aio.StreamStreamClientInterceptor):
    intercept_stream_stream = _AioBearer._call


def aio_channel(
    address: str, token: str | None = None, tls_ca=None, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> grpc.aio.Channel:
    """The asyncio variant of `channel`."""
    opts = _options(max_message_bytes)
    interceptors = [cls(token) for cls in (_AioBearerUU, _AioBearerUS, _AioBearerSU, _AioBearerSS)] if token else None
    if tls_ca:
        return grpc.aio.secure_channel(address, _credentials(tls_ca), opts, interceptors=interceptors)
    return grpc.aio.insecure_channel(address, opts, interceptors=interceptors)


class ServiceClient:
    """What every sync client shares: its channel, GetModel, ReloadModel, close. A subclass names
    its stub and its two request messages. Errors raise ServiceError (status `code`, `details`).

    `max_batch`: the server's limit on images or prompts per request; larger calls go in chunks.
    `timeout`: every call's deadline in seconds (a streaming call's: the whole stream); None =
    `default_timeout()`. A call past it raises ServiceError DEADLINE_EXCEEDED."""

    stub = get_model_request = reload_model_request = None

    def __init__(
        self,
        address: str,
        token: str | None = None,
        tls_ca=None,
        timeout: float | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
    ):
        self.timeout, self.max_batch = default_timeout() if timeout is None else timeout, max_batch
        self._channel = channel(address, token, tls_ca)
        self._stub = self.stub(self._channel)

    def chunks(self, n: int) -> list[slice]:
        return [slice(i, i + self.max_batch) for i in range(0, n, self.max_batch)]

    def model_info(self):
        with rpc_errors():
            return self._stub.GetModel(self.get_model_request(), timeout=self.timeout).model

    def reload(self, checkpoint: str):
        with rpc_errors():
            return self._stub.ReloadModel(self.reload_model_request(checkpoint=checkpoint), timeout=self.timeout).model

    def close(self) -> None:
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
