"""The Helm chart (deploy/helm/unigap), offline: rendered with helm-python-sdk (Helm v4's engine)
for the default values and realistic value sets, linted strictly, every document validated by
kubernetes-validate --strict for Kubernetes 1.29 to 1.33, and what matters asserted: probes,
pod security, least-privilege RBAC, the retraining CronJob, where secrets live, the network
policies, the trainer Job the executor builds, and clear refusals of bad values."""

from __future__ import annotations

import base64
import copy
import functools
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

helm = pytest.importorskip("helm_python")
kv = pytest.importorskip("kubernetes_validate.utils")

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "unigap"
RELEASE, NAMESPACE = "r", "ml"
KUBE_VERSIONS = ["1.29.0", "1.30.0", "1.31.0", "1.32.0", "1.33.0"]
PREFIX = f"{RELEASE}-unigap"


# Realistic value sets a platform team would install with: ci/values-<name>.yaml, the defaults first.
def _value_sets() -> dict[str, dict]:
    files = sorted((CHART / "ci").glob("values-*.yaml"), key=lambda p: (p.stem != "values-default", p.stem))
    return {p.stem.removeprefix("values-"): yaml.safe_load(p.read_text()) or {} for p in files}


VALUE_SETS = _value_sets()


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@pytest.fixture(scope="module")
def chart():
    with helm.Chart.load(CHART) as c:
        yield c


