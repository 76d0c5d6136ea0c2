"""The trainer job (`python -m pipelines.trainer`) through `LocalExecutor`: alone and under torchrun.

Two gloo processes on the CPU must train the same model as one process and as `train_round` in
this process. Tolerance: AdamW moves a weight by at most about lr (1e-4) per step; these 3-7 steps
move the weights by 2e-4 to 4e-4. Gradients that differ only by float rounding (each rank sums its
part of a batch, with its own padding) move them apart by far less: 3e-8 to 2e-6 measured over
seeds, the most for DPO, where Adam amplifies the rounding of gradient components near its eps.
A wrongly weighted gradient (the ranks' unequal shares averaged unweighted) gives 4e-4 to 6e-4.
2e-5 sits an order of magnitude from both.
"""

import json
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from support.trainer_settings import first_train

from pipelines.executors import JobFailed, LocalExecutor, submit
from pipelines.trainer import job_record, result_record
from unigap.config import LoopConfig
from unigap.store import open_store
from unigap.store import records as rec
from unigap.train.data import RoundData, put_round_data
from unigap.train.round import TrainJob, train_round

TOL = 2e-5
PROMPTS = [
    "a red circle",
    "two blue squares",
    "a green circle left of a red square",
    "a blue triangle",
    "three red circles",
    "a green square",
    "a red square above a blue circle",
    "two green triangles",
]
# Batches that split unequally over two ranks (3/2, 2/1) and end with a single row (one rank empty).
TRAIN = {"sft": first_train(epochs=1, batch=5), "dpo": first_train(epochs=1, batch=3)}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_random):
    """A store with the tiny model and a round sampled from it: 31 SFT samples, 7 DPO pairs."""
    tmp = tmp_path_factory.mktemp("trainer-job")
    tiny_random.save(tmp / "model")
    url = str(tmp / "store")
    store = open_store(url)
    base = rec.put_checkpoint(store, tmp / "model")
    s = tiny_random.sample(PROMPTS, 4, seed=0, decode=False)
    rows = [(s.prompts[p], t.numpy()) for p, t in zip(s.prompt_index, s.tokens)]
    pairs = [(rows[i][0], rows[i][1], rows[i + 1][1]) for i in range(0, 28, 4)]
    data = put_round_data(store, RoundData(sft=rows[:31], pairs=pairs))
    jobs = {
        m: TrainJob(base=base, data=data, loop=asdict(LoopConfig(method=m, train=cfg)), round=1)
        for m, cfg in TRAIN.items()
    }
    return store, url, jobs, tmp


def weights(store, ref: str, cache) -> dict[str, torch.Tensor]:
    return load_file(str(rec.fetch_checkpoint(store, ref, cache) / "model.safetensors"))


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize("method,procs", [("sft", (1, 2)), ("dpo", (2,))])
def test_processes_train_the_same_model_as_in_process(setup, method, procs):
    """The job alone and under torchrun (2 gloo processes) equals `train_round` in this process."""
    store, url, jobs, tmp = setup
    job = jobs[method]
    in_process, log = train_round(store, job, tmp / "cache", progress=False, log=lambda line: None)
    runs = {n: submit(store, job, f"jobs/{method}-{n}", LocalExecutor(url, nproc=n, timeout_s=300)) for n in procs}
    ref_w = weights(store, in_process, tmp / "cache")
    diffs = {n: max_diff(ref_w, weights(store, ref, tmp / "cache")) for n, (ref, _) in runs.items()}
    moved = max_diff(ref_w, weights(store, job.base, tmp / "cache"))
    print(f"{method}: max |w| diff vs in-process by processes {diffs}; moved from base {moved:.2e}")
    assert moved > 5 * TOL  # the comparison is not vacuous: training moved the weights
    assert all(d < TOL for d in diffs.values())
    for _, train_log in runs.values():  # what is logged is the whole batch's, on any number of ranks
        assert train_log[0].keys() == log[0].keys() and train_log[0]["n"] == log[0]["n"]
        for k in set(log[0]) - {"epoch", "n"}:
            assert train_log[0][k] == pytest.approx(log[0][k], rel=1e-5, abs=1e-6), k


@pytest.mark.parametrize("method,modules", [("sft", "lm"), ("dpo", "lm+head")])
def test_sharded_processes_train_the_same_model_as_in_process(setup, method, modules):
    """`--shard fsdp` (UNIGAP_TRAINER_SHARD): 2 gloo processes each holding half of the trained
    weights, gradients and AdamW moments train the same model as `train_round` in this process, log
    the same figures, and rank 0 writes the whole checkpoint (every tensor, at its full shape)."""
    store, url, jobs, tmp = setup
    job = jobs[method]
    job = TrainJob(**{**asdict(job), "loop": {**job.loop, "train": {**job.loop["train"], "modules": modules}}})
    in_process, log = train_round(store, job, tmp / "cache", progress=False, log=lambda line: None)
    executor = LocalExecutor(url, nproc=2, timeout_s=300, env={"UNIGAP_TRAINER_SHARD": "fsdp"})
    ref, train_log = submit(store, job, f"jobs/{method}-fsdp-2", executor)
    ref_w, sharded_w = weights(store, in_process, tmp / "cache"), weights(store, ref, tmp / "cache")
    assert {k: v.shape for k, v in sharded_w.items()} == {k: v.shape for k, v in ref_w.items()}
    diff, moved = max_diff(ref_w, sharded_w), max_diff(ref_w, weights(store, job.base, tmp / "cache"))
    print(f"{method} {modules}: max |w| diff, sharded vs in-process {diff:.2e}; moved from base {moved:.2e}")
    assert moved > 5 * TOL and diff < TOL
    assert train_log[0].keys() == log[0].keys() and train_log[0]["n"] == log[0]["n"]
    for k in set(log[0]) - {"epoch", "n"}:
        assert train_log[0][k] == pytest.approx(log[0][k], rel=1e-5, abs=1e-6), k


