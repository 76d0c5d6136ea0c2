"""The model's judge as a Triton model (nvidia-pytriton): `unigap_judge`, dynamically batched.

Inputs (batch dimension first): `image` UINT8 [-1, -1, 3], `prompt` BYTES [1], optional `checkpoint`
BYTES [1] (empty: the served model). Outputs: `p_yes` FP32 [1], `decision` BOOL [1] (at 0.5), and
`error` BYTES [1] (empty when the row was judged).

Errors: a bad row (an empty prompt, one outside the grammar in likelihood mode, a checkpoint that
does not load) gets p_yes NaN, decision false and its reason in `error`, one line that names the
row of its request and the field ("row 1: prompt: ..."); the other rows are judged. Nothing is
raised, even when every row is bad: pytriton can only fail a whole execution, which a dynamic
batch shares with other callers' requests, and it reports an exception as a Python traceback (of
two processes), not as a message. So a plain client checks `error`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sysconfig
import tempfile
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.common.validation import Invalid
from unigap.evaluate import check_judge_fits, make_judge
from unigap.model.adapter import UnifiedModel

MODEL_NAME = "unigap_judge"
MAX_BATCH = 64


def use_own_libpython() -> None:
    """Make Triton's Python backend stub link this interpreter's libpython, not the system's
    (a mismatched one fails model load with '_thread.RLock' errors). pytriton
    passes the environment on to tritonserver, so this must run before `Triton()` starts."""
    libdir = sysconfig.get_config_var("LIBDIR")
    parts = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    if libdir and (not parts or parts[0] != libdir):
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join([libdir] + [p for p in parts if p != libdir])


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now (tritonserver cannot be told to pick one and report it back)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _text(cell) -> str:
    return cell.decode("utf-8") if isinstance(cell, bytes) else str(cell)


@dataclass
class _Row:
    request: int
    index: int  # within its request
    image: np.ndarray
    prompt: str
    checkpoint: str


class JudgeModel:
    """The infer callable: one `Judge.score` (one batched forward) per model in the batch.

    `model_for(checkpoint)` returns the UnifiedModel to use ('' = the served one); it is asked per
    batch, so a reload takes effect at the next batch. Rows naming different references of the
    same model (the front sends the served model's reference, plain clients send '') share a group.
    """

    def __init__(
        self, model_for: Callable[[str], UnifiedModel], mode: str, on_batch: Callable[[int], None] | None = None
    ):
        self.model_for, self.mode, self.on_batch = model_for, mode, on_batch
        self.batch_sizes: deque[int] = deque(maxlen=4096)  # rows per execution: the batcher at work
        self._lock = threading.Lock()  # one execution at a time (one model instance)

    def __call__(self, requests) -> list[dict]:
        with self._lock:
            rows, errors = self._read(requests)
            p_yes = np.full(len(rows), np.nan, np.float32)
            for um, idx in self._groups(rows, errors).values():
                images = self._images(um, [rows[k].image for k in idx])
                p_yes[idx] = make_judge(um, self.mode).score(images, [rows[k].prompt for k in idx]).p_yes
            self.batch_sizes.append(len(rows))
            if self.on_batch:
                self.on_batch(len(rows))
            return self._responses(requests, p_yes, errors)

    def _read(self, requests) -> tuple[list[_Row], dict[int, str]]:
        """The rows of every request, and the reason ("row i: field: why") of each bad one, by row index."""
        rows, errors = [], {}
        for r, req in enumerate(requests):
            prompts = req["prompt"].reshape(-1)
            ckpts = req.data.get("checkpoint")
            ckpts = ckpts.reshape(-1) if ckpts is not None else [b""] * len(prompts)
            for i, (image, p, c) in enumerate(zip(req["image"], prompts, ckpts)):
                try:
                    prompt = _text(p)
                except UnicodeDecodeError:
                    prompt, why = "", "prompt: not UTF-8"
                else:
                    why = self._prompt_error(prompt)
                try:
                    checkpoint = _text(c)
                except UnicodeDecodeError:
                    checkpoint, why = "", why or "checkpoint: not UTF-8"
                if why:
                    errors[len(rows)] = f"row {i}: {why}"
                rows.append(_Row(r, i, image, prompt, checkpoint))
        return rows, errors

    def _prompt_error(self, prompt: str) -> str:
        if not prompt.strip():
            return "prompt: empty"
        try:
            check_judge_fits(self.mode, prompt)
        except ValueError as e:
            return f"prompt: {e}"
        return ""

    def _groups(self, rows: list[_Row], errors: dict[int, str]) -> dict[int, tuple[UnifiedModel, list[int]]]:
        models: dict[str, UnifiedModel | Exception] = {}
        groups: dict[int, tuple[UnifiedModel, list[int]]] = {}
        for k, row in enumerate(rows):
            if k in errors:
                continue
            if row.checkpoint not in models:
                try:
                    models[row.checkpoint] = self.model_for(row.checkpoint)
                except Exception as e:  # a bad checkpoint fails only the requests that named it
                    models[row.checkpoint] = e
            um = models[row.checkpoint]
            if isinstance(um, Exception):  # Invalid names its field; one line, as every error
                why = str(um) if isinstance(um, Invalid) else f"checkpoint: {um}"
                errors[k] = f"row {row.index}: " + (why.splitlines() or ["checkpoint: cannot be loaded"])[0]
                continue
            groups.setdefault(id(um), (um, []))[1].append(k)
        return groups

    @staticmethod
    def _images(um: UnifiedModel, images: list[np.ndarray]):
        """One array when every image has the model's size (the fast path); otherwise a list the
        model's image processor resizes, as the in-process judge would."""
        if all(im.shape == (um.image_size, um.image_size, 3) for im in images):
            return np.stack(images)
        return images

    @staticmethod
    def _responses(requests, p_yes: np.ndarray, errors: dict[int, str]) -> list[dict]:
        out, start = [], 0
        for req in requests:
            n = len(req["prompt"])
            p = p_yes[start : start + n].reshape(n, 1)
            err = np.array([[errors.get(k, "").encode()] for k in range(start, start + n)], dtype=object)
            start += n
            out.append({"p_yes": p, "decision": p >= 0.5, "error": err})  # NaN >= 0.5 is False
        return out


@dataclass
class RunningTriton:
    """tritonserver with `unigap_judge` bound, in a private temporary folder."""

    triton: object  # pytriton.triton.Triton
    host: str
    http_port: int
    grpc_port: int
    metrics_port: int
    folder: str

    @property
    def http(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        """tritonserver's process id (None once it has exited)."""
        server = getattr(self.triton, "_triton_server", None)  # pytriton keeps no public handle
        cmd = getattr(server, "_tritonserver_running_cmd", None)
        return cmd.pid if cmd is not None and cmd.is_alive() else None

    def alive(self) -> bool:
        """tritonserver runs and the model's proxy with it (pytriton stops itself when either dies)."""
        return self.triton.is_alive()

    def leftovers(self) -> list[int]:
        """Processes still running a program from this Triton's folder: the Python backend stub
        outlives a tritonserver that was killed (SIGKILL, or pytriton's fallback when SIGINT is
        not enough) and would stay, orphaned, for as long as the machine runs."""
        pids = []
        for exe in Path("/proc").glob("[0-9]*/exe"):
            try:
                if os.readlink(exe).startswith(os.path.realpath(self.folder) + os.sep):
                    pids.append(int(exe.parent.name))
            except (OSError, ValueError):  # gone meanwhile, or not ours to read
                continue
        return pids

    def stop(self) -> None:
        """SIGINT to tritonserver and wait (pytriton's stop), end what it left running, then remove
        the folder. Idempotent."""
        self.triton.stop()
        for pid in self.leftovers():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.folder, ignore_errors=True)


def start_triton(
    infer: JudgeModel,
    host: str = "127.0.0.1",
    http_port: int = 0,
    grpc_port: int = 0,
    metrics_port: int = 0,
    max_queue_delay_us: int = 2000,
    access_token: str | None = None,
    log_file: str | None = None,
    exit_timeout_s: int = 5,
) -> RunningTriton:
    """Start tritonserver with `unigap_judge` bound and wait until it is ready (~3 s on CPU).

    Ports 0 are picked free. Triton's protected endpoints (statistics, model repository, ...)
    take `access_token` (a random one when None) in the header `triton-access-token` over HTTP,
    `triton-grpc-protocol-triton-access-token` over gRPC. Call from
    a thread that outlives the server (the main thread, or the judge's TritonSupervisor): pytriton
    asks the kernel to end tritonserver when its starting thread ends.
    """
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

    use_own_libpython()
    folder = tempfile.mkdtemp(prefix="unigap-triton-")
    config = TritonConfig(
        http_address=host,
        http_port=http_port or free_port(host),
        grpc_address=host,
        grpc_port=grpc_port or free_port(host),
        metrics_address=host,
        metrics_port=metrics_port or free_port(host),
        allow_gpu_metrics=False,
        exit_timeout_secs=exit_timeout_s,
        # tritonserver's log would otherwise go to our stdout, which carries the JSON log lines
        log_file=log_file or os.path.join(folder, "tritonserver.log"),
    )
    # The workspace must not exist yet; a given one keeps ~/.cache/pytriton clean after a kill.
    triton = Triton(
        config=config,
        workspace=os.path.join(folder, "workspace"),
        security_config=TritonSecurityConfig(access_token=access_token),
    )
    running = RunningTriton(triton, host, config.http_port, config.grpc_port, config.metrics_port, folder)
    try:
        triton.bind(
            model_name=MODEL_NAME,
            infer_func=infer,
            inputs=[
                Tensor(name="image", dtype=np.uint8, shape=(-1, -1, 3)),
                Tensor(name="prompt", dtype=bytes, shape=(1,)),
                Tensor(name="checkpoint", dtype=bytes, shape=(1,), optional=True),
            ],
            outputs=[
                Tensor(name="p_yes", dtype=np.float32, shape=(1,)),
                Tensor(name="decision", dtype=np.bool_, shape=(1,)),
                Tensor(name="error", dtype=bytes, shape=(1,)),
            ],
            config=ModelConfig(
                max_batch_size=MAX_BATCH, batcher=DynamicBatcher(max_queue_delay_microseconds=max_queue_delay_us)
            ),
            strict=True,
        )
        triton.run()
    except BaseException:
        running.stop()
        raise
    return running
