"""The preference store: the same tests against the local directory and against S3 (a real moto
S3 server on 127.0.0.1, spoken to over HTTP by the minio SDK), plus S3-only failure handling."""

import io
import logging
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from urllib.parse import urlsplit

import numpy as np
import pytest

from unigap.store import CorruptObjectError, LocalStore, StoreError, open_store
from unigap.store import records as rec
from unigap.store.base import object_key, sha256

minio = pytest.importorskip("minio")
moto_server = pytest.importorskip("moto.server")

from unigap.store.s3 import S3Store  # noqa: E402

KEY = "test-key"


@pytest.fixture(scope="module")
def moto():
    """One moto S3 server per module on an ephemeral loopback port; yields its endpoint URL."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    assert host == "127.0.0.1" and port != 0
    yield f"http://{host}:{port}"
    server.stop()


def new_bucket() -> str:
    return f"t-{uuid.uuid4().hex[:16]}"  # a bucket per test: the server outlives tests


def raw_client(endpoint: str):
    return minio.Minio(urlsplit(endpoint).netloc, access_key=KEY, secret_key=KEY, secure=False)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket closes


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    return S3Store(
        new_bucket(), prefix="runs/a", endpoint=request.getfixturevalue("moto"), access_key=KEY, secret_key=KEY
    )


def overwrite_object(store, sha: str, data: bytes) -> None:
    """Change an object's bytes behind the store's back (bit rot, a bad copy)."""
    if isinstance(store, LocalStore):
        (store.root / object_key(sha)).write_bytes(data)
    else:
        raw_client(store.endpoint).put_object(
            store.bucket, f"{store.prefix}/{object_key(sha)}", io.BytesIO(data), len(data)
        )


# ---------------------------------------------------------------------- both backends


def test_put_get_round_trip_and_idempotence(store):
    data = b"\x00candidate tokens\xff" * 100
    sha = store.put_object(data)
    assert sha == sha256(data)
    assert store.get_object(sha) == data
    assert store.put_object(data) == sha  # same bytes, same address, nothing rewritten
    assert store.get_object(sha) == data
    assert store.get_object(store.put_object(b"")) == b""


def test_has_object_and_missing_object(store):
    sha = sha256(b"never stored")
    assert not store.has_object(sha)
    with pytest.raises(KeyError, match=sha):
        store.get_object(sha)
    store.put_object(b"never stored")
    assert store.has_object(sha)
    store.delete_object(sha)
    assert not store.has_object(sha)
    store.delete_object(sha)  # already gone: no error


def test_corrupted_object_is_detected(store):
    sha = store.put_object(b"a judgment")
    overwrite_object(store, sha, b"a judgement")
    with pytest.raises(CorruptObjectError, match=sha) as e:
        store.get_object(sha)
    assert e.value.sha == sha and object_key(sha) in str(e.value)


def test_records_put_get_replace_and_list(store):
    assert store.get_record("r/none.json") is None
    store.put_record("run1/round-001/progress.json", b"1")
    store.put_record("run1/round-001/progress.json", b"2")  # replaced whole
    store.put_record("run1/round-002/progress.json", b"3")
    store.put_record("run2/round-001/progress.json", b"4")
    assert store.get_record("run1/round-001/progress.json") == b"2"
    assert store.list_records("run1/") == ["run1/round-001/progress.json", "run1/round-002/progress.json"]
    assert store.list_records("run1/round-002") == ["run1/round-002/progress.json"]
    assert store.list_records("") == sorted(store.list_records("run1/") + store.list_records("run2/"))
    assert store.list_records("run3/") == []


def test_checkpoint_round_trip(store, tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text('{"hidden": 8}')
    (folder / "model.safetensors").write_bytes(np.arange(1000, dtype=np.float32).tobytes())
    ref = rec.put_checkpoint(store, folder)
    assert rec.put_checkpoint(store, folder) == ref
    out = rec.fetch_checkpoint(store, ref, tmp_path / "cache")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    for p in folder.iterdir():
        assert (out / p.name).read_bytes() == p.read_bytes()


class SlowStore(LocalStore):
    """A local store whose reads take a while: long enough that two fetches of one checkpoint both
    find no cached folder before either has renamed its own into place."""

    def get_object(self, sha):
        time.sleep(0.3)
        return super().get_object(sha)


def _fetch_in_a_process(root, ref, cache, start, out):
    start.wait()
    try:
        out.put(str(rec.fetch_checkpoint(SlowStore(root), ref, cache)))
    except BaseException as e:  # reported to the test, not lost in the child
        out.put(f"{type(e).__name__}: {e}")


def _checkpoint(store, tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text('{"hidden": 8}')
    (folder / "model.safetensors").write_bytes(np.arange(1000, dtype=np.float32).tobytes())
    return folder, rec.put_checkpoint(store, folder)


def test_two_processes_fetching_one_checkpoint_both_get_it(tmp_path):
    import multiprocessing

    store = LocalStore(tmp_path / "store")
    folder, ref = _checkpoint(store, tmp_path)
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters, as two servers are
    start, out = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(target=_fetch_in_a_process, args=(tmp_path / "store", ref, tmp_path / "cache", start, out))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    got = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    assert got == [str(tmp_path / "cache" / ref)] * 2, got
    for p in folder.iterdir():
        assert (tmp_path / "cache" / ref / p.name).read_bytes() == p.read_bytes()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [ref]  # no temporary folder left behind


def test_a_damaged_cache_folder_is_verified_and_fetched_again(tmp_path):
    store = LocalStore(tmp_path / "store")
    folder, ref = _checkpoint(store, tmp_path)
    cache = tmp_path / "cache"
    out = rec.fetch_checkpoint(store, ref, cache)
    (out / "model.safetensors").write_bytes(b"half a file")  # e.g. a disk filled up, or an edit by hand
    (out / "config.json").unlink()
    assert rec.fetch_checkpoint(store, ref, cache) == out
    for p in folder.iterdir():
        assert (out / p.name).read_bytes() == p.read_bytes()
    assert [p.name for p in cache.iterdir()] == [ref]


def test_the_default_checkpoint_cache_is_per_user(tmp_path, monkeypatch):
    from services.common.settings import ServerSettings

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert rec.default_checkpoint_cache() == tmp_path / "xdg" / "unigap" / "checkpoints"
    assert ServerSettings().cache_dir == rec.default_checkpoint_cache()
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert ServerSettings().cache_dir == tmp_path / "home" / ".cache" / "unigap" / "checkpoints"


def test_arrays_round_trip(store):
    arrays = {
        "tokens": np.arange(12, dtype=np.int64).reshape(3, 4),
        "p_yes": np.array([0.1, 0.9]),
        "prompts": np.array(["a red circle", "two squares"]),
    }
    got = rec.get_arrays(store, rec.put_arrays(store, **arrays))
    assert sorted(got) == sorted(arrays)
    for k, v in arrays.items():
        np.testing.assert_array_equal(got[k], v)
        assert got[k].dtype == v.dtype


def test_round_is_published_by_its_manifest_last(store):
    def published():
        return [k for k in store.list_records("run/") if k.endswith("/manifest.json")]

    rec.put_record_json(store, "run/round-001/progress.json", {"candidates": "c"})
    rec.put_record_json(store, "run/round-001/progress.json", {"candidates": "c", "data": "d"})
    assert published() == [] and rec.get_record_json(store, "run/round-001/manifest.json") is None
    rec.put_record_json(store, "run/round-001/manifest.json", {"eval": "e"})
    assert published() == ["run/round-001/manifest.json"]
    assert rec.get_record_json(store, "run/round-001/manifest.json") == {"eval": "e"}


def test_a_reader_never_sees_half_a_record(store):
    versions = [bytes([i]) * (200_000 + i) for i in range(2)]
    store.put_record("big", versions[0])
    seen, done = [], threading.Event()

    def read():
        while not done.is_set():
            seen.append(store.get_record("big"))

    reader = threading.Thread(target=read)
    reader.start()
    for i in range(6):
        store.put_record("big", versions[i % 2])
    done.set()
    reader.join()
    assert seen and all(s in versions for s in seen)


# ---------------------------------------------------------------------- S3 only


def test_s3_goes_over_http_to_loopback(moto, caplog):
    caplog.set_level(logging.INFO, logger="werkzeug")  # moto's HTTP server logs every request it serves
    s = S3Store(new_bucket(), prefix="p", endpoint=moto, access_key=KEY, secret_key=KEY)
    sha = s.put_object(b"over the wire")
    assert urlsplit(s.endpoint).hostname == "127.0.0.1"
    assert any(f"PUT /{s.bucket}/p/{object_key(sha)} HTTP" in m for m in caplog.messages)
    # fetched back with a plain HTTP GET (presigned: the bucket is private), not through the store
    with urllib.request.urlopen(raw_client(moto).presigned_get_object(s.bucket, f"p/{object_key(sha)}")) as r:
        assert r.read() == b"over the wire"


def test_s3_endpoint_down_is_one_clear_error_after_bounded_retries():
    port, bucket = closed_port(), new_bucket()
    t = time.monotonic()
    with pytest.raises(StoreError) as e:
        S3Store(bucket, endpoint=f"http://127.0.0.1:{port}", access_key=KEY, secret_key=KEY, attempts=3, backoff_s=0.1)
    elapsed = time.monotonic() - t
    msg = str(e.value)
    assert f"127.0.0.1:{port}" in msg and bucket in msg and "after 3 attempts" in msg and "refused" in msg.lower()
    assert "\n" not in msg and e.value.__cause__ is None
    assert 0.25 <= elapsed < 10  # it did back off (0.1 + 0.2 s), and gave up quickly


def test_s3_transient_error_is_retried(moto, monkeypatch):
    import urllib3

    s = S3Store(new_bucket(), endpoint=moto, access_key=KEY, secret_key=KEY, backoff_s=0.01)
    sha = s.put_object(b"flaky")
    real, calls = s.client.get_object, []

    def flaky(*args, **kw):
        calls.append(1)
        if len(calls) == 1:
            raise urllib3.exceptions.ProtocolError("Connection reset by peer")
        return real(*args, **kw)

    monkeypatch.setattr(s.client, "get_object", flaky)
    assert s.get_object(sha) == b"flaky" and len(calls) == 2


def test_s3_missing_bucket_without_create(moto):
    with pytest.raises(StoreError, match="does not exist"):
        S3Store(new_bucket(), endpoint=moto, access_key=KEY, secret_key=KEY, create_bucket=False)


def test_open_store(moto, tmp_path, monkeypatch):
    local = open_store(str(tmp_path / "st"))
    assert isinstance(local, LocalStore) and local.root == tmp_path / "st"

    monkeypatch.setenv("UNIGAP_S3_ENDPOINT", moto)
    monkeypatch.delenv("UNIGAP_S3_ACCESS_KEY", raising=False)
    monkeypatch.delenv("UNIGAP_S3_SECRET_KEY", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)  # the fallback
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", KEY)
    bucket = new_bucket()
    s3 = open_store(f"s3://{bucket}/team/run-7/")
    assert isinstance(s3, S3Store) and (s3.bucket, s3.prefix, s3.endpoint) == (bucket, "team/run-7", moto)
    s3.put_record("r.json", b"{}")
    names = [o.object_name for o in raw_client(moto).list_objects(bucket, recursive=True)]
    assert names == ["team/run-7/records/r.json"]

    for bad in ("s3://", "s3:///prefix/only", "gs://bucket/x", "s3://bucket/x?versionId=1"):
        with pytest.raises(ValueError, match="s3://bucket"):
            open_store(bad)


def test_store_package_imports_without_minio(tmp_path):
    code = "import sys; sys.modules['minio'] = None; import unigap.store as s; print(type(s.open_store(sys.argv[1])).__name__)"
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "st")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "LocalStore"


def test_loop_pool_from_an_s3_object(moto, monkeypatch, tmp_path):
    """A prompt pool a team uploads (s3://bucket/key) is read through the store's S3 settings and
    parsed as a pool file; a missing object, a missing bucket or a bad line is one clear error, and
    `unigap loop` reports it with status 2."""
    from unigap import world
    from unigap.loop import pool_texts
    from unigap.store import read_s3_object

    monkeypatch.setenv("UNIGAP_S3_ENDPOINT", moto)
    monkeypatch.setenv("UNIGAP_S3_ACCESS_KEY", KEY)
    monkeypatch.setenv("UNIGAP_S3_SECRET_KEY", KEY)
    bucket = new_bucket()
    client = raw_client(moto)
    client.make_bucket(bucket)
    texts = [s.text for s in world.split("val")[:5]]

    def upload(key: str, text: str) -> str:
        data = text.encode()
        client.put_object(bucket, key, io.BytesIO(data), len(data))
        return f"s3://{bucket}/{key}"

    url = upload("prompts/pool.txt", "\n".join(texts) + "\n\n")
    assert pool_texts(url) == texts
    local = tmp_path / "pool.txt"
    local.write_text("\n".join(texts))
    assert pool_texts(str(local)) == pool_texts(url)  # the same parsing as a local file
    upload("prompts/pool.txt", texts[0])  # a new upload is what the next run reads
    assert pool_texts(url) == texts[:1]

    with pytest.raises(ValueError, match=f"pool s3://{bucket}/prompts/none.txt: no such object"):
        pool_texts(f"s3://{bucket}/prompts/none.txt")
    with pytest.raises(
        ValueError, match=r"pool.txt:2: the likelihood judge needs competing captions.*'a photo of a cat' is not"
    ):
        pool_texts(upload("prompts/pool.txt", f"{texts[0]}\na photo of a cat\n"))
    with pytest.raises(ValueError, match="has no prompts"):
        pool_texts(upload("prompts/empty.txt", "\n \n"))
    with pytest.raises(StoreError, match="does not exist"):
        pool_texts(f"s3://{new_bucket()}/pool.txt")
    for bad in ("s3://bucket", "s3://bucket/dir/", "s3://bucket/x?versionId=1"):
        with pytest.raises(ValueError, match="s3://bucket/key"):
            read_s3_object(bad)

    missing = f"s3://{bucket}/prompts/none.txt"
    cmd = [sys.executable, "-m", "unigap", "loop", "--pool", missing, "--store", str(tmp_path / "store")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert f"pool {missing}: no such object" in proc.stdout + proc.stderr and "Traceback" not in proc.stderr