def _shard_worker(rank: int, world: int, port: int, out: str) -> None:
    """One rank: the tiny model sharded, one AdamW step; what this rank holds goes to OUT/<rank>.json."""
    import os

    import torch.distributed as dist

    from unigap.model.adapter import UnifiedModel
    from unigap.model.build import TinySize, build_tiny
    from unigap.pretrain import vocabulary
    from unigap.train.trainer import shard_model, trainable_parameters

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        size = TinySize(hidden=64, layers=2, heads=2, vision_hidden=64, vision_layers=1, codebook=64)
        um = UnifiedModel(*build_tiny(vocabulary(), size, seed=0))
        whole = sum(p.numel() for p in trainable_parameters(um, "lm"))
        root = shard_model(um, "lm")
        params = [p for p in um.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4)
        tokens = torch.randint(0, 64, (2, 4), generator=torch.Generator().manual_seed(0))
        root(PROMPTS[:2], tokens).sum().backward()
        opt.step()
        local = lambda ts: sum(t.to_local().numel() for t in ts)  # noqa: E731
        held = {
            "whole": whole,
            "weights": local(params),
            "grads": local(p.grad for p in params),
            "adam": local(v for st in opt.state.values() for k, v in st.items() if k != "step"),
        }
        Path(out, f"{rank}.json").write_text(json.dumps(held))
    finally:
        dist.destroy_process_group()


def test_sharding_splits_weights_gradients_and_optimizer_state(tmp_path):
    """What `shard_model` saves: each of 2 ranks holds half the trained weights, half their
    gradients and half of AdamW's moments (the halves add up to the whole, nothing is copied)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_shard_worker, args=(2, port, str(tmp_path)), nprocs=2)
    held = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2)]
    print(f"per rank: {held}")
    whole = held[0]["whole"]
    for what, factor in (("weights", 1), ("grads", 1), ("adam", 2)):
        assert sum(h[what] for h in held) == factor * whole, what
        assert all(h[what] <= 0.55 * factor * whole for h in held), (what, held)


def test_shard_refuses_what_it_cannot_run(setup):
    """A bad --shard, and a job a sharded trainer cannot run (LoRA), exit 2 with one line, before training."""
    store, url, jobs, _ = setup
    sft = jobs["sft"]
    lora = TrainJob(**{**asdict(sft), "loop": {**sft.loop, "train": {**sft.loop["train"], "lora_rank": 4}}})
    rec.put_record_json(store, job_record("jobs/lora"), asdict(lora))
    rec.put_record_json(store, job_record("jobs/sft-fsdp-bad"), asdict(sft))
    for args, what in (
        (["--job", "jobs/sft-fsdp-bad", "--shard", "zero3"], "must be one of none, fsdp"),
        (["--job", "jobs/lora", "--shard", "fsdp"], "--shard fsdp trains full weights"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "pipelines.trainer", "--store", url, *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and what in proc.stderr and "Traceback" not in proc.stderr


def test_rerun_of_a_finished_job_does_nothing(setup):
    store, url, jobs, _ = setup
    key = "jobs/sft-1"  # done already when the test above ran first
    first = submit(store, jobs["sft"], key, LocalExecutor(url))
    record = store.get_record(result_record(key))
    t = time.monotonic()
    assert submit(store, jobs["sft"], key, LocalExecutor(url)) == first
    assert time.monotonic() - t < 3  # it loads no model (importing torch alone takes longer)
    assert store.get_record(result_record(key)) == record


def test_missing_job_record_is_bad_input(setup):
    """Exit status 2 and one line naming what is wrong (a missing record, a store URL it cannot use)."""
    _, url, _, _ = setup
    for what, store in (("jobs/none/job.json", url), ("ftp://x/y", "ftp://x/y")):
        proc = subprocess.run(
            [sys.executable, "-m", "pipelines.trainer", "--store", store, "--job", "jobs/none"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and what in proc.stderr and "Traceback" not in proc.stderr


def test_failing_job_raises_with_its_log_tail(setup):
    store, url, jobs, _ = setup
    broken = TrainJob(**{**asdict(jobs["sft"]), "data": "0" * 64})  # round data that is not in the store
    with pytest.raises(JobFailed) as e:
        submit(store, broken, "jobs/broken", LocalExecutor(url))
    msg = str(e.value)
    assert "jobs/broken" in msg and "exit status 1" in msg
    assert f"object {'0' * 64} is not in the store" in msg  # from the job's traceback
    assert store.get_record(result_record("jobs/broken")) is None
    assert json.loads(store.get_record(job_record("jobs/broken")))["data"] == "0" * 64


def test_timeout_stops_the_job(setup):
    store, url, jobs, _ = setup
    t = time.monotonic()
    with pytest.raises(JobFailed, match="timed out after 1 s"):
        submit(store, jobs["sft"], "jobs/slow", LocalExecutor(url, nproc=2, timeout_s=1))
    assert time.monotonic() - t < 15
    assert store.get_record(result_record("jobs/slow")) is None
    # torchrun's workers run in sessions of their own: they must be stopped too, not left training.
    assert not [p for p in Path("/proc").glob("[0-9]*") if b"jobs/slow" in _cmdline(p)]


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:  # gone meanwhile
        return b""
