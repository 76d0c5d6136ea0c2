"""Where a trainer job runs: a subprocess on this machine, or a Kubernetes Job.

Both run the same entrypoint (`pipelines.trainer`) on a job record in the store, under torchrun
when there are several processes. An executor's `run(key)` blocks until the job is done and raises
`JobFailed` (with the tail of the job's log) otherwise. `submit` is what the loop's backend calls.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from pipelines.trainer import job_record, result_record
from unigap.store import records as rec
from unigap.store.base import Store

if TYPE_CHECKING:
    from unigap.train.round import TrainJob  # torch: not needed to build or watch a Job

LOG_TAIL_LINES = 40
CACHE_DIR = "/cache"  # in the container: an emptyDir for fetched checkpoints


# Where the store is (not who may read it: credentials come from the Secret), and how the trainer
# shards the model (pipelines/trainer.py, --shard), go from the loop to its trainer pods as they are.
PASSED_ON = ("UNIGAP_S3_ENDPOINT", "UNIGAP_S3_REGION", "UNIGAP_TRAINER_SHARD")


class JobFailed(Exception):
    def __init__(self, job: str, reason: str, log: str = ""):
        tail = "\n".join(log.rstrip().splitlines()[-LOG_TAIL_LINES:])
        super().__init__(
            f"trainer job {job} failed: {reason}" + (f"\n--- last lines of its log ---\n{tail}" if tail else "")
        )
        self.job, self.reason, self.log_tail = job, reason, tail


class Executor(Protocol):
    def run(self, job_key: str) -> None: ...


def submit(store: Store, job: TrainJob, key: str, executor: Executor) -> tuple[str, list]:
    """Run `job` as the trainer job `key` and return (checkpoint reference, training log).

    The job record is written once; a finished job is not rerun by the entrypoint."""
    if rec.get_record_json(store, job_record(key)) is None:
        rec.put_record_json(store, job_record(key), asdict(job))
    executor.run(key)
    result = rec.get_record_json(store, result_record(key))
    if result is None:
        raise JobFailed(key, f"it ended without writing {result_record(key)}")
    return result["checkpoint"], result["log"]


def trainer_command(
    python: list[str], torchrun: list[str], nproc: int, store_url: str, key: str, cache: str | None = None
) -> list[str]:
    """The entrypoint's command line: one process, or `nproc` under torchrun on this node."""
    launcher = [*python, "-m"] if nproc == 1 else [*torchrun, "--standalone", "--nproc-per-node", str(nproc), "-m"]
    return [*launcher, "pipelines.trainer", "--store", store_url, "--job", key, *(["--cache", cache] if cache else [])]


# ---------------------------------------------------------------------------------------- local
class LocalExecutor:
    """The job as a subprocess of this one (and its workers, under torchrun)."""

    def __init__(
        self,
        store_url: str,
        nproc: int = 1,
        cache: str | Path | None = None,
        env: dict[str, str] | None = None,
        timeout_s: float | None = None,
    ):
        if nproc < 1:
            raise ValueError(f"nproc must be >= 1, not {nproc}")
        self.store_url, self.nproc, self.cache, self.env, self.timeout_s = (
            str(store_url),
            nproc,
            cache,
            env or {},
            timeout_s,
        )

    def run(self, job_key: str) -> None:
        python = [sys.executable]
        cmd = trainer_command(
            python,
            [*python, "-m", "torch.distributed.run"],
            self.nproc,
            self.store_url,
            job_key,
            str(self.cache) if self.cache else None,
        )
        # The entrypoint must import from wherever this `pipelines` is, installed or a checkout.
        root = str(Path(__file__).resolve().parents[1])
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
            **self.env,
        }
        # A process group of its own, so that stopping it stops torchrun's workers too.
        with subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
        ) as proc:
            try:
                out, _ = proc.communicate(timeout=self.timeout_s)
            except BaseException as e:  # timed out, or this process was interrupted
                out = _stop(proc)
                if isinstance(e, subprocess.TimeoutExpired):
                    raise JobFailed(job_key, f"timed out after {self.timeout_s} s", out) from None
                raise
        if proc.returncode:
            raise JobFailed(job_key, f"exit status {proc.returncode}", out)


