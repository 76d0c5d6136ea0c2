"""Smoke tests of the benchmarks (bench/): they run, check what they claim, and write the
JSON shape; bench/gpu.py builds and runs its setup on a tiny CPU model and refuses without CUDA.
Nothing here measures speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
KEYS = {"name", "baseline", "candidate", "unit", "ratio", "target", "machine"}


def _run(*args, timeout=300):
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


def test_gpu_script_dry_run(tmp_path):
    out = tmp_path / "gpu.json"
    r = _run("bench/gpu.py", "--dry-run", "--out", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "greedy tokens identical on 100.0%" in r.stdout
    assert "Janus-Pro-1B configuration: 2.08 B parameters" in r.stdout
    rows = json.loads(out.read_text())
    assert isinstance(rows, list) and all(KEYS <= set(row) for row in rows)
    sampling = rows[0]  # the memory-bandwidth bound is worked out, and the sampler below it
    assert sampling["bandwidth_bound_candidates_per_s"] > 0 and 0 < sampling["share_of_bound"] < 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_gpu_script_refuses_without_cuda():
    r = _run("bench/gpu.py")
    assert r.returncode == 2
    assert r.stdout == "" and len(r.stderr.strip().splitlines()) == 1 and "CUDA" in r.stderr


def test_quick_run_writes_a_list_of_results(tmp_path):
    out = tmp_path / "results.json"
    r = _run("-m", "bench", "--quick", "--out", str(out), timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert isinstance(rows, list) and len(rows) == 11
    for row in rows:
        assert KEYS <= set(row), row
        assert row["ratio"] == pytest.approx(row["candidate"] / row["baseline"], rel=1e-3)
        assert {"cpu", "cores", "torch", "load"} <= set(row["machine"])
    assert "greedy tokens identical" in next(x for x in rows if x["name"].startswith("sampling"))["check"]


def test_live_bytes_counts_what_is_alive_and_its_peak():
    from bench.memory import LiveBytes

    outside = torch.zeros(100)
    with LiveBytes() as tracker:
        a = torch.ones(1000)  # 4,000 bytes
        b = a * 2  # 8,000
        del a  # 4,000
        view = b.view(10, 100)  # a view: no new storage
        b.add_(1)
        outside.add_(1)  # storage made outside the mode: not counted
        d = b.double()  # 12,000
    assert (tracker.live, tracker.peak) == (12000, 12000)
    del b, view, d
    assert tracker.live == 0


def test_memory_row_accounts_janus_pro_sizes():
    """The noise drawn up front for 1,024 rows is [1024, 576, 16384] float32 (36 GiB); per step it
    is bounded by the batch (a few bytes per row and code, measured)."""
    from bench.memory import run

    (row,) = run(quick=True, log=lambda *_: None)
    gib = row.extra["gib"]
    assert gib["noise_before"] == 36.0
    assert 1024 * 16384 * 4 / 2**30 <= gib["noise_after"] < 1.0  # at least the float32 result, far below before
    saved = row.extra["peak_gib_before"] - row.extra["peak_gib_after"]
    assert saved == pytest.approx(36.0 - gib["noise_after"], abs=0.02)
    assert row.ratio > 1


def test_bad_arguments_exit_2():
    r = _run("-m", "bench", "--only", "nonsense")
    assert r.returncode == 2 and "unknown benchmark" in r.stderr


def test_counted_reference_counts_and_delegates(tiny_model):
    """The DPO baseline's reference: the model's own log-probs, each call counted (that the
    in-step reference trains exactly as the precomputed one is tests/unit/test_train_units.py's)."""
    import numpy as np

    from bench.dpo import CountedReference, make_pairs

    pairs = make_pairs(tiny_model, 3)
    prompts, tokens = [p for p, _, _ in pairs], torch.as_tensor(np.stack([w for _, w, _ in pairs]))
    ref = CountedReference(tiny_model)
    with torch.no_grad():
        assert torch.equal(ref.image_logprobs(prompts, tokens), tiny_model.image_logprobs(prompts, tokens))
    assert ref.calls == 1


@pytest.fixture(scope="module")
def tiny_model():
    sys.path.insert(0, str(ROOT))
    from unigap.model.adapter import UnifiedModel
    from unigap.model.build import TinySize, build_tiny
    from unigap.pretrain import vocabulary

    model, processor = build_tiny(
        vocabulary(), TinySize(hidden=64, layers=1, heads=2, vision_hidden=64, vision_layers=1, codebook=64)
    )
    return UnifiedModel(model.eval(), processor)