class Rendered:
    """One value set rendered once: the manifests, parsed, with lookups by kind and name."""

    def __init__(self, chart, values: dict):
        self.values = chart.merge_values(values)
        out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
        self.notes = next((v for k, v in out.items() if k.endswith("NOTES.txt")), "")
        self.docs = [
            d for k, text in sorted(out.items()) if not k.endswith("NOTES.txt") for d in yaml.safe_load_all(text) if d
        ]

    def of(self, kind: str) -> list[dict]:
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind: str, name: str) -> dict:
        found = [d for d in self.of(kind) if d["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name}, found {[d['metadata']['name'] for d in self.of(kind)]}"
        return found[0]

    def has(self, kind: str, name: str) -> bool:
        return any(d["metadata"]["name"] == name for d in self.of(kind))

    def trainer_job(self) -> dict:
        cm = self.get("ConfigMap", f"{PREFIX}-trainer-job")
        return yaml.safe_load(cm["data"]["trainer-job.yaml"])

    def pod_specs(self) -> list[tuple[str, dict]]:
        """(owner, pod spec) of every workload, the reference trainer Job included."""
        out = []
        for d in self.docs:
            if d["kind"] in ("Deployment", "StatefulSet", "Job"):
                out.append((f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"]))
            elif d["kind"] == "CronJob":
                out.append((f"CronJob/{d['metadata']['name']}", d["spec"]["jobTemplate"]["spec"]["template"]["spec"]))
        if self.has("ConfigMap", f"{PREFIX}-trainer-job"):
            out.append(("trainer Job", self.trainer_job()["spec"]["template"]["spec"]))
        return out


@pytest.fixture(scope="module")
def rendered(chart):
    cache = {}

    def get(name: str) -> Rendered:
        if name not in cache:
            cache[name] = Rendered(chart, VALUE_SETS[name])
        return cache[name]

    return get


def container(spec: dict, name: str) -> dict:
    return next(c for c in spec["containers"] if c["name"] == name)


def env_of(c: dict) -> dict:
    return {e["name"]: e for e in c.get("env", [])}


def cronjob_pod(r: Rendered) -> dict:
    return r.get("CronJob", f"{PREFIX}-loop")["spec"]["jobTemplate"]["spec"]["template"]["spec"]


# ------------------------------------------------------------------------ lint and validation
@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_lint_strict_default_values(version):
    report = helm.lint(CHART, strict=True, kube_version=f"v{version}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], report


@pytest.mark.parametrize("name", [n for n in VALUE_SETS if n != "default"])
def test_lint_strict_value_sets(name):
    report = helm.lint(CHART, VALUE_SETS[name], strict=True, kube_version=f"v{KUBE_VERSIONS[-1]}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], report


@pytest.fixture(scope="module")
def validate():
    """kubernetes-validate's own strict validation, in process. Its CLI reads the schema files,
    the 1.3 MB definitions among them, for every document; here each is read once."""
    original = kv.schema_contents
    kv.schema_contents = functools.lru_cache(maxsize=None)(original)
    try:

        def check(docs: list[dict]) -> None:
            errors = []
            for version in KUBE_VERSIONS:
                for d in docs:
                    try:
                        kv.validate(d, version, strict=True)
                    except kv.ValidationError as e:
                        path = ".".join(map(str, e.path))
                        errors.append(f"{d['kind']}/{d['metadata']['name']} on {version}: {path}: {e.message}")
                    except kv.SchemaNotFoundError as e:
                        errors.append(e.message)
            assert not errors, "\n".join(errors)

        yield check
    finally:
        kv.schema_contents = original


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_every_document_passes_kubernetes_validate_strict(rendered, validate, name):
    r = rendered(name)
    docs = list(r.docs)
    if r.has("ConfigMap", f"{PREFIX}-trainer-job"):
        docs.append(r.trainer_job())  # the Job the executor creates is checked the same way
    validate(docs)


def test_kubernetes_validate_cli_agrees(rendered, tmp_path):
    """The command a platform engineer would run: one call, every document, every version."""
    r = rendered("production")
    path = tmp_path / "manifests.yaml"
    path.write_text(yaml.safe_dump_all([*r.docs, r.trainer_job()]))
    args = [a for v in KUBE_VERSIONS for a in ("-k", v)]
    proc = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet", *args, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr  # no ERROR, no WARN


def test_kubernetes_validate_strict_catches_a_typo(validate, rendered):
    bad = copy.deepcopy(rendered("default").get("Deployment", f"{PREFIX}-generation"))
    bad["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(AssertionError, match="readinesProbe"):
        validate([bad])


# ---------------------------------------------------------------------------- what is deployed
def test_default_install_has_every_part(rendered):
    r = rendered("default")
    names = {(d["kind"], d["metadata"]["name"]) for d in r.docs}
    for kind, name in [
        ("Deployment", "generation"),
        ("Service", "generation"),
        ("Deployment", "judge"),
        ("Service", "judge"),
        ("StatefulSet", "minio"),
        ("Service", "minio"),
        ("CronJob", "loop"),
        ("ServiceAccount", "loop"),
        ("Role", "loop"),
        ("RoleBinding", "loop"),
        ("ServiceAccount", "trainer"),
        ("ConfigMap", "settings"),
        ("ConfigMap", "loop"),
        ("ConfigMap", "trainer-job"),
        ("Secret", "store"),
        ("NetworkPolicy", "generation"),
        ("NetworkPolicy", "judge"),
        ("NetworkPolicy", "minio"),
    ]:
        assert (kind, f"{PREFIX}-{name}") in names, (kind, name)
    assert not r.of("HorizontalPodAutoscaler") and not r.of("ClusterRole") and not r.of("ClusterRoleBinding")
    assert f"{PREFIX}-generation.{NAMESPACE}.svc:50051" in r.notes


def test_services_expose_grpc_and_metrics(rendered):
    r = rendered("default")
    for name, port in [("generation", 50051), ("judge", 50052)]:
        svc = r.get("Service", f"{PREFIX}-{name}")
        ports = {p["name"]: p for p in svc["spec"]["ports"]}
        assert ports["grpc"]["port"] == port and ports["grpc"]["appProtocol"] == "grpc"
        assert ports["metrics"]["port"] == 9090
        pod = r.get("Deployment", f"{PREFIX}-{name}")["spec"]["template"]
        assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        c = container(pod["spec"], name)
        assert {p["name"]: p["containerPort"] for p in c["ports"]}["grpc"] == port
        assert env_of(c)["UNIGAP_PORT"]["value"] == str(port)
        assert env_of(c)["UNIGAP_METRICS_PORT"]["value"] == "9090"
    assert set(p["name"] for p in r.get("Service", f"{PREFIX}-judge")["spec"]["ports"]) == {"grpc", "metrics"}


def test_judge_runs_triton_with_its_ports_workspace_and_shared_memory(rendered):
    r = rendered("gpu-judge")
    spec = r.get("Deployment", f"{PREFIX}-judge")["spec"]["template"]["spec"]
    c = container(spec, "judge")
    assert c["command"] == ["python", "-m", "services.judge"]
    args = c["args"]
    assert args[args.index("--mode") + 1] == "likelihood"
    assert args[args.index("--generation") + 1] == f"{PREFIX}-generation.{NAMESPACE}.svc:50051"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": 50052, "metrics": 9090, "triton-http": 8000, "triton-grpc": 8001, "triton-metrics": 8002}
    env = env_of(c)
    assert {
        k: env[k]["value"] for k in ("UNIGAP_TRITON_HTTP_PORT", "UNIGAP_TRITON_GRPC_PORT", "UNIGAP_TRITON_METRICS_PORT")
    } == {"UNIGAP_TRITON_HTTP_PORT": "8000", "UNIGAP_TRITON_GRPC_PORT": "8001", "UNIGAP_TRITON_METRICS_PORT": "8002"}
    assert env["UNIGAP_TRITON_HOST"]["value"] == "127.0.0.1"  # not published: loopback only
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"] == {"medium": "Memory", "sizeLimit": "4Gi"}
    assert "emptyDir" in volumes[mounts["/tmp"]]  # Triton's workspace
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert c["resources"]["requests"] == {"cpu": "4", "memory": "24Gi"}
    assert spec["tolerations"][0]["key"] == "nvidia.com/gpu" and spec["nodeSelector"] == {
        "nvidia.com/gpu.present": "true"
    }
    assert (
        container(r.get("Deployment", f"{PREFIX}-generation")["spec"]["template"]["spec"], "generation")["resources"][
            "limits"
        ]["nvidia.com/gpu"]
        == 1
    )
    # CPU by default: no GPU requested anywhere
    default = rendered("default")
    for owner, pod in default.pod_specs():
        for c in pod["containers"]:
            assert "nvidia.com/gpu" not in c["resources"].get("limits", {}), owner


def test_triton_published_only_when_asked(rendered):
    r = rendered("production")
    svc_ports = {p["name"] for p in r.get("Service", f"{PREFIX}-judge")["spec"]["ports"]}
    assert {"triton-http", "triton-grpc", "triton-metrics"} <= svc_ports
    c = container(r.get("Deployment", f"{PREFIX}-judge")["spec"]["template"]["spec"], "judge")
    assert env_of(c)["UNIGAP_TRITON_HOST"]["value"] == "0.0.0.0"


# ---------------------------------------------------------------------------------------- probes
@pytest.mark.parametrize("name", ["default", "gpu-judge", "production"])
def test_grpc_health_probes_plaintext(rendered, name):
    r = rendered(name)
    for comp, port, service in [
        ("generation", 50051, "unigap.v1.GenerationService"),
        ("judge", 50052, "unigap.v1.JudgeService"),
    ]:
        c = container(r.get("Deployment", f"{PREFIX}-{comp}")["spec"]["template"]["spec"], comp)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["grpc"] == {"port": port, "service": service}, (comp, probe)
            assert c[probe]["periodSeconds"] > 0 and c[probe]["failureThreshold"] >= 3
        # a model load gets minutes before liveness may restart the pod
        assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 300
    minio = r.of("StatefulSet")
    for s in minio:
        c = s["spec"]["template"]["spec"]["containers"][0]
        assert c["readinessProbe"]["httpGet"]["path"] == "/minio/health/ready" and "livenessProbe" in c


def test_probes_check_health_over_tls_when_tls_is_on(rendered):
    r = rendered("tls")
    probe_cm = r.get("ConfigMap", f"{PREFIX}-probe")
    assert "grpc_health_probe.py" in probe_cm["data"]
    for comp, port in [("generation", 50051), ("judge", 50052)]:
        spec = r.get("Deployment", f"{PREFIX}-{comp}")["spec"]["template"]["spec"]
        c = container(spec, comp)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            cmd = c[probe]["exec"]["command"]
            assert cmd[:3] == ["python", "/etc/unigap/probe/grpc_health_probe.py", f"127.0.0.1:{port}"]
            assert cmd[cmd.index("--server-name") + 1] == f"{PREFIX}-{comp}.{NAMESPACE}.svc"
            assert cmd[cmd.index("--ca") + 1] == "/var/run/secrets/unigap/tls/ca.crt"
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes[mounts["/etc/unigap/probe"]]["configMap"]["name"] == f"{PREFIX}-probe"
        assert volumes[mounts["/var/run/secrets/unigap/tls"]]["secret"]["secretName"] == "unigap-tls"
        env = env_of(c)
        assert env["UNIGAP_TLS_CERT"]["value"] == "/var/run/secrets/unigap/tls/tls.crt"
        assert env["UNIGAP_TLS_KEY"]["value"] == "/var/run/secrets/unigap/tls/tls.key"
    loop = container(cronjob_pod(r), "loop")
    assert env_of(loop)["UNIGAP_TLS_CA"]["value"] == "/var/run/secrets/unigap/tls/ca.crt"


def _probe_module():
    spec = importlib.util.spec_from_file_location("grpc_health_probe", CHART / "files" / "grpc_health_probe.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _self_signed(tmp_path: Path, name: str) -> tuple[bytes, bytes]:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem_key = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), pem_key


def test_tls_probe_script_against_a_real_tls_server(tmp_path):
    """files/grpc_health_probe.py, run against a gRPC server with health on TLS (loopback)."""
    grpc = pytest.importorskip("grpc")
    pytest.importorskip("cryptography")
    from concurrent import futures

    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    name = f"{PREFIX}-generation.{NAMESPACE}.svc"
    cert, key = _self_signed(tmp_path, name)
    ca = tmp_path / "ca.crt"
    ca.write_bytes(cert)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    servicer.set("unigap.v1.GenerationService", health_pb2.HealthCheckResponse.SERVING)
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key, cert)]))
    server.start()
    probe = _probe_module()
    try:
        base = [f"127.0.0.1:{port}", "--server-name", name, "--ca", str(ca)]
        assert probe.main([*base, "--service", "unigap.v1.GenerationService"]) == 0
        assert probe.main(base) == 0  # the whole server
        servicer.set("unigap.v1.GenerationService", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert probe.main([*base, "--service", "unigap.v1.GenerationService"]) == 1
        assert probe.main([*base, "--service", "unigap.v1.Nope"]) == 1  # NOT_FOUND
        wrong_name = [f"127.0.0.1:{port}", "--server-name", "elsewhere.example", "--ca", str(ca), "--timeout", "1"]
        assert probe.main(wrong_name) == 1  # the certificate must name the service
        assert probe.main([f"127.0.0.1:{port}", "--server-name", name, "--ca", str(tmp_path / "missing.crt")]) == 1
    finally:
        server.stop(0)


# ------------------------------------------------------------------------------- pod security
@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_pod_security_and_resources_everywhere(rendered, name):
    r = rendered(name)
    specs = r.pod_specs()
    assert len(specs) >= 3
    for owner, spec in specs:
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] > 0 and psc["runAsGroup"] > 0, owner
        assert psc["seccompProfile"]["type"] == "RuntimeDefault", owner
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"), owner
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, (owner, c["name"])
            assert sc["readOnlyRootFilesystem"] is True, (owner, c["name"])
            assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"], (owner, c["name"])
            assert not sc.get("privileged"), (owner, c["name"])
            res = c["resources"]
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res[kind]), (owner, c["name"], kind)
            # with a read-only root filesystem, /tmp must be a volume
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            assert "/tmp" in mounts and "emptyDir" in volumes[mounts["/tmp"]], (owner, c["name"])
            for m in c["volumeMounts"]:
                v = volumes.get(m["name"])
                if (
                    v is not None
                    and ("secret" in v or "configMap" in v or "persistentVolumeClaim" in v)
                    and m["mountPath"] != "/data"
                ):
                    assert m.get("readOnly") is True, (owner, m)


def test_only_the_loop_pods_carry_an_api_token(rendered):
    r = rendered("default")
    for owner, spec in r.pod_specs():
        if owner == f"CronJob/{PREFIX}-loop":
            assert spec["automountServiceAccountToken"] is True
            assert spec["serviceAccountName"] == f"{PREFIX}-loop"
        elif owner != "trainer Job":  # built by the executor (see test_trainer_job_template_matches_the_executor)
            assert spec["automountServiceAccountToken"] is False, owner
    for sa in r.of("ServiceAccount"):
        assert sa["automountServiceAccountToken"] is False, sa["metadata"]["name"]


# ----------------------------------------------------------------------------------------- RBAC
def test_rbac_is_least_privilege(rendered):
    r = rendered("default")
    (role,) = r.of("Role")
    assert role["metadata"]["name"] == f"{PREFIX}-loop"
    rules = {(tuple(x["apiGroups"]), tuple(x["resources"])): sorted(x["verbs"]) for x in role["rules"]}
    assert rules == {
        (("batch",), ("jobs",)): sorted(["create", "get", "watch", "delete"]),
        (("",), ("pods",)): ["list"],  # to find a failed Job's pods by their job-name label
        (("",), ("pods/log",)): ["get"],
    }
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
        assert "resourceNames" not in rule
    (binding,) = r.of("RoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": f"{PREFIX}-loop"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": f"{PREFIX}-loop", "namespace": NAMESPACE}]
    # the trainers' service account exists and is bound to nothing
    assert r.has("ServiceAccount", f"{PREFIX}-trainer")
    assert all(s["name"] != f"{PREFIX}-trainer" for b in r.of("RoleBinding") for s in b["subjects"])


def test_rbac_covers_every_api_call_of_the_kubernetes_executor(rendered):
    """The verbs the executor needs, read from its source: create, watch (a list call with
    watch=True), list pods, read pod logs; the Role grants each."""
    source = (ROOT / "pipelines" / "executors.py").read_text()
    calls = set(
        re.findall(
            r"\.(create_namespaced_job|list_namespaced_job|list_namespaced_pod|read_namespaced_pod_log|"
            r"delete_namespaced_job|read_namespaced_job|patch_namespaced_job|replace_namespaced_job|"
            r"create_namespaced_pod|delete_namespaced_pod)\b",
            source,
        )
    )
    needed = {
        "create_namespaced_job": ("jobs", "create"),
        "list_namespaced_job": ("jobs", "watch"),
        "read_namespaced_job": ("jobs", "get"),
        "delete_namespaced_job": ("jobs", "delete"),
        "list_namespaced_pod": ("pods", "list"),
        "read_namespaced_pod_log": ("pods/log", "get"),
    }
    assert calls <= set(needed), (
        f"the executor calls {calls - set(needed)}: extend the Role (loop-rbac.yaml) and this test"
    )
    # list_namespaced_job is only used as a watch
    assert re.search(r"watch\.Watch\(\)\.stream\(\s*batch\.list_namespaced_job", source)
    (role,) = rendered("default").of("Role")
    granted = {(res, verb) for rule in role["rules"] for res in rule["resources"] for verb in rule["verbs"]}
    assert {needed[c] for c in calls} <= granted


# -------------------------------------------------------------------------------- the CronJob
@pytest.mark.parametrize("name", ["default", "trainer-4-procs"])
def test_cronjob_runs_one_round_through_the_services(rendered, name):
    r = rendered(name)
    v = r.values
    cj = r.get("CronJob", f"{PREFIX}-loop")
    assert cj["spec"]["schedule"] == v["loop"]["schedule"]
    assert cj["spec"]["timeZone"] == v["loop"]["timeZone"]
    assert cj["spec"]["concurrencyPolicy"] == "Forbid"
    assert cj["spec"]["suspend"] is False and cj["spec"]["startingDeadlineSeconds"] > 0
    job = cj["spec"]["jobTemplate"]["spec"]
    assert job["activeDeadlineSeconds"] > 0 and job["backoffLimit"] >= 0
    spec = job["template"]["spec"]
    assert spec["restartPolicy"] == "Never"
    c = container(spec, "loop")
    assert c["command"] == ["unigap", "loop"]
    args = c["args"]
    opt = lambda flag: args[args.index(flag) + 1]  # noqa: E731
    gen, judge = r.get("Service", f"{PREFIX}-generation"), r.get("Service", f"{PREFIX}-judge")
    assert opt("--via-services") == (
        f"{gen['metadata']['name']}.{NAMESPACE}.svc:{gen['spec']['ports'][0]['port']},"
        f"{judge['metadata']['name']}.{NAMESPACE}.svc:{judge['spec']['ports'][0]['port']}"
    )
    assert opt("--executor") == "kubernetes"
    assert opt("--trainer-procs") == str(v["trainer"]["procsPerNode"])
    assert opt("--more-rounds") == "1"
    assert opt("--store") == v["store"]["url"]
    assert opt("--method") == v["loop"]["method"]
    if v["loop"]["extraArgs"]:
        assert args[-len(v["loop"]["extraArgs"]) :] == v["loop"]["extraArgs"]
    # a writable working directory (./runs/cache) on a read-only root filesystem
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert c["workingDir"] in mounts
    env = env_of(c)
    assert env["UNIGAP_K8S_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert [e["configMapRef"]["name"] for e in c["envFrom"]] == [f"{PREFIX}-settings", f"{PREFIX}-loop"]


def test_cronjob_gives_the_executor_every_setting_it_reads(rendered):
    """Every UNIGAP_K8S_* variable pipelines/executors.py reads is set for the loop, and no other."""
    read = set(re.findall(r"UNIGAP_K8S_[A-Z_]+", (ROOT / "pipelines" / "executors.py").read_text()))
    r = rendered("trainer-4-procs")
    loop_cm = r.get("ConfigMap", f"{PREFIX}-loop")["data"]
    given = {k for k in loop_cm if k.startswith("UNIGAP_K8S_")}
    given |= {k for k in env_of(container(cronjob_pod(r), "loop")) if k.startswith("UNIGAP_K8S_")}
    assert given == read
    # the rest of the ConfigMap the executor passes on to the trainer pods as it is
    assert set(loop_cm) - given == {"UNIGAP_TRAINER_SHARD"} and "UNIGAP_TRAINER_SHARD" in executors_passed_on()
    assert (
        loop_cm["UNIGAP_TRAINER_SHARD"] == "none"
        and rendered("trainer-fsdp").get("ConfigMap", f"{PREFIX}-loop")["data"]["UNIGAP_TRAINER_SHARD"] == "fsdp"
    )
    assert (
        loop_cm["UNIGAP_K8S_GPUS"] == "4"
        and loop_cm["UNIGAP_K8S_CPU"] == "16"
        and loop_cm["UNIGAP_K8S_MEMORY"] == "64Gi"
    )
    assert loop_cm["UNIGAP_K8S_IMAGE"] == "unigap-loop:0.1.0"
    assert loop_cm["UNIGAP_K8S_SERVICE_ACCOUNT"] == f"{PREFIX}-trainer"
    assert loop_cm["UNIGAP_K8S_SECRET"] == f"{PREFIX}-store"


def _pool_arg(r: Rendered) -> str | None:
    args = container(cronjob_pod(r), "loop")["args"]
    return args[args.index("--pool") + 1] if "--pool" in args else None


def test_cronjob_takes_its_prompt_pool_from_a_configmap_or_the_store(chart, rendered):
    """loop.pool: prompts listed in the values become the chart's ConfigMap, mounted read-only and
    passed as --pool (the loop parses the mounted text as it does any pool file); an existing
    ConfigMap is mounted the same way; an S3 URL is passed as it is; none set leaves the default."""
    from unigap.loop import pool_file_texts

    assert _pool_arg(rendered("default")) is None
    assert not rendered("default").has("ConfigMap", f"{PREFIX}-pool")
    assert _pool_arg(rendered("pool-store")) == "s3://unigap/prompts/pool.txt"
    assert "pool" not in {v["name"] for v in cronjob_pod(rendered("pool-store"))["volumes"]}

    own = Rendered(chart, {"loop": {"pool": {"configMap": "team-prompts", "configMapKey": "t2i.txt"}}})
    for r, name, key in ((rendered("pool-prompts"), f"{PREFIX}-pool", "pool.txt"), (own, "team-prompts", "t2i.txt")):
        pod = cronjob_pod(r)
        mount = next(m for m in container(pod, "loop")["volumeMounts"] if m["name"] == "pool")
        assert mount["readOnly"] is True
        assert _pool_arg(r) == f"{mount['mountPath']}/{key}"
        volume = next(v for v in pod["volumes"] if v["name"] == "pool")
        assert volume["configMap"] == {"name": name, "items": [{"key": key, "path": key}]}
    assert not own.has("ConfigMap", f"{PREFIX}-pool")  # the team's own ConfigMap, not one of the chart's
    data = rendered("pool-prompts").get("ConfigMap", f"{PREFIX}-pool")["data"]
    prompts = VALUE_SETS["pool-prompts"]["loop"]["pool"]["prompts"]
    assert pool_file_texts(data["pool.txt"], "pool.txt") == prompts


def executors_passed_on() -> tuple[str, ...]:
    return pytest.importorskip("pipelines.executors").PASSED_ON


def _executor_env(r: Rendered) -> dict:
    cm = r.get("ConfigMap", f"{PREFIX}-loop")["data"]
    return {**cm, "UNIGAP_K8S_NAMESPACE": NAMESPACE}


@pytest.mark.parametrize("name", ["default", "trainer-4-procs", "trainer-fsdp", "external-minio", "production"])
def test_trainer_job_template_matches_the_executor(rendered, monkeypatch, name):
    """The chart's reference trainer Job is exactly what KubernetesExecutor.build_job makes from
    the settings the chart gives the loop: torchrun with the configured processes, GPUs, store."""
    executors = pytest.importorskip("pipelines.executors")
    from kubernetes.client import ApiClient

    r = rendered(name)
    for k, v in _executor_env(r).items():
        monkeypatch.setenv(k, v)
    args = container(cronjob_pod(r), "loop")["args"]
    executor = executors.executor_from_env(
        "kubernetes", args[args.index("--store") + 1], int(args[args.index("--trainer-procs") + 1])
    )
    built = ApiClient().sanitize_for_serialization(executor.build_job("jobs/example"))
    assert r.trainer_job() == built
    procs = r.values["trainer"]["procsPerNode"]
    command = built["spec"]["template"]["spec"]["containers"][0]["command"]
    if procs > 1:
        assert command[:5] == ["torchrun", "--standalone", "--nproc-per-node", str(procs), "-m"]
    assert "pipelines.trainer" in command
    trainer_env = {e["name"]: e["value"] for e in built["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert trainer_env["UNIGAP_TRAINER_SHARD"] == r.values["trainer"]["shard"]  # what pipelines.trainer reads
    # the trainer's labels are what the MinIO NetworkPolicy admits
    assert built["spec"]["template"]["metadata"]["labels"] == executors.LABELS


def test_trainer_pods_get_the_store_endpoint_from_the_secret(rendered):
    """The executor passes the trainer nothing but the Secret (envFrom): it must carry the endpoint."""
    r = rendered("default")
    secret = r.get("Secret", f"{PREFIX}-store")
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data["UNIGAP_S3_ENDPOINT"] == f"http://{PREFIX}-minio:9000"
    assert data["UNIGAP_S3_ACCESS_KEY"] == "unigap" and len(data["UNIGAP_S3_SECRET_KEY"]) == 40
    env_from = r.trainer_job()["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    assert env_from == [{"secretRef": {"name": f"{PREFIX}-store"}}]


# ------------------------------------------------------------------------------------- secrets
SENSITIVE_ENV = {
    "UNIGAP_S3_ACCESS_KEY",
    "UNIGAP_S3_SECRET_KEY",
    "UNIGAP_TOKEN",
    "MINIO_ROOT_USER",
    "MINIO_ROOT_PASSWORD",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
}


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_secrets_never_in_configmaps_or_plain_env(rendered, name):
    r = rendered(name)
    secret_values = {
        base64.b64decode(v).decode()
        for s in r.of("Secret")
        for k, v in s.get("data", {}).items()
        if k in ("UNIGAP_S3_SECRET_KEY", "token")
    }
    secret_values |= {v for v in (r.values["auth"]["token"], r.values["store"]["secretKey"]) if v}
    for cm in r.of("ConfigMap"):
        for key, value in cm.get("data", {}).items():
            assert key not in SENSITIVE_ENV, (cm["metadata"]["name"], key)
            for s in secret_values:
                assert s not in value, f"a secret value is in ConfigMap {cm['metadata']['name']} key {key}"
    for owner, spec in r.pod_specs():
        for c in spec["containers"]:
            for e in c.get("env", []):
                if e["name"] in SENSITIVE_ENV:
                    assert "value" not in e and "secretKeyRef" in e["valueFrom"], (owner, e["name"])
    for s in r.of("Secret"):
        assert "stringData" not in s and s["type"] == "Opaque"


def test_auth_token_from_a_secret(rendered):
    for name, secret in [("auth", f"{PREFIX}-auth"), ("tls", "unigap-token"), ("production", f"{PREFIX}-auth")]:
        r = rendered(name)
        for comp in ("generation", "judge"):
            spec = r.get("Deployment", f"{PREFIX}-{comp}")["spec"]["template"]["spec"]
            c = container(spec, comp)
            path = env_of(c)["UNIGAP_TOKEN_FILE"]["value"]
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            volume = {v["name"]: v for v in spec["volumes"]}[mounts[str(Path(path).parent)]]
            assert volume["secret"]["secretName"] == secret and volume["secret"]["items"] == [
                {"key": "token", "path": Path(path).name}
            ]
        loop = env_of(container(cronjob_pod(r), "loop"))
        assert loop["UNIGAP_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": secret, "key": "token"}
    made = rendered("auth").get("Secret", f"{PREFIX}-auth")
    assert len(base64.b64decode(made["data"]["token"])) == 48  # generated
    assert not rendered("tls").has("Secret", "unigap-token")  # an existing Secret is used, not made
    given = rendered("production").get("Secret", f"{PREFIX}-auth")
    assert base64.b64decode(given["data"]["token"]).decode() == "s3cr3t-t0ken-0123456789"
    # auth off: no token anywhere
    r = rendered("default")
    assert not r.has("Secret", f"{PREFIX}-auth")
    assert "UNIGAP_TOKEN_FILE" not in env_of(
        container(r.get("Deployment", f"{PREFIX}-generation")["spec"]["template"]["spec"], "generation")
    )


# ---------------------------------------------------------------------------------------- store
def test_in_chart_minio_by_default(rendered):
    r = rendered("default")
    settings = r.get("ConfigMap", f"{PREFIX}-settings")["data"]
    assert settings["UNIGAP_S3_ENDPOINT"] == f"http://{PREFIX}-minio:9000"
    assert settings["UNIGAP_STORE"] == "s3://unigap/store" and settings["UNIGAP_HOST"] == "0.0.0.0"
    sts = r.get("StatefulSet", f"{PREFIX}-minio")
    c = sts["spec"]["template"]["spec"]["containers"][0]
    assert re.fullmatch(r"quay\.io/minio/minio:RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ", c["image"])
    env = env_of(c)
    assert env["MINIO_ROOT_USER"]["valueFrom"]["secretKeyRef"] == {
        "name": f"{PREFIX}-store",
        "key": "UNIGAP_S3_ACCESS_KEY",
    }
    assert env["MINIO_ROOT_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": f"{PREFIX}-store",
        "key": "UNIGAP_S3_SECRET_KEY",
    }
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "50Gi"
    for comp in ("generation", "judge"):
        c = container(r.get("Deployment", f"{PREFIX}-{comp}")["spec"]["template"]["spec"], comp)
        assert env_of(c)["UNIGAP_S3_SECRET_KEY"]["valueFrom"]["secretKeyRef"]["name"] == f"{PREFIX}-store"


def test_external_store(rendered):
    r = rendered("external-minio")
    assert (
        not r.of("StatefulSet")
        and not r.has("Service", f"{PREFIX}-minio")
        and not r.has("NetworkPolicy", f"{PREFIX}-minio")
    )
    assert not r.of("Secret")  # the existing Secret is used
    settings = r.get("ConfigMap", f"{PREFIX}-settings")["data"]
    assert settings["UNIGAP_S3_ENDPOINT"] == "https://s3.eu-west-1.example.com"
    assert settings["UNIGAP_S3_REGION"] == "eu-west-1" and settings["UNIGAP_STORE"] == "s3://ml-prefs/unigap"
    for owner, spec in r.pod_specs():
        for c in spec["containers"]:
            for e in c.get("env", []):
                if "secretKeyRef" in e.get("valueFrom", {}) and e["name"].startswith("UNIGAP_S3"):
                    assert e["valueFrom"]["secretKeyRef"]["name"] == "unigap-s3", owner
    assert r.get("ConfigMap", f"{PREFIX}-loop")["data"]["UNIGAP_K8S_SECRET"] == "unigap-s3"


# ------------------------------------------------------------------------------ network policy
def _matches(selector: dict, labels: dict) -> bool:
    return selector.get("matchLabels", {}).items() <= labels.items()


def test_network_policies_admit_only_the_loop_the_judge_and_clients(rendered):
    r = rendered("default")
    labels = {
        "loop": r.get("CronJob", f"{PREFIX}-loop")["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"],
        "judge": r.get("Deployment", f"{PREFIX}-judge")["spec"]["template"]["metadata"]["labels"],
        "generation": r.get("Deployment", f"{PREFIX}-generation")["spec"]["template"]["metadata"]["labels"],
        "minio": r.get("StatefulSet", f"{PREFIX}-minio")["spec"]["template"]["metadata"]["labels"],
        "trainer": r.trainer_job()["spec"]["template"]["metadata"]["labels"],
        "client": {"unigap.io/client": "true"},
        "stranger": {"app": "other"},
    }

    def admitted(policy: dict, port: str) -> set[str]:
        out = set()
        for rule in policy["spec"]["ingress"]:
            if port in [p["port"] for p in rule["ports"]]:
                for peer in rule["from"]:
                    if "podSelector" in peer and "namespaceSelector" not in peer:
                        out |= {who for who, l in labels.items() if _matches(peer["podSelector"], l)}
        return out

    for comp in ("generation", "judge", "minio"):
        pol = r.get("NetworkPolicy", f"{PREFIX}-{comp}")
        assert pol["spec"]["policyTypes"] == ["Ingress"]
        assert _matches(pol["spec"]["podSelector"], labels[comp])
        assert not _matches(pol["spec"]["podSelector"], labels["loop"])
    assert admitted(r.get("NetworkPolicy", f"{PREFIX}-generation"), "grpc") == {"loop", "judge", "client"}
    assert admitted(r.get("NetworkPolicy", f"{PREFIX}-judge"), "grpc") == {"loop", "client"}
    assert admitted(r.get("NetworkPolicy", f"{PREFIX}-minio"), "s3") == {"generation", "judge", "loop", "trainer"}
    for comp in ("generation", "judge"):  # metrics: only from the monitoring namespace
        rule = [
            x
            for x in r.get("NetworkPolicy", f"{PREFIX}-{comp}")["spec"]["ingress"]
            if x["ports"] == [{"port": "metrics"}]
        ]
        assert rule[0]["from"] == [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ]
    # custom client peers replace the default
    prod = rendered("production")
    rule = prod.get("NetworkPolicy", f"{PREFIX}-judge")["spec"]["ingress"][0]
    assert {"port": "triton-grpc"} in rule["ports"]
    assert rule["from"][-1] == {
        "namespaceSelector": {"matchLabels": {"team": "ml"}},
        "podSelector": {"matchLabels": {"app": "eval"}},
    }
    assert not rendered("services-only").of("NetworkPolicy")


# -------------------------------------------------------------------------------------- the rest
def test_hpa_optional_for_generation(rendered):
    assert not rendered("default").of("HorizontalPodAutoscaler")
    r = rendered("production")
    (hpa,) = r.of("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": f"{PREFIX}-generation",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert "replicas" not in r.get("Deployment", f"{PREFIX}-generation")["spec"]  # the HPA owns it


def test_images_models_and_pull_secrets(rendered):
    r = rendered("production")
    gen = r.get("Deployment", f"{PREFIX}-generation")["spec"]["template"]["spec"]
    judge = r.get("Deployment", f"{PREFIX}-judge")["spec"]["template"]["spec"]
    assert container(gen, "generation")["image"] == "registry.example.com/ml/unigap-generation:0.1.0"
    assert container(judge, "judge")["image"] == "registry.example.com/ml/unigap-judge@sha256:" + "ab" * 32
    assert (
        r.get("ConfigMap", f"{PREFIX}-loop")["data"]["UNIGAP_K8S_IMAGE"] == "registry.example.com/ml/unigap-loop:0.1.0"
    )
    assert r.get("StatefulSet", f"{PREFIX}-minio")["spec"]["template"]["spec"]["containers"][0]["image"].startswith(
        "quay.io/minio/"
    )
    for spec in (gen, judge, cronjob_pod(r)):
        assert spec["imagePullSecrets"] == [{"name": "regcred"}]
        claims = [v["persistentVolumeClaim"] for v in spec["volumes"] if "persistentVolumeClaim" in v]
        assert claims == [{"claimName": "unigap-checkpoints", "readOnly": True}]
    for spec, comp in ((gen, "generation"), (judge, "judge")):
        args = container(spec, comp)["args"]
        assert args[args.index("--model") + 1] == "0123456789abcdef" * 4
    assert "--model" not in (
        container(
            rendered("default").get("Deployment", f"{PREFIX}-generation")["spec"]["template"]["spec"], "generation"
        ).get("args")
        or []
    )


def test_settings_changes_roll_the_servers(rendered):
    a, b = rendered("default"), rendered("external-minio")

    def sums(r):
        return {
            c: r.get("Deployment", f"{PREFIX}-{c}")["spec"]["template"]["metadata"]["annotations"]["checksum/settings"]
            for c in ("generation", "judge")
        }

    assert sums(a) != sums(b)


def test_values_file_and_schema_agree(chart):
    """values.yaml passes its own schema, and the schema refuses keys it does not know at every level."""
    chart.validate_schema(yaml.safe_load((CHART / "values.yaml").read_text()))
    schema = json.loads((CHART / "values.schema.json").read_text())

    def walk(node, path):
        if isinstance(node, dict) and node.get("type") == "object" and "properties" in node:
            assert node.get("additionalProperties") is False, path
            for k, sub in node["properties"].items():
                walk(sub, f"{path}.{k}")
        if isinstance(node, dict) and "$ref" in node:
            walk(schema["definitions"][node["$ref"].rsplit("/", 1)[-1]], path)

    walk(schema, "values")


# ------------------------------------------------------------------------------- bad values
BAD_VALUES = [
    ({"loop": {"schedule": "every night"}}, "/loop/schedule"),
    ({"loop": {"timeZone": "UTC+2 please"}}, "/loop/timeZone"),
    ({"loop": {"method": "rlhf"}}, "/loop/method"),
    ({"loop": {"moreRounds": 0}}, "/loop/moreRounds"),
    ({"trainer": {"procsPerNode": 0}}, "/trainer/procsPerNode"),
    ({"trainer": {"gpus": -1}}, "/trainer/gpus"),
    ({"trainer": {"memory": "lots"}}, "/trainer/memory"),
    ({"trainer": {"shard": "zero3"}}, "/trainer/shard"),
    ({"judge": {"mode": "vibes"}}, "/judge/mode"),
    ({"judge": {"gpus": "one"}}, "/judge/gpus"),
    ({"generation": {"port": 70000}}, "/generation/port"),
    ({"generation": {"replcas": 3}}, "replcas"),
    ({"generation": {"resources": {"limits": {"memory": "4 GB"}}}}, "/generation/resources/limits/memory"),
    ({"podSecurity": {"runAsUser": 0}}, "/podSecurity/runAsUser"),
    ({"store": {"url": "http://minio:9000/unigap"}}, "/store/url"),
    ({"store": {"endpoint": "minio:9000"}}, "/store/endpoint"),
    ({"store": {"secretKey": "short"}}, "/store/secretKey"),
    ({"auth": {"token": "abc"}}, "/auth/token"),
    ({"images": {"judge": {"repository": "unigap-judge", "digest": "sha256:abc"}}}, "/images/judge/digest"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"model": "checkpoints/mine"}, "/model"),
    ({"networkPolicy": {"clients": [{"podSelectr": {}}]}}, "podSelectr"),
    ({"minio": {"persistence": {"size": "big"}}}, "/minio/persistence/size"),
    ({"replicas": 2}, "replicas"),
    ({"loop": {"pool": {"url": "s3://unigap/prompts/"}}}, "/loop/pool/url"),
    ({"loop": {"pool": {"url": "prompts.txt"}}}, "/loop/pool/url"),
    ({"loop": {"pool": {"url": "s3://unigap/pool.txt", "configMap": "team-prompts"}}}, "/loop/pool"),
    ({"loop": {"pool": {"configMap": "team-prompts", "prompts": ["a red circle"]}}}, "/loop/pool"),
    ({"loop": {"pool": {"configMapKey": "prompts/pool.txt"}}}, "/loop/pool/configMapKey"),
    ({"loop": {"pool": {"prompts": ["a red circle\ntwo blue squares"]}}}, "/loop/pool/prompts/0"),
]


@pytest.mark.parametrize("values,where", BAD_VALUES, ids=[w.strip("/") for _, w in BAD_VALUES])
def test_schema_rejects_bad_values_naming_the_value(chart, values, where):
    with pytest.raises(helm.HelmValuesError) as e:
        chart.validate_schema(values)
    assert where in str(e.value), str(e.value)
    with pytest.raises(helm.HelmValuesError):  # and so does an install (render validates first)
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


CROSS_FIELD = [
    ({"minio": {"enabled": False}}, "store.endpoint is required when minio.enabled is false"),
    ({"tls": {"enabled": True}}, "tls.secretName is required when tls.enabled is true"),
    ({"trainer": {"gpus": 2, "procsPerNode": 4}}, "trainer.procsPerNode (4) must not exceed trainer.gpus (2)"),
    (
        {"trainer": {"gpus": 2, "procsPerNode": 2}},
        "trainer.procsPerNode (2) above 1 needs loop.extraArgs to set the replays off",
    ),
    (
        {"loop": {"pool": {"url": "train"}, "extraArgs": ["--pool", "heldout+val"]}},
        "loop.extraArgs sets --pool while loop.pool",
    ),
    ({"trainer": {"shard": "fsdp"}}, "trainer.shard fsdp splits the model over the trainer's processes"),
    (
        {
            "trainer": {"shard": "fsdp", "procsPerNode": 2},
            "loop": {"method": "c-sft", "extraArgs": ["--und-replay", "0", "--gen-replay", "0"]},
        },
        "trainer.shard fsdp does not run the curriculum's replay (loop.method c-sft)",
    ),
    (
        {"generation": {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}},
        "minReplicas (5) is above maxReplicas (2)",
    ),
    (
        {"generation": {"autoscaling": {"enabled": True}, "resources": {"requests": {"cpu": None}}}},
        "needs generation.resources.requests.cpu",
    ),
]


@pytest.mark.parametrize("values,message", CROSS_FIELD, ids=[m.split(" ")[0] for _, m in CROSS_FIELD])
def test_rules_across_values_fail_with_a_clear_message(chart, values, message):
    chart.validate_schema(values)  # each value is fine on its own
    with pytest.raises(helm.HelmRenderError) as e:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    assert message in str(e.value)


def test_lint_reports_bad_values():
    report = helm.lint(CHART, {"trainer": {"procsPerNode": 0}}, strict=True)
    assert any("/trainer/procsPerNode" in err for err in report["errors"]), report


# ------------------------------------------------------------------------------ docs/deploy.md
def test_deploy_doc_covers_the_platform_team_s_questions():
    text = (ROOT / "docs" / "deploy.md").read_text()
    for heading in (
        "Install",
        "Values that matter",
        "Upgrade",
        "A retraining round on the cluster",
        "Rolling back a promoted model",
        "Images",
    ):
        assert re.search(rf"^#+ .*{re.escape(heading)}", text, re.M | re.I), heading
    for command in (
        "helm install",
        "helm upgrade",
        "docker build -f docker/generation.Dockerfile",
        "docker build -f docker/judge.Dockerfile",
        "docker build -f docker/loop.Dockerfile",
    ):
        assert command in text, command


def test_deploy_doc_values_example_installs(chart, validate):
    """The production values file shown in docs/deploy.md renders and validates as it stands."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    block = re.search(r"```yaml\n(# values-prod\.yaml\n.*?)```", text, re.S).group(1)
    values = yaml.safe_load(block)
    chart.validate_schema(values)
    r = Rendered(chart, values)
    validate([*r.docs, r.trainer_job()])
    assert r.trainer_job()["spec"]["template"]["spec"]["containers"][0]["command"][:4] == [
        "torchrun",
        "--standalone",
        "--nproc-per-node",
        "4",
    ]


# ------------------------------------------------------------- the chart against the real code
def _container_env(r: Rendered, c: dict, tmp_path: Path) -> dict[str, str]:
    """The environment a container would see: its ConfigMaps, literal values, stand-ins for secrets."""
    env = {}
    for src in c.get("envFrom", []):
        if "configMapRef" in src:
            env.update(r.get("ConfigMap", src["configMapRef"]["name"])["data"])
    for e in c.get("env", []):
        env[e["name"]] = e.get("value", "from-a-secret")
    if "UNIGAP_TOKEN_FILE" in env:
        token = tmp_path / "token"
        token.write_text("t" * 32)
        env["UNIGAP_TOKEN_FILE"] = str(token)
    return env


@pytest.mark.parametrize("name", ["default", "gpu-judge", "production"])
def test_servers_take_the_chart_s_args_and_env(rendered, monkeypatch, tmp_path, name):
    """The generation and judge settings (pydantic-settings, UNIGAP_*) parse what the chart passes."""
    pytest.importorskip("grpc")
    from services.common.settings import parse_settings
    from services.generation.server import GenerationSettings
    from services.judge.server import JudgeSettings

    r = rendered(name)
    for comp, cls, port in [("generation", GenerationSettings, 50051), ("judge", JudgeSettings, 50052)]:
        c = container(r.get("Deployment", f"{PREFIX}-{comp}")["spec"]["template"]["spec"], comp)
        for k in [k for k in os.environ if k.startswith("UNIGAP_")]:
            monkeypatch.delenv(k)
        for k, v in _container_env(r, c, tmp_path).items():
            monkeypatch.setenv(k, v)
        s = parse_settings(cls, c.get("args", []))
        assert (s.host, s.port, s.metrics_port) == ("0.0.0.0", port, 9090)
        assert str(s.cache_dir) == "/var/cache/unigap" and s.store == r.values["store"]["url"]
        assert s.max_batch == 256 and s.grace_s == 10
        assert (s.token is not None) == r.values["auth"]["enabled"]
        if r.values["model"]:
            assert s.model == r.values["model"]
        if comp == "judge":
            assert (s.triton_http_port, s.triton_grpc_port, s.triton_metrics_port) == (8000, 8001, 8002)
            assert s.generation == f"{PREFIX}-generation.{NAMESPACE}.svc:50051" and s.mode == "likelihood"


@pytest.mark.parametrize("name", ["default", "trainer-4-procs", "pool-prompts", "pool-store"])
def test_unigap_loop_takes_the_cronjob_s_args(rendered, monkeypatch, name):
    """`unigap loop` (the real typer CLI) accepts the CronJob's command line as it stands."""
    from typer.testing import CliRunner

    import unigap.cli as cli
    from unigap.cli import runs
    from unigap.config import LoopConfig

    r = rendered(name)
    c = container(cronjob_pod(r), "loop")
    seen = {}
    monkeypatch.setattr(runs, "run_loop_via_services", lambda *a: seen.setdefault("args", a))
    result = CliRunner().invoke(cli.app, [*c["command"][1:], *c["args"]])
    assert result.exit_code == 0, result.output
    cfg, store, model, addresses, executor, procs, _, more_rounds = seen["args"]
    assert (store, executor, procs) == (r.values["store"]["url"], "kubernetes", r.values["trainer"]["procsPerNode"])
    assert addresses == f"{PREFIX}-generation.{NAMESPACE}.svc:50051,{PREFIX}-judge.{NAMESPACE}.svc:50052"
    assert (more_rounds, cfg.method, cfg.judge_mode) == (1, r.values["loop"]["method"], r.values["judge"]["mode"])
    if name == "trainer-4-procs":
        assert cfg.n == 8 and cfg.train.lr == 1e-4
    assert cfg.pool == (_pool_arg(r) or LoopConfig().pool)


def test_the_schema_admits_every_named_pool_the_loop_knows():
    from unigap.config import POOLS

    schema = json.loads((CHART / "values.schema.json").read_text())
    url = schema["properties"]["loop"]["properties"]["pool"]["properties"]["url"]
    assert all(re.fullmatch(url["pattern"], name) for name in POOLS)
    assert not re.fullmatch(url["pattern"], "test")  # not a pool: no loop samples the test split
