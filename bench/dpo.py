"""DPO epoch: reference log-probs computed once per round vs recomputed in every step.

Both sides run the project's own `train_dpo` for one epoch on the same pairs, batch, steps, seed
and starting weights (the shipped model, freshly loaded for each run):
- candidate: the reference's sequence log-probs computed once (`sequence_logps`, as
  `unigap/train/round.py` does before `train_dpo`) and passed in;
- baseline: `train_dpo` given the reference model instead, which then runs inside every step
  (chosen and rejected in one batched no-grad call, the way the policy's own forward batches them).
The epoch times compare the training loops; the one-off reference pass the candidate does before
its epoch is reported apart (`reference_pass_s`), and a second row charges it to a round of
`TrainConfig().epochs` epochs. Both runs must log the same losses (same training, only where the
reference numbers come from differs).
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from bench.common import Result, machine, median, paired_ratio
from unigap import world
from unigap.config import TrainConfig
from unigap.model.adapter import UnifiedModel
from unigap.paths import DEFAULT_MODEL
from unigap.train.trainer import sequence_logps, train_dpo


class CountedReference:
    """The reference model, counting its `image_logprobs` calls (one per step in the baseline)."""

    def __init__(self, reference: UnifiedModel):
        self.calls, self._logprobs = 0, reference.image_logprobs

    def image_logprobs(self, *args, **kw):
        self.calls += 1
        return self._logprobs(*args, **kw)


def make_pairs(um: UnifiedModel, n_pairs: int, seed: int = 0):
    """(prompt, chosen, rejected) from the model's own samples: two candidates per prompt."""
    specs = world.split("train")
    prompts = [specs[i % len(specs)].text for i in range(n_pairs)]
    s = um.sample(prompts, n=2, cfg=1.5, temperature=0.7, seed=seed, decode=False)
    t = s.tokens.numpy()
    return [(p, t[2 * i], t[2 * i + 1]) for i, p in enumerate(prompts)]


def run(um, quick: bool = False, log=print) -> list[Result]:
    n_pairs, reps = (16, 1) if quick else (128, 5)
    # The loop's recipe (batch, lr, beta, NLL), one epoch, without the replays: they add the same
    # work to both sides and are not what this compares.
    cfg = replace(TrainConfig(), epochs=1, und_replay=0.0, gen_replay=0.0)
    pairs = make_pairs(um, n_pairs)
    reference = UnifiedModel.load(um.path or DEFAULT_MODEL)
    prompts = [p for p, _, _ in pairs]
    steps = -(-n_pairs // cfg.batch)

    def precompute():
        return (
            sequence_logps(reference, prompts, np.array([c for _, c, _ in pairs])),
            sequence_logps(reference, prompts, np.array([x for _, _, x in pairs])),
        )

    precompute()  # warm-up
    times: dict[str, list[float]] = {"recomputed every step": [], "computed once": [], "reference pass": []}
    logs: dict[str, list] = {}
    for r in range(reps):
        policy = UnifiedModel.load(um.path or DEFAULT_MODEL)
        rec = CountedReference(reference)
        t = time.perf_counter()
        logs["recomputed"] = train_dpo(policy, pairs, None, None, cfg, progress=False, reference=rec)
        times["recomputed every step"].append(time.perf_counter() - t)
        if rec.calls != steps:
            raise AssertionError(f"baseline recomputed the reference {rec.calls} times for {steps} steps")

        policy = UnifiedModel.load(um.path or DEFAULT_MODEL)
        t = time.perf_counter()
        ref_w, ref_l = precompute()
        times["reference pass"].append(time.perf_counter() - t)
        t = time.perf_counter()
        logs["once"] = train_dpo(policy, pairs, ref_w, ref_l, cfg, progress=False)
        times["computed once"].append(time.perf_counter() - t)
        log(
            f"  rep {r + 1}/{reps}: recomputed {times['recomputed every step'][-1]:.2f} s, "
            f"once {times['computed once'][-1]:.2f} s (+ reference pass {times['reference pass'][-1]:.2f} s)"
        )
    a, b = logs["recomputed"][0], logs["once"][0]
    diff = max(abs(a["loss"] - b["loss"]), abs(a["margin"] - b["margin"]))
    if diff > 1e-4:
        raise AssertionError(f"the two loops trained differently: {a} vs {b}")
    base, cand, ref = (median(times[k]) for k in ("recomputed every step", "computed once", "reference pass"))
    epochs = TrainConfig().epochs
    common = {
        "pairs": n_pairs,
        "batch": cfg.batch,
        "steps": steps,
        "reps": reps,
        "reference_pass_s": round(ref, 4),
        "epoch_s": {"recomputed": round(base, 4), "once": round(cand, 4)},
        "check": f"same epoch loss and margin (max diff {diff:.1e}); baseline ran the reference in each of {steps} steps",
    }
    m = machine()
    return [
        Result(
            "DPO epoch: ref once / every step",
            n_pairs / base,
            n_pairs / cand,
            "pairs/s",
            1.5,
            "train_dpo epoch with the reference recomputed in each step vs precomputed (pass not counted)",
            {**common, "paired_ratio": paired_ratio(times["recomputed every step"], times["computed once"])},
            m,
        ),
        Result(
            f"DPO round, {epochs} epochs + ref pass (info)",
            n_pairs * epochs / (epochs * base),
            n_pairs * epochs / (epochs * cand + ref),
            "pairs/s",
            None,
            f"{epochs} epochs recomputing vs one reference pass + {epochs} epochs",
            common,
            m,
        ),
    ]
