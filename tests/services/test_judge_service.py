"""JudgeService end to end: real tritonserver (pytriton) and gRPC front on loopback, the shipped model.

`python -m services.judge` runs as a subprocess (its own session, so signals reach only it), next
to a real GenerationService for NonUnification, and a second judge whose tritonserver the last
test kills. All three start at once (Triton takes a few seconds) and stop at the end, checked.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

pytest.importorskip("pytriton")
pytest.importorskip("tritonclient.grpc")

from services.api import judge_pb2 as pb  # noqa: E402
from services.api import judge_pb2_grpc  # noqa: E402
from services.common.client import ServiceError, channel  # noqa: E402
from services.common.images import encode_png  # noqa: E402
from services.judge.client import JudgeClient  # noqa: E402
from services.judge.triton_model import MODEL_NAME, JudgeModel, free_port  # noqa: E402
from unigap import world  # noqa: E402
from unigap.paths import DEFAULT_MODEL  # noqa: E402

pytestmark = pytest.mark.timeout(240)
TOKEN = "judge-test-token"
ROOT = Path(__file__).resolve().parents[2]


class Proc:
    """A server subprocess in its own session; its stdout JSON lines are collected as they come."""

    def __init__(self, module: str, *args: str):
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1"}
        self.p = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        self.events: dict[str, dict] = {}
        self._cv = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue  # tritonserver prints a few plain lines on signals
            with self._cv:
                self.events[event.get("event")] = event
                self._cv.notify_all()

    def wait_for(self, event: str, timeout: float = 120) -> dict:
        with self._cv:
            if not self._cv.wait_for(lambda: event in self.events or self.p.poll() is not None, timeout):
                raise TimeoutError(f"no {event!r} line within {timeout} s")
            if event not in self.events:
                raise RuntimeError(f"{self.p.args} exited with {self.p.returncode} before {event!r}")
            return self.events[event]

    def terminate(self, timeout: float = 60) -> int:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        try:
            return self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.p.pid, signal.SIGKILL)  # its session: tritonserver too
            raise


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"


def _listening(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with socket.socket() as s:
        return s.connect_ex((host, int(port))) == 0


@pytest.fixture(scope="module")
def servers():
    gen_port = free_port()
    procs = {
        "generation": Proc("services.generation", "--port", str(gen_port), "--token", TOKEN),
        "judge": Proc(
            "services.judge",
            "--port",
            "0",
            "--token",
            TOKEN,
            "--metrics-port",
            "0",
            "--generation",
            f"127.0.0.1:{gen_port}",
        ),
        "doomed": Proc("services.judge", "--port", "0", "--token", TOKEN),
    }
    try:
        info = {name: p.wait_for("judge" if name != "generation" else "serving") for name, p in procs.items()}
        yield info, procs
    finally:
        for p in procs.values():  # all at once: each Triton takes seconds to unload
            if p.p.poll() is None:
                p.p.send_signal(signal.SIGTERM)
        codes = {name: p.terminate() for name, p in procs.items()}
    # A clean stop: the front drained, tritonserver exited, its ports are free.
    judge = info["judge"]
    assert codes["judge"] == 0 and "stopped" in procs["judge"].events
    assert not _alive(judge["triton_pid"])
    assert not any(_listening(judge[k]) for k in ("front", "triton_http", "triton_grpc"))


@pytest.fixture(scope="module")
def judge(servers):
    info, _ = servers
    with JudgeClient(info["judge"]["front"], token=TOKEN) as client:
        yield client


@pytest.fixture(scope="module")
def stub(servers):
    ch = channel(servers[0]["judge"]["front"], TOKEN)
    yield judge_pb2_grpc.JudgeServiceStub(ch)
    ch.close()


@pytest.fixture(scope="module")
def local_judge(shipped):
    from unigap.evaluate import make_judge

    return make_judge(shipped, "likelihood")


def _one_per_category(k: int) -> list:
    heldout = world.split("heldout")
    return [next(s for s in heldout if s.category == c) for c in world.CATEGORIES[:k]]


@pytest.fixture(scope="module")
def rendered():
    """Held-out prompts with renders of themselves and of a hard negative each."""
    specs = _one_per_category(4)
    negatives = [world.negatives(s)[0][1] for s in specs]
    images = world.render_batch(specs + negatives, list(range(8)), 32)
    return images, [s.text for s in specs] * 2


def test_score_matches_the_in_process_judge(judge, local_judge, rendered):
    images, prompts = rendered
    remote, local = judge.score(images, prompts), local_judge.score(images, prompts)
    np.testing.assert_allclose(remote.p_yes, local.p_yes, atol=1e-5)
    assert (remote.decision == local.decision).all() and remote.decision[:4].any() and not remote.decision.all()
    strict = judge.score(images, prompts, threshold=1.0)
    assert not strict.decision.any() and np.allclose(strict.p_yes, remote.p_yes)


def test_plain_triton_http_client(servers, local_judge, rendered):
    import tritonclient.http as http

    images, prompts = rendered
    client = http.InferenceServerClient(servers[0]["judge"]["triton_http"])
    try:
        inputs = [http.InferInput("image", [2, 32, 32, 3], "UINT8"), http.InferInput("prompt", [2, 1], "BYTES")]
        inputs[0].set_data_from_numpy(images[:2])
        inputs[1].set_data_from_numpy(np.array([[p.encode()] for p in prompts[:2]], dtype=object))
        result = client.infer(MODEL_NAME, inputs)  # no checkpoint input: the served model
        np.testing.assert_allclose(
            result.as_numpy("p_yes").ravel(), local_judge.score(images[:2], prompts[:2]).p_yes, atol=1e-5
        )
        assert result.as_numpy("decision").dtype == bool
    finally:
        client.close()


def test_triton_called_directly_with_every_row_bad_gets_one_line_per_row_naming_it(servers, rendered):
    import tritonclient.grpc as tgrpc

    images, _ = rendered
    client = tgrpc.InferenceServerClient(servers[0]["judge"]["triton_grpc"])
    try:
        inputs = [
            tgrpc.InferInput("image", [3, 32, 32, 3], "UINT8"),
            tgrpc.InferInput("prompt", [3, 1], "BYTES"),
            tgrpc.InferInput("checkpoint", [3, 1], "BYTES"),
        ]
        inputs[0].set_data_from_numpy(images[:3])
        inputs[1].set_data_from_numpy(np.array([[b"a purple cloud"], [b" "], [b"a red circle"]], dtype=object))
        inputs[2].set_data_from_numpy(np.array([[b""], [b""], [b"/no/such/checkpoint"]], dtype=object))
        result = client.infer(MODEL_NAME, inputs)  # no traceback: an answer whose `error` says what is wrong
        errors = [e.decode() for e in result.as_numpy("error").ravel()]
        assert errors[0].startswith("row 0: prompt: ") and "competing captions" in errors[0]
        assert errors[1] == "row 1: prompt: empty"
        assert errors[2].startswith("row 2: checkpoint: ")
        assert all("\n" not in e and "Traceback" not in e for e in errors)
        assert np.isnan(result.as_numpy("p_yes")).all() and not result.as_numpy("decision").any()
        assert client.is_model_ready(MODEL_NAME)  # ... and the server serves on
    finally:
        client.close()


def test_dynamic_batching_merges_concurrent_requests(servers, rendered):
    import tritonclient.grpc as tgrpc

    images, prompts = rendered
    client = tgrpc.InferenceServerClient(servers[0]["judge"]["triton_grpc"])  # thread-safe
    headers = {"triton-grpc-protocol-triton-access-token": TOKEN}  # statistics are protected

    def counts():
        stats = client.get_inference_statistics(MODEL_NAME, headers=headers, as_json=True)["model_stats"][0]
        return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))

    start = threading.Barrier(32)

    def one(i):
        inputs = [tgrpc.InferInput("image", [1, 32, 32, 3], "UINT8"), tgrpc.InferInput("prompt", [1, 1], "BYTES")]
        inputs[0].set_data_from_numpy(images[i % 8 : i % 8 + 1])
        inputs[1].set_data_from_numpy(np.array([[prompts[i % 8].encode()]], dtype=object))
        start.wait()  # all at once, even on a busy machine
        return client.infer(MODEL_NAME, inputs).as_numpy("p_yes")[0, 0]

    try:
        before = counts()
        with ThreadPoolExecutor(32) as pool:
            p = list(pool.map(one, range(32)))
        deadline = time.time() + 10
        while (delta := [a - b for a, b in zip(counts(), before)])[0] < 32 and time.time() < deadline:
            time.sleep(0.1)  # statistics are recorded as requests are released, just after the replies
        inferences, executions = delta
    finally:
        client.close()
    assert inferences == 32 and executions < 32, (inferences, executions)
    assert np.allclose(p[:8], p[8:16], atol=1e-5)  # batch composition does not change a score
    with urllib.request.urlopen(servers[0]["judge"]["metrics"]) as r:  # the front's metrics see Triton's batches
        assert re.search(r'unigap_batch_size_count\{op="judge"\} ([1-9]\d*)', r.read().decode())


def test_judge_model_fails_only_the_bad_requests_of_a_batch(shipped):
    """pytriton fails whole executions; the model keeps innocent neighbours of a bad request."""
    from pytriton.proxy.types import Request

    spec = world.split("heldout")[0]
    image = world.render_batch([spec], [0], 32)

    def request(prompt):
        return Request({"image": image, "prompt": np.array([[prompt.encode()]], dtype=object)})

    model = JudgeModel(lambda ref: shipped, "likelihood")
    good, bad = model([request(spec.text), request("hello")])
    assert good["error"][0, 0] == b"" and 0 <= good["p_yes"][0, 0] <= 1
    assert bad["error"][0, 0].startswith(b"row 0: prompt: ") and b"competing captions" in bad["error"][0, 0]
    assert math.isnan(bad["p_yes"][0, 0]) and not bad["decision"][0, 0]
    (alone,) = model([request(" ")])  # every row bad: the same answer, never an exception (a traceback to clients)
    assert alone["error"][0, 0] == b"row 0: prompt: empty" and math.isnan(alone["p_yes"][0, 0])
    assert list(model.batch_sizes) == [2, 1]


def _pair(png: bytes = b"", prompt: str = "a red circle") -> pb.ImagePrompt:
    return pb.ImagePrompt(
        png=png or encode_png(world.render_batch([world.parse("a red circle")], [0], 32)[0]), prompt=prompt
    )


@pytest.mark.parametrize(
    "request_, field",
    [
        (pb.ScoreRequest(), "pairs"),
        (pb.ScoreRequest(pairs=[_pair(), _pair(png=b"\x89PNG not really")]), "pairs[1].png"),
        (pb.ScoreRequest(pairs=[_pair(prompt="  ")]), "pairs[0].prompt"),
        (pb.ScoreRequest(pairs=[_pair(), _pair(prompt="a photo of a dog")]), "pairs[1].prompt"),
        (pb.ScoreRequest(pairs=[_pair()], threshold=float("nan")), "threshold"),
        (pb.ScoreRequest(pairs=[_pair()], threshold=2.0), "threshold"),
        (pb.ScoreRequest(pairs=[_pair()], checkpoint="/no/such/folder"), "checkpoint"),
    ],
)
def test_score_refuses_bad_input_naming_the_field(stub, request_, field):
    with pytest.raises(grpc.RpcError) as e:
        stub.Score(request_)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details().startswith(f"{field}: ")


def test_token_required(servers):
    ch = grpc.insecure_channel(servers[0]["judge"]["front"])
    try:
        with pytest.raises(grpc.RpcError) as e:
            judge_pb2_grpc.JudgeServiceStub(ch).GetModel(pb.JudgeServiceGetModelRequest())
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        ch.close()


def _figures(report: dict) -> dict:
    """The service's figures of a report: `und_acc_rendered` needs renders and is not one of them."""

    def drop(f):
        return {k: v for k, v in f.items() if k != "und_acc_rendered"}

    return {
        "overall": drop(report["overall"]),
        **{g: {k: drop(f) for k, f in report[g].items()} for g in ("by_category", "by_tier")},
    }


