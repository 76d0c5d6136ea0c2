"""Sampling: unigap's sampler against transformers' `generate(generation_mode="image")`.

Same model, prompts, N candidates per prompt, CFG scale, temperature and number of image tokens.
Both count token generation only (neither decodes to pixels: `generate` returns tokens, and the
sampler runs with `decode=False`); a second, informative row adds the same VQ decode to both.

Same distribution: greedy (temperature 0 / do_sample=False) must give the same tokens token for
token, and with sampling both draw from softmax(guided logits / temperature) with no top-k/top-p
(the sampler by Gumbel-max with per-candidate seeds, generate by torch.multinomial); the benchmark
fails if either check does not hold.
"""

from __future__ import annotations

import torch
from transformers import GenerationConfig

from bench.common import Result, interleaved, machine, median, paired_ratio
from unigap import world
from unigap.model.adapter import gen_text


def generate_config(um, cfg: float, temperature: float, n: int) -> GenerationConfig:
    """The GenerationConfig the adapter's greedy-equals-generate test uses, with sampling options."""
    sample = temperature > 0
    return GenerationConfig(
        max_new_tokens=um.num_image_tokens,
        do_sample=sample,
        temperature=temperature if sample else None,
        top_k=None,
        top_p=None,
        num_return_sequences=n,
        guidance_scale=cfg,
        pad_token_id=um.tokenizer.pad_token_id,
        bos_token_id=um.tokenizer.bos_token_id,
        generation_kwargs={"boi_token_id": um.boi_id},
    )


@torch.no_grad()
def generate(um, prompts: list[str], n: int, cfg: float, temperature: float) -> torch.Tensor:
    ids, mask = um._tokenize([gen_text(p) + um.tokenizer.boi_token for p in prompts])
    return um.model.generate(
        input_ids=ids,
        attention_mask=mask,
        generation_mode="image",
        generation_config=generate_config(um, cfg, temperature, n),
    )


def check_same_distribution(um, prompts: list[str], cfg: float) -> str:
    greedy_ref = generate(um, prompts, 1, cfg, 0.0)
    greedy = um.sample(prompts, n=1, cfg=cfg, temperature=0.0, decode=False).tokens
    same = int((greedy_ref == greedy).sum())
    if same != greedy.numel():
        raise AssertionError(f"greedy sampler and generate differ: {greedy.numel() - same} of {greedy.numel()} tokens")
    g = generate_config(um, cfg, 0.7, 1)
    if any(getattr(g, k) is not None for k in ("top_k", "top_p", "min_p", "typical_p")):
        raise AssertionError("generate would truncate the distribution (top-k/top-p)")
    return f"greedy tokens identical ({same} of {greedy.numel()}); no top-k/top-p in generate"


def run(um, quick: bool = False, log=print) -> list[Result]:
    n_prompts, n, cfg, temperature = (2, 2, 1.5, 0.7) if quick else (8, 8, 1.5, 0.7)
    reps = 1 if quick else 9
    prompts = [s.text for s in world.split("heldout")[:n_prompts]]
    check = check_same_distribution(um, prompts, cfg)
    log(f"sampling: {check}")
    rows = n_prompts * n

    def ours():
        um.sample(prompts, n=n, cfg=cfg, temperature=temperature, seed=0, decode=False)

    def theirs():
        generate(um, prompts, n, cfg, temperature)

    def ours_decoded():
        um.sample(prompts, n=n, cfg=cfg, temperature=temperature, seed=0, decode=True)

    def theirs_decoded():
        um.decode(generate(um, prompts, n, cfg, temperature))

    ours(), theirs()  # warm-up
    times = interleaved(
        {"generate": theirs, "sampler": ours, "generate+decode": theirs_decoded, "sampler+decode": ours_decoded},
        reps,
        log,
    )
    common = {
        "prompts": n_prompts,
        "n": n,
        "cfg": cfg,
        "temperature": temperature,
        "image_tokens": um.num_image_tokens,
        "reps": reps,
        "check": check,
    }
    m = machine()
    return [
        Result(
            f"sampling: {n_prompts} prompts x N={n} / generate",
            rows / median(times["generate"]),
            rows / median(times["sampler"]),
            "candidates/s",
            1.5,
            "transformers generate(generation_mode='image') vs UnifiedModel.sample, tokens only",
            {**common, "paired_ratio": paired_ratio(times["generate"], times["sampler"])},
            m,
        ),
        Result(
            "sampling incl. VQ decode (info)",
            rows / median(times["generate+decode"]),
            rows / median(times["sampler+decode"]),
            "candidates/s",
            None,
            "both followed by the same VQ decode to pixels",
            {**common, "paired_ratio": paired_ratio(times["generate+decode"], times["sampler+decode"])},
            m,
        ),
    ]