def _stop(proc: subprocess.Popen, grace_s: float = 10) -> str:
    """SIGTERM first: torchrun passes it on to its workers, which run in sessions of their own,
    out of reach of a signal to this group; then SIGKILL what is left. Returns the output."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        return proc.communicate(timeout=grace_s)[0]
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return proc.communicate()[0]


# ----------------------------------------------------------------------------------- kubernetes
def job_name(job_key: str) -> str:
    """A Job name that is a DNS-1123 label (<= 63 characters, so that its `job-name` label is
    valid too), the same for the same key: readable part of the key + a hash of all of it."""
    slug = re.sub(r"[^a-z0-9]+", "-", job_key.lower()).strip("-")[:36].strip("-")
    digest = hashlib.sha256(job_key.encode()).hexdigest()[:12]
    return "-".join(filter(None, ["unigap-train", slug, digest]))


LABELS = {"app.kubernetes.io/name": "unigap", "app.kubernetes.io/component": "trainer"}
DEFAULT_DEADLINE_S = 24 * 3600  # a Job (pending or running) that has not finished by then fails
WATCH_MARGIN_S = 300  # the executor gives up this long after the Job's own deadline (a cluster that never says)


class KubernetesExecutor:
    """The job as a batch/v1 Job, one pod on one node (torchrun --standalone when nproc > 1).

    The Job's name comes from the job key, so a rerun finds the earlier run's Job (kept for
    `ttl_seconds_after_finished`): a running or complete one is waited for, a failed one is deleted
    and submitted again. A Job has `active_deadline_s` to finish (pending included: one that never
    schedules fails with DeadlineExceeded), and `run` itself gives up WATCH_MARGIN_S after that."""

    def __init__(
        self,
        namespace: str,
        image: str,
        store_url: str,
        nproc: int = 1,
        gpus: int = 0,
        resources: dict[str, str] | None = None,
        service_account: str | None = None,
        env_from_secret: str | None = None,
        backoff_limit: int = 1,
        ttl_seconds_after_finished: int = 3600,
        active_deadline_s: int = DEFAULT_DEADLINE_S,
        api_client=None,
        watch_margin_s: float = WATCH_MARGIN_S,
    ):
        if nproc < 1 or gpus < 0:
            raise ValueError(f"nproc must be >= 1 and gpus >= 0, not {nproc} and {gpus}")
        if active_deadline_s < 1:
            raise ValueError(f"active_deadline_s must be >= 1, not {active_deadline_s}")
        if gpus and nproc > gpus:
            raise ValueError(f"{nproc} processes on {gpus} GPUs: NCCL wants one process per GPU")
        self.namespace, self.image, self.store_url, self.nproc, self.gpus = namespace, image, store_url, nproc, gpus
        self.resources = resources or {"cpu": "2", "memory": "8Gi"}
        self.service_account, self.env_from_secret = service_account, env_from_secret
        self.backoff_limit, self.ttl, self.deadline = backoff_limit, ttl_seconds_after_finished, active_deadline_s
        self.api_client, self.watch_margin_s = api_client, watch_margin_s

    def build_job(self, job_key: str):
        from kubernetes import client as k

        limits = {**self.resources, **({"nvidia.com/gpu": str(self.gpus)} if self.gpus else {})}
        volumes = {"tmp": "/tmp", "cache": CACHE_DIR}  # the root filesystem is read-only
        if self.nproc > 1:
            volumes["dshm"] = "/dev/shm"  # the runtime's 64 MiB /dev/shm is too small for DDP's workers
        container = k.V1Container(
            name="trainer",
            image=self.image,
            command=trainer_command(["python"], ["torchrun"], self.nproc, self.store_url, job_key, CACHE_DIR),
            env=[k.V1EnvVar(name="HOME", value="/tmp"), k.V1EnvVar(name="PYTHONUNBUFFERED", value="1")]
            + [k.V1EnvVar(name=n, value=os.environ[n]) for n in PASSED_ON if os.environ.get(n)],
            env_from=[k.V1EnvFromSource(secret_ref=k.V1SecretEnvSource(name=self.env_from_secret))]
            if self.env_from_secret
            else None,
            resources=k.V1ResourceRequirements(requests=dict(self.resources), limits=limits),
            volume_mounts=[k.V1VolumeMount(name=n, mount_path=p) for n, p in volumes.items()],
            security_context=k.V1SecurityContext(
                run_as_non_root=True,
                read_only_root_filesystem=True,
                allow_privilege_escalation=False,
                capabilities=k.V1Capabilities(drop=["ALL"]),
                seccomp_profile=k.V1SeccompProfile(type="RuntimeDefault"),
            ),
        )
        pod = k.V1PodSpec(
            containers=[container],
            restart_policy="Never",
            service_account_name=self.service_account,
            automount_service_account_token=False,  # the trainer never calls the API server itself
            security_context=k.V1PodSecurityContext(
                run_as_non_root=True,
                run_as_user=1000,
                run_as_group=1000,
                fs_group=1000,
                seccomp_profile=k.V1SeccompProfile(type="RuntimeDefault"),
            ),
            volumes=[
                k.V1Volume(
                    name=n,
                    empty_dir=k.V1EmptyDirVolumeSource(medium="Memory") if n == "dshm" else k.V1EmptyDirVolumeSource(),
                )
                for n in volumes
            ],
        )
        meta = dict(labels=dict(LABELS), annotations={"unigap/job-key": job_key})
        return k.V1Job(
            api_version="batch/v1",
            kind="Job",
            metadata=k.V1ObjectMeta(name=job_name(job_key), namespace=self.namespace, **meta),
            spec=k.V1JobSpec(
                backoff_limit=self.backoff_limit,
                ttl_seconds_after_finished=self.ttl,
                active_deadline_seconds=self.deadline,
                template=k.V1PodTemplateSpec(metadata=k.V1ObjectMeta(**meta), spec=pod),
            ),
        )

    def _api(self):
        from kubernetes import client, config

        if self.api_client is None:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            self.api_client = client.ApiClient()
        return self.api_client

    def run(self, job_key: str) -> None:
        from kubernetes import client, watch

        batch = client.BatchV1Api(self._api())
        body = self.build_job(job_key)
        name = body.metadata.name
        self._submit(batch, body)
        give_up = time.monotonic() + self.deadline + self.watch_margin_s
        while True:  # a watch ends at its timeout; a new one starts with the Job's current state
            left = give_up - time.monotonic()
            if left <= 0:
                raise JobFailed(
                    name,
                    f"not finished {self.deadline + self.watch_margin_s:g} s after it was submitted "
                    "(never scheduled, or the cluster never reported its end)",
                    self._logs(name),
                )
            by_name = f"metadata.name={name}"
            stream = watch.Watch().stream(
                batch.list_namespaced_job,
                self.namespace,
                field_selector=by_name,
                timeout_seconds=max(1, int(min(300, left))),
            )
            for event in stream:
                if event["type"] == "DELETED":
                    raise JobFailed(name, "the Job was deleted before it finished")
                done = _conditions(event["object"])
                if "Complete" in done:
                    return
                if "Failed" in done:
                    raise JobFailed(name, f"{done['Failed'].reason}: {done['Failed'].message}", self._logs(name))

    def _submit(self, batch, body) -> None:
        """Create the Job; if one of its name exists (the same key, submitted before) and has failed,
        delete it (pods too) and create it again. A running or complete one is left to be watched."""
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        name = body.metadata.name
        for _ in range(3):
            try:
                batch.create_namespaced_job(self.namespace, body)
                return
            except ApiException as e:
                if e.status != 409:  # AlreadyExists
                    raise
            try:
                existing = batch.read_namespaced_job(name, self.namespace)
            except ApiException as e:
                if e.status == 404:  # gone meanwhile (its TTL): create it again
                    continue
                raise
            if "Failed" not in _conditions(existing):
                return
            print(f"  trainer job {name} failed before; deleting it to run it again", flush=True)
            try:
                batch.delete_namespaced_job(
                    name, self.namespace, body=client.V1DeleteOptions(propagation_policy="Foreground")
                )
            except ApiException as e:
                if e.status != 404:
                    raise
            self._wait_gone(batch, name)
        raise JobFailed(name, "could not be submitted again: its earlier Job keeps coming back")

    def _wait_gone(self, batch, name: str, timeout_s: float = 120) -> None:
        from kubernetes.client.rest import ApiException

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                batch.read_namespaced_job(name, self.namespace)
            except ApiException as e:
                if e.status == 404:
                    return
                raise
            time.sleep(0.5)
        raise JobFailed(name, f"its failed earlier Job was not deleted within {timeout_s:.0f} s")

    def _logs(self, name: str) -> str:
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        core = client.CoreV1Api(self._api())
        out = []
        for pod in core.list_namespaced_pod(self.namespace, label_selector=f"job-name={name}").items:
            try:
                out.append(
                    f"[pod {pod.metadata.name}]\n"
                    + core.read_namespaced_pod_log(pod.metadata.name, self.namespace, tail_lines=LOG_TAIL_LINES)
                )
            except ApiException as e:
                out.append(f"[pod {pod.metadata.name}: no log ({e.reason})]")
        return "\n".join(out)


def _conditions(job) -> dict:
    """The Job's conditions that hold, by type (Complete, Failed, ...)."""
    return {c.type: c for c in (job.status.conditions if job.status else None) or [] if c.status == "True"}


