"""Keep the judge's tritonserver running: when it dies, the judge process starts a new one.

A watcher thread looks at Triton every `interval_s`. When tritonserver has exited (killed,
crashed, out of memory), the judge reports NOT_SERVING on health (`on_down`), starts a new
tritonserver with the same model on the same ports (fresh ones when those are taken), and, once
it is ready, hands it to the front and reports SERVING again (`on_up`). Meanwhile the front
answers UNAVAILABLE, which clients retry (the loop's `with_retries`).

The same thread starts every replacement and stops the last tritonserver on `stop()`: pytriton
asks the kernel to end tritonserver when the thread that started it ends, so that thread must
live as long as the server it started.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from services.common.server import log_event
from services.judge.triton_model import RunningTriton


class TritonSupervisor:
    def __init__(
        self,
        triton: RunningTriton,
        start: Callable[[int, int, int], RunningTriton],
        on_down: Callable[[], None],
        on_up: Callable[[RunningTriton], None],
        interval_s: float = 0.5,
        max_backoff_s: float = 30.0,
    ):
        """`start(http_port, grpc_port, metrics_port)` starts a ready tritonserver (0 = a free port)."""
        self.triton, self.start, self.on_down, self.on_up = triton, start, on_down, on_up
        self.interval_s, self.max_backoff_s = interval_s, max_backoff_s
        self.pid = triton.pid
        self.restarts = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="triton-supervisor", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        """Until `stop()`: any exception is logged and the watch goes on (the thread must not end
        while the judge runs, or a later death of tritonserver would go unnoticed)."""
        try:
            while not self._stopping.wait(self.interval_s):
                try:
                    if not self.triton.alive():
                        self._restart()
                except Exception as e:
                    log_event("triton_supervisor_error", error=_one_line(e))
        finally:
            self._quietly(self.triton.stop)

    def _restart(self) -> None:
        dead = self.triton
        log_event("triton_exited", triton_pid=self.pid, restarting=True)
        self._quietly(self.on_down)
        self._quietly(dead.stop)  # pytriton has stopped its side already; this removes the folder
        ports, wait, attempt = (dead.http_port, dead.grpc_port, dead.metrics_port), 1.0, 0
        while not self._stopping.is_set():
            attempt += 1
            try:
                self.triton = self.start(*(ports if attempt == 1 else (0, 0, 0)))
            except Exception as e:  # e.g. a port taken meanwhile: the next try takes free ports
                log_event("triton_restart_failed", attempt=attempt, error=_one_line(e))
                self._stopping.wait(wait)
                wait = min(2 * wait, self.max_backoff_s)
                continue
            self.pid, self.restarts = self.triton.pid, self.restarts + 1
            log_event(
                "triton_restarted",
                triton_pid=self.pid,
                triton_http=self.triton.http,
                triton_grpc=self.triton.grpc,
                triton_metrics=self.triton.metrics,
                restarts=self.restarts,
            )
            self._quietly(lambda: self.on_up(self.triton))
            return

    @staticmethod
    def _quietly(callback) -> None:
        try:
            callback()
        except Exception as e:  # a report or a stop that fails (e.g. the server stopping) must not end the watch
            log_event("triton_supervisor_callback_failed", error=f"{type(e).__name__}: {_one_line(e)}")

    def stop(self) -> None:
        """Stop watching, then stop tritonserver (blocking; waits for a restart in progress)."""
        self._stopping.set()
        self._thread.join()


def _one_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]
