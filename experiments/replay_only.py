"""Control: the loop's replays alone, with no image-token rows of the model's own samples.

The generation replay trains on renders of `train` prompts; could it, not the self-judged
samples, be what raises generation in the `--gen-replay` loop? This runs the same number of
optimizer steps as that loop's first round (seed 0: 820 rows, batch 16, 10 epochs = 520 steps),
with the same optimizer, learning-rate schedule, modules, and replay weights, from the shipped
model, and evaluates it as the loop does (heldout and val, 5 images per prompt, seed 12345).

    .venv/bin/python experiments/replay_only.py --out results/methods/replay-only-control.json   # 12 minutes on 2 cores (alongside another run)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tqdm import tqdm

from unigap.config import LoopConfig
from unigap.evaluate import make_judge
from unigap.loop import evaluate_split, evaluated_specs
from unigap.model.adapter import UnifiedModel
from unigap.paths import DEFAULT_MODEL
from unigap.train.round import regulariser
from unigap.train.trainer import lr_factor, trainable_parameters, update


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=520)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    # The settings the control was measured with, pinned: today's defaults differ (unigap/config.py FIRST).
    cfg = LoopConfig.from_dict({"train": {"lr": 1e-3, "modules": "lm+head", "und_replay": 1.0, "gen_replay": 1.0, "seed": 1000 + 1}})
    torch.manual_seed(cfg.train.seed)
    um = UnifiedModel.load(DEFAULT_MODEL)
    params = trainable_parameters(um, cfg.train.modules)
    opt = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=0.0)  # as the trainer's
    replay = regulariser(um, None, cfg.train)
    um.model.train()
    for step in tqdm(range(args.steps), desc="replays only"):
        loss = replay(["-"], torch.tensor([step]))  # the step number seeds the replayed batch
        update(loss, opt, params, cfg.train.lr * lr_factor(step, args.steps))
    um.model.eval()
    judge = make_judge(um, cfg.judge_mode, cfg.threshold)
    out = {"steps": args.steps, "train": cfg.train.__dict__}
    for split in ("heldout", "val"):
        figures, _ = evaluate_split(um, judge, evaluated_specs(split, cfg.eval_per_category), cfg.eval_n, cfg.eval_seed, True)
        out[split] = {k: figures[k] for k in ("gen_acc", "nu", "und_acc", "diversity", "by_category")}
        print(split, json.dumps(out[split]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
