"""Faults during a round, every part real and on loopback: Triton killed under the loop, the S3
endpoint going down mid-round, and a corrupted object in the store (local directory and S3).

What must hold: the loop rides out a Triton restart (retries with backoff, then completes); a
store that goes away ends the run with one line and status 2, publishes nothing half-done and a
rerun resumes from the finished steps; a corrupt object is never trained on and is named.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import asdict
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from unigap import world
from unigap.store import LocalStore
from unigap.store import records as rec
from unigap.store.base import object_key

pytest.importorskip("pytriton")
moto_server = pytest.importorskip("moto.server")
from services.judge.triton_model import free_port  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1"}
S3_KEYS = {"UNIGAP_S3_ACCESS_KEY": "robust", "UNIGAP_S3_SECRET_KEY": "robust-secret", "UNIGAP_S3_REGION": "us-east-1"}
# One small round: 7 pool prompts x 2 candidates, one epoch, one image per evaluated prompt.
LOOP_ARGS = ["--rounds", "1", "--n", "2", "--epochs", "1", "--eval-n", "1", "--eval-per-category", "1"]


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pool") / "pool.txt"
    path.write_text("\n".join(s.text for s in world.split("train")[::40]))
    return path


class Proc:
    """A subprocess in its own session; stdout lines are collected (JSON ones as events) as they come."""

    def __init__(self, argv: list[str], env: dict | None = None, cwd: Path = ROOT):
        self.p = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env or ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.err: list[str] = []
        self.events: list[dict] = []
        self._cv = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=lambda: self.err.extend(self.p.stderr), daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            with self._cv:
                self.lines.append(line)
                if line.startswith("{"):
                    try:
                        self.events.append(json.loads(line))
                    except ValueError:
                        pass
                self._cv.notify_all()
        with self._cv:
            self._cv.notify_all()

    def event(self, name: str, timeout: float = 180, after: int = 0) -> dict:
        """The first `name` event after the first `after` events."""

        def found():
            return next((e for e in self.events[after:] if e.get("event") == name), None)

        with self._cv:
            if not self._cv.wait_for(lambda: found() or self.p.poll() is not None, timeout) or not found():
                raise AssertionError(
                    f"no {name!r} event from {self.p.args[:3]} (status {self.p.poll()}): {''.join(self.err)[-2000:]}"
                )
            return found()

    def wait(self, timeout: float) -> int:
        try:
            return self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.p.pid, signal.SIGKILL)
            raise

    def stop(self, timeout: float = 60) -> int:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    @property
    def output(self) -> str:
        return "".join(self.lines)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"


def children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(") ", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return out


def stubs_of(judge_pid: int) -> list[int]:
    """Triton Python backend stubs serving a judge process (their shared-memory name has its pid)."""
    out = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if f"pytrtion{judge_pid}-".encode() in cmdline.read_bytes():
                out.append(int(cmdline.parent.name))
        except OSError:
            continue
    return out


def metric(url: str, name: str, **labels) -> float:
    """One sample of a Prometheus text endpoint (0 when absent)."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if m and ",".join(sorted(m.group(1).split(","))) == want:
            return float(m.group(2))
    return 0.0


def health(address: str) -> int:
    with grpc.insecure_channel(address) as ch:
        try:
            return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2).status
        except grpc.RpcError:
            return -1


def one_error_line(stderr: str) -> str:
    """The CLI's failure report: one `error:` line, the last one, and no traceback (progress bars
    share stderr)."""
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert "Traceback" not in stderr and len(errors) == 1 and lines[-1] == errors[0], stderr[-3000:]
    return errors[0]


def loop_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "unigap", "loop", *args]


