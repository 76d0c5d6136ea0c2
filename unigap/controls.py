"""`unigap controls`: the ladder of controls (docs/findings.md), which tells what limits the loop.

A diagnostic, never a recipe: two of its arms train on what the loop must never see (renders of
the pool's prompts, the exact evaluator's verdicts). Every arm runs the loop's SFT trainer for
the same rounds from the same starting model, and is evaluated like the loop (held-out prompts,
fixed evaluation seeds, the external evaluator beside the model's own judge):

- `render`: fresh ground-truth renders of the pool's prompts. Can the trainer move generation?
- `oracle`: own samples the exact evaluator accepts. What rejection sampling can give at best.
- `judge`:  own samples the model's own judge accepts. The loop's SFT, without its gate.
- `all`:    every own sample, unfiltered. Does the filter matter at all?

If `render` and `oracle` do not rise either, no judge or recipe on top of this model and
trainer will: the limit is the model (or the trainer), not the self-judgment.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, replace

import numpy as np
import torch

from unigap import world
from unigap.audit import external_verdicts, judge_on_own_images
from unigap.config import CONTROL_ARMS as ARMS
from unigap.config import LoopConfig, TrainConfig
from unigap.evaluate import make_judge
from unigap.loop import evaluate_split, evaluation_prompts
from unigap.model.adapter import UnifiedModel
from unigap.train.data import split_for
from unigap.train.round import collect, regulariser
from unigap.train.trainer import train_sft


def control_samples(arm: str, um: UnifiedModel, prompts: list[str], cfg: LoopConfig, seed: int, progress: bool) -> list:
    """(prompt, image tokens) to train one round of `arm` on."""
    if arm not in ARMS:
        raise ValueError(f"unknown control {arm!r}; choose from {', '.join(ARMS)}")
    if arm == "render":
        specs = [world.parse(p) for p in prompts for _ in range(cfg.n)]
        seeds = [int(s) for s in np.random.default_rng(seed).integers(0, 2**31, len(specs))]
        tokens = np.asarray(um.encode(world.render_batch(specs, seeds, um.image_size)))
        return [(s.text, t) for s, t in zip(specs, tokens)]
    c = collect(um, make_judge(um, cfg.judge_mode, cfg.threshold), prompts, cfg, seed, progress)
    if arm == "judge":
        keep = c.accepted
    elif arm == "oracle":  # judged on the very tokens that are trained on
        keep = external_verdicts(um, c.tokens, c.prompts)
    else:
        keep = np.ones(len(c.prompts), bool)
    return split_for(replace(c, accepted=keep), cfg).sft  # the loop's SFT rule


def evaluate(um: UnifiedModel, cfg: LoopConfig, progress: bool) -> dict:
    """The loop's held-out figures of a model (same prompts, seeds and judge as `unigap loop`), and
    its judge against the external evaluator on those images (`judge_on_own`: does an arm's
    training make the judge accept more of the model's wrong images?)."""
    specs = evaluation_prompts(cfg.eval_prompts, "heldout", cfg.eval_per_category)
    figures, arrays = evaluate_split(
        um, make_judge(um, cfg.judge_mode, cfg.threshold), specs, cfg.eval_n, cfg.eval_seed, progress
    )
    return {
        **{k: figures[k] for k in ("gen_acc", "nu", "und_acc", "diversity", "by_category")},
        "judge_on_own": judge_on_own_images(arrays["accepted"], arrays["correct"]),
    }


def run_controls(
    start: UnifiedModel,
    arms: list[str],
    prompts: list[str],
    cfg: LoopConfig,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Each arm for `cfg.rounds` rounds from `start`; round 0 (the start) is evaluated once."""
    torch.manual_seed(cfg.seed)
    zero = evaluate(start, cfg, progress)
    log(f"start: gen {zero['gen_acc']:.3f}  NU {zero['nu']:.3f}")
    out = {"config": asdict(cfg), "arms": {}}
    for arm in arms:
        um = UnifiedModel.load(start.path)
        rows = [{"round": 0, "n_train": 0, **zero}]
        for r in range(1, cfg.rounds + 1):
            samples = control_samples(arm, um, prompts, cfg, cfg.seed * 1000 + r, progress)
            tcfg = TrainConfig(**{**asdict(cfg.train), "seed": cfg.seed * 1000 + r})
            anchor = regulariser(um, copy.deepcopy(um) if tcfg.und_anchor else None, tcfg)  # vs the pre-round model
            train_sft(um, samples, tcfg, progress=progress, anchor=anchor)
            rows.append({"round": r, "n_train": len(samples), **evaluate(um, cfg, progress)})
            log(f"{arm} round {r}: trained on {len(samples)}, gen {rows[-1]['gen_acc']:.3f}  NU {rows[-1]['nu']:.3f}")
        out["arms"][arm] = rows
    return out
