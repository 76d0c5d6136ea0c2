"""A sync, thread-safe client of JudgeService with the in-process judge's shapes."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from services.api import judge_pb2 as pb
from services.api import judge_pb2_grpc
from services.common.client import ServiceClient, rpc_errors
from services.common.images import encode_png
from services.judge.figures import from_result
from unigap.config import Sampling
from unigap.model.judge import Judgment


class JudgeClient(ServiceClient):
    stub = judge_pb2_grpc.JudgeServiceStub
    get_model_request, reload_model_request = pb.JudgeServiceGetModelRequest, pb.JudgeServiceReloadModelRequest

    def score(self, images, prompts: list[str], threshold: float | None = None, checkpoint: str = "") -> Judgment:
        """Judge uint8 images [B, H, W, 3] (or a list of [H, W, 3]) against their prompts."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        p_yes, decision = [], []
        for part in self.chunks(len(prompts)):
            pairs = [pb.ImagePrompt(png=encode_png(im), prompt=p) for im, p in zip(images[part], prompts[part])]
            with rpc_errors():
                r = self._stub.Score(
                    pb.ScoreRequest(pairs=pairs, threshold=threshold, checkpoint=checkpoint), timeout=self.timeout
                )
            p_yes += [j.p_yes for j in r.judgments]
            decision += [j.decision for j in r.judgments]
        return Judgment(np.array(p_yes, dtype=np.float32), np.array(decision, dtype=bool))

    def non_unification(
        self,
        prompts: list[str],
        n: int = 4,
        seed: int = 0,
        cfg: float = Sampling.cfg,
        temperature: float = Sampling.temperature,
        checkpoint: str = "",
        on_progress: Callable[[str, int, int], None] | None = None,
        threshold: float | None = None,
    ) -> dict:
        """`unigap score`'s figures (overall, by_category, by_tier: gap_summary dicts), the checkpoint
        and the evaluator; `threshold` None: the server's default."""
        request = pb.NonUnificationRequest(
            prompts=prompts,
            n=n,
            seed=seed,
            cfg_scale=cfg,
            temperature=temperature,
            checkpoint=checkpoint,
            threshold=threshold,
        )
        with rpc_errors():
            for r in self._stub.NonUnification(request, timeout=self.timeout):
                if r.HasField("progress"):
                    if on_progress:
                        on_progress(r.progress.stage, r.progress.done, r.progress.total)
                else:
                    return from_result(r.result)
        raise RuntimeError("the judge's NonUnification stream ended without a result")
