"""JudgeService: a thin gRPC front over the `unigap_judge` Triton model and the library's figures.

Score validates, decodes the PNGs at the model's size and sends the pairs to Triton (the dynamic
batcher merges concurrent callers); NonUnification generates through GenerationService, judges
through Triton, checks with the server's external evaluator (`--evaluator`: shapes, none or
module:callable) and reports `unigap score`'s figures, on shapes-world prompts or free text.
"""

from __future__ import annotations

import asyncio
import re

import grpc
import numpy as np

from services.api import judge_pb2 as pb
from services.api import judge_pb2_grpc
from services.common.client import ServiceError, default_timeout
from services.common.models import ModelHolder
from services.common.validation import Invalid, Refused, check_finite, check_prompts, decode_png
from services.generation.client import GenerationClient
from services.generation.server import check_sampling, sampling
from services.judge import figures
from services.judge.triton_model import MAX_BATCH, MODEL_NAME
from unigap.evaluate import check_judge_fits, gap_report
from unigap.evaluators import Verdicts, get_evaluator
from unigap.prompts import as_prompts, metadata_of

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["JudgeService"].full_name
DEFAULT_THRESHOLD = 0.5  # an unset threshold of Score and NonUnification
DEFAULT_NU_N = 4  # an unset NonUnificationRequest.n: `unigap score`'s default


class TritonJudge:
    """The front's client of `unigap_judge` over Triton's gRPC endpoint (asyncio)."""

    def __init__(self, address: str):
        import tritonclient.grpc.aio as triton_grpc  # created inside the server's event loop

        self.address = address
        self.client = triton_grpc.InferenceServerClient(address)
        self.down = False  # set when tritonserver has died: refuse at once until a new one is ready

    async def p_yes(
        self, images: np.ndarray, prompts: list[str], checkpoint: str = "", timeout: float | None = None
    ) -> np.ndarray:
        """p_yes [B] of uint8 images [B, H, W, 3]: requests of <= MAX_BATCH rows, sent at once, each
        with a deadline (`timeout` s; None = the clients' default), so a stuck Triton cannot hang a call."""
        from tritonclient.utils import InferenceServerException

        timeout = default_timeout() if timeout is None else timeout

        if self.down:
            raise Refused(
                grpc.StatusCode.UNAVAILABLE, "triton", f"the judge's Triton server at {self.address} is restarting"
            )
        chunks = [
            self._infer(images[i : i + MAX_BATCH], prompts[i : i + MAX_BATCH], checkpoint, timeout)
            for i in range(0, len(prompts), MAX_BATCH)
        ]
        try:
            return np.concatenate(await asyncio.gather(*chunks))
        except InferenceServerException as e:
            status = str(e.status())  # e.g. "StatusCode.UNAVAILABLE"
            # A tritonserver that listens but has not loaded the model yet (it is starting) is as transient.
            if "UNAVAILABLE" in status or f"'{MODEL_NAME}' has no available versions" in (e.message() or ""):
                raise Refused(
                    grpc.StatusCode.UNAVAILABLE,
                    "triton",
                    f"the judge's Triton server at {self.address} is not answering ({e.message()})",
                ) from None
            if "DEADLINE_EXCEEDED" in status:
                raise Refused(
                    grpc.StatusCode.DEADLINE_EXCEEDED, "triton", "the deadline passed while Triton judged"
                ) from None
            # The model failed inside (pytriton passes its traceback on): keep the last ValueError line if any.
            reasons = re.findall(r"ValueError: (.+)", e.message() or "")
            raise Refused(
                grpc.StatusCode.INTERNAL, "triton", reasons[-1] if reasons else (e.message() or str(e))
            ) from None

    async def _infer(self, images: np.ndarray, prompts: list[str], checkpoint: str, timeout) -> np.ndarray:
        from tritonclient.grpc import InferInput, InferRequestedOutput

        n = len(prompts)
        inputs = [
            InferInput("image", list(images.shape), "UINT8"),
            InferInput("prompt", [n, 1], "BYTES"),
            InferInput("checkpoint", [n, 1], "BYTES"),
        ]
        inputs[0].set_data_from_numpy(np.ascontiguousarray(images, dtype=np.uint8))
        inputs[1].set_data_from_numpy(np.array([[p.encode()] for p in prompts], dtype=object))
        inputs[2].set_data_from_numpy(np.full((n, 1), checkpoint.encode(), dtype=object))
        outputs = [InferRequestedOutput("p_yes"), InferRequestedOutput("error")]
        result = await self.client.infer(MODEL_NAME, inputs, outputs=outputs, client_timeout=timeout)
        errors = [e for e in result.as_numpy("error").reshape(-1) if e]
        if errors:  # the front checked the request, so this is a checkpoint gone since: say which
            field, _, why = re.sub(r"^row \d+: ", "", errors[0].decode()).partition(": ")
            raise Invalid(field, why)
        return result.as_numpy("p_yes").reshape(-1)

    async def close(self) -> None:
        await self.client.close()