def test_non_unification_matches_unigap_score(judge, shipped, local_judge):
    from unigap.candidates import Sampling
    from unigap.evaluate import score_report

    specs = _one_per_category(4)
    seen = []
    remote = judge.non_unification([s.text for s in specs], n=3, seed=3, on_progress=lambda *p: seen.append(p))
    local = score_report(shipped, local_judge, specs, Sampling(n=3, seed=3), progress=False)
    assert {stage for stage, _, _ in seen} == {"generate", "judge", "evaluate"} and seen[-1] == ("evaluate", 12, 12)
    assert remote["checkpoint"] == str(DEFAULT_MODEL)
    assert _figures(remote) == _figures(local)  # the sampler is deterministic per seed: the same NU exactly
    assert local["overall"]["n_evaluated"] == local["overall"]["n_images"] == 12
    assert 0 < remote["overall"]["nu"] < 1  # a case with something to measure


def test_judge_requests_without_sampling_fields_get_the_defaults_get_model_reports(judge, stub):
    from services.judge.figures import from_result

    d = judge.model_info().defaults
    assert (d.n, d.cfg_scale, d.temperature, d.threshold) == (4, 1.5, pytest.approx(0.7), 0.5)
    prompts = [s.text for s in _one_per_category(2)]
    bare = list(stub.NonUnification(pb.NonUnificationRequest(prompts=prompts, seed=3), timeout=120))
    explicit = judge.non_unification(prompts, n=d.n, seed=3, cfg=d.cfg_scale, temperature=d.temperature)
    assert _figures(from_result(bare[-1].result)) == _figures(explicit)
    assert bare[-2].progress.total == len(prompts) * d.n
    # The acceptance threshold is the request's when set, as in Score: at 0 every image is accepted.
    assert judge.non_unification(prompts, n=1, seed=3, threshold=0.0)["overall"]["nu"] == 0
    with pytest.raises(ServiceError) as e:
        judge.non_unification(prompts, n=1, threshold=1.5)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and e.value.details.startswith("threshold: ")


