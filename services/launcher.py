"""`unigap serve`: the judge (Triton + gRPC front), the generation server and, optionally, a local
S3 endpoint, each a child process; their addresses printed; all stopped together.

Each child runs in its own process group, so a terminal's Ctrl-C reaches only this process, which
then stops the children in order (front ends first, storage last) with SIGTERM, waits for their
drain, and kills the group of one that outlives it. A child that dies early stops the others.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

S3_BUCKET = "unigap"


@dataclass
class Child:
    name: str
    argv: list[str]
    address: str  # host:port
    env: dict = field(default_factory=dict)
    kind: str = "grpc"  # how readiness is checked: grpc (health) or http
    process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv, env={**os.environ, **self.env}, start_new_session=True)

    def ready(self) -> bool:
        if self.kind == "http":
            try:
                urllib.request.urlopen(f"http://{self.address}/", timeout=1)
                return True
            except OSError as e:
                return getattr(e, "code", None) is not None  # any HTTP answer means it listens
        with grpc.insecure_channel(self.address) as ch:
            try:
                reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
                return reply.status == health_pb2.HealthCheckResponse.SERVING
            except grpc.RpcError:
                return False

    def stop(self, timeout_s: float) -> None:
        """SIGTERM to the child alone, which stops its own helpers in order (the judge: tritonserver,
        then pytriton's shared-memory process, which frees its segments); SIGKILL to its whole group
        only when it has not exited within `timeout_s`. (SIGTERM to the group ended that helper
        before it could free its shared memory, and the resource tracker warned of leaked objects.)"""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def plan(
    model: str,
    store: str | None,
    generation_port: int,
    judge_port: int,
    s3_port: int | None,
    mode: str,
    host: str = "127.0.0.1",
    triton_ports: tuple[int, int] | None = None,
    evaluator: str = "shapes",
) -> list[Child]:
    """The children to start, in start order. With a local S3 endpoint, both servers use it as store."""
    py = sys.executable
    children, env = [], {}
    if s3_port is not None:
        if importlib.util.find_spec("moto") is None:
            raise ValueError(
                "--s3-port starts a local S3 endpoint with moto, which is a dev tool: pip install 'unigap[dev]'"
            )
        children.append(
            Child("s3", [py, "-m", "moto.server", "-H", host, "-p", str(s3_port)], f"{host}:{s3_port}", kind="http")
        )
        env = {
            "UNIGAP_S3_ENDPOINT": f"http://{host}:{s3_port}",
            "UNIGAP_S3_ACCESS_KEY": os.environ.get("UNIGAP_S3_ACCESS_KEY", "unigap"),
            "UNIGAP_S3_SECRET_KEY": os.environ.get("UNIGAP_S3_SECRET_KEY", "unigap-local"),
        }
        store = store or f"s3://{S3_BUCKET}"
    if store:
        env["UNIGAP_STORE"] = store
    gen = f"{host}:{generation_port}"
    children.append(
        Child(
            "generation",
            [py, "-m", "services.generation", "--model", model, "--host", host, "--port", str(generation_port)],
            gen,
            env,
        )
    )
    children.append(
        Child(
            "judge",
            [
                py,
                "-m",
                "services.judge",
                "--model",
                model,
                "--mode",
                mode,
                "--evaluator",
                evaluator,
                "--host",
                host,
                "--port",
                str(judge_port),
                "--generation",
                gen,
            ]
            + (
                ["--triton-http-port", str(triton_ports[0]), "--triton-grpc-port", str(triton_ports[1])]
                if triton_ports
                else []
            ),
            f"{host}:{judge_port}",
            env,
        )
    )
    return children


def wait_ready(children: list[Child], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    pending = list(children)
    while pending:
        for c in list(pending):
            if c.process.poll() is not None:
                raise RuntimeError(f"{c.name} exited with status {c.process.returncode} while starting")
            if c.ready():
                pending.remove(c)
        if pending and time.monotonic() > deadline:
            raise RuntimeError(f"{', '.join(c.name for c in pending)} not ready after {timeout_s:.0f} s")
        time.sleep(0.2)


def serve(children: list[Child], on_ready, ready_timeout_s: float = 120, stop_timeout_s: float = 30) -> int:
    """Start, report, supervise until a signal or a child's death, stop. Returns the exit status."""
    stopping = []
    handler = lambda signum, frame: stopping.append(signum)  # noqa: E731
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    status = 0
    try:
        for c in children:
            c.start()
        wait_ready(children, ready_timeout_s)
        on_ready(children)
        while not stopping:
            dead = [c for c in children if c.process.poll() is not None]
            if dead:
                print(
                    f"{dead[0].name} exited with status {dead[0].process.returncode}; stopping the others",
                    file=sys.stderr,
                )
                status = 1
                break
            time.sleep(0.2)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        status = 1
    finally:
        for c in reversed(children):  # front ends first, storage last
            c.stop(stop_timeout_s)
        for s, h in previous.items():
            signal.signal(s, h)
    return status
