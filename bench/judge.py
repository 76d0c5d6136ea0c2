"""Judge throughput: Triton with dynamic batching under concurrent clients vs one image at a time.

Three ways to judge the same rendered held-out images with `make_judge(um, "likelihood")`:
- baseline: in-process, one image per `Judge.score` call;
- in-process batched: `Judge.score` on MAX_BATCH images at a time (what a perfect server could do);
- Triton: `unigap_judge` served by tritonserver (nvidia-pytriton, dynamic batching, the service's
  own `JudgeModel` and `start_triton`), CLIENTS concurrent clients in another process, each sending
  single-image requests over gRPC.
Rows: Triton over one-at-a-time (target 5) and Triton over in-process batched at the server's
batch size (the serving overhead, target 0.8). The Triton replies are checked against the
in-process scores of the same images.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import Result, interleaved, machine, median
from unigap import world
from unigap.evaluate import make_judge

ROOT = Path(__file__).resolve().parents[1]


def rendered(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """`n` renders of held-out prompts (cycled), each with its own seed."""
    specs = world.split("heldout")
    rows = [specs[i % len(specs)] for i in range(n)]
    return world.render_batch(rows, [seed + i for i in range(n)], size), [s.text for s in rows]


class Clients:
    """The client process (bench/judge_clients.py), driven line by line."""

    def __init__(self, url: str, images: np.ndarray, prompts: list[str], clients: int):
        self.folder = tempfile.mkdtemp(prefix="unigap-bench-")
        data = os.path.join(self.folder, "images.npz")
        np.savez(data, images=images, prompts=np.array(prompts))
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1"}
        self.p = subprocess.Popen(
            [sys.executable, "-m", "bench.judge_clients", url, data, str(clients)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._read()  # ready

    def _read(self) -> dict:
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(f"judge clients exited with {self.p.wait()}")
        return json.loads(line)

    def run(self, requests: int) -> dict:
        self.p.stdin.write(f"run {requests}\n")
        self.p.stdin.flush()
        return self._read()

    def close(self) -> None:
        import shutil

        if self.p.poll() is None:
            self.p.stdin.write("quit\n")
            self.p.stdin.flush()
            try:
                self.p.wait(30)
            except subprocess.TimeoutExpired:
                self.p.kill()
        shutil.rmtree(self.folder, ignore_errors=True)


def _cpu_seconds(pid: int | None) -> float:
    """CPU time (user + system) a process has used so far; 0 when unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, TypeError, ValueError, IndexError):
        return 0.0


def run(um, quick: bool = False, log=print) -> list[Result]:
    from services.judge.triton_model import MAX_BATCH, JudgeModel, start_triton

    clients, batch = (16, 16) if quick else (64, MAX_BATCH)
    reps = 1 if quick else 5
    per_client = 1 if quick else 6  # requests each client sends per repetition
    n_single = 16 if quick else 96  # images judged one at a time per repetition
    n_batched = batch * (1 if quick else 3)
    images, prompts = rendered(max(n_batched, clients * per_client, n_single), um.image_size)
    judge = make_judge(um, "likelihood")
    reference = judge.score(images, prompts).p_yes  # also the warm-up

    infer = JudgeModel(lambda ref: um, "likelihood")
    log(f"judge: starting Triton (dynamic batching, max batch {MAX_BATCH}); {clients} clients")
    triton = start_triton(infer)  # the service's defaults: max batch 64, 2 ms queue delay
    served: list[dict] = []
    inproc_cpu: list[float] = []
    try:
        pool = Clients(triton.grpc, images, prompts, clients)
        try:
            pool.run(1)  # warm-up: every client once, so the first timed round is not the first at full concurrency
            infer.batch_sizes.clear()

            def one_at_a_time():
                for i in range(n_single):
                    judge.score(images[i : i + 1], prompts[i : i + 1])

            def batched():
                own = time.process_time()
                for i in range(0, n_batched, batch):
                    judge.score(images[i : i + batch], prompts[i : i + batch])
                inproc_cpu.append(time.process_time() - own)

            def via_triton():
                server, own = _cpu_seconds(triton.pid), time.process_time()
                served.append(pool.run(per_client))
                served[-1]["server_cpu_s"] = _cpu_seconds(triton.pid) - server
                served[-1]["model_process_cpu_s"] = time.process_time() - own

            times = interleaved(
                {"one-at-a-time": one_at_a_time, "in-process batched": batched, "Triton": via_triton}, reps, log
            )
        finally:
            pool.close()
    finally:
        triton.stop()

    single = n_single / median(times["one-at-a-time"])
    inproc = n_batched / median(times["in-process batched"])
    rates = [s["images"] / s["seconds"] for s in served]  # the clients' own clock: first send to last reply
    tri = median(rates)
    sizes = list(infer.batch_sizes)
    p = np.array([x for s in served for x in s["p_yes"]])
    expect = np.tile(reference[: clients * per_client], len(served))
    max_diff = float(np.abs(p - expect).max())
    images_served = sum(s["images"] for s in served)
    cpu_ms = {
        k: round(1000 * sum(s[k] for s in served) / images_served, 2)
        for k in ("cpu_s", "server_cpu_s", "model_process_cpu_s")
    }
    log(
        f"judge: Triton batches {len(sizes)}, mean size {np.mean(sizes):.1f}; max |p_yes(Triton) - p_yes(in-process)| {max_diff:.1e}; "
        f"CPU ms per image: clients {cpu_ms['cpu_s']}, tritonserver {cpu_ms['server_cpu_s']}, model process {cpu_ms['model_process_cpu_s']} "
        f"(in-process batched: {1000 * sum(inproc_cpu) / (n_batched * len(inproc_cpu)):.2f})"
    )
    if max_diff > 1e-4:
        raise AssertionError(f"Triton scores differ from in-process scores by {max_diff}")
    common = {
        "images_per_rep": {"one_at_a_time": n_single, "batched": n_batched, "triton": clients * per_client},
        "reps": reps,
        "clients": clients,
        "triton_batch_size_mean": round(float(np.mean(sizes)), 2),
        "triton_batch_size_max": int(max(sizes)),
        "triton_executions": len(sizes),
        "triton_rates": [round(r, 2) for r in rates],
        "cpu_ms_per_image": {
            "clients": cpu_ms["cpu_s"],
            "tritonserver": cpu_ms["server_cpu_s"],
            "model_process (pytriton + judge)": cpu_ms["model_process_cpu_s"],
            "in_process_batched": round(1000 * sum(inproc_cpu) / (n_batched * len(inproc_cpu)), 2),
        },
        "check": f"Triton p_yes equal in-process p_yes (max abs diff {max_diff:.1e})",
    }
    m = machine()
    return [
        Result(
            f"judge: Triton, {clients} clients / one at a time",
            single,
            tri,
            "images/s",
            5.0,
            f"one image per in-process Judge.score call vs Triton dynamic batching, {clients} concurrent gRPC clients",
            {
                **common,
                "in_process_batched": round(inproc, 3),
                "paired_ratio": round(median([r * t / n_single for r, t in zip(rates, times["one-at-a-time"])]), 4),
            },
            m,
        ),
        Result(
            f"judge: Triton / in-process batch {batch}",
            inproc,
            tri,
            "images/s",
            0.8,
            f"in-process Judge.score on {batch} images at a time vs the same through Triton",
            {
                **common,
                "paired_ratio": round(
                    median([r * t / n_batched for r, t in zip(rates, times["in-process batched"])]), 4
                ),
            },
            m,
        ),
    ]
