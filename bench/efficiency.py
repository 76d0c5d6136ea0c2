"""Efficiency: the judge forward's achieved FLOP/s as a share of this machine's matmul rate.

FLOPs: `torch.utils.flop_counter.FlopCounterMode` over one `Judge.score` call (likelihood mode,
in-process, BATCH rendered held-out images), with CPU flash attention counted by the same formula
torch uses for the other attention kernels (it has none registered for the CPU kernel), divided by
the images. Rate: those FLOPs over the median wall time of the same call. Machine rate: fp32
`torch.matmul` of the shape that carries most of the judge's matmul FLOPs (found by recording the
matmuls of that call), same thread count, measured in the same run.
"""

from __future__ import annotations

import time
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from bench.common import Result, machine, median
from bench.judge import rendered
from unigap.evaluate import make_judge

aten = torch.ops.aten


def _sdpa_cpu(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def count_flops(fn) -> tuple[int, dict]:
    mapping = {aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu}
    with FlopCounterMode(display=False, custom_mapping=mapping) as fc:
        fn()
    by_op = {str(k): int(v) for k, v in fc.get_flop_counts()["Global"].items()}
    return fc.get_total_flops(), by_op


class _Matmuls(TorchDispatchMode):
    """Records (M, K, N) of every mm / addmm / bmm run under it, weighted by FLOPs."""

    def __init__(self):
        super().__init__()
        self.flops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        packet = getattr(func, "overloadpacket", None)
        if packet in (aten.mm, aten.addmm, aten.bmm):
            a, b = (args[1], args[2]) if packet is aten.addmm else (args[0], args[1])
            batch = a.shape[0] if packet is aten.bmm else 1
            m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
            self.flops[(m, k, n)] += 2 * batch * m * k * n
        return out


def dominant_matmul(fn) -> tuple[int, int, int]:
    rec = _Matmuls()
    with rec:
        fn()
    return rec.flops.most_common(1)[0][0]


def matmul_rate(shape: tuple[int, int, int], seconds: float = 1.0, device: str = "cpu", dtype=torch.float32) -> float:
    """FLOP/s of a (M, K) @ (K, N) matmul, repeated for about `seconds`."""
    m, k, n = shape
    a, b = torch.randn(m, k, device=device, dtype=dtype), torch.randn(k, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device != "cpu" else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    rates = []
    for _ in range(3):  # best of three short windows: the machine's rate when nothing interferes
        reps, t = 0, time.perf_counter()
        while time.perf_counter() - t < seconds / 3:
            a @ b
            reps += 1
        sync()
        rates.append(2 * m * k * n * reps / (time.perf_counter() - t))
    return max(rates)


def run(um, quick: bool = False, log=print) -> list[Result]:
    batch, reps = (8, 1) if quick else (64, 7)
    images, prompts = rendered(batch, um.image_size)
    judge = make_judge(um, "likelihood")

    def call():
        judge.score(images, prompts)

    call()  # warm-up
    flops, by_op = count_flops(call)
    shape = dominant_matmul(call)
    single_flops, _ = count_flops(lambda: judge.score(images[:1], prompts[:1]))
    times, single_times, mm_rates = [], [], []
    for r in range(reps):  # interleaved with the matmul rate, so both see the same load
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
        t = time.perf_counter()
        judge.score(images[:1], prompts[:1])
        single_times.append(time.perf_counter() - t)
        mm_rates.append(matmul_rate(shape, 0.3 if quick else 0.6))
        log(
            f"  rep {r + 1}/{reps}: judge {batch} images {times[-1]:.3f} s, matmul {shape} {mm_rates[-1] / 1e9:.1f} GFLOP/s"
        )
    achieved = flops / median(times)
    peak = median(mm_rates)
    log(
        f"efficiency: {flops / batch / 1e6:.1f} MFLOP per image; judge {achieved / 1e9:.1f} GFLOP/s; matmul {peak / 1e9:.1f} GFLOP/s"
    )
    return [
        Result(
            f"judge FLOP/s / matmul FLOP/s (batch {batch})",
            peak / 1e9,
            achieved / 1e9,
            "GFLOP/s",
            None,
            f"fp32 matmul {shape[0]}x{shape[1]} @ {shape[1]}x{shape[2]} (the judge's dominant matmul) vs the judge forward",
            {
                "flops_per_image": int(flops / batch),
                "mflop_per_image": round(flops / batch / 1e6, 2),
                "flops_by_op": by_op,
                "matmul_shape": list(shape),
                "batch": batch,
                "reps": reps,
                "one_at_a_time_share": round(single_flops / median(single_times) / peak, 4),
                "note": "ratio = the judge's achieved FLOP/s over the matmul's: its share of this machine's matmul rate",
            },
            machine(),
        ),
    ]
