"""`python -m services.generation --model PATH_OR_REF [--port ...]`: serve until SIGTERM/SIGINT, then drain."""

from __future__ import annotations

import asyncio
import sys

from services.common.settings import parse_settings
from services.common.validation import Invalid
from services.generation.server import GenerationSettings, start


async def _main(settings: GenerationSettings) -> None:
    running = await start(settings)
    await running.run_until_signal()


def main(argv: list[str] | None = None) -> int:
    settings = parse_settings(GenerationSettings, argv, prog="python -m services.generation")
    try:
        asyncio.run(_main(settings))
    except Invalid as e:  # a model that cannot be loaded: one line, exit 2
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
