"""GenerationService end to end: real grpc.aio servers on 127.0.0.1 (ephemeral ports), a tiny random model."""

import asyncio
import datetime
import ipaddress
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.api import generation_pb2 as pb
from services.api import generation_pb2_grpc
from services.common.client import ServiceError, aio_channel, channel
from services.common.images import encode_png
from services.common.settings import ServerSettings
from services.generation.client import GenerationClient
from services.generation.server import SERVICE_NAME, GenerationSettings, start
from unigap.model.adapter import UnifiedModel

PROMPTS = ["a red circle", "a blue square left of a green triangle", "two yellow circles"]
TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def model_dir(tiny_random, tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny"
    tiny_random.save(path)
    return str(path)


@pytest.fixture(scope="module")
def model_dir2(model_dir):
    """Another checkpoint (same weights, another name) to reload to."""
    other = Path(model_dir).parent / "tiny-v2"
    shutil.copytree(model_dir, other)
    return str(other)


@pytest.fixture(scope="module")
def um(model_dir):
    return UnifiedModel.load(model_dir)


class ServerThread:
    """A generation server on its own event loop in a thread; tests talk to it with the sync client."""

    def __init__(self, **settings):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.running = self.call(start(GenerationSettings(**settings)))
        self.address = self.running.address

    def call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def stop(self):
        self.call(self.running.stop(1.0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def metric(self, name, **labels):
        return self.running.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="module")
def server(model_dir, store_dir, tmp_path_factory):
    s = ServerThread(
        model=model_dir,
        metrics_port=0,
        batch_window_ms=50,
        store=str(store_dir),
        cache_dir=tmp_path_factory.mktemp("cache"),
    )
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    with GenerationClient(server.address, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def stub(server):
    ch = channel(server.address)
    yield generation_pb2_grpc.GenerationServiceStub(ch)
    ch.close()


# --------------------------------------------------------------------------------------- Generate
def test_generate_streams_the_in_process_candidates(client, stub, um, model_dir):
    got = client.sample(PROMPTS, n=2, cfg=1.5, temperature=1.0, seed=7)
    ref = um.sample(PROMPTS, n=2, cfg=1.5, temperature=1.0, seed=7)
    assert got.tokens.shape == (6, um.num_image_tokens) and got.tokens.dtype == np.int64
    assert np.array_equal(got.tokens, ref.tokens.numpy())
    assert np.array_equal(got.images, ref.images)  # PNG is lossless
    assert got.prompt_index == ref.prompt_index and got.prompts == PROMPTS and got.checkpoint == model_dir
    # the raw stream: n * len(prompts) messages, prompt-major
    stream = list(stub.Generate(pb.GenerateRequest(prompts=PROMPTS, n=2, cfg_scale=1.5, temperature=0.0)))
    assert [(r.prompt_index, r.candidate_index) for r in stream] == [(i, k) for i in range(3) for k in range(2)]


def test_concurrent_requests_are_batched_and_identical_to_solo(server, client, um):
    jobs = [([p], seed) for seed in (1, 2) for p in PROMPTS]  # 6 requests, different seeds, one key
    solo = [client.sample(p, n=1, cfg=2.0, temperature=1.0, seed=s).tokens for p, s in jobs]
    count0 = server.metric("unigap_batch_size_count", op="generate")
    sum0 = server.metric("unigap_batch_size_sum", op="generate")
    results, barrier = [None] * len(jobs), threading.Barrier(len(jobs))

    def call(i):
        with GenerationClient(server.address) as own:  # several clients, each its own channel
            barrier.wait()
            results[i] = own.sample(jobs[i][0], n=1, cfg=2.0, temperature=1.0, seed=jobs[i][1]).tokens

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    calls = server.metric("unigap_batch_size_count", op="generate") - count0
    images = server.metric("unigap_batch_size_sum", op="generate") - sum0
    assert images == len(jobs) and calls < len(jobs)  # some model call served several requests
    for (prompts, seed), alone, batched in zip(jobs, solo, results):
        assert np.array_equal(alone, batched)
        assert np.array_equal(alone, um.sample(prompts, n=1, cfg=2.0, temperature=1.0, seed=seed).tokens.numpy())


def test_encode_gives_canonical_tokens(client, um):
    images = um.sample(PROMPTS[:2], n=1, temperature=1.0, seed=3).images
    assert np.array_equal(client.encode(images), um.encode(images).numpy())
    big = np.kron(images[:1], np.ones((1, 2, 2, 1), dtype=np.uint8))  # another size is resized
    assert client.encode(big).shape == (1, um.num_image_tokens)


def test_other_checkpoints_by_path_and_store_reference(client, model_dir, model_dir2, store_dir, um):
    from unigap.store.local import LocalStore
    from unigap.store.records import put_checkpoint

    assert client.sample(PROMPTS[:1], checkpoint=model_dir2).checkpoint == model_dir2
    ref = put_checkpoint(LocalStore(store_dir), model_dir)
    got = client.sample(PROMPTS[:1], n=2, temperature=1.0, seed=4, checkpoint=ref)
    assert got.checkpoint == ref
    assert np.array_equal(got.tokens, um.sample(PROMPTS[:1], n=2, temperature=1.0, seed=4).tokens.numpy())
    assert client.model_info().checkpoint == model_dir  # asking for a checkpoint does not swap the served one
    with pytest.raises(ServiceError) as e:
        client.sample(PROMPTS[:1], checkpoint="0" * 64)
    assert e.value.code == grpc.StatusCode.NOT_FOUND and e.value.details.startswith("checkpoint:")


def test_a_generic_client_without_sampling_fields_gets_the_servers_defaults(server, client, um):
    """As grpcurl does it: the request schema from reflection, the message from JSON that names the
    prompts only. The unset fields take the defaults GetModel reports; those set (even to 0) are used."""
    from google.protobuf import descriptor_pool, json_format, message_factory
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with channel(server.address) as ch:
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(ch))
        request_cls = message_factory.GetMessageClass(pool.FindMessageTypeByName("unigap.v1.GenerateRequest"))
        response_cls = message_factory.GetMessageClass(pool.FindMessageTypeByName("unigap.v1.GenerateResponse"))
        call = ch.unary_stream(
            f"/{SERVICE_NAME}/Generate",
            request_serializer=request_cls.SerializeToString,
            response_deserializer=response_cls.FromString,
        )
        generic = json_format.Parse('{"prompts": ["a red circle"], "seed": "5"}', request_cls())
        got = [json_format.MessageToDict(r) for r in call(generic, timeout=60)]
    defaults = client.model_info().defaults
    assert (defaults.n, defaults.cfg_scale, defaults.temperature) == (1, 1.5, pytest.approx(0.7))
    assert not defaults.HasField("threshold")  # a judge's default, not this server's
    assert len(got) == defaults.n
    explicit = um.sample(
        ["a red circle"], n=defaults.n, cfg=defaults.cfg_scale, temperature=defaults.temperature, seed=5
    )
    assert [int(t) for t in got[0]["imageTokens"]] == explicit.tokens[0].tolist()
    greedy = list(client._stub.Generate(pb.GenerateRequest(prompts=["a red circle"], n=1, temperature=0.0, seed=5)))
    local = um.sample(["a red circle"], n=1, cfg=1.5, temperature=0.0, seed=5)
    assert list(greedy[0].image_tokens) == local.tokens[0].tolist()


# --------------------------------------------------------------------------------------- bad input
def _generate(stub, **fields):
    request = dict(prompts=PROMPTS, n=1, cfg_scale=1.5, temperature=1.0) | fields
    return list(stub.Generate(pb.GenerateRequest(**request)))


@pytest.mark.parametrize(
    "call, field",
    [
        (lambda s: _generate(s, prompts=[]), "prompts"),
        (lambda s: _generate(s, prompts=["ok", " "]), "prompts[1]"),
        (lambda s: _generate(s, prompts=["x" * 513]), "prompts[0]"),
        (lambda s: _generate(s, prompts=["p"] * 257), "prompts"),
        (lambda s: _generate(s, n=0), "n"),
        (lambda s: _generate(s, n=65), "n"),
        (lambda s: _generate(s, cfg_scale=math.nan), "cfg_scale"),
        (lambda s: _generate(s, cfg_scale=0.0), "cfg_scale"),
        (lambda s: _generate(s, temperature=-1.0), "temperature"),
        (lambda s: _generate(s, temperature=math.inf), "temperature"),
        (lambda s: _generate(s, checkpoint="/no/such/model"), "checkpoint"),
        (lambda s: s.Encode(pb.EncodeRequest(png=[])), "png"),
        (
            lambda s: s.Encode(pb.EncodeRequest(png=[encode_png(np.zeros((32, 32, 3), np.uint8)), b"not a png"])),
            "png[1]",
        ),
    ],
)
def test_bad_requests_name_the_field(stub, client, call, field):
    with pytest.raises(grpc.RpcError) as e:
        call(stub)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details().startswith(f"{field}: "), e.value.details()
    assert client.sample(PROMPTS[:1]).tokens.shape[0] == 1  # and the server still serves


# --------------------------------------------------------------------------------------- operations
def test_health_and_reflection(server):
    with channel(server.address) as ch:
        check = health_pb2_grpc.HealthStub(ch).Check
        for name in ("", SERVICE_NAME):
            assert check(health_pb2.HealthCheckRequest(service=name)).status == health_pb2.HealthCheckResponse.SERVING
        reply = next(
            reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
        )
        names = {s.name for s in reply.list_services_response.service}
    assert {SERVICE_NAME, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names


def test_metrics_endpoint_serves_the_counters(server, client):
    client.model_info()
    with pytest.raises(ServiceError):
        client.sample([""])
    port = server.running.metrics_port
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'unigap_grpc_requests_total{code="OK",method="unigap.v1.GenerationService/GetModel"}' in text
    assert 'unigap_grpc_errors_total{code="INVALID_ARGUMENT"' in text
    assert "unigap_grpc_latency_seconds_bucket" in text and 'unigap_batch_size_count{op="generate"}' in text


def test_reload_during_a_stream(model_dir, model_dir2):
    s = ServerThread(model=model_dir, batch_rows=2)
    try:
        batcher, gate = s.running.servicer.batcher, threading.Event()
        run = batcher.run

        def held(*args):  # model work waits for the gate: the stream is surely in flight
            gate.wait(30)
            return run(*args)

        batcher.run = held
        with GenerationClient(s.address, timeout=60) as c, channel(s.address) as ch:
            stream = generation_pb2_grpc.GenerationServiceStub(ch).Generate(
                pb.GenerateRequest(prompts=PROMPTS, n=2, cfg_scale=1.5, temperature=1.0, seed=9)
            )
            info = c.reload(model_dir2)  # the loop serves while the model thread is busy
            assert info.checkpoint == model_dir2 and info.generation == 1 and info.image_tokens > 0
            gate.set()
            old = list(stream)
            assert len(old) == 6 and {r.checkpoint for r in old} == {model_dir}
            assert c.sample(PROMPTS[:1]).checkpoint == model_dir2
            assert c.model_info().checkpoint == model_dir2
    finally:
        gate.set()
        s.stop()


def test_client_splits_calls_larger_than_the_servers_batch_limit(model_dir, um, tmp_path):
    """The loop encodes a whole pool at once: the client sends it in requests the server accepts."""
    s = ServerThread(model=model_dir, max_batch=4)
    try:
        with GenerationClient(s.address, max_batch=4) as c:
            got = c.sample(PROMPTS * 2, n=1, cfg=1.5, temperature=1.0, seed=3)  # 6 prompts: two requests
            ref = um.sample(PROMPTS * 2, n=1, cfg=1.5, temperature=1.0, seed=3)
            assert np.array_equal(got.tokens, ref.tokens.numpy()) and got.prompt_index == ref.prompt_index
            assert np.array_equal(c.encode(got.images), um.encode(got.images).numpy())  # 6 images: two requests
        with GenerationClient(s.address, max_batch=8) as c, pytest.raises(ServiceError, match="INVALID_ARGUMENT"):
            c.encode(got.images)  # one request of 6 > the server's 4
    finally:
        s.stop()


def test_replicas_follow_promotions_in_the_store(model_dir, model_dir2, tmp_path):
    """A promotion (the store's serving record) reaches a running replica and a new one."""
    import time

    from unigap.store import LocalStore
    from unigap.store.records import put_checkpoint, set_serving

    store = LocalStore(tmp_path / "store")
    promoted = put_checkpoint(store, model_dir2)
    common = dict(store=str(tmp_path / "store"), cache_dir=tmp_path / "cache", follow_s=0.1)
    running = ServerThread(model=model_dir, **common)
    try:
        with GenerationClient(running.address) as c:
            assert c.model_info().checkpoint == model_dir  # nothing promoted yet
            set_serving(store, promoted, round=1)
            deadline = time.monotonic() + 20
            while c.model_info().checkpoint != promoted and time.monotonic() < deadline:
                time.sleep(0.1)
            assert c.model_info().checkpoint == promoted
        started_later = ServerThread(model=model_dir, **common)
        try:
            with GenerationClient(started_later.address) as c:
                assert c.model_info().checkpoint == promoted
        finally:
            started_later.stop()
    finally:
        running.stop()


def _self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return tmp_path / "cert.pem", tmp_path / "key.pem"


async def _aio_generate(address, token, tls_ca):
    async with aio_channel(address, token=token, tls_ca=tls_ca) as ch:
        stub = generation_pb2_grpc.GenerationServiceStub(ch)
        await stub.GetModel(pb.GenerationServiceGetModelRequest())
        return len([r async for r in stub.Generate(pb.GenerateRequest(prompts=PROMPTS[:1], n=2, cfg_scale=1.5))])


def test_auth_over_tls(model_dir, tmp_path):
    cert, key = _self_signed(tmp_path)
    s = ServerThread(model=model_dir, token=TOKEN, tls_cert=cert, tls_key=key)
    try:
        for token in (None, "wrong"):
            with GenerationClient(s.address, token=token, tls_ca=cert) as c, pytest.raises(ServiceError) as e:
                c.model_info()
            assert e.value.code == grpc.StatusCode.UNAUTHENTICATED and "token" in e.value.details
        with GenerationClient(s.address, token=TOKEN, tls_ca=cert) as c:
            assert c.model_info().checkpoint == model_dir
            assert c.sample(PROMPTS[:1], n=2).tokens.shape[0] == 2  # streams pass auth too
        assert asyncio.run(_aio_generate(s.address, TOKEN, cert)) == 2  # the asyncio channel too
        with channel(s.address, tls_ca=cert) as ch:  # probes need no token
            reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with GenerationClient(s.address, token=TOKEN, timeout=5) as plain, pytest.raises(ServiceError):
            plain.model_info()  # no plaintext on a TLS port
        assert (
            s.metric(
                "unigap_grpc_requests_total", method="unigap.v1.GenerationService/GetModel", code="UNAUTHENTICATED"
            )
            == 2
        )
    finally:
        s.stop()


def test_token_file_wins_and_tls_needs_both(tmp_path):
    (tmp_path / "token").write_text("from-file\n")
    assert ServerSettings(token="flag", token_file=tmp_path / "token").token == "from-file"
    with pytest.raises(ValueError, match="tls_cert and tls_key"):
        ServerSettings(tls_cert=tmp_path / "token")


def test_sigterm_drains_an_in_flight_stream(model_dir, tmp_path):
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1")
    stderr = open(tmp_path / "stderr", "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.generation",
            "--model",
            model_dir,
            "--port",
            "0",
            "--batch-rows",
            "2",
            "--batch-window-ms",
            "0",
            "--grace-s",
            "30",
        ],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env=env,
        cwd=Path(__file__).parents[2],
    )
    try:
        line = proc.stdout.readline()
        assert line, (tmp_path / "stderr").read_text()[-2000:]
        start = json.loads(line)
        assert start["event"] == "serving" and start["services"] == [SERVICE_NAME]
        prompts = [f"{p} {i}" for i in range(4) for p in PROMPTS]  # 12 model calls of 2 images
        with channel(start["address"]) as ch:
            stream = generation_pb2_grpc.GenerationServiceStub(ch).Generate(
                pb.GenerateRequest(prompts=prompts, n=2, cfg_scale=1.5, temperature=1.0)
            )
            first = next(stream)
            proc.send_signal(signal.SIGTERM)
            rest = list(stream)
        assert first.prompt_index == 0 and len(rest) == 2 * len(prompts) - 1
        assert proc.wait(30) == 0
        events = [json.loads(line)["event"] for line in proc.stdout.read().splitlines() if line.startswith("{")]
        assert events == ["draining", "stopped"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stderr.close()


# ------------------------------------------------------------------------------------ deadlines
class _StuckServicer(generation_pb2_grpc.GenerationServiceServicer):
    """A real gRPC server whose GetModel hangs for its first `stuck` calls (until released)."""

    def __init__(self, stuck: int):
        self.stuck, self.calls, self.release = stuck, 0, threading.Event()

    def GetModel(self, request, context):
        self.calls += 1
        if self.calls <= self.stuck:
            self.release.wait(60)
        return pb.GenerationServiceGetModelResponse(model={"checkpoint": "answered", "image_size": 32})


@pytest.fixture
def stuck_server():
    from concurrent.futures import ThreadPoolExecutor

    servers = []

    def make(stuck: int):
        servicer = _StuckServicer(stuck)
        server = grpc.server(ThreadPoolExecutor(8))
        generation_pb2_grpc.add_GenerationServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append((server, servicer))
        return f"127.0.0.1:{port}", servicer

    yield make
    for server, servicer in servers:
        servicer.release.set()
        server.stop(0)


def test_every_client_call_has_a_deadline_so_a_stuck_server_cannot_hang_it(stuck_server, monkeypatch):
    from services.common.client import DEFAULT_TIMEOUT_S

    address, _ = stuck_server(stuck=10)
    assert GenerationClient(address).timeout == DEFAULT_TIMEOUT_S  # a default, never "wait forever"
    monkeypatch.setenv("UNIGAP_RPC_TIMEOUT_S", "0.3")  # configurable without code
    result = {}

    def call():
        with GenerationClient(address) as client:
            try:
                client.model_info()
            except ServiceError as e:
                result["code"] = e.code

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(20)
    assert not t.is_alive() and result == {"code": grpc.StatusCode.DEADLINE_EXCEEDED}
    monkeypatch.setenv("UNIGAP_RPC_TIMEOUT_S", "soon")
    with pytest.raises(ValueError, match="UNIGAP_RPC_TIMEOUT_S"):
        GenerationClient(address)


def test_the_loop_retries_a_deadline_like_unavailable_with_a_bound(stuck_server):
    from pipelines.service_backend import with_retries

    address, servicer = stuck_server(stuck=2)  # two calls hang, the third answers
    said = []
    with GenerationClient(address, timeout=0.3) as client:
        assert with_retries(client.model_info, attempts=4, first_wait_s=0.05, log=said.append).checkpoint == "answered"
    assert servicer.calls == 3 and len(said) == 2 and all("deadline_exceeded" in s for s in said)

    address, servicer = stuck_server(stuck=100)  # stuck for good: the loop gives up after its attempts
    with GenerationClient(address, timeout=0.2) as client, pytest.raises(ServiceError) as e:
        with_retries(client.model_info, attempts=3, first_wait_s=0.05, log=said.append)
    assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and servicer.calls == 3


# -------------------------------------------------------------------------------------- batcher
def test_batcher_stop_cancels_the_batch_in_flight():
    from services.common.validation import Refused
    from services.generation.batcher import Batcher

    release, started = threading.Event(), threading.Event()

    def run(key, prompts, seeds):
        started.set()
        release.wait(30)
        return prompts

    async def main():
        batcher = Batcher(run, window_s=0)
        in_flight = batcher.submit("k", 1, "a", 0)
        await asyncio.to_thread(started.wait, 10)
        queued = batcher.submit("k", 1, "b", 0)  # waits behind the running batch
        await asyncio.wait_for(batcher.stop(), 5)
        with pytest.raises(Refused, match="stopping"):
            batcher.submit("k", 1, "c", 0)
        return in_flight, queued

    try:
        in_flight, queued = asyncio.run(main())
    finally:
        release.set()
    assert in_flight.cancelled() and queued.cancelled()  # nobody is left waiting on a result that cannot come


def test_batcher_worker_that_died_is_restarted_and_nothing_queues_forever():
    from services.generation.batcher import Batcher

    def run(key, prompts, seeds):
        if key == "broken":
            return None  # a model bug: no results at all
        return [f"{p}:{s}" for p, s in zip(prompts, seeds)]

    def flaky_metric(rows):
        if rows == 7:
            raise ValueError("metrics backend gone")

    async def main():
        batcher = Batcher(run, window_s=0, on_batch=flaky_metric)
        outcomes = {}
        for name, key, rows in (("broken", "broken", 1), ("metric", "k", 7)):
            with pytest.raises(Exception) as e:
                await asyncio.wait_for(batcher.submit(key, rows, "p", 0), 5)
            outcomes[name] = type(e.value).__name__
        outcomes["after"] = await asyncio.wait_for(batcher.submit("k", 1, "p", 3), 5)
        batcher._task.cancel()  # the worker task ends (as it would on any error it did not catch) ...
        await asyncio.gather(batcher._task, return_exceptions=True)
        outcomes["restarted"] = await asyncio.wait_for(batcher.submit("k", 1, "q", 4), 5)  # ... and comes back
        await batcher.stop()
        return outcomes, batcher.restarts

    outcomes, restarts = asyncio.run(main())
    assert outcomes == {"broken": "TypeError", "metric": "ValueError", "after": "p:3", "restarted": "q:4"}
    assert restarts == 1
