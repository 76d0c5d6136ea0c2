"""VQ decode and encode on CPU: chunks of `UnifiedModel.cpu_vq_images` (32) against one pass.

The loop decodes every candidate it samples (5,152 a round by default, 1,024 per sampler call)
and re-encodes them for canonical tokens. One pass over a thousand 32x32 images keeps activations
far larger than the caches; chunks stay inside them. Same model, same images and tokens. The
benchmark fails unless both give identical pixels and at least 99.9% identical tokens: the
convolutions sum in another order per batch size, so a code can flip where two nearly tie.
"""

from __future__ import annotations

import torch

from bench.common import Result, interleaved, machine, median, paired_ratio


def run(um, quick: bool = False, log=print) -> list[Result]:
    n, reps = (64, 1) if quick else (1024, 3)
    tokens = torch.randint(
        0,
        um.model.config.vq_config.num_embeddings,
        (n, um.num_image_tokens),
        generator=torch.Generator().manual_seed(0),
    )
    chunk = um.cpu_vq_images

    def with_chunks(images: int | None, fn):
        def call():
            um.cpu_vq_images = images
            try:
                return fn()
            finally:
                um.cpu_vq_images = chunk

        return call

    decode, encode = (lambda: um.decode(tokens)), (lambda: um.encode(images))
    images = with_chunks(None, decode)()
    if not (with_chunks(chunk, decode)() == images).all():
        raise AssertionError("chunked VQ decode gives other pixels than one pass")
    same = (with_chunks(chunk, encode)() == with_chunks(None, encode)()).float().mean().item()
    if same < 0.999:
        raise AssertionError(f"chunked VQ encode agrees with one pass on {same:.2%} of tokens only")
    check = f"identical pixels and {same:.3%} identical tokens for {n} images"
    log(f"vq: {check}")
    times = interleaved(
        {
            "decode one pass": with_chunks(None, decode),
            "decode chunks": with_chunks(chunk, decode),
            "encode one pass": with_chunks(None, encode),
            "encode chunks": with_chunks(chunk, encode),
        },
        reps,
        log,
    )
    m = machine()
    common = {"images": n, "chunk": chunk, "reps": reps, "check": check}
    return [
        Result(
            f"VQ {what} {n} images: chunks of {chunk} / one pass",
            n / median(times[f"{what} one pass"]),
            n / median(times[f"{what} chunks"]),
            "images/s",
            target,
            f"UnifiedModel.{what} with cpu_vq_images None vs {chunk}",
            {**common, "paired_ratio": paired_ratio(times[f"{what} one pass"], times[f"{what} chunks"])},
            m,
        )
        for what, target in (("decode", 2.0), ("encode", 1.5))
    ]
