"""A trainer killed mid-training resumes from its last training state and ends where an
uninterrupted run ends.

In-process: `train_sft` / `train_dpo` stopped after k steps (the state callback raises) and resumed
from the state they saved make the same updates as an uninterrupted run: bit-identical weights and
the same log, also when the curriculum added samples before the stop (they come back from the
state, the replay is not repeated). One process on the CPU is deterministic and a resume restores
every input of the remaining steps exactly (weights, AdamW moments and step counts, batch order,
schedule), so the tolerance there is zero.

As a job: `python -m pipelines.trainer` SIGKILLed (its whole process group) once its first state
record is in the store, then run again with the same key, resumes (its log says from which step,
on every rank) and writes the same weights as the uninterrupted run (`train_round` in this process,
64 steps): exactly, for one process with as many threads; within the 2e-5 of
tests/pipelines/test_trainer_job.py (two gloo ranks differ from one process by float rounding only; 1e-8
measured) when the killed and the rerun job both run two ranks under torchrun.
"""

import copy
import io
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from support.trainer_settings import first_train

from pipelines.executors import trainer_command
from pipelines.trainer import job_record, result_record, state_record
from unigap.config import LoopConfig
from unigap.model.adapter import UnifiedModel
from unigap.store import open_store
from unigap.store import records as rec
from unigap.train import trainer
from unigap.train.data import RoundData, put_round_data
from unigap.train.round import TrainJob, drop_state, get_state, put_state, regulariser, train_round

DDP_TOL = 2e-5  # tests/pipelines/test_trainer_job.py: 2 gloo ranks vs 1 process, float rounding only
ROOT = str(Path(__file__).resolve().parents[2])


# ------------------------------------------------------------------------------------ in-process
def _copy(um: UnifiedModel) -> UnifiedModel:
    return UnifiedModel(copy.deepcopy(um.model), um.processor)


