"""`python -m services.judge --model PATH_OR_REF --mode likelihood [--port ...] [--triton-http-port ...]
[--triton-grpc-port ...] [--generation HOST:PORT]`: Triton with the judge bound plus the gRPC front;
on SIGTERM / SIGINT the front drains, then Triton stops (no tritonserver left behind)."""

import sys

from services.common.server import main
from services.judge.server import JudgeSettings, start

if __name__ == "__main__":
    sys.exit(main(JudgeSettings, start, prog="python -m services.judge"))
