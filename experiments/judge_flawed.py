"""Does teaching the judge flawed renders make it a better judge of the model's own images?

A diagnostic (not a recipe), kept so its figures can be rerun. It samples the loop's round-1
candidates once (the shipped model, N 32 per pool prompt, the loop's sampling settings), checks
each with the exact evaluator, then scores the SAME images with the judge of:
- the shipped model;
- the shipped model after S more understanding steps of the pretraining loss (control);
- the same with F flawed renders per batch captioned as showing no prompt (REJECT_CAPTION).
For each judge: precision, recall and coverage at its own threshold (0.5), precision at the
shipped judge's acceptance count (a stricter threshold alone also raises precision), and the
within-prompt ranking AUC (how well it orders one prompt's candidates, what per-prompt
selection needs).

    .venv/bin/python experiments/judge_flawed.py --out results/judge/flawed.json   # 18 minutes on 2 cores (alongside another run)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from unigap import world
from unigap.candidates import Sampling, sample_and_judge
from unigap.config import LoopConfig
from unigap.evaluate import make_judge
from unigap.loop import pool_texts
from unigap.model.adapter import UnifiedModel
from unigap.paths import DEFAULT_MODEL
from unigap.score import gap_summary
from unigap.pretrain import UNDERSTANDING, UNDERSTANDING_SPLITS, Data, PretrainConfig, train_stage

FLAWED = (None, 0, 16)  # the shipped judge; S more understanding steps; the same with 16 flawed renders per batch


def taught(steps: int, flawed: int, seed: int) -> UnifiedModel:
    um = UnifiedModel.load(DEFAULT_MODEL)
    data = SimpleNamespace(und=Data(seed, um.image_size, UNDERSTANDING_SPLITS))
    train_stage(um, data, PretrainConfig(flawed=flawed, warmup=20), steps, UNDERSTANDING, "understanding", [], lr=5e-4)
    return um


def within_prompt_auc(p: np.ndarray, correct: np.ndarray, prompt: np.ndarray) -> float:
    aucs = []
    for k in np.unique(prompt):
        pos, neg = p[(prompt == k) & correct], p[(prompt == k) & ~correct]
        if len(pos) and len(neg):
            aucs.append((pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean())
    return float(np.mean(aucs))


def figures(p: np.ndarray, correct: np.ndarray, prompt: np.ndarray, count: int) -> dict:
    accepted = p >= 0.5
    top = p >= np.sort(p)[-count]
    summary = gap_summary(accepted, correct, prompt_of=prompt)
    return {
        "accepted": int(accepted.sum()),
        "precision": summary["judge_precision"],
        "recall": float(accepted[correct].mean()),
        "coverage": summary["judge_coverage"],
        "precision_at_shipped_count": float(correct[top].mean()),
        "within_prompt_auc": within_prompt_auc(p, correct, prompt),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    shipped = UnifiedModel.load(DEFAULT_MODEL)
    cfg = LoopConfig.from_dict({"n": 32})  # the pool it was measured on (train+heldout), pinned
    sampling = Sampling(n=cfg.n, seed=1, cfg=cfg.cfg, temperature=cfg.temperature)
    c = sample_and_judge(shipped, make_judge(shipped, cfg.judge_mode), pool_texts(cfg.pool), sampling)
    correct = world.evaluate_batch(c.images, [world.parse(t) for t in c.prompts])
    subsets = {"all": np.ones(len(correct), bool), "two_objects": np.array([world.parse(t).category == "two_objects" for t in c.prompts])}
    out, counts = {"images": len(correct), "evaluator_right": float(correct.mean())}, {}
    for flawed in FLAWED:
        name = "shipped" if flawed is None else f"understanding {args.steps} steps" + (f", {flawed} flawed" if flawed else "")
        um = shipped if flawed is None else taught(args.steps, flawed, args.seed)
        p = make_judge(um, cfg.judge_mode).score(c.images, c.prompts).p_yes
        for sub, rows in subsets.items():
            counts.setdefault(sub, int((p[rows] >= 0.5).sum()))  # the shipped judge's
            out.setdefault(name, {})[sub] = figures(p[rows], correct[rows], c.prompt_index[rows], counts[sub])
        print(name, json.dumps(out[name]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