def _weights(um: UnifiedModel) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in um.model.state_dict().items()}


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _roundtrip(state: dict) -> dict:
    """What the job does with a state: torch.save to bytes, torch.load(weights_only=True)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return torch.load(io.BytesIO(buf.getvalue()), map_location="cpu", weights_only=True)


class Stop(Exception):
    pass


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    first = [("a red circle", rng.integers(0, 64, 64)) for _ in range(7)]
    more = [("two blue squares", rng.integers(0, 64, 64)) for _ in range(5)]
    return first, more


def _run(method: str, um: UnifiedModel, data, calls: list | None = None, **kw):
    """3 epochs of batch 3 (3 + 4 + 4 = 11 steps); before epoch 2 the curriculum adds samples."""
    first, more = data
    method, _, extra = method.partition("+")
    cfg = first_train(
        epochs=3, batch=3, lora_rank=2 if extra == "lora" else 0, und_replay=1.0 if extra == "replay" else 0.0
    )
    if extra == "replay":  # its batches are drawn from the trained batch's tokens: a resume replays the same
        kw["anchor"] = regulariser(um, None, cfg)
    torch.manual_seed(0)  # the LoRA adapters' initialisation
    calls = [] if calls is None else calls
    if method == "sft":

        def on_epoch(e):
            calls.append(e)
            return more if e == 1 else []

        return trainer.train_sft(um, first, cfg, on_epoch=on_epoch, progress=False, **kw)
    pairs = [(p, t, t[::-1].copy()) for p, t in first]
    more_pairs = [(p, t, t[::-1].copy()) for p, t in more]

    def on_epoch(e):
        calls.append(e)
        if e != 1:
            return [], torch.zeros(0), torch.zeros(0)
        return more_pairs, -torch.arange(5.0), -torch.arange(5.0) - 1

    return trainer.train_dpo(
        um, pairs, -torch.arange(7.0), -torch.arange(7.0) - 2, cfg, on_epoch=on_epoch, progress=False, **kw
    )


@pytest.mark.parametrize("method", ["sft", "dpo", "sft+lora", "sft+replay"])
def test_stopped_and_resumed_in_process_is_bit_identical(tiny_random, data, method):
    plain = _copy(tiny_random)
    plain_log = _run(method, plain, data)
    states = []
    full = _copy(tiny_random)
    full_log = _run(method, full, data, checkpoint_every=2, save_state=states.append)
    # Taking states changes nothing; none after the last step (11), whose model is written next.
    assert _max_diff(_weights(plain), _weights(full)) == 0.0 and full_log == plain_log
    assert [(s["step"], s["epoch"], s["position"]) for s in states] == [
        (2, 0, 2),
        (4, 1, 1),
        (6, 1, 3),
        (8, 2, 1),
        (10, 2, 3),
    ]
    assert _max_diff(_weights(full), _weights(tiny_random)) > 1e-5  # training moved the weights

    for k in (1, 3):  # stopped in epoch 1 (before the curriculum) and in epoch 2 (after it added samples)
        kept = []

        def save_then_stop(state, kept=kept, k=k):
            kept.append(state)
            if len(kept) == k:
                raise Stop

        stopped = _copy(tiny_random)
        with pytest.raises(Stop):
            _run(method, stopped, data, checkpoint_every=2, save_state=save_then_stop)
        resumed, calls = _copy(tiny_random), []
        log = _run(method, resumed, data, calls, resume_state=_roundtrip(kept[-1]))
        assert _max_diff(_weights(resumed), _weights(full)) == 0.0
        assert log == full_log
        # The curriculum replays before epoch 2 only when the run stopped before it.
        assert calls == ([1, 2] if k == 1 else [2])


def test_a_state_from_another_run_is_refused(tiny_random, data):
    states = []
    _run("sft", _copy(tiny_random), data, checkpoint_every=4, save_state=states.append)
    first = data[0]
    for other in (first[:5], [(p, t[::-1].copy()) for p, t in first]):  # other samples, as many other samples
        with pytest.raises(ValueError, match="not from this run"):
            trainer.train_sft(
                _copy(tiny_random), other, first_train(epochs=3, batch=3), progress=False, resume_state=states[0]
            )
    with pytest.raises(ValueError, match="not from this run"):  # other settings
        trainer.train_sft(
            _copy(tiny_random), first, first_train(epochs=3, batch=3, lr=1e-3), progress=False, resume_state=states[0]
        )
    with pytest.raises(ValueError, match="not from this run"):
        _run("dpo", _copy(tiny_random), data, resume_state=states[0])


# ------------------------------------------------------------------------------------ as a job
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


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_random):
    """A store with the tiny model and 31 SFT samples; 4 epochs of batch 2 = 64 optimizer steps."""
    tmp = tmp_path_factory.mktemp("trainer-resume")
    tiny_random.save(tmp / "model")
    url = str(tmp / "store")
    store = open_store(url)
    base = rec.put_checkpoint(store, tmp / "model")
    s = tiny_random.sample(PROMPTS, 4, seed=0, decode=False)
    rows = [(s.prompts[p], t.numpy()) for p, t in zip(s.prompt_index, s.tokens)]
    data = put_round_data(store, RoundData(sft=rows[:31]))
    job = TrainJob(
        base=base, data=data, loop=asdict(LoopConfig(method="sft", train=first_train(epochs=4, batch=2))), round=1
    )
    # The uninterrupted run, in this process (as the loop runs it): a job in one process with as
    # many threads makes the same float operations in the same order, so it must match it exactly.
    ref, log = train_round(store, job, tmp / "cache", progress=False, log=lambda line: None)
    return (
        store,
        url,
        job,
        tmp,
        load_file(str(rec.fetch_checkpoint(store, ref, tmp / "cache") / "model.safetensors")),
        log,
    )


def _start(url: str, key: str, nproc: int, out: Path) -> subprocess.Popen:
    cmd = trainer_command([sys.executable], [sys.executable, "-m", "torch.distributed.run"], nproc, url, key)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
        "UNIGAP_CHECKPOINT_EVERY": "2",
    }
    if nproc == 1:  # as many threads as this process (conftest): the same float sums
        env["OMP_NUM_THREADS"] = str(torch.get_num_threads())
    with open(out, "w") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _tree(pid: int) -> list[int]:
    """`pid` and all its descendants (from /proc)."""
    parent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(stat.parent.name)] = int(fields[1])
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += [c for c, pp in parent.items() if pp == p]
    return tree


def _kill_like_a_pod(pid: int) -> None:
    """SIGKILL the job and every process under it. torchrun starts each worker in a session of its
    own, so killing torchrun's process group alone leaves the workers training; a pod's death
    takes them all."""
    for p in _tree(pid):
        try:
            os.killpg(p, signal.SIGKILL) if os.getpgid(p) == p else os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_job_keeps_its_last_training_state_only_and_none_once_done(tmp_path):
    store, record = open_store(str(tmp_path)), "jobs/x/state.json"
    states = [
        put_state(store, record, {"run": {"kind": "sft"}, "step": s, "epoch": 0, "position": s}) for s in (1, 2, 3)
    ]
    assert [store.has_object(sha) for sha in states] == [False, False, True]
    assert get_state(store, record)[0]["step"] == 3
    drop_state(store, record)
    assert not store.has_object(states[2]) and get_state(store, record) is None


@pytest.mark.parametrize("nproc", [1, 2])
def test_killed_job_resumes_from_its_last_state(setup, nproc):
    store, url, job, tmp, expected, expected_log = setup
    key = f"jobs/killed-{nproc}"
    rec.put_record_json(store, job_record(key), asdict(job))
    proc = _start(url, key, nproc, tmp / f"{nproc}-first.log")
    try:
        deadline = time.monotonic() + 120
        while store.get_record(state_record(key)) is None and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
    finally:
        _kill_like_a_pod(proc.pid)
        proc.wait()
    first_log = (tmp / f"{nproc}-first.log").read_text()
    assert proc.returncode == -signal.SIGKILL, f"the job ended before it could be killed:\n{first_log[-3000:]}"
    assert store.get_record(result_record(key)) is None
    state, state_sha = get_state(store, state_record(key))  # what the rerun will find (it may be later than the first)
    assert 0 < state["step"] < 64

    rerun = _start(url, key, nproc, tmp / f"{nproc}-rerun.log")
    assert rerun.wait(timeout=300) == 0, (tmp / f"{nproc}-rerun.log").read_text()[-3000:]
    log = (tmp / f"{nproc}-rerun.log").read_text()
    resumed = [line for line in log.splitlines() if "resuming from step" in line]
    assert len(resumed) == nproc and all(f"resuming from step {state['step']} " in line for line in resumed), (
        log
    )  # every rank
    result = rec.get_record_json(store, result_record(key))
    assert get_state(store, state_record(key)) is None and not store.has_object(state_sha)  # done: its state is deleted
    got = load_file(str(rec.fetch_checkpoint(store, result["checkpoint"], tmp / "cache") / "model.safetensors"))
    diff = _max_diff(expected, got)
    print(
        f"{nproc} process(es): killed after step {state['step']} of 64, resumed; max |w| diff vs uninterrupted {diff:.2e}"
    )
    if nproc == 1:
        assert diff == 0.0 and result["log"] == expected_log
    else:
        assert diff < DDP_TOL
        for a, b in zip(result["log"], expected_log):
            assert a["n"] == b["n"] and a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def test_bad_checkpoint_every_is_bad_input(tmp_path):
    """Exit status 2 and one line naming the setting, before any job is read."""
    for args, env, what in (
        (["--checkpoint-every", "-1"], {}, "--checkpoint-every"),
        ([], {"UNIGAP_CHECKPOINT_EVERY": "often"}, "UNIGAP_CHECKPOINT_EVERY"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "pipelines.trainer", "--store", str(tmp_path), "--job", "jobs/x", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **env},
            cwd=ROOT,
        )
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and what in proc.stderr and "Traceback" not in proc.stderr
