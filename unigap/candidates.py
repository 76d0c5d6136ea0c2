"""Sample N candidates per prompt and judge each with the model's own understanding.

The one loop shared by evaluation (`unigap score`) and the self-improvement loop.

`Sampling` (its settings) lives in unigap/config.py with the other settings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from unigap.config import Sampling
from unigap.model.adapter import UnifiedModel
from unigap.model.judge import Judge
from unigap.progress import bar


@dataclass
class Judged:
    prompts: list[str]  # one per row, prompt-major
    prompt_index: np.ndarray  # [rows] index into the input prompts
    images: np.ndarray  # [rows, H, W, 3] uint8
    tokens: np.ndarray  # [rows, T] sampled image tokens
    p_yes: np.ndarray  # [rows]
    accepted: np.ndarray  # [rows] bool


def sample_and_judge(um: UnifiedModel, judge: Judge, prompts: list[str], s: Sampling, progress: bool = True) -> Judged:
    """`um` may be the model itself or anything with its `sample` (a generation service client);
    `judge` anything with `score` (the Triton-served judge's client).

    With `best_of` M, N * M samples are drawn per prompt and each consecutive M keeps the one the
    judge scores highest: generation with the model's own understanding as a verifier.
    """
    index, images, tokens, p_yes, accepted = [], [], [], [], []
    for i in bar(range(0, len(prompts), s.batch_prompts), "sample and judge", progress):
        chunk = prompts[i : i + s.batch_prompts]
        out = um.sample(chunk, s.n * s.best_of, s.cfg, s.temperature, s.seed)
        j = judge.score(out.images, [chunk[k] for k in out.prompt_index])
        groups = j.p_yes.reshape(-1, s.best_of)  # rows are prompt-major, so each prompt's M are consecutive
        pick = np.arange(len(groups)) * s.best_of + groups.argmax(1)
        index += [i + out.prompt_index[r] for r in pick]
        images.append(out.images[pick])
        tokens.append(np.asarray(out.tokens)[pick])
        p_yes.append(j.p_yes[pick])
        accepted.append(j.decision[pick])
    return Judged(
        prompts=[prompts[k] for k in index],
        prompt_index=np.array(index),
        images=np.concatenate(images),
        tokens=np.concatenate(tokens),
        p_yes=np.concatenate(p_yes),
        accepted=np.concatenate(accepted),
    )
