"""Helpers shared by test files: server subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class Server:
    """A server subprocess in its own session; waits for its JSON start line."""

    def __init__(self, module: str, event: str, token: str, *args: str):
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1"}
        self.p = subprocess.Popen(
            [sys.executable, "-m", module, "--port", "0", "--token", token, *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        self.event, self.info, self._ready = event, None, threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:  # keep draining: a full pipe would block the server
            if self.info is None and line.startswith("{") and json.loads(line).get("event") == self.event:
                self.info = json.loads(line)
                self._ready.set()
        self._ready.set()

    def ready(self, timeout: float = 180) -> dict:
        assert self._ready.wait(timeout) and self.info, f"{self.p.args[2]} did not start (status {self.p.poll()})"
        return self.info

    def stop(self) -> int:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        try:
            return self.p.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.p.pid, signal.SIGKILL)
            raise
