"""Wrap any aio RPC handler (unary or streaming, either servicer style) in one async context."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import grpc

# guard(method, context) -> an async context manager entered around the whole RPC: it sees the
# RPC's exceptions (and may turn them into a status) and exits once the last message is sent.
Guard = Callable[[str, grpc.aio.ServicerContext], AbstractAsyncContextManager]

_KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")


def _wrap(behavior, method: str, guard: Guard):
    if inspect.isasyncgenfunction(behavior):

        async def stream(request, context):
            async with guard(method, context):
                async for item in behavior(request, context):
                    yield item

        return stream

    # Coroutines, including streaming ones that write with context.write().
    async def call(request, context):
        async with guard(method, context):
            return await behavior(request, context)

    return call


class GuardInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, guard: Guard):
        self.guard = guard

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None:
            return None
        kind = handler_kind(handler)
        return handler._replace(**{kind: _wrap(getattr(handler, kind), details.method, self.guard)})


def handler_kind(handler) -> str:
    """Which of the four RPC shapes a grpc.RpcMethodHandler has."""
    return next(k for k in _KINDS if getattr(handler, k) is not None)


def status_name(context: grpc.aio.ServicerContext) -> str | None:
    """The status the RPC has been given so far (by abort or set_code), or None."""
    code = context.code()
    if code is None:
        return None
    if isinstance(code, grpc.StatusCode):
        return code.name
    return next((c.name for c in grpc.StatusCode if c.value[0] == code), str(code))
