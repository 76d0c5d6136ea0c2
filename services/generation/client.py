"""A sync, thread-safe client of GenerationService with UnifiedModel.sample's shapes and row order."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.api import generation_pb2 as pb
from services.api import generation_pb2_grpc
from services.common.client import ServiceClient, rpc_errors
from services.common.images import encode_png
from services.common.validation import decode_png
from unigap.config import Sampling


@dataclass
class RemoteSamples:
    """Like adapter.Samples, with numpy tokens; rows prompt-major (prompt 0's n, then prompt 1's ...)."""

    tokens: np.ndarray  # [rows, n_image_tokens] int64
    images: np.ndarray  # [rows, H, W, 3] uint8
    prompt_index: list[int]
    prompts: list[str]
    checkpoint: str


class GenerationClient(ServiceClient):
    stub = generation_pb2_grpc.GenerationServiceStub
    get_model_request, reload_model_request = (
        pb.GenerationServiceGetModelRequest,
        pb.GenerationServiceReloadModelRequest,
    )

    def sample(
        self,
        prompts: list[str],
        n: int = 1,
        cfg: float = Sampling.cfg,
        temperature: float = Sampling.temperature,
        seed: int = 0,
        checkpoint: str = "",
    ) -> RemoteSamples:
        responses = []  # (prompt index in `prompts`, response)
        for part in self.chunks(len(prompts)):
            request = pb.GenerateRequest(
                prompts=prompts[part], n=n, cfg_scale=cfg, temperature=temperature, seed=seed, checkpoint=checkpoint
            )
            with rpc_errors():
                responses += [
                    (part.start + r.prompt_index, r) for r in self._stub.Generate(request, timeout=self.timeout)
                ]
        responses.sort(key=lambda x: (x[0], x[1].candidate_index))
        return RemoteSamples(
            tokens=np.array([list(r.image_tokens) for _, r in responses], dtype=np.int64),
            images=np.stack([decode_png(r.png, "png") for _, r in responses]),
            prompt_index=[i for i, _ in responses],
            prompts=list(prompts),
            checkpoint=responses[0][1].checkpoint if responses else "",
        )

    def encode(self, images, checkpoint: str = "") -> np.ndarray:
        """Canonical tokens [B, T] int64 of uint8 images [B, H, W, 3] (or a list of them)."""
        tokens = []
        for part in self.chunks(len(images)):
            request = pb.EncodeRequest(png=[encode_png(im) for im in images[part]], checkpoint=checkpoint)
            with rpc_errors():
                tokens += [list(t.ids) for t in self._stub.Encode(request, timeout=self.timeout).tokens]
        return np.array(tokens, dtype=np.int64)
