"""Bearer-token authentication: a server interceptor and the client side of it."""

from __future__ import annotations

import hmac

import grpc

from services.common.interceptors import handler_kind

# Probes and tooling must work without the token.
OPEN_SERVICES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """Call metadata that authenticates with `token` (nothing when there is no token)."""
    return (("authorization", f"Bearer {token}"),) if token else ()


def _denied(why: str):
    async def deny(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, why)

    return deny


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Every RPC outside OPEN_SERVICES must carry `authorization: Bearer <token>`; no token = open."""

    def __init__(self, token: str | None):
        self.expected = f"Bearer {token}".encode() if token else None

    def _refusal(self, metadata) -> str | None:
        given = next((v for k, v in metadata or () if k == "authorization"), None)
        if given is None:
            return "this server needs a token: send metadata 'authorization: Bearer <token>'"
        given = given.encode() if isinstance(given, str) else given
        if not hmac.compare_digest(given, self.expected):  # constant time: no timing oracle
            return "the bearer token is not valid"
        return None

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if self.expected is None or handler is None or details.method.startswith(OPEN_SERVICES):
            return handler
        why = self._refusal(details.invocation_metadata)
        if why is None:
            return handler
        return handler._replace(**{handler_kind(handler): _denied(why)})
