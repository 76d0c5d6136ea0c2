"""The Kubernetes trainer Job as `KubernetesExecutor.build_job` writes it.

No Kubernetes API server can run here, so `KubernetesExecutor.run` (create, watch, read logs) is
exercised only through the Job it submits: each setting's manifest is validated offline against
the Kubernetes schemas with `kubernetes-validate --strict` (its Python API), and checked for what
the trainer needs. No fake API objects stand in for the cluster.
"""

import re

import kubernetes_validate
import pytest
import yaml
from kubernetes.client import ApiClient

from pipelines.executors import KubernetesExecutor, executor_from_env, job_name

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
    assert "activeDeadlineSeconds" not in m["spec"]
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
    assert pod["serviceAccountName"] == "unigap-trainer" and pod["automountServiceAccountToken"] is False  # it never calls the API


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
