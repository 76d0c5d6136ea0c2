"""The loop's backend over the services: generation and judging over gRPC, training as a job.

Every call names the checkpoint it wants, so the loop can evaluate a candidate model without
changing what the services serve to everyone else; only a promotion does that (`promote`).
Calls that fail with UNAVAILABLE (a server restarting, Triton down) or DEADLINE_EXCEEDED (a stuck
server: every client call has a deadline) are retried with backoff, a bounded number of times.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict

import grpc

from pipelines.executors import Executor, submit
from services.common.client import ServiceError
from services.generation.client import GenerationClient
from services.judge.client import JudgeClient
from unigap.store.base import Store
from unigap.store.records import set_serving
from unigap.train.round import TrainJob

RETRIED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def with_retries(
    call: Callable,
    attempts: int = 8,
    first_wait_s: float = 0.5,
    max_wait_s: float = 8.0,
    log: Callable[[str], None] = print,
):
    """Run `call()`, retrying transient gRPC failures with exponential backoff (waits capped at
    `max_wait_s`: the defaults ride out about 30 s, e.g. the judge restarting its tritonserver)."""
    for attempt in range(attempts):
        try:
            return call()
        except ServiceError as e:  # what the clients raise for a failed RPC
            if e.code not in RETRIED or attempt == attempts - 1:
                raise
            wait = min(first_wait_s * 2**attempt, max_wait_s)
            log(f"  {e.code.name.lower()}: {e.details}; retrying in {wait:.1f} s (attempt {attempt + 2} of {attempts})")
            time.sleep(wait)


class RemoteGenerator:
    def __init__(self, client: GenerationClient, ref: str, retry):
        self.client, self.ref, self.retry = client, ref, retry
        self.image_size = retry(client.model_info).image_size  # every checkpoint of a run shares the architecture

    def sample(self, prompts, n, cfg, temperature, seed):
        return self.retry(lambda: self.client.sample(prompts, n, cfg, temperature, seed, checkpoint=self.ref))

    def encode(self, images):
        return self.retry(lambda: self.client.encode(images, checkpoint=self.ref))


class RemoteJudge:
    def __init__(self, client: JudgeClient, ref: str, threshold: float, retry):
        self.client, self.ref, self.threshold, self.retry = client, ref, threshold, retry
        self.image_size = retry(client.model_info).image_size  # every checkpoint of a run shares the architecture

    def score(self, images, prompts):
        return self.retry(lambda: self.client.score(images, prompts, threshold=self.threshold, checkpoint=self.ref))


class ServiceBackend:
    def __init__(
        self,
        generation: GenerationClient,
        judge: JudgeClient,
        store: Store,
        executor: Executor,
        log: Callable[[str], None] = print,
    ):
        self.generation, self.judge_client, self.store, self.executor, self.log = (
            generation,
            judge,
            store,
            executor,
            log,
        )

    def _retry(self, call):
        return with_retries(call, log=self.log)

    def generator(self, ref: str) -> RemoteGenerator:
        return RemoteGenerator(self.generation, ref, self._retry)

    def judge(self, ref: str, threshold: float) -> RemoteJudge:
        return RemoteJudge(self.judge_client, ref, threshold, self._retry)

    def train(self, job: TrainJob) -> tuple[str, list]:
        """The job's key is its content's hash: the same round's training is submitted once."""
        key = "jobs/" + hashlib.sha256(json.dumps(asdict(job), sort_keys=True).encode()).hexdigest()[:16]
        self.log(f"  training as job {key}")
        return submit(self.store, job, key, self.executor)

    def promote(self, ref: str, **about) -> None:
        """Both services serve `ref` from now on: the store's serving record (which every replica
        following the store picks up, restarts included), then a reload of the replicas reached."""
        set_serving(self.store, ref, **about)
        for client in (self.generation, self.judge_client):
            if self._retry(client.model_info).checkpoint != ref:
                self._retry(functools.partial(client.reload, ref))
