"""Memory: the sampler's buffers for one 1,024-row loop chunk at Janus-Pro-1B size.

A loop chunk samples 32 prompts x 32 candidates = 1,024 rows (CFG doubles the rows the language
model runs). The sampler once drew a whole call's Gumbel noise up front, [rows, 576, 16384] float32
on the host (then copied to the device); it now draws [rows, 16384] on the device for each step
(`unigap.model.adapter.step_gumbel`). This row accounts both at Janus-Pro-1B's sizes (576 image
tokens, a 16384-code book, 24 layers of width 2048, bf16) beside the buffers both keep (the KV
cache and one step's logits), and measures the new noise's peak: `step_gumbel` run at the full
1,024 x 16384 on the CPU, every allocation inside it counted while alive (`LiveBytes`). Units are
rows per GiB of the sampler's peak buffers (higher is better), so ratio = before / after in bytes.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from bench.common import Result, machine
from unigap.model.adapter import row_seed, step_gumbel

GIB = 2**30
PREFIX = 40  # tokens of a chat-formatted prompt before the image (a typical T2I-CompBench prompt)


class LiveBytes(TorchDispatchMode):
    """Bytes of the tensor storage allocated by ops run inside the mode and still alive, and their
    peak. Storage the inputs already had (in-place ops) is not counted; views share their base's."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._storages: dict[int, list[int]] = {}  # data_ptr -> [bytes, tensors holding it]

    def _release(self, ptr: int) -> None:
        entry = self._storages[ptr]
        entry[1] -= 1
        if entry[1] == 0:
            self.live -= entry[0]
            del self._storages[ptr]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        given = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            ptr = storage.data_ptr()
            if ptr in given and ptr not in self._storages:
                continue  # written in place into a tensor made outside the mode
            if ptr not in self._storages:
                self._storages[ptr] = [storage.nbytes(), 0]
                self.live += storage.nbytes()
                self.peak = max(self.peak, self.live)
            self._storages[ptr][1] += 1
            weakref.finalize(t, self._release, ptr)
        return out


def noise_peak_bytes(rows: int, vocab: int) -> int:
    """Measured peak bytes of one decoding step's noise for `rows` candidates (its result included)."""
    keys = torch.tensor([row_seed(0, "a prompt", k) for k in range(rows)], dtype=torch.long)
    with LiveBytes() as tracker:
        noise = step_gumbel(keys, 0, vocab)
    assert noise.shape == (rows, vocab)
    return tracker.peak


def accounting(
    rows: int, n_tok: int, vocab: int, layers: int, kv_width: int, prefix: int, dtype_bytes: int, noise_step_bytes: int
) -> dict:
    """Bytes of the sampler's buffers for `rows` candidates with CFG (2 x rows in the language model)."""
    lm_rows = 2 * rows
    kv = 2 * layers * lm_rows * (prefix + n_tok) * kv_width * dtype_bytes  # keys and values, reserved up front
    # one step's logits: the head's output for the 2 x rows, then the guided float32 ones
    logits = lm_rows * vocab * dtype_bytes + rows * vocab * 4
    return {
        "kv_cache": kv,
        "step_logits": logits,
        "noise_before": rows * n_tok * vocab * 4,  # float32, on the host and again on the device
        "noise_after": noise_step_bytes,
    }


def run(um=None, quick: bool = False, log=print) -> list[Result]:
    from bench.gpu import janus_pro_1b_config
    from unigap.model.build import build_tokenizer
    from unigap.pretrain import vocabulary

    config = janus_pro_1b_config(build_tokenizer(vocabulary()))
    text = config.text_config
    rows, n_tok, vocab = 1024, config.vision_config.num_image_tokens, config.vq_config.num_embeddings
    head_dim = text.hidden_size // text.num_attention_heads
    measured_rows = 64 if quick else rows  # quick: measured at 64 rows and scaled (per-row buffers)
    measured = noise_peak_bytes(measured_rows, vocab) * rows // measured_rows
    b = accounting(rows, n_tok, vocab, text.num_hidden_layers, text.num_key_value_heads * head_dim, PREFIX, 2, measured)
    before = b["kv_cache"] + b["step_logits"] + b["noise_before"]
    after = b["kv_cache"] + b["step_logits"] + b["noise_after"]
    gib = {k: round(v / GIB, 3) for k, v in b.items()}
    log(f"memory: {rows} rows at Janus-Pro-1B size (GiB): {gib}; noise per step measured at {measured_rows} rows")
    return [
        Result(
            f"sampler memory, {rows}-row chunk at Janus-Pro-1B: noise per step / up front",
            rows / (before / GIB),
            rows / (after / GIB),
            "rows/GiB",
            None,
            "the sampler's peak buffers (KV cache, one step's logits, Gumbel noise) with the whole call's noise "
            "drawn up front vs drawn on the device step by step (noise measured, the rest accounted)",
            {
                "rows": rows,
                "image_tokens": n_tok,
                "codebook": vocab,
                "layers": text.num_hidden_layers,
                "hidden": text.hidden_size,
                "prefix_tokens": PREFIX,
                "dtype": "bfloat16",
                "gib": gib,
                "peak_gib_before": round(before / GIB, 2),
                "peak_gib_after": round(after / GIB, 2),
                "host_noise_gib_before": gib["noise_before"],
                "host_noise_gib_after": 0.0,
                "noise_measured_at_rows": measured_rows,
            },
            machine(),
        )
    ]