def test_non_unification_needs_a_generation_service(servers):
    with JudgeClient(servers[0]["doomed"]["front"], token=TOKEN) as client:
        with pytest.raises(ServiceError) as e:
            client.non_unification(["a red circle"], n=1)
        assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION and e.value.details.startswith("generation: ")
        with pytest.raises(ServiceError) as e:  # free text, but this judge reads likelihoods
            client.non_unification(["a red circle", "a photo of a dog"], n=1)
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert e.value.details.startswith("prompts[1]: the likelihood judge needs competing captions")


def test_reload_swaps_the_model_triton_uses(judge, rendered, tiny_random, tmp_path):
    images, prompts = rendered
    other = tmp_path / "tiny-random"
    tiny_random.save(other)
    before, served = judge.score(images, prompts), judge.model_info()
    explicit = judge.score(images, prompts, checkpoint=str(other))  # another checkpoint, served model unchanged
    assert judge.model_info().checkpoint == str(DEFAULT_MODEL)
    try:
        info = judge.reload(str(other))
        assert info.checkpoint == judge.model_info().checkpoint == str(other)
        assert info.generation == served.generation + 1 and info.judge_mode == "likelihood"
        after = judge.score(images, prompts)
        assert not np.allclose(after.p_yes, before.p_yes, atol=1e-3)
        np.testing.assert_allclose(after.p_yes, explicit.p_yes, atol=1e-5)
        with pytest.raises(ServiceError) as e:
            judge.reload(str(tmp_path / "missing"))
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and e.value.details.startswith("checkpoint: ")
    finally:
        judge.reload(str(DEFAULT_MODEL))
    np.testing.assert_allclose(judge.score(images, prompts).p_yes, before.p_yes, atol=1e-5)


