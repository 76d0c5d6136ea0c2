"""The Kubernetes trainer Job as `KubernetesExecutor.build_job` writes it, and `run`'s dealings with the API.

No Kubernetes API server can run here. Each setting's manifest is validated offline against the
Kubernetes schemas with `kubernetes-validate --strict` (its Python API), and checked for what the
trainer needs. `run` (create, read, delete, watch, list pods) is tested with the real kubernetes
client speaking HTTP to a small local stand-in of the batch/v1 Job endpoints (`FakeJobsApi`), whose
Jobs change state as a test scripts them: no scheduler, no pods.
"""

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import kubernetes_validate
import pytest
import yaml
from kubernetes.client import ApiClient

from pipelines.executors import JobFailed, KubernetesExecutor, executor_from_env, job_name

KEY = "jobs/0123456789abcdef"
STORE = "s3://unigap/prefs"
SETTINGS = {
    "cpu-1": dict(),
    "gpu-4": dict(nproc=4, gpus=4, resources={"cpu": "16", "memory": "64Gi"}),
    "secret": dict(env_from_secret="unigap-store"),
    "service-account": dict(service_account="unigap-trainer", active_deadline_s=7200),
}
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def manifest(**settings) -> dict:
    job = KubernetesExecutor("unigap", "ghcr.io/example/unigap-trainer:0.1.0", STORE, **settings).build_job(KEY)
    # Through YAML, as it would be kept in a file or applied by kubectl.
    return yaml.safe_load(yaml.safe_dump(ApiClient().sanitize_for_serialization(job)))


@pytest.mark.parametrize("kube", ["1.29.0", "1.33.0"])
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_job_validates_strictly(setting, kube):
    kubernetes_validate.validate(manifest(**SETTINGS[setting]), kube, strict=True)


