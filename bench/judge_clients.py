"""Concurrent Triton clients for the judge benchmark, in their own process.

`python -m bench.judge_clients HOST:PORT IMAGES.npz CLIENTS` loads the images and prompts, warms
up, then answers each `run R` line on stdin with one JSON line: CLIENTS asyncio tasks, each sending
R single-image requests one after another (tritonclient.grpc.aio over one channel), timed from the
first send to the last reply. A process of its own, so the clients' Python does not share a GIL
with the model that pytriton runs in the benchmark's process.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import numpy as np


async def main(url: str, data: str, clients: int) -> None:
    import tritonclient.grpc.aio as tgrpc

    from services.judge.triton_model import MODEL_NAME

    npz = np.load(data, allow_pickle=False)
    images, prompts = npz["images"], [p.encode() for p in npz["prompts"].tolist()]
    client = tgrpc.InferenceServerClient(url)

    async def infer(i: int) -> float:
        k = i % len(images)
        inputs = [
            tgrpc.InferInput("image", [1, *images.shape[1:]], "UINT8"),
            tgrpc.InferInput("prompt", [1, 1], "BYTES"),
        ]
        inputs[0].set_data_from_numpy(images[k : k + 1])
        inputs[1].set_data_from_numpy(np.array([[prompts[k]]], dtype=object))
        result = await client.infer(MODEL_NAME, inputs)
        return float(result.as_numpy("p_yes")[0, 0])

    async def worker(c: int, requests: int, out: dict) -> None:
        for r in range(requests):
            i = c * requests + r
            out[i] = await infer(i)

    await asyncio.gather(*(infer(i) for i in range(min(clients, 8))))  # warm-up (channel, model)
    print(json.dumps({"ready": True}), flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line or line.strip() == "quit":
            break
        requests = int(line.split()[1])
        out: dict[int, float] = {}
        start, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker(c, requests, out) for c in range(clients)))
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        p = [out[i] for i in sorted(out)]
        print(json.dumps({"images": len(p), "seconds": seconds, "cpu_s": cpu, "p_yes": p}), flush=True)
    await client.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
