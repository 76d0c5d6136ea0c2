"""`python -m services.generation --model PATH_OR_REF [--port ...]`: serve until SIGTERM/SIGINT, then drain."""

import sys

from services.common.server import main
from services.generation.server import GenerationSettings, start

if __name__ == "__main__":
    sys.exit(main(GenerationSettings, start, prog="python -m services.generation"))
