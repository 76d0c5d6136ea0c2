"""The model's own understanding as a judge of its images (docs/method.md).

Three readings of the same understanding branch:
- `probability`: p_yes = P(yes) / (P(yes) + P(no)) at the answer position, one forward pass;
- `decision`: generate the answer text and parse it ("The score is 0/1", or a leading yes/no);
- `likelihood`: the caption likelihood of the prompt against competing captions; p_yes is
  P(prompt) / (P(prompt) + P(best competitor)), so p_yes >= 0.5 means the prompt wins.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from unigap.config import JUDGE_MODES as MODES
from unigap.config import JudgeSettings
from unigap.model.adapter import UnifiedModel

SYSTEM = "You are a helpful language and vision assistant."
ANSWER_PREFIX = "The score is"
CAPTION_QUESTION = "Describe the image."
# The caption of an image that shows no prompt of the world (an extra object, a malformed shape):
# taught on flawed renders, it competes with every prompt in the likelihood judge. Its words are in
# the tiny model's vocabulary (the yes/no question uses them).
REJECT_CAPTION = "not a scene"


def question(prompt: str) -> str:
    return (
        f"{SYSTEM} Does this image describe {prompt}? If it describes the scene, score 1; "
        f"if it does not fully describe, score 0. Please answer in the following format: "
        f"{ANSWER_PREFIX} {{your score}}."
    )


def answer(aligned: bool) -> str:
    return f"{ANSWER_PREFIX} {int(aligned)}"


_SCORE = re.compile(r"score\s+is\s*[:=]?\s*\{?\s*([01])\b", re.IGNORECASE)
_LEADING = re.compile(r"^\W*(yes|no)\b", re.IGNORECASE)


def parse_answer(text: str) -> bool | None:
    """The decision in a free-text answer, or None when it states none."""
    m = _SCORE.search(text)
    if m:
        return m.group(1) == "1"
    m = _LEADING.match(text)
    if m:
        return m.group(1).lower() == "yes"
    return None


@dataclass
class Judgment:
    p_yes: np.ndarray  # [B] float
    decision: np.ndarray  # [B] bool
    answers: list[str] | None = None  # decision mode only


class Judge:
    def __init__(
        self,
        model: UnifiedModel,
        mode: str = JudgeSettings.mode,
        threshold: float = JudgeSettings.threshold,
        competitors: Callable[[str], list[str]] | None = None,
        batch_size: int = 64,
    ):
        if mode not in MODES:
            raise ValueError(f"unknown judge mode {mode!r}; choose one of {', '.join(MODES)}")
        if mode == "likelihood" and competitors is None:
            raise ValueError("likelihood mode needs competing captions for each prompt")
        self.model, self.mode, self.threshold = model, mode, threshold
        self.competitors, self.batch_size = competitors, batch_size
        tok = model.tokenizer
        self.yes_id = tok(" 1", add_special_tokens=False).input_ids[-1]
        self.no_id = tok(" 0", add_special_tokens=False).input_ids[-1]

    @property
    def image_size(self) -> int:
        return self.model.image_size

    @torch.no_grad()
    def score(self, images, prompts: list[str]) -> Judgment:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        p, answers = [], []
        for i in range(0, len(prompts), self.batch_size):
            ims, prs = images[i : i + self.batch_size], prompts[i : i + self.batch_size]
            if self.mode == "probability":
                p.append(self._p_yes(ims, prs))
            elif self.mode == "likelihood":
                p.append(self._caption_p(ims, prs))
            else:
                texts = self.model.generate_answer(ims, [question(x) for x in prs])
                answers += texts
                p.append(np.array([float(parse_answer(t) is True) for t in texts]))
        p_yes = np.concatenate(p) if p else np.zeros(0)
        return Judgment(p_yes, p_yes >= self.threshold, answers if self.mode == "decision" else None)

    def _p_yes(self, images, prompts) -> np.ndarray:
        logits = self.model.next_token_logits(images, [question(x) for x in prompts], ANSWER_PREFIX)
        two = logits[:, [self.yes_id, self.no_id]].float()
        return torch.softmax(two, -1)[:, 0].cpu().numpy()

    def caption_logprobs(self, images, prompts: list[str]) -> list[torch.Tensor]:
        """Per image, the summed log-likelihoods of its prompt as a caption (first) and of the
        prompt's competitors; differentiable (the trainer's understanding anchor uses them)."""
        groups = [[x] + [c for c in self.competitors(x) if c != x] for x in prompts]
        captions = [c for g in groups for c in g]
        lp = self.model.answer_logprobs(
            images, [CAPTION_QUESTION] * len(groups), captions, counts=[len(g) for g in groups]
        )
        return list(lp.split([len(g) for g in groups]))

    def _caption_p(self, images, prompts) -> np.ndarray:
        out = []
        for lp in self.caption_logprobs(images, prompts):
            best = lp[1:].max() if len(lp) > 1 else torch.tensor(float("-inf"))
            # In float64: a float32 sigmoid is exactly 0 below about -100 nats, which no threshold admits.
            out.append(torch.sigmoid((lp[0] - best).double()).item())
        return np.array(out)