def executor_from_env(kind: str, store_url: str, nproc: int = 1) -> Executor:
    """`local` or `kubernetes`; the Kubernetes settings come from UNIGAP_K8S_NAMESPACE,
    UNIGAP_K8S_IMAGE (required), UNIGAP_K8S_GPUS, UNIGAP_K8S_CPU, UNIGAP_K8S_MEMORY,
    UNIGAP_K8S_SERVICE_ACCOUNT, UNIGAP_K8S_SECRET (store credentials, as env) and UNIGAP_K8S_DEADLINE_S
    (seconds a Job has to finish; default 24 h)."""
    if kind == "local":
        return LocalExecutor(store_url, nproc)
    if kind != "kubernetes":
        raise ValueError(f"executor must be local or kubernetes, not {kind!r}")
    env = os.environ.get
    if not env("UNIGAP_K8S_IMAGE"):
        raise ValueError("the kubernetes executor needs the trainer image in UNIGAP_K8S_IMAGE")
    return KubernetesExecutor(
        namespace=env("UNIGAP_K8S_NAMESPACE") or "default",
        image=env("UNIGAP_K8S_IMAGE"),
        store_url=store_url,
        nproc=nproc,
        gpus=int(env("UNIGAP_K8S_GPUS") or 0),
        resources={"cpu": env("UNIGAP_K8S_CPU") or "2", "memory": env("UNIGAP_K8S_MEMORY") or "8Gi"},
        service_account=env("UNIGAP_K8S_SERVICE_ACCOUNT"),
        env_from_secret=env("UNIGAP_K8S_SECRET"),
        active_deadline_s=int(env("UNIGAP_K8S_DEADLINE_S") or DEFAULT_DEADLINE_S),
    )
