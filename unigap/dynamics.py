"""Learning dynamics through the shared language model: the empirical NTK (docs/method.md).

A gradient step on sample u changes the log-likelihood of sample o by about
    delta log p(o) ~= lr * <grad log p(o), grad log p(u)>
over the shared parameters. Generation and understanding share the language model, so the same
kernel couples them: a step on a generated image can move the understanding of another image.
This module measures per-sample gradients of both losses, their cosines for matched and
mismatched prompt-image pairs, and whether the kernel predicts the observed one-step change.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from unigap.model.adapter import UnifiedModel
from unigap.model.judge import CAPTION_QUESTION


@dataclass
class Sample:
    """One (prompt, image) pair seen by both branches."""

    prompt: str
    tokens: np.ndarray  # [T] image tokens (generation branch)
    image: np.ndarray  # [H, W, 3] the decoded image (understanding branch)


def shared_parameters(um: UnifiedModel) -> list[torch.nn.Parameter]:
    return [p for p in um.model.model.language_model.parameters()]


def gen_logp(um: UnifiedModel, s: Sample) -> torch.Tensor:
    """log p(image tokens | prompt): the generation branch's log-likelihood."""
    return um.image_logprobs([s.prompt], torch.as_tensor(s.tokens)[None]).sum()


def und_logp(um: UnifiedModel, s: Sample) -> torch.Tensor:
    """log p(prompt as caption | image): the understanding branch's log-likelihood."""
    return um.answer_logprobs(s.image[None], [CAPTION_QUESTION], [s.prompt]).sum()


BRANCHES = {"gen": gen_logp, "und": und_logp}


def per_sample_grads(um: UnifiedModel, samples: list[Sample], branch: str) -> torch.Tensor:
    """[N, P] gradients of each sample's log-likelihood w.r.t. the shared LM parameters."""
    params = shared_parameters(um)
    fn = BRANCHES[branch]
    rows = []
    for s in samples:
        grads = torch.autograd.grad(fn(um, s), params)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[N, M] cosine similarities between the rows of a and b."""
    a = a / a.norm(dim=1, keepdim=True).clamp_min(1e-12)
    b = b / b.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return a @ b.T


def apply_step(um: UnifiedModel, direction: torch.Tensor, lr: float) -> UnifiedModel:
    """A copy of the model after one SGD step that raises log p along `direction` (a flat gradient)."""
    stepped = copy.deepcopy(um.model)
    new = UnifiedModel(stepped, um.processor, um.path)
    offset = 0
    with torch.no_grad():
        for p in shared_parameters(new):
            n = p.numel()
            p.add_(lr * direction[offset : offset + n].view_as(p))
            offset += n
    return new


@torch.no_grad()
def logps(um: UnifiedModel, samples: list[Sample], branch: str) -> torch.Tensor:
    return torch.stack([BRANCHES[branch](um, s) for s in samples])


def analyse(um: UnifiedModel, train: list[Sample], held: list[Sample], step: float = 0.01) -> dict:
    """Cosines of generation vs understanding gradients, and the kernel's one-step predictions.

    For each training sample u: take one normalised gradient step of length `step` (in parameter
    space) on its GENERATION log-likelihood, i.e. lr = step / |grad|, and compare the predicted
    change lr * <grad log p(o), grad log p_gen(u)> of every held-out sample o, in both branches,
    against the change actually observed. Normalising keeps every step in the linear regime
    (a 64-token image has a far larger gradient than a caption).
    """
    um.model.eval()
    g_train = {b: per_sample_grads(um, train, b) for b in BRANCHES}
    g_held = {b: per_sample_grads(um, held, b) for b in BRANCHES}
    cos = cosine(g_train["gen"], g_train["und"])  # [N, N]: gen grad of i vs und grad of j
    eye = torch.eye(len(train), dtype=torch.bool)
    before = {b: logps(um, held, b) for b in BRANCHES}
    predicted = {b: [] for b in BRANCHES}
    observed = {b: [] for b in BRANCHES}
    for i in range(len(train)):
        lr = step / g_train["gen"][i].norm().clamp_min(1e-12)
        stepped = apply_step(um, g_train["gen"][i], float(lr))
        for b in BRANCHES:
            predicted[b].append(lr * g_held[b] @ g_train["gen"][i])
            observed[b].append(logps(stepped, held, b) - before[b])
    result = {
        "n_train": len(train),
        "n_heldout": len(held),
        "step": step,
        "n_shared_parameters": int(g_train["gen"].shape[1]),
        "cos_gen_und_matched": float(cos[eye].mean()),
        "cos_gen_und_mismatched": float(cos[~eye].mean()) if len(train) > 1 else None,
        "cosine_matrix": cos.tolist(),
    }
    for b in BRANCHES:
        p = torch.cat(predicted[b]).numpy()
        o = torch.cat(observed[b]).numpy()
        result[f"{b}_predicted"] = p.tolist()
        result[f"{b}_observed"] = o.tolist()
        result[f"{b}_correlation"] = float(np.corrcoef(p, o)[0, 1]) if p.std() > 0 and o.std() > 0 else None
    return result
