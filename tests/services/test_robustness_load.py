"""Load: 64 concurrent clients for 30 s against each server (the shipped model), on loopback.

Both servers run as subprocesses (`python -m services.generation`, `python -m services.judge`
with its tritonserver), so the memory measured is theirs. Each test first warms the server up
with the same load for a few seconds, reads its memory, runs the measured 30 s, and reads again.
Small requests: Generate one prompt, n=1; Score one to four rendered images.

Memory is compared as the peak resident set (VmHWM in /proc/<pid>/status) after the warm-up and
at the end: a server's RSS swings with the size of the batch in flight (tens of MiB here), so two
instantaneous VmRSS readings say more about timing than about growth, while a leak or unbounded
cache raises the peak. VmRSS at both moments is reported too.

Pass: no request fails, and the peak grew by less than 10% over the measured window. The p50 /
p99 latencies, throughput and memory figures are printed and written to
reports/robustness/load.json.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import numpy as np
import pytest
from support.servers import Server

from services.api import generation_pb2, generation_pb2_grpc, judge_pb2, judge_pb2_grpc
from services.common.client import aio_channel
from services.common.images import encode_png
from unigap import world

pytest.importorskip("pytriton")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]
ROOT = Path(__file__).resolve().parents[2]
REPORT = ROOT / "reports" / "robustness" / "load.json"
CLIENTS, WARMUP_S, DURATION_S = 64, 8.0, 30.0
MAX_GROWTH = 0.10
TOKEN = "load-test-token"


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """Resident set size of one process (VmRSS; VmHWM: its peak so far), KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def tree_rss_kib(pid: int, field: str = "VmRSS") -> int:
    """Sum over a process and all its descendants (the judge: its tritonserver and Python stub)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(") ", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += rss_kib(p, field)
        except (OSError, AssertionError):
            pass
        todo += children.get(p, [])
    return total


@pytest.fixture(scope="module")
def servers():
    """Both servers start at once (the judge's Triton takes seconds) and stop cleanly at the end."""
    procs = {
        "generation": Server("services.generation", "serving", TOKEN),
        "judge": Server("services.judge", "judge", TOKEN),
    }
    try:
        yield {name: (p.ready(), p.p.pid) for name, p in procs.items()}
    finally:
        codes = {name: p.stop() for name, p in procs.items()}
    assert codes == {"generation": 0, "judge": 0}


def load(address: str, make_call, seconds_warm: float, seconds: float, on_warm) -> dict:
    """CLIENTS coroutines, each with its own channel, calling back to back: `seconds_warm` of
    warm-up, `on_warm()`, then `seconds` measured. Returns latencies (s) and errors."""

    async def main():
        channels = [aio_channel(address, token=TOKEN) for _ in range(CLIENTS)]
        latencies, errors, phase = [], [], {"measuring": False, "stop": False}

        async def client(i, ch):
            call, k = make_call(ch), 0
            while not phase["stop"]:
                t = time.perf_counter()
                try:
                    await call(i, k)
                except Exception as e:  # any failure counts; the test shows the first ones
                    errors.append(f"{type(e).__name__}: {e}"[:300])
                    await asyncio.sleep(0.1)
                    continue
                finally:
                    k += 1
                if phase["measuring"]:
                    latencies.append(time.perf_counter() - t)

        tasks = [asyncio.create_task(client(i, ch)) for i, ch in enumerate(channels)]
        await asyncio.sleep(seconds_warm)
        on_warm()
        phase["measuring"], t0 = True, time.perf_counter()
        await asyncio.sleep(seconds)
        phase["measuring"], phase["stop"] = False, True
        elapsed = time.perf_counter() - t0
        await asyncio.gather(*tasks)
        for ch in channels:
            await ch.close()
        return {"latencies": latencies, "errors": errors, "elapsed_s": elapsed}

    return asyncio.run(main())


def memory(pid: int) -> dict:
    return {
        "rss": rss_kib(pid),
        "peak": rss_kib(pid, "VmHWM"),
        "tree_rss": tree_rss_kib(pid),
        "tree_peak": tree_rss_kib(pid, "VmHWM"),
    }


def run_and_report(name: str, address: str, pid: int, make_call, capsys) -> dict:
    mem = {}
    out = load(address, make_call, WARMUP_S, DURATION_S, on_warm=lambda: mem.update(start=memory(pid)))
    mem["end"] = memory(pid)
    lat = np.array(out["latencies"]) * 1000

    def mib(key):
        return [round(mem["start"][key] / 1024, 1), round(mem["end"][key] / 1024, 1)]

    def growth(key):
        return round(100 * (mem["end"][key] / mem["start"][key] - 1), 2)

    figures = {
        "service": name,
        "clients": CLIENTS,
        "duration_s": round(out["elapsed_s"], 1),
        "warmup_s": WARMUP_S,
        "requests": int(lat.size),
        "errors": len(out["errors"]),
        "throughput_rps": round(lat.size / out["elapsed_s"], 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if lat.size else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 1) if lat.size else None,
        "max_ms": round(float(lat.max()), 1) if lat.size else None,
        "peak_rss_mib": mib("peak"),
        "peak_rss_growth_pct": growth("peak"),
        "rss_mib": mib("rss"),
        "rss_growth_pct": growth("rss"),
        "tree_peak_rss_mib": mib("tree_peak"),
        "tree_peak_rss_growth_pct": growth("tree_peak"),
        "tree_rss_mib": mib("tree_rss"),
        "tree_rss_growth_pct": growth("tree_rss"),
    }
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    report = json.loads(REPORT.read_text()) if REPORT.exists() else {}
    report[name] = figures
    REPORT.write_text(json.dumps(report, indent=1))
    f = figures
    with capsys.disabled():
        print(
            f"\nload {name}: {f['requests']} requests from {CLIENTS} clients in {f['duration_s']} s ({f['throughput_rps']} req/s), "
            f"errors {f['errors']}, p50 {f['p50_ms']} ms, p99 {f['p99_ms']} ms; server peak RSS {f['peak_rss_mib'][0]} -> "
            f"{f['peak_rss_mib'][1]} MiB ({f['peak_rss_growth_pct']:+.2f}%), RSS {f['rss_mib'][0]} -> {f['rss_mib'][1]} MiB "
            f"({f['rss_growth_pct']:+.2f}%); with its children peak {f['tree_peak_rss_mib'][0]} -> {f['tree_peak_rss_mib'][1]} MiB "
            f"({f['tree_peak_rss_growth_pct']:+.2f}%); {REPORT.relative_to(ROOT)}"
        )
    assert not out["errors"], out["errors"][:5]
    assert figures["requests"] >= CLIENTS  # every client got answers in the window
    return figures


def test_generation_under_64_concurrent_clients(servers, capsys):
    info, pid = servers["generation"]
    prompts = [s.text for s in world.split("heldout")]

    def make_call(ch):
        stub = generation_pb2_grpc.GenerationServiceStub(ch)

        async def call(i, k):
            request = generation_pb2.GenerateRequest(
                prompts=[prompts[(i + k) % len(prompts)]], n=1, cfg_scale=1.5, temperature=0.7, seed=1000 * i + k
            )
            replies = [r async for r in stub.Generate(request, timeout=60)]
            assert len(replies) == 1 and replies[0].png.startswith(b"\x89PNG") and len(replies[0].image_tokens) == 64

        return call

    figures = run_and_report("generation", info["address"], pid, make_call, capsys)
    assert figures["peak_rss_growth_pct"] < 100 * MAX_GROWTH, figures


def test_judge_under_64_concurrent_clients(servers, capsys):
    info, pid = servers["judge"]
    specs = world.split("heldout")[:16]
    pngs = [encode_png(im) for im in world.render_batch(specs, list(range(len(specs))), 32)]

    def make_call(ch):
        stub = judge_pb2_grpc.JudgeServiceStub(ch)

        async def call(i, k):
            m = 1 + (i + k) % 4  # one to four images
            pairs = [
                judge_pb2.ImagePrompt(png=pngs[(i + k + j) % len(specs)], prompt=specs[(i + k + j) % len(specs)].text)
                for j in range(m)
            ]
            reply = await stub.Score(judge_pb2.ScoreRequest(pairs=pairs), timeout=60)
            assert len(reply.judgments) == m and all(0 <= j.p_yes <= 1 for j in reply.judgments)

        return call

    figures = run_and_report("judge", info["front"], pid, make_call, capsys)
    assert figures["peak_rss_growth_pct"] < 100 * MAX_GROWTH, figures
    assert figures["tree_peak_rss_growth_pct"] < 100 * MAX_GROWTH, figures  # tritonserver and its stub too