def test_triton_killed_means_unavailable(servers, rendered):
    info, procs = servers
    doomed = info["doomed"]
    images, prompts = rendered
    with JudgeClient(doomed["front"], token=TOKEN) as client:
        assert len(client.score(images[:1], prompts[:1]).p_yes) == 1
        os.kill(doomed["triton_pid"], signal.SIGKILL)
        deadline = time.time() + 30
        while _alive(doomed["triton_pid"]) and time.time() < deadline:
            time.sleep(0.1)
        with pytest.raises(ServiceError) as e:
            client.score(images[:1], prompts[:1])
    assert e.value.code == grpc.StatusCode.UNAVAILABLE and "Triton" in e.value.details
    assert procs["doomed"].terminate() == 0  # the front still drains and exits cleanly


class _DeadTriton:
    """What the supervisor watches, as a RunningTriton has it; this one has exited and its stop fails
    (e.g. pytriton raising on a server already gone). The supervisor's seam: no tritonserver needed."""

    http_port = grpc_port = metrics_port = 0
    pid = 4242

    def __init__(self):
        self.stops = 0

    def alive(self) -> bool:
        return False

    def stop(self) -> None:
        self.stops += 1
        raise RuntimeError("tritonserver is gone\ntraceback-like second line")


class _LiveTriton:
    http_port = grpc_port = metrics_port = 0
    pid = 4343
    http = grpc = "127.0.0.1:0"
    metrics = "http://127.0.0.1:0/metrics"

    def __init__(self):
        self.is_alive, self.stopped = True, False

    def alive(self) -> bool:
        return self.is_alive

    def stop(self) -> None:
        self.stopped = True