# ------------------------------------------------------------------------------ Triton killed
def test_loop_rides_out_a_triton_restart(pool, tmp_path, capsys):
    """tritonserver is SIGKILLed while `unigap loop --via-services` runs; the judge restarts it
    (NOT_SERVING meanwhile), the loop's calls get UNAVAILABLE, back off, and the round completes."""
    gen_port, store = free_port(), tmp_path / "store"
    LocalStore(store)
    common = ["--store", str(store), "--cache-dir", str(tmp_path / "cache")]  # the servers fetch the loop's checkpoints
    generation = Proc([sys.executable, "-m", "services.generation", "--port", str(gen_port), *common])
    judge = Proc(
        [
            sys.executable,
            "-m",
            "services.judge",
            "--port",
            "0",
            "--metrics-port",
            "0",
            "--generation",
            f"127.0.0.1:{gen_port}",
            *common,
        ]
    )
    loop = None
    try:
        generation.event("serving")
        started = judge.event("judge")
        front, metrics = started["front"], started["metrics"]
        score = "unigap.v1.JudgeService/Score"
        loop = Proc(
            loop_cmd(
                "--via-services",
                f"127.0.0.1:{gen_port},{front}",
                "--store",
                str(store),
                "--pool",
                str(pool),
                *LOOP_ARGS,
            ),
            cwd=tmp_path,
        )

        # Kill tritonserver once the loop is judging, and again after a restart that no call of
        # the loop happened to hit (at most three times), so the outage surely meets the loop.
        killed, frozen, statuses = [], [], set()
        pid = started["triton_pid"]
        for _ in range(3):
            ok_before = metric(metrics, "unigap_grpc_requests_total", method=score, code="OK")
            deadline = time.monotonic() + 300
            while (
                metric(metrics, "unigap_grpc_requests_total", method=score, code="OK") <= ok_before
                and loop.p.poll() is None
            ):
                assert time.monotonic() < deadline, "the loop made no Score call"
                time.sleep(0.05)
            if loop.p.poll() is not None:
                break
            seen = len(judge.events)
            stub = children(pid)  # its Python backend stub, frozen: it cannot tidy up after its parent
            for child in stub:
                os.kill(child, signal.SIGSTOP)
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            frozen += stub
            while alive(pid):
                statuses.add(health(front))
                time.sleep(0.05)
            while not any(e.get("event") == "triton_restarted" for e in judge.events[seen:]):
                statuses.add(health(front))
                time.sleep(0.05)
            pid = judge.event("triton_restarted", after=seen)["triton_pid"]
            serving_by = time.monotonic() + 10
            while health(front) != health_pb2.HealthCheckResponse.SERVING:  # and says so once it is back
                assert time.monotonic() < serving_by, "the judge did not report SERVING after the restart"
                time.sleep(0.05)
            if metric(metrics, "unigap_grpc_errors_total", method=score, code="UNAVAILABLE") > 0:
                break
        rc = loop.wait(600)
        unavailable = metric(metrics, "unigap_grpc_errors_total", method=score, code="UNAVAILABLE")
        out = loop.output + "".join(loop.err)
        assert rc == 0, out[-4000:]
    finally:
        if loop is not None and loop.p.poll() is None:
            loop.stop()
        codes = {"judge": judge.stop(), "generation": generation.stop()}

    assert killed and frozen and unavailable > 0, "no Score call met the outage"
    assert health_pb2.HealthCheckResponse.NOT_SERVING in statuses  # the judge said so while Triton was down
    flat = " ".join(out.split())  # the console wraps long lines
    assert re.search(r"unavailable: triton: .*?; retrying in \d+\.\d s \(attempt 2 of \d+\)", flat), out[-3000:]
    assert "round 1:" in out
    events = [e["event"] for e in judge.events]
    assert events.count("triton_exited") == events.count("triton_restarted") == len(killed), events
    assert (
        not any(alive(p) for p in killed + frozen) and pid not in killed
    )  # the frozen stubs too: the judge ended them
    assert codes == {"judge": 0, "generation": 0}  # and the restarted tritonserver stopped with the judge
    assert not alive(pid) and not stubs_of(judge.p.pid)  # nothing of the judge's left running
    manifests = [k for k in LocalStore(store).list_records("runs/") if k.endswith("round-1/manifest.json")]
    assert len(manifests) == 1
    exited = [e["ts"] for e in judge.events if e["event"] == "triton_exited"]
    restarted = [e["ts"] for e in judge.events if e["event"] == "triton_restarted"]
    with capsys.disabled():
        print(
            f"\ntriton killed {len(killed)}x under the loop; back after {', '.join(f'{b - a:.1f}' for a, b in zip(exited, restarted))} s; "
            f"{flat.count('retrying in')} retried calls in the loop's log; {int(unavailable)} Score calls answered UNAVAILABLE"
        )


