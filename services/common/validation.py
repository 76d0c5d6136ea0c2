"""Input checks that name the offending field, and the mapping of errors to gRPC statuses.

Servicers raise `Invalid("prompts[3]", "is empty")`; the error interceptor (installed by
`serve`) turns it into INVALID_ARGUMENT "prompts[3]: is empty". `NotFound` becomes NOT_FOUND, and
any other exception INTERNAL with a short message (the traceback goes to the server log only).
"""

from __future__ import annotations

import io
import logging
import math
from contextlib import asynccontextmanager

import grpc
import numpy as np
from PIL import Image

from services.common.interceptors import GuardInterceptor

log = logging.getLogger("unigap.services")

# Decompression-bomb guard: a few-kB PNG can claim gigapixels; refuse before decoding pixels.
MAX_PIXELS = 4096 * 4096


class Invalid(Exception):
    """A request field that cannot be served: INVALID_ARGUMENT "<field>: <why>"."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, why: str):
        super().__init__(f"{field}: {why}")
        self.field, self.why = field, why


class NotFound(Invalid):
    """A well-formed reference to something that does not exist: NOT_FOUND "<field>: <why>"."""

    code = grpc.StatusCode.NOT_FOUND


class Refused(Invalid):
    """A field-named refusal with any status (Invalid is INVALID_ARGUMENT only)."""

    def __init__(self, code: grpc.StatusCode, field: str, why: str):
        super().__init__(field, why)
        self.code = code


@asynccontextmanager
async def _statuses(method: str, context):
    try:
        yield
    except Invalid as e:
        await context.abort(e.code, str(e))
    except grpc.aio.AbortError:
        raise
    except Exception as e:
        log.exception("unexpected error in %s", method)
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error ({type(e).__name__}); see the server log")


def error_interceptor() -> GuardInterceptor:
    return GuardInterceptor(_statuses)


# ---------------------------------------------------------------------------------------- checks
def check_batch(n_items: int, settings, field: str) -> None:
    if n_items == 0:
        raise Invalid(field, "is empty")
    if n_items > settings.max_batch:
        raise Invalid(field, f"has {n_items} items; at most {settings.max_batch} per request")


def check_prompts(prompts, settings, field: str = "prompts") -> None:
    check_batch(len(prompts), settings, field)
    for i, prompt in enumerate(prompts):
        if not prompt.strip():
            raise Invalid(f"{field}[{i}]", "is empty")
        if len(prompt) > settings.max_prompt_chars:
            raise Invalid(f"{field}[{i}]", f"has {len(prompt)} characters; at most {settings.max_prompt_chars}")


def check_finite(value: float, field: str, lo: float, hi: float, *, lo_open: bool = False) -> None:
    """`value` must be finite and in [lo, hi] ((lo, hi] with lo_open)."""
    if not math.isfinite(value):
        raise Invalid(field, f"is {value}; it must be a finite number")
    if value < lo or value > hi or (lo_open and value == lo):
        raise Invalid(field, f"is {value:g}; it must be in {'(' if lo_open else '['}{lo:g}, {hi:g}]")


def decode_png(data: bytes, field: str, size: int | None = None) -> np.ndarray:
    """PNG bytes -> uint8 [H, W, 3] RGB (alpha dropped, palettes and grey expanded).

    With `size`, an image of another size is resized (bicubic) to size x size, as the model's own
    image processor would, stretching a non-square image: clients may send any resolution.
    """
    if not data:
        raise Invalid(field, "is empty (expected PNG bytes)")
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as im:
            if im.width * im.height > MAX_PIXELS:
                raise Invalid(field, f"is {im.width}x{im.height} pixels; at most {MAX_PIXELS} pixels")
            rgb = im.convert("RGB")
    except Invalid:
        raise
    except Exception as e:  # PIL raises many types for bad bytes (OSError, SyntaxError, ValueError ...)
        raise Invalid(field, f"is not a readable PNG ({type(e).__name__}: {e})") from None
    if size is not None and rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(rgb, dtype=np.uint8)