def _check_fits(mode: str, prompts, field) -> None:
    """Refuse a prompt the judge cannot judge (free text in likelihood mode); `field(i)` names prompt i."""
    for i, prompt in enumerate(prompts):
        try:
            check_judge_fits(mode, prompt)
        except ValueError as e:
            raise Invalid(field(i), str(e)) from None


def _threshold(request) -> float:
    """The request's acceptance threshold (unset: the server's default), checked."""
    threshold = request.threshold if request.HasField("threshold") else DEFAULT_THRESHOLD
    check_finite(threshold, "threshold", 0, 1)
    return threshold


def _progress(stage: str, done: int, total: int) -> pb.NonUnificationResponse:
    return pb.NonUnificationResponse(progress=pb.Progress(stage=stage, done=done, total=total))


class JudgeServicer(judge_pb2_grpc.JudgeServiceServicer):
    def __init__(self, holder: ModelHolder, triton: TritonJudge, settings, generation: GenerationClient | None = None):
        self.holder, self.triton, self.settings, self.generation = holder, triton, settings, generation
        self.evaluator = get_evaluator(settings.evaluator)  # the settings checked the name

    async def Score(self, request, context):
        s, pairs = self.settings, request.pairs
        prompts = [p.prompt for p in pairs]
        try:
            check_prompts(prompts, s, "pairs")
        except Invalid as e:  # it names "pairs" or "pairs[i]"; the text of pair i is "pairs[i].prompt"
            raise Invalid(e.field if e.field == "pairs" else f"{e.field}.prompt", e.why) from None
        _check_fits(s.mode, prompts, lambda i: f"pairs[{i}].prompt")
        threshold = _threshold(request)
        loaded = await self.holder.get(request.checkpoint)
        size = loaded.model.image_size
        images = await asyncio.to_thread(
            lambda: np.stack([decode_png(p.png, f"pairs[{i}].png", size) for i, p in enumerate(pairs)])
        )
        p_yes = await self.triton.p_yes(images, prompts, loaded.ref, context.time_remaining())
        return pb.ScoreResponse(
            judgments=[pb.Judgment(p_yes=p, decision=p >= threshold) for p in p_yes.tolist()], checkpoint=loaded.ref
        )

    async def NonUnification(self, request, context):
        s = self.settings
        check_prompts(request.prompts, s)
        _check_fits(s.mode, request.prompts, lambda i: f"prompts[{i}]")
        specs = as_prompts(list(request.prompts))  # the world's specs (categories, tiers) or free text
        n, cfg, temperature = sampling(request, DEFAULT_NU_N)
        check_sampling(n, cfg, temperature, s.max_n)
        threshold = _threshold(request)
        if self.generation is None:
            raise Refused(
                grpc.StatusCode.FAILED_PRECONDITION,
                "generation",
                "this judge has no GenerationService to sample from (start it with --generation HOST:PORT)",
            )
        loaded = await self.holder.get(request.checkpoint)
        prompts, total = list(request.prompts), len(request.prompts) * n
        step = max(1, MAX_BATCH // n)  # prompts per round trip: one Triton request's worth of images
        rows, accepted, verdicts = [], [], []
        for start in range(0, len(prompts), step):
            part = prompts[start : start + step]
            samples = await self._generate(part, n, cfg, temperature, request)
            yield _progress("generate", len(rows) + len(samples.images), total)
            p_yes = await self.triton.p_yes(samples.images, [part[k] for k in samples.prompt_index], loaded.ref)
            accepted.append(p_yes >= threshold)
            yield _progress("judge", len(rows) + len(p_yes), total)
            part_specs = [specs[start + k] for k in samples.prompt_index]
            verdicts.append(await asyncio.to_thread(self._evaluate, samples.images, part_specs))
            rows += part_specs
            yield _progress("evaluate", len(rows), total)
        correct, known = (np.concatenate([getattr(v, f) for v in verdicts]) for f in ("correct", "known"))
        report = await asyncio.to_thread(gap_report, specs, rows, np.concatenate(accepted), correct, known=known)
        yield pb.NonUnificationResponse(result=figures.to_result(report, loaded.ref, self.evaluator.name))

    def _evaluate(self, images, specs) -> Verdicts:
        try:
            return self.evaluator(images, [x.text for x in specs], [metadata_of(x) for x in specs])
        except ValueError as e:  # a user's evaluator that failed or answered something else
            raise Refused(grpc.StatusCode.INTERNAL, "evaluator", str(e)) from None

    async def _generate(self, prompts: list[str], n: int, cfg: float, temperature: float, r: pb.NonUnificationRequest):
        try:
            return await asyncio.to_thread(self.generation.sample, prompts, n, cfg, temperature, r.seed, r.checkpoint)
        except ServiceError as e:  # pass the generation server's status on, saying where it came from
            raise Refused(e.code, "generation", e.details) from None

    async def GetModel(self, request, context):
        return pb.JudgeServiceGetModelResponse(model=self.holder.info())

    async def ReloadModel(self, request, context):
        # The Triton model asks the holder for its model at every batch: the next batch uses this one.
        return pb.JudgeServiceReloadModelResponse(model=await self.holder.reload(request.checkpoint))
