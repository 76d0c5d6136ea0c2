"""GPU benchmark at Janus-Pro-1B size: unigap's sampler and judge against their baselines, on CUDA.

    python bench/gpu.py                 # needs a CUDA device; randomly initialised Janus-Pro-1B sizes
    python bench/gpu.py --dry-run       # the same code on a scaled-down model on CPU (a smoke test)

No checkpoint can be downloaded here, so the model is a randomly initialised
`JanusForConditionalGeneration` with the Janus-Pro-1B configuration written out below (a
1.5B-parameter Llama, SigLIP-L/16 at 384 px, the 16384-code VQ tokenizer with 24x24 tokens), and the
project's own tokenizer (the text vocabulary is padded to 102400 rows). Speed does not depend on
the weights; the greedy check does not either, since it compares two ways to run the same weights.

Rows (the same table and JSON list as `python -m bench`, written to bench/results-gpu.json):
- sampling: `UnifiedModel.sample` vs transformers `generate(generation_mode="image")`, tokens only,
  same prompts, N, CFG scale, temperature; greedy tokens compared token for token first;
- judge: `make_judge(um, "likelihood")` in-process, a batch at a time vs one image at a time;
- judge efficiency: its achieved FLOP/s over the device's matmul rate (same dtype).
Without a CUDA device (and without --dry-run) it exits with status 2 and one line.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` and `unigap` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402


def janus_pro_1b_config(tokenizer):
    """The Janus-Pro-1B sizes (deepseek-community/Janus-Pro-1B), with this project's special-token ids."""
    from transformers import JanusConfig, LlamaConfig
    from transformers.models.janus.configuration_janus import JanusVisionConfig, JanusVQVAEConfig

    text = LlamaConfig(
        vocab_size=102400,
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=24,
        num_attention_heads=16,
        num_key_value_heads=16,
        max_position_embeddings=16384,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    vision = JanusVisionConfig(
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=384,
        patch_size=16,
        mlp_ratio=4.0,
        projection_dim=2048,
        depth=2,
        num_image_tokens=576,
    )
    vq = JanusVQVAEConfig(
        embed_dim=8,
        num_embeddings=16384,
        latent_channels=256,
        base_channels=128,
        channel_multiplier=[1, 1, 2, 2, 4],
        num_res_blocks=2,
        num_patches=24,
        projection_dim=2048,
        image_token_embed_dim=2048,
    )
    return JanusConfig(
        text_config=text,
        vision_config=vision,
        vq_config=vq,
        tie_word_embeddings=False,
        image_token_id=tokenizer.convert_tokens_to_ids(tokenizer.image_token),
    )


def full_size_parameters() -> int:
    """Parameters of the Janus-Pro-1B configuration, built on the meta device (no memory): about
    2.08 B, Janus-Pro-1B's size; checks on any machine that the configuration builds."""
    from transformers import JanusForConditionalGeneration

    from unigap.model.build import build_tokenizer
    from unigap.pretrain import vocabulary

    with torch.device("meta"):
        model = JanusForConditionalGeneration(janus_pro_1b_config(build_tokenizer(vocabulary())))
    return sum(p.numel() for p in model.parameters())


def small_config(tokenizer):
    """A scaled-down model with the same structure, for --dry-run on CPU."""
    from unigap.model.build import TinySize, janus_config

    return janus_config(
        tokenizer, TinySize(hidden=64, layers=2, heads=2, vision_hidden=64, vision_layers=1, codebook=64)
    )


def build(dry_run: bool, device: str, dtype: torch.dtype, seed: int = 0):
    """(UnifiedModel, its config) with random weights on `device`."""
    from transformers import JanusForConditionalGeneration

    from unigap.model.adapter import UnifiedModel
    from unigap.model.build import TinySize, build_processor, build_tokenizer
    from unigap.pretrain import vocabulary

    tokenizer = build_tokenizer(vocabulary())
    config = small_config(tokenizer) if dry_run else janus_pro_1b_config(tokenizer)
    vision = config.vision_config
    processor = build_processor(tokenizer, TinySize(image_size=vision.image_size, patch_size=vision.patch_size))
    torch.manual_seed(seed)
    with torch.device(device):  # initialise in place: a 2B-parameter init on the host would take minutes
        model = JanusForConditionalGeneration(config)
    model = model.to(dtype).eval()
    return UnifiedModel(model, processor), config


def parameters(um) -> int:
    return sum(p.numel() for p in um.model.parameters())


def _synced(fn, device: str):
    if device == "cpu":
        return fn

    def run():
        fn()
        torch.cuda.synchronize()

    return run


def copy_bandwidth(device: str, mib: int, reps: int = 5) -> float:
    """Bytes/s of a device-to-device copy of `mib` MiB (read + write counted): the memory bandwidth a
    decoding step can hope for, measured rather than taken from a data sheet."""
    src = torch.empty(mib * 2**20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        dst.copy_(src)
        if device != "cpu":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * src.numel() / best


def decode_step_bytes(um, rows: int, prefix: int) -> int:
    """Bytes one decoding step must read for `rows` candidates with CFG: the language model's
    weights once for the whole batch (the text embedding is a lookup and not read) plus the
    generation head and embeddings, and the KV cache at its mean length over the image."""
    lm = um.model.model.language_model
    weights = sum(p.numel() * p.element_size() for n, p in lm.named_parameters() if "embed_tokens" not in n)
    gen = [um.model.model.generation_head, um.model.model.generation_embeddings, um.model.model.generation_aligner]
    weights += sum(p.numel() * p.element_size() for m in gen for p in m.parameters())
    text = um.model.config.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    element = next(lm.parameters()).element_size()
    kv_per_position = 2 * text.num_hidden_layers * text.num_key_value_heads * head_dim * element
    return weights + 2 * rows * kv_per_position * (prefix + um.num_image_tokens // 2)


def run(args) -> list:
    from bench.common import Result, interleaved, machine, median
    from bench.efficiency import count_flops, dominant_matmul, matmul_rate
    from bench.judge import rendered
    from bench.sampling import generate
    from unigap import world
    from unigap.evaluate import make_judge
    from unigap.model.adapter import gen_text

    device = "cpu" if args.dry_run else "cuda"
    dtype = torch.float32 if args.dry_run else getattr(torch, args.dtype)
    log = print
    if args.dry_run:
        log(f"Janus-Pro-1B configuration: {full_size_parameters() / 1e9:.2f} B parameters (built on the meta device)")
    t = time.perf_counter()
    um, _ = build(args.dry_run, device, dtype)
    log(
        f"model: {parameters(um) / 1e9:.3f} B parameters, {um.num_image_tokens} image tokens of "
        f"{um.image_size} px, {dtype} on {device} ({time.perf_counter() - t:.0f} s to build)"
    )
    n_prompts, n = (2, 2) if args.dry_run else (args.prompts, args.n)
    reps = 1 if args.dry_run else args.reps
    prompts = [s.text for s in world.split("heldout")[:n_prompts]]
    cfg, temperature = args.cfg, 0.7

    # Same distribution: greedy tokens, float32 so that both sides' arithmetic can agree exactly.
    um32 = um if dtype == torch.float32 else build(args.dry_run, device, torch.float32)[0]
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    check_prompts = prompts[:2]
    ref = generate(um32, check_prompts, 1, cfg, 0.0)
    ours = um32.sample(check_prompts, n=1, cfg=cfg, temperature=0.0, decode=False).tokens
    same = float((ref == ours).float().mean())
    check = f"greedy tokens identical on {same:.1%} of {ours.numel()} (float32)"
    log(f"sampling: {check}")
    if um32 is not um:
        del um32
        torch.cuda.empty_cache()
    if args.dry_run and same < 1.0:
        raise AssertionError(check)

    def ours_fn():
        um.sample(prompts, n=n, cfg=cfg, temperature=temperature, seed=0, decode=False)

    def theirs_fn():
        generate(um, prompts, n, cfg, temperature)

    ours_fn(), theirs_fn()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        held = torch.cuda.memory_allocated()
        ours_fn()
        torch.cuda.synchronize()
        peak_gib = round((torch.cuda.max_memory_allocated() - held) / 2**30, 3)  # the call's own buffers
    else:
        peak_gib = None  # the CPU has no allocator statistics: bench/memory.py accounts the buffers
    times = interleaved({"generate": _synced(theirs_fn, device), "sampler": _synced(ours_fn, device)}, reps, log)
    rows = n_prompts * n
    m = machine()
    # The memory-bandwidth bound: each of the image's steps reads the weights (once for the batch)
    # and the KV cache, so no sampler can make more than rows / (steps x bytes / bandwidth) candidates/s.
    bandwidth = copy_bandwidth(device, 64 if args.dry_run else 4096)
    prefix = um._tokenize([gen_text(prompts[0]) + um.tokenizer.boi_token])[0].shape[1]
    bound = rows / (um.num_image_tokens * decode_step_bytes(um, rows, prefix) / bandwidth)
    share = rows / median(times["sampler"]) / bound
    log(
        f"sampling: {rows} candidates, bandwidth {bandwidth / 1e9:.0f} GB/s, bound {bound:.1f} candidates/s, "
        f"sampler at {share:.1%} of it; sampler call's peak buffers {peak_gib} GiB"
    )
    results = [
        Result(
            f"GPU sampling: {n_prompts} prompts x N={n} / generate",
            rows / median(times["generate"]),
            rows / median(times["sampler"]),
            "candidates/s",
            1.5,
            "transformers generate(generation_mode='image') vs UnifiedModel.sample, tokens only",
            {
                "cfg": cfg,
                "temperature": temperature,
                "image_tokens": um.num_image_tokens,
                "dtype": str(dtype),
                "reps": reps,
                "check": check,
                "copy_bandwidth_gb_s": round(bandwidth / 1e9, 1),
                "bandwidth_bound_candidates_per_s": round(bound, 2),
                "share_of_bound": round(share, 4),
                "sampler_peak_gib": peak_gib,
            },
            m,
        )
    ]

    batch = 4 if args.dry_run else args.judge_batch
    images, texts = rendered(batch, um.image_size)
    judge = make_judge(um, "likelihood")
    n_single = min(batch, 4 if args.dry_run else 16)

    def one_at_a_time():
        for i in range(n_single):
            judge.score(images[i : i + 1], texts[i : i + 1])

    def batched():
        judge.score(images, texts)

    batched(), one_at_a_time()  # warm-up
    jt = interleaved({"one-at-a-time": _synced(one_at_a_time, device), "batched": _synced(batched, device)}, reps, log)
    results.append(
        Result(
            f"GPU judge: batch {batch} / one at a time",
            n_single / median(jt["one-at-a-time"]),
            batch / median(jt["batched"]),
            "images/s",
            None,
            "in-process Judge.score, one image per call vs a batch per call",
            {"reps": reps},
            m,
        )
    )

    flops, by_op = count_flops(batched)
    shape = dominant_matmul(batched)
    peak = matmul_rate(shape, 0.3 if args.dry_run else 2.0, device, dtype)
    achieved = flops / median(jt["batched"])
    results.append(
        Result(
            f"GPU judge FLOP/s / matmul FLOP/s (batch {batch})",
            peak / 1e9,
            achieved / 1e9,
            "GFLOP/s",
            None,
            f"{dtype} matmul {shape[0]}x{shape[1]} @ {shape[1]}x{shape[2]} vs the judge forward",
            {"flops_per_image": int(flops / batch), "flops_by_op": by_op, "matmul_shape": list(shape)},
            m,
        )
    )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/gpu.py", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dry-run", action="store_true", help="a scaled-down model on CPU: checks the setup, measures nothing"
    )
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--n", type=int, default=8, help="candidates per prompt")
    parser.add_argument("--cfg", type=float, default=5.0, help="guidance scale (Janus-Pro's default is 5)")
    parser.add_argument("--judge-batch", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--out", type=Path, default=None, help="results JSON (default bench/results-gpu.json; none on --dry-run)"
    )
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print(
            "error: bench/gpu.py needs a CUDA device and found none (use --dry-run to check its setup on CPU)",
            file=sys.stderr,
        )
        return 2
    from rich.console import Console
    from transformers.utils import logging as hf_logging

    from bench.common import setup_threads, table, write

    hf_logging.disable_progress_bar()
    setup_threads()
    results = run(args)
    Console(width=132).print(
        table(results, "unigap GPU benchmarks" + (" (dry run: tiny model on CPU)" if args.dry_run else ""))
    )
    out = args.out if args.out or args.dry_run else Path(__file__).parent / "results-gpu.json"
    if out:
        write(results, out)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
