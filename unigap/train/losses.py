"""Losses over image tokens, each a short function of sequence log-probs (as in TRL).

Log-probs come from `UnifiedModel.image_logprobs` ([B, T] per token); a sequence's log-prob is
their sum. The reference model's log-probs are computed once per round and passed in.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sft_loss(token_logps: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood per image token."""
    return -token_logps.mean()


def dpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence-level DPO: -log sigmoid(beta * (policy margin - reference margin)).

    All inputs are [B] sequence log-probs. Returns the mean loss and the implicit reward margins.
    """
    margin = (chosen_logps - ref_chosen_logps) - (rejected_logps - ref_rejected_logps)
    return -F.logsigmoid(beta * margin).mean(), beta * margin.detach()


def kl_anchor(token_logps: torch.Tensor, ref_token_logps: torch.Tensor) -> torch.Tensor:
    """A sample-based estimate of KL(policy || reference) on the policy's own tokens (k3 estimator).

    Keeps a round close to the pre-round model: prototype 1 collapsed without an anchor.
    """
    log_ratio = ref_token_logps - token_logps
    return (log_ratio.exp() - 1 - log_ratio).mean()


def understanding_anchor(caption_logps: list[torch.Tensor], ref_caption_logps: list[torch.Tensor]) -> torch.Tensor:
    """Mean KL(reference || policy) between the understanding branch's distributions over each
    image's captions (its prompt and the competing ones), each list item one image's summed caption
    log-likelihoods. Pins the judge's view of the round's images to the pre-round model's while
    generation trains: without it, hard generation training wrecked understanding (shared LM drift)."""
    kls = []
    for cur, ref in zip(caption_logps, ref_caption_logps):
        cur, ref = F.log_softmax(cur, -1), F.log_softmax(ref, -1)
        kls.append((ref.exp() * (ref - cur)).sum())
    return torch.stack(kls).mean()