# ------------------------------------------------------------------------------ S3 endpoint down
class Moto:
    """A moto S3 server in this process that can go down and come back on the same port. Its data
    lives in moto's in-process backends, so it survives the restart (checked below)."""

    def __init__(self):
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
        self.server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        self.port = self.server.get_host_and_port()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def down(self):
        self.server.stop()
        self.server._server.server_close()  # stop() leaves the socket listening: connections would hang, not fail

    def up(self):
        self.server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()


@pytest.fixture
def moto():
    m = Moto()
    yield m
    m.down()


def s3_store(moto: Moto, url: str, monkeypatch):
    from unigap.store import open_store

    for k, v in {**S3_KEYS, "UNIGAP_S3_ENDPOINT": moto.endpoint}.items():
        monkeypatch.setenv(k, v)
    return open_store(url)


def round_records(store, r: int) -> tuple[str | None, dict | None, dict | None]:
    """(run, progress, manifest) of round r of the store's only run."""
    keys = [k for k in store.list_records("runs/") if k.endswith(f"/round-{r}/progress.json")]
    if not keys:
        return None, None, None
    run = keys[0].rsplit("/round-", 1)[0]
    return run, rec.get_record_json(store, keys[0]), rec.get_record_json(store, f"{run}/round-{r}/manifest.json")


