"""GenerationService: a thin servicer over `UnifiedModel.sample` / `.encode` with dynamic batching."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
from prometheus_client import CollectorRegistry

from services.api import generation_pb2 as pb
from services.api import generation_pb2_grpc, model_pb2
from services.common.images import encode_png
from services.common.metrics import metrics_for
from services.common.models import Loaded, ModelHolder, follow_promotions
from services.common.server import RunningServer, serve
from services.common.settings import ServerSettings
from services.common.validation import Invalid, check_batch, check_finite, check_prompts, decode_png
from services.generation.batcher import Batcher
from unigap.paths import DEFAULT_MODEL

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GenerationService"].full_name
MAX_CFG, MAX_TEMPERATURE = 20.0, 5.0
# What an unset GenerateRequest field means (the CLI's sampling defaults); GetModel reports them.
DEFAULT_N, DEFAULT_CFG, DEFAULT_TEMPERATURE = 1, 1.5, 0.7


def sampling(r, default_n: int = DEFAULT_N) -> tuple[int, float, float]:
    """(n, cfg_scale, temperature) of a GenerateRequest or NonUnificationRequest: each unset field
    (proto3 `optional`) takes the server's default; a field that is set is used as it is."""
    return (
        r.n if r.HasField("n") else default_n,
        r.cfg_scale if r.HasField("cfg_scale") else DEFAULT_CFG,
        r.temperature if r.HasField("temperature") else DEFAULT_TEMPERATURE,
    )


def check_sampling(n: int, cfg: float, temperature: float, max_n: int) -> None:
    check_finite(n, "n", 1, max_n)
    check_finite(cfg, "cfg_scale", 0, MAX_CFG, lo_open=True)
    check_finite(temperature, "temperature", 0, MAX_TEMPERATURE)


class GenerationSettings(ServerSettings):
    model: str = str(DEFAULT_MODEL)
    """Checkpoint to serve: a store reference (64 hex digits) or a save_pretrained folder."""
    batch_window_ms: float = 5.0
    """How long an idle server waits for concurrent requests to join a batch."""
    batch_rows: int = 64
    """Most images per model call."""
    max_images: int = 4096
    """Most images (n x prompts) per Generate request."""


@dataclass(frozen=True)
class SampleKey:
    """Prompts batch together only when everything but prompt and seed is the same."""

    loaded: Loaded
    n: int
    cfg: float
    temperature: float


def _sample(key: SampleKey, prompts: list[str], seeds: list[int]) -> list[list[tuple[bytes, list[int]]]]:
    """One model call for a batch (worker thread): per prompt, its n (png, tokens)."""
    s = key.loaded.model.sample(prompts, key.n, key.cfg, key.temperature, seeds)
    tokens = s.tokens.cpu().numpy()
    rows = [(encode_png(s.images[r]), tokens[r].tolist()) for r in range(len(tokens))]
    return [rows[i * key.n : (i + 1) * key.n] for i in range(len(prompts))]


def _encode(loaded: Loaded, pngs, field: str) -> np.ndarray:
    size = loaded.model.image_size
    images = np.stack([decode_png(data, f"{field}[{i}]", size) for i, data in enumerate(pngs)])
    return loaded.model.encode(images).cpu().numpy()


class GenerationServicer(generation_pb2_grpc.GenerationServiceServicer):
    def __init__(self, holder: ModelHolder, settings: GenerationSettings, registry: CollectorRegistry):
        self.holder, self.settings = holder, settings
        self.batch_size = metrics_for(registry).batch_size
        self.batcher = Batcher(
            _sample,
            settings.batch_window_ms / 1000,
            settings.batch_rows,
            on_batch=self.batch_size.labels("generate").observe,
        )

    def _check(self, r: pb.GenerateRequest) -> tuple[int, float, float]:
        s = self.settings
        check_prompts(r.prompts, s)
        n, cfg, temperature = sampling(r)
        check_sampling(n, cfg, temperature, s.max_n)
        if n * len(r.prompts) > s.max_images:
            raise Invalid("n", f"n x len(prompts) = {n * len(r.prompts)} images; at most {s.max_images} per request")
        return n, cfg, temperature

    async def Generate(self, request, context):
        n, cfg, temperature = self._check(request)
        loaded = await self.holder.get(request.checkpoint)  # kept: a reload cannot swap it mid-stream
        key = SampleKey(loaded, n, cfg, temperature)
        jobs = [self.batcher.submit(key, n, p, request.seed) for p in request.prompts]
        try:
            for i, job in enumerate(jobs):
                for k, (png, tokens) in enumerate(await job):
                    yield pb.GenerateResponse(
                        prompt_index=i, candidate_index=k, png=png, image_tokens=tokens, checkpoint=loaded.ref
                    )
        finally:
            for job in jobs:  # a cancelled stream frees its queued work
                job.cancel()

    async def Encode(self, request, context):
        check_batch(len(request.png), self.settings, "png")
        loaded = await self.holder.get(request.checkpoint)
        tokens = await asyncio.to_thread(_encode, loaded, list(request.png), "png")
        self.batch_size.labels("encode").observe(len(tokens))
        return pb.EncodeResponse(tokens=[pb.ImageTokens(ids=row) for row in tokens.tolist()], checkpoint=loaded.ref)

    async def GetModel(self, request, context):
        return pb.GenerationServiceGetModelResponse(model=self.holder.info())

    async def ReloadModel(self, request, context):
        return pb.GenerationServiceReloadModelResponse(model=await self.holder.reload(request.checkpoint))


async def start(settings: GenerationSettings, registry: CollectorRegistry | None = None) -> RunningServer:
    """Load the model (in a thread), then serve GenerationService; `stop()` also stops the batcher."""
    registry = registry if registry is not None else CollectorRegistry()
    defaults = model_pb2.RequestDefaults(n=DEFAULT_N, cfg_scale=DEFAULT_CFG, temperature=DEFAULT_TEMPERATURE)
    holder = await asyncio.to_thread(ModelHolder, settings.model, settings, defaults=defaults)
    servicer = GenerationServicer(holder, settings, registry)
    running = await serve(
        lambda s: generation_pb2_grpc.add_GenerationServiceServicer_to_server(servicer, s),
        [SERVICE_NAME],
        settings,
        registry,
    )
    running.servicer = servicer  # embedders and tests reach the holder and the batcher
    running.on_stop(servicer.batcher.stop)
    follow_promotions(holder, running)
    return running
