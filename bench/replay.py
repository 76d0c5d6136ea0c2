"""A training step of the default SFT recipe: the understanding replay in every step against one
step in K (`TrainConfig.und_every`, the default 4), at K times its weight.

The replay (32 renders captioned, 8 asked yes/no, half of them VQ reconstructions) is about two
thirds of a step at 32; joining one batch in K keeps its expected gradient for about 1/K of its
cost, which is what lets the default train 6 epochs a round in the time 3 took. Same model, same
batches, learning rate 0 (the weights stay as they are, so both arms time the same model).
"""

from __future__ import annotations

import torch

from bench.common import Result, interleaved, machine, median, paired_ratio
from unigap.config import TrainConfig
from unigap.pretrain import Data
from unigap.train import round as round_mod
from unigap.train.trainer import trainable_parameters, update


def run(um, quick: bool = False, log=print) -> list[Result]:
    steps, reps, every = (3, 1, 3) if quick else (30, 3, TrainConfig.und_every)
    data = Data(0, um.image_size, ("train",))
    batches = []
    for _ in range(steps):
        specs = data.specs(TrainConfig.batch)
        batches.append(([s.text for s in specs], um.encode(data.images(specs))))
    params = trainable_parameters(um, TrainConfig.modules)
    opt = torch.optim.AdamW(params, lr=0.0)
    replayed = []
    real = round_mod.understanding_loss

    def counted(*a):
        replayed.append(1)
        return real(*a)

    def epoch(k: int):
        regulariser = round_mod.regulariser(um, None, TrainConfig(und_every=k))

        def call():
            for prompts, tokens in batches:
                loss = -um.image_logprobs(prompts, tokens).mean() + regulariser(prompts, tokens)
                update(loss, opt, params, 0.0)

        return call

    round_mod.understanding_loss = counted
    try:
        um.model.train()
        epoch(every)()
        check = f"the replay joined {len(replayed)} of {steps} batches at und_every {every}"
        log(f"replay: {check}")
        times = interleaved({"every step": epoch(1), f"one in {every}": epoch(every)}, reps, log)
    finally:
        round_mod.understanding_loss = real
        um.model.eval()
        opt.zero_grad(set_to_none=True)
    m = machine()
    return [
        Result(
            f"SFT step with both replays: understanding replay one step in {every} / every step",
            steps / median(times["every step"]),
            steps / median(times[f"one in {every}"]),
            "steps/s",
            1.5,
            f"{steps} steps of batch {TrainConfig.batch} (SFT + generation replay + understanding replay), und_every 1 vs {every}",
            {
                "steps": steps,
                "reps": reps,
                "check": check,
                "paired_ratio": paired_ratio(times["every step"], times[f"one in {every}"]),
            },
            m,
        )
    ]