def test_supervisor_keeps_watching_when_stopping_a_dead_triton_fails(capsys):
    from services.judge.supervisor import TritonSupervisor

    first, second, third = _DeadTriton(), _LiveTriton(), _LiveTriton()
    started, ups = iter([second, third]), []
    sup = TritonSupervisor(first, lambda *ports: next(started), on_down=lambda: None, on_up=ups.append, interval_s=0.02)
    try:
        deadline = time.time() + 10
        while not ups and time.time() < deadline:
            time.sleep(0.02)
        assert ups == [second] and first.stops >= 1  # the failed stop was logged, and the restart went on
        second.is_alive = False  # ... and the watcher still runs: a second death is noticed too
        while len(ups) < 2 and time.time() < deadline:
            time.sleep(0.02)
        assert ups == [second, third] and sup.restarts == 2 and sup._thread.is_alive()
    finally:
        sup.stop()
    assert third.stopped and not sup._thread.is_alive()
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    failed = [e for e in events if e["event"] == "triton_supervisor_callback_failed"]
    assert failed and failed[0]["error"] == "RuntimeError: tritonserver is gone"


def test_unigap_serve_on_a_teams_janus_pro_checkpoint_answers_free_text_and_stops_cleanly(tmp_path, pro_folder):
    """`unigap serve` on a Janus-Pro-layout folder (its own BPE tokenizer, 384 px, 576 image tokens)
    with the probability judge and no evaluator: Generate, Score and NonUnification on free text; then
    Ctrl-C after the judge has judged (pytriton's shared-memory tensor store in use): every child exits
    cleanly, and Python's resource tracker finds no shared memory leaked."""
    from services.generation.client import GenerationClient

    ports = [free_port() for _ in range(4)]
    out, err = (tmp_path / "out").open("w+"), (tmp_path / "err").open("w+")
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    flags = ["--generation-port", "--judge-port", "--triton-http-port", "--triton-grpc-port"]
    argv = [sys.executable, "-m", "unigap", "serve", *(x for f, p in zip(flags, ports) for x in (f, str(p)))]
    argv += ["--model", str(pro_folder), "--mode", "probability", "--evaluator", "none"]
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=err, start_new_session=True)
    prompts = ["a photo of a cat on a sofa", "a green teapot beside three oranges"]  # the second: unseen words
    try:
        deadline = time.time() + 180
        while "Ctrl-C" not in (tmp_path / "out").read_text() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        assert proc.poll() is None, (tmp_path / "err").read_text()[-2000:]
        with GenerationClient(f"127.0.0.1:{ports[0]}") as gen:
            images = gen.sample(prompts, n=1, seed=1).images
        assert images.shape == (2, 384, 384, 3)
        with JudgeClient(f"127.0.0.1:{ports[1]}") as client:
            judged = client.score(images, prompts)
            assert len(judged.p_yes) == 2 and all(0 <= p <= 1 for p in judged.p_yes)
            nu = client.non_unification(prompts, n=2, seed=1)
        overall = nu["overall"]
        assert nu["evaluator"] == "none" and nu["checkpoint"] == str(pro_folder)
        assert overall["n_images"] == 4 and overall["n_evaluated"] == 0 and 0 <= overall["nu"] <= 1
        assert overall["gen_acc"] is None and overall["und_acc"] is None  # absent: no evaluator, said plainly
        assert list(nu["by_category"]) == ["free text"] and nu["by_tier"] == {}
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends the launcher
        assert proc.wait(120) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    time.sleep(2)  # the resource tracker reports after the last process holding it exits
    said = (tmp_path / "out").read_text() + (tmp_path / "err").read_text()
    assert "leaked shared_memory" not in said and "Traceback" not in said, said[-3000:]