def test_strict_validation_catches_a_misspelt_field():
    """Guards the test above: without --strict an unknown field would pass."""
    m = manifest()
    m["spec"]["backofLimit"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(m, "1.33.0", strict=True)


def container(m: dict) -> dict:
    (c,) = m["spec"]["template"]["spec"]["containers"]
    return c


def test_name_is_a_deterministic_dns1123_label():
    assert manifest()["metadata"]["name"] == job_name(KEY) == job_name(KEY)
    for key in (KEY, "jobs/" + "x" * 200, "Round_1/ÜBER..job", "-", "a/b", "a-b"):
        name = job_name(key)
        assert DNS1123_LABEL.match(name) and len(name) <= 63, name
    assert job_name("a/b") != job_name("a-b")  # the same slug, told apart by the hash


def test_labels_and_job_settings():
    m = manifest(backoff_limit=2, ttl_seconds_after_finished=600)
    labels = {"app.kubernetes.io/name": "unigap", "app.kubernetes.io/component": "trainer"}
    assert m["metadata"]["labels"] == labels and m["spec"]["template"]["metadata"]["labels"] == labels
    assert m["metadata"]["namespace"] == "unigap" and m["metadata"]["annotations"]["unigap/job-key"] == KEY
    assert m["spec"]["backoffLimit"] == 2 and m["spec"]["ttlSecondsAfterFinished"] == 600
    assert m["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert m["spec"]["activeDeadlineSeconds"] == 24 * 3600  # a Job that never schedules still ends
    assert manifest(**SETTINGS["service-account"])["spec"]["activeDeadlineSeconds"] == 7200


def test_command_runs_the_entrypoint_with_the_right_launcher():
    tail = ["-m", "pipelines.trainer", "--store", STORE, "--job", KEY, "--cache", "/cache"]
    assert container(manifest())["command"] == ["python", *tail]
    assert container(manifest(nproc=4))["command"] == ["torchrun", "--standalone", "--nproc-per-node", "4", *tail]


def test_security_context():
    m = manifest(nproc=2)
    sc = container(m)["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    pod = m["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    # With a read-only root, /tmp and the checkpoint cache are emptyDirs (and /dev/shm for DDP).
    mounts = {v["mountPath"]: v["name"] for v in container(m)["volumeMounts"]}
    assert {"/tmp", "/cache", "/dev/shm"} <= set(mounts)
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert all("emptyDir" in volumes[name] for name in mounts.values())
    assert pod["automountServiceAccountToken"] is False


def test_gpu_limit_only_when_asked():
    assert "nvidia.com/gpu" not in container(manifest())["resources"]["limits"]
    res = container(manifest(**SETTINGS["gpu-4"]))["resources"]
    assert res["limits"]["nvidia.com/gpu"] == "4"
    assert res["requests"] == {"cpu": "16", "memory": "64Gi"} and res["limits"]["memory"] == "64Gi"
    with pytest.raises(ValueError, match="one process per GPU"):
        KubernetesExecutor("unigap", "img", STORE, nproc=4, gpus=2)


def test_store_credentials_from_a_secret_and_service_account():
    c = container(manifest(**SETTINGS["secret"]))
    assert c["envFrom"] == [{"secretRef": {"name": "unigap-store"}}]
    assert "envFrom" not in container(manifest())
    pod = manifest(**SETTINGS["service-account"])["spec"]["template"]["spec"]
    assert (
        pod["serviceAccountName"] == "unigap-trainer" and pod["automountServiceAccountToken"] is False
    )  # it never calls the API


def test_store_location_passes_on_to_trainer_pods(monkeypatch):
    monkeypatch.setenv("UNIGAP_S3_ENDPOINT", "http://minio:9000")
    monkeypatch.setenv("UNIGAP_S3_SECRET_KEY", "not-passed-on")
    env = {e["name"]: e.get("value") for e in container(manifest())["env"]}
    assert env["UNIGAP_S3_ENDPOINT"] == "http://minio:9000" and "UNIGAP_S3_SECRET_KEY" not in env


def test_executor_from_env(monkeypatch):
    for var in ("UNIGAP_K8S_IMAGE", "UNIGAP_K8S_GPUS"):
        monkeypatch.delenv(var, raising=False)
    assert executor_from_env("local", "/tmp/store", 2).nproc == 2
    with pytest.raises(ValueError, match="UNIGAP_K8S_IMAGE"):
        executor_from_env("kubernetes", STORE)
    with pytest.raises(ValueError, match="local or kubernetes"):
        executor_from_env("slurm", STORE)
    monkeypatch.setenv("UNIGAP_K8S_IMAGE", "img:1")
    monkeypatch.setenv("UNIGAP_K8S_GPUS", "2")
    job = executor_from_env("kubernetes", STORE, 2).build_job(KEY)
    assert job.spec.template.spec.containers[0].resources.limits["nvidia.com/gpu"] == "2"


# ------------------------------------------------------------------------------ run, against the API
class FakeJobsApi:
    """batch/v1 Jobs of one namespace over HTTP on 127.0.0.1: create (409 when the name exists),
    read, delete (the Job goes after `delete_after_s`, as a foreground deletion does), watch by
    name (ADDED / MODIFIED / DELETED lines until timeoutSeconds), and an empty pod list.
    `outcome` is what a newly created Job becomes after `settle_s`: "Complete", "Failed" or None
    (never scheduled: it stays as created)."""

    def __init__(self, outcome: str | None = "Complete", settle_s: float = 0.2, delete_after_s: float = 0.3):
        self.outcome, self.settle_s, self.delete_after_s = outcome, settle_s, delete_after_s
        self.jobs: dict[str, dict] = {}
        self.calls: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def put(self, job: dict, condition: str | None) -> None:
        job = json.loads(json.dumps(job))
        failed = {"reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}
        job["status"] = {"conditions": [{"type": condition, "status": "True", **failed}]} if condition else {}
        with self.lock:
            self.jobs[job["metadata"]["name"]] = job

    def _later(self, delay: float, fn) -> None:
        timer = threading.Timer(delay, fn)
        timer.daemon = True
        timer.start()

    def _handler(self):
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # a watch streams chunks, as the API server's does

            def log_message(self, *args):
                pass

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _status(self, code: int, reason: str) -> None:
                self._send(
                    code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code}
                )

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                name = body["metadata"]["name"]
                api.calls.append(("create", name))
                with api.lock:
                    if name in api.jobs:
                        return self._status(409, "AlreadyExists")
                api.put(body, None)
                if api.outcome:
                    api._later(api.settle_s, lambda: api.put(body, api.outcome))
                self._send(201, api.jobs[name])

            def do_DELETE(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))  # DeleteOptions
                name = urlsplit(self.path).path.rsplit("/", 1)[1]
                api.calls.append(("delete", name))
                with api.lock:
                    if name not in api.jobs:
                        return self._status(404, "NotFound")
                api._later(api.delete_after_s, lambda: api.jobs.pop(name, None))
                self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})

            def do_GET(self):
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                if url.path.endswith("/pods"):
                    return self._send(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": []})
                if url.path.endswith("/jobs") and query.get("watch") in ("true", "True"):
                    return self._watch(query["fieldSelector"].split("=", 1)[1], float(query.get("timeoutSeconds", 300)))
                name = url.path.rsplit("/", 1)[1]
                api.calls.append(("read", name))
                with api.lock:
                    job = api.jobs.get(name)
                return self._send(200, job) if job else self._status(404, "NotFound")

            def _watch(self, name: str, timeout_s: float) -> None:
                api.calls.append(("watch", name))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("Connection", "close")
                self.end_headers()
                last, end = None, time.monotonic() + timeout_s
                while time.monotonic() < end:
                    with api.lock:
                        job = api.jobs.get(name)
                    if json.dumps(job) != json.dumps(last):
                        kind = "DELETED" if job is None else "ADDED" if last is None else "MODIFIED"
                        line = json.dumps({"type": kind, "object": job or last}).encode() + b"\n"
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                        self.wfile.flush()
                        last = job
                    time.sleep(0.05)
                self.wfile.write(b"0\r\n\r\n")
                self.close_connection = True

        return Handler

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_api():
    apis = []

    def make(**kwargs):
        from kubernetes import client

        api = FakeJobsApi(**kwargs)
        apis.append(api)
        config = client.Configuration()
        config.host = api.url
        return api, client.ApiClient(config)

    yield make
    for api in apis:
        api.close()


def test_a_rerun_deletes_the_failed_job_of_its_key_and_submits_it_again(fake_api):
    api, api_client = fake_api(outcome="Complete")
    executor = KubernetesExecutor("unigap", "img:1", STORE, api_client=api_client)
    name = job_name(KEY)
    api.put(ApiClient().sanitize_for_serialization(executor.build_job(KEY)), "Failed")  # the last run's, in its TTL
    executor.run(KEY)  # before: 409, then the watch saw the old failure and the rerun failed for an hour
    changes = [c for c in api.calls if c[0] in ("create", "delete")]
    assert changes == [("create", name), ("delete", name), ("create", name)]
    assert api.jobs[name]["status"]["conditions"][0]["type"] == "Complete"


def test_a_running_job_of_the_same_key_is_waited_for_not_replaced(fake_api):
    api, api_client = fake_api(outcome=None)
    executor = KubernetesExecutor("unigap", "img:1", STORE, api_client=api_client)
    body = ApiClient().sanitize_for_serialization(executor.build_job(KEY))
    api.put(body, None)  # submitted by an earlier run of the loop, still running
    threading.Timer(0.5, lambda: api.put(body, "Complete")).start()
    executor.run(KEY)
    assert ("delete", job_name(KEY)) not in api.calls


def test_a_failed_job_fails_the_run_with_its_reason(fake_api):
    _, api_client = fake_api(outcome="Failed")
    with pytest.raises(JobFailed, match="BackoffLimitExceeded"):
        KubernetesExecutor("unigap", "img:1", STORE, api_client=api_client).run(KEY)


def test_a_job_that_never_schedules_ends_with_a_clear_error_after_its_deadline(fake_api):
    api, api_client = fake_api(outcome=None)  # pending for ever, and a cluster that never says so
    executor = KubernetesExecutor(
        "unigap", "img:1", STORE, api_client=api_client, active_deadline_s=1, watch_margin_s=1
    )
    start = time.monotonic()
    with pytest.raises(JobFailed, match="not finished 2 s after it was submitted"):
        executor.run(KEY)
    assert time.monotonic() - start < 10
    assert api.jobs[job_name(KEY)]["spec"]["activeDeadlineSeconds"] == 1  # the cluster's own deadline, too