def test_s3_down_mid_round_fails_cleanly_and_a_rerun_resumes(pool, tmp_path, moto, monkeypatch):
    url = f"s3://robust-{uuid.uuid4().hex[:8]}/runs-a"
    store = s3_store(moto, url, monkeypatch)
    env = {**ENV, **S3_KEYS, "UNIGAP_S3_ENDPOINT": moto.endpoint}
    cmd = loop_cmd("--store", url, "--pool", str(pool), *LOOP_ARGS)
    first = Proc(cmd, env, cwd=tmp_path)
    deadline = time.monotonic() + 400
    while (round_records(store, 1)[1] or {}).get("candidates") is None:  # round 1 has a finished step
        assert first.p.poll() is None, first.output[-3000:] + "".join(first.err)[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    moto.down()
    rc = first.wait(300)
    stderr = "".join(first.err)
    assert rc == 2, first.output[-2000:] + stderr[-3000:]
    err = one_error_line(stderr)
    assert re.fullmatch(
        rf"error: S3 store {re.escape(moto.endpoint)}/robust-\w+/runs-a failed after 3 attempts: "
        r"Connection refused; the round was not published .*rerun the same command.*",
        err,
    ), err

    moto.up()  # moto keeps its buckets in this process: the data outlives the restart (read back below)
    run, progress, manifest = round_records(store, 1)
    assert manifest is None  # nothing half-published
    assert rec.get_record_json(store, f"{run}/round-1/manifest.json") is None
    finished = {k: v for k, v in progress.items() if k in ("candidates", "data")}
    assert "candidates" in finished
    for sha in finished.values():
        store.get_object(sha)  # present, and its checksum holds

    second = Proc(cmd, env, cwd=tmp_path)
    rc = second.wait(600)
    assert rc == 0, second.output[-3000:] + "".join(second.err)[-3000:]
    for name in finished:
        assert f"round 1: {name} done already, reused" in second.output
    _, progress2, manifest = round_records(store, 1)
    assert manifest is not None and all(manifest[k] == sha for k, sha in finished.items())
    assert all(progress2[k] == sha for k, sha in finished.items())


# ------------------------------------------------------------------------------ corrupt object
class Interrupted(Exception):
    """Stands for a run stopped just before its training step."""


@pytest.fixture(scope="module")
def before_training(pool, tmp_path_factory) -> Path:
    """A local store holding round 0 and round 1's candidates and data, stopped before training
    (run in this process through the CLI, so the run is the one a rerun of the command resumes)."""
    from typer.testing import CliRunner

    from unigap import cli
    from unigap.backend import LocalBackend

    store = tmp_path_factory.mktemp("interrupted") / "store"

    def interrupted(self, job):
        raise Interrupted(job.data)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(LocalBackend, "train", interrupted)
        result = CliRunner().invoke(cli.app, ["loop", "--store", str(store), "--pool", str(pool), *LOOP_ARGS])
    assert isinstance(result.exception, Interrupted), result.output[-3000:]
    _, progress, manifest = round_records(LocalStore(store), 1)
    assert set(progress) == {"base", "candidates", "data"} and manifest is None
    assert str(result.exception) == progress["data"]
    return store


def corrupt(store, sha: str, moto: Moto | None) -> None:
    """Flip one byte of an object behind the store's back (bit rot, a bad copy)."""
    data = bytearray(store.get_object(sha))
    data[len(data) // 2] ^= 0xFF
    if moto is None:
        (store.root / object_key(sha)).write_bytes(bytes(data))
    else:
        import io

        store.client.put_object(store.bucket, store._key(object_key(sha)), io.BytesIO(bytes(data)), len(data))


def object_names(store) -> list[str]:
    if isinstance(store, LocalStore):
        return sorted(str(p.relative_to(store.root)) for p in (store.root / "objects").rglob("*") if p.is_file())
    return sorted(
        o.object_name for o in store.client.list_objects(store.bucket, store._key("objects/"), recursive=True)
    )


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_corrupt_round_data_is_never_trained_on(backend, before_training, pool, tmp_path, monkeypatch, request):
    if backend == "local":
        url, moto, env = str(tmp_path / "store"), None, ENV
        shutil.copytree(before_training, url)
        store = LocalStore(url)
    else:
        moto = request.getfixturevalue("moto")
        url = f"s3://robust-{uuid.uuid4().hex[:8]}/runs-c"
        store = s3_store(moto, url, monkeypatch)
        local = LocalStore(before_training)
        for p in sorted(before_training.rglob("*")):  # the same objects and records, in the bucket
            rel = str(p.relative_to(before_training))
            if p.is_file() and rel.startswith("objects/"):
                store.put_object(p.read_bytes())
        for key in local.list_records(""):
            store.put_record(key, local.get_record(key))
        env = {**ENV, **S3_KEYS, "UNIGAP_S3_ENDPOINT": moto.endpoint}
    run, progress, _ = round_records(store, 1)
    data = progress["data"]
    corrupt(store, data, moto)
    objects = object_names(store)

    out = subprocess.run(
        loop_cmd("--store", url, "--pool", str(pool), *LOOP_ARGS),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=env,
    )
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-3000:]
    err = one_error_line(out.stderr)
    assert err.startswith(f"error: object {data} at ") and "is corrupt" in err and "nothing was trained on it" in err, (
        err
    )
    # Nothing trained, nothing published: no new object (a checkpoint would be several), no
    # checkpoint step, no manifest.
    assert object_names(store) == objects
    _, after, manifest = round_records(store, 1)
    assert after == progress and manifest is None


def test_trainer_job_refuses_a_corrupt_data_object(before_training, tmp_path):
    """The trainer job (what the loop submits via the services) reads the same object: it fails
    naming it, writes no result and no checkpoint."""
    from unigap.config import LoopConfig, TrainConfig
    from unigap.train.round import TrainJob

    url = str(tmp_path / "store")
    shutil.copytree(before_training, url)
    store = LocalStore(url)
    _, progress, _ = round_records(store, 1)
    corrupt(store, progress["data"], None)
    job = TrainJob(
        base=progress["base"],
        data=progress["data"],
        loop=asdict(LoopConfig(rounds=1, n=2, train=TrainConfig(epochs=1))),
        round=1,
    )
    rec.put_record_json(store, "jobs/corrupt/job.json", asdict(job))
    objects = object_names(store)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.trainer",
            "--store",
            url,
            "--job",
            "jobs/corrupt",
            "--cache",
            str(tmp_path / "cache"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=ENV,
    )
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert progress["data"] in last and "corrupt" in last, out.stderr[-3000:]
    assert store.get_record("jobs/corrupt/result.json") is None
    assert object_names(store) == objects
