"""One full round of the loop through the services, every part real and on loopback:
S3 (a moto server), the judge (Triton via PyTriton + its gRPC front), the generation server, and
training as a trainer job run by the local executor; started by `unigap serve`'s launcher."""

import json
import os
import subprocess
import sys

import pytest

from services.judge.triton_model import free_port
from unigap import world
from unigap.paths import DEFAULT_MODEL

pytestmark = pytest.mark.slow

BUCKET = "s3://unigap-e2e/store"


@pytest.fixture(scope="module")
def s3_env():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "UNIGAP_S3_ENDPOINT": f"http://{host}:{port}",
        "UNIGAP_S3_ACCESS_KEY": "e2e",
        "UNIGAP_S3_SECRET_KEY": "e2e-secret",
        "UNIGAP_S3_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    for k, v in saved.items():
        os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    server.stop()


@pytest.fixture(scope="module")
def services(s3_env):
    from services import launcher

    children = launcher.plan(str(DEFAULT_MODEL), BUCKET, free_port(), free_port(), None, "likelihood")
    try:
        for c in children:
            c.start()
        launcher.wait_ready(children, timeout_s=180)
        yield {c.name: c.address for c in children}
    finally:
        for c in reversed(children):
            c.stop(timeout_s=30)
    assert all(c.process.returncode == 0 for c in children), [(c.name, c.process.returncode) for c in children]


def test_one_round_through_the_services(services, s3_env, tmp_path):
    from services.generation.client import GenerationClient
    from services.judge.client import JudgeClient
    from unigap.store import open_store
    from unigap.store import records as rec

    pool = tmp_path / "pool.txt"
    pool.write_text("\n".join(s.text for s in world.split("train")[::40]))  # 7 prompts
    out = tmp_path / "loop.json"
    cmd = [
        sys.executable,
        "-m",
        "unigap",
        "loop",
        "--via-services",
        f"{services['generation']},{services['judge']}",
        "--store",
        BUCKET,
        "--rounds",
        "1",
        "--n",
        "2",
        "--pool",
        str(pool),
        "--epochs",
        "1",
        "--eval-n",
        "1",
        "--eval-per-category",
        "1",
        "--json",
        str(out),
    ]
    run = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [r["round"] for r in result["rounds"]] == [0, 1]

    # The round is published in the S3 store: its objects, then its manifest.
    store = open_store(BUCKET)
    manifest = rec.get_record_json(store, f"{result['run']}/round-1/manifest.json")
    assert manifest is not None and manifest["n_sft"] + manifest["n_discard"] > 0
    for key in ("candidates", "data", "checkpoint", "eval"):
        assert store.has_object(manifest[key]), key
    jobs = store.list_records("jobs/")
    assert any(k.endswith("/job.json") for k in jobs) and any(k.endswith("/result.json") for k in jobs)
    trained = json.loads(store.get_record(next(k for k in jobs if k.endswith("/result.json"))))
    assert trained["checkpoint"] == manifest["checkpoint"] != manifest["base"]

    # Promoted or rejected, the services now serve the loop's head model.
    head = manifest["checkpoint"] if manifest["promoted"] else manifest["base"]
    assert result["served"]["checkpoint"] == head
    gen, judge = GenerationClient(services["generation"]), JudgeClient(services["judge"])
    try:
        assert gen.model_info().checkpoint == head
        assert judge.model_info().checkpoint == head
        assert gen.sample(["a red circle"], 1, 1.5, 0.7, 0).images.shape[0] == 1
    finally:
        gen.close()
        judge.close()
