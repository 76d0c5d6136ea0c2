"""`python -m services.judge --model PATH_OR_REF --mode likelihood [--port ...] [--triton-http-port ...]
[--triton-grpc-port ...] [--generation HOST:PORT]`: Triton with the judge bound plus the gRPC front;
on SIGTERM / SIGINT the front drains, then Triton stops (no tritonserver left behind)."""

from __future__ import annotations

import asyncio
import sys

from services.common.settings import parse_settings
from services.common.validation import Invalid
from services.judge.server import JudgeSettings, start


async def _main(settings: JudgeSettings) -> None:
    running = await start(settings)
    await running.run_until_signal()


def main(argv: list[str] | None = None) -> int:
    settings = parse_settings(JudgeSettings, argv, prog="python -m services.judge")
    try:
        asyncio.run(_main(settings))
    except Invalid as e:  # a model that cannot be loaded: one line, exit 2
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
