"""Candidates judged by the model's own understanding -> SFT set, DPO pairs, discard pool.

Algorithm 1 of the method (docs/method.md). The external evaluator is never called here: the only signal is the
model's own judgment.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Candidates:
    """N judged candidates per prompt; rows prompt-major, as `UnifiedModel.sample` returns them."""

    prompts: list[str]  # one per row
    tokens: np.ndarray  # [rows, T] canonical image tokens
    p_yes: np.ndarray  # [rows]
    accepted: np.ndarray  # [rows] bool


def concat_candidates(parts: list[Candidates]) -> Candidates:
    """Several judged sets as one (rows of a prompt need not be adjacent: the split groups them)."""
    return Candidates(
        [p for c in parts for p in c.prompts],
        np.concatenate([c.tokens for c in parts]),
        np.concatenate([c.p_yes for c in parts]),
        np.concatenate([c.accepted for c in parts]),
    )


@dataclass
class RoundData:
    sft: list[tuple[str, np.ndarray]] = field(default_factory=list)  # (prompt, tokens)
    pairs: list[tuple[str, np.ndarray, np.ndarray]] = field(default_factory=list)  # (prompt, chosen, rejected)
    discard: list[str] = field(default_factory=list)  # prompts with no accepted candidate

    def extend(self, other: RoundData) -> None:
        self.sft += other.sft
        self.pairs += other.pairs
        self.discard += other.discard


def split_candidates(
    c: Candidates,
    max_per_prompt: int = 0,
    balance: bool = False,
    focus: float = 1.0,
    solved_rows: int = 1,
    min_accept_rate: float = 0.0,
) -> RoundData:
    """SFT: every accepted candidate (the best `max_per_prompt` by p_yes when set, so easy prompts
    do not dominate). With `balance`, every prompt with an accepted candidate gives exactly
    `max_per_prompt` rows, its accepted ones repeated best first: a composition the model gets
    right once in N then weighs as much as a single object it always gets right. With `focus`
    below 1, a prompt whose acceptance rate is above `focus` gives `solved_rows` rows only: what
    the model mostly does already it has little to learn from, but dropping it altogether
    (`solved_rows` 0) makes the model forget it unless something else (the generation replay)
    holds it. A prompt accepted in fewer than `min_accept_rate` of its candidates gives no SFT
    rows: the judge's rare accepts are its least reliable (`unigap audit`), and `balance` would
    repeat them; yet dropping them cost held-out generation (docs/findings.md), so the default
    keeps every accepting prompt.
    DPO: per prompt, the best accepted against the worst rejected (by p_yes); prompts lacking
    either give no pair. Discard: prompts with none accepted."""
    if balance and max_per_prompt < 1:
        raise ValueError("balance needs max_per_prompt >= 1 (the rows each prompt gives)")
    if not 0 < focus <= 1:
        raise ValueError(f"focus is an acceptance rate in (0, 1], not {focus}")
    if solved_rows < 0:
        raise ValueError(f"solved_rows must be >= 0, not {solved_rows}")
    if not 0 <= min_accept_rate < 1:
        raise ValueError(f"min_accept_rate is an acceptance rate in [0, 1), not {min_accept_rate}")
    out = RoundData()
    order: dict[str, list[int]] = {}
    for i, p in enumerate(c.prompts):
        order.setdefault(p, []).append(i)
    for prompt, rows in order.items():
        rows = np.array(rows)
        acc = rows[c.accepted[rows]]
        rej = rows[~c.accepted[rows]]
        keep = acc[np.argsort(-c.p_yes[acc], kind="stable")][:max_per_prompt] if max_per_prompt else acc
        if len(acc) > focus * len(rows):  # mostly done already
            keep = keep[:solved_rows]
        elif len(acc) < min_accept_rate * len(rows):  # rare accepts: mostly the judge's errors
            keep = keep[:0]
        elif balance and len(keep):
            keep = np.resize(keep, max_per_prompt)  # cycles through them: best, second, ..., best, ...
        out.sft += [(prompt, c.tokens[i]) for i in keep]
        if len(acc) and len(rej):
            best = acc[np.argmax(c.p_yes[acc])]
            worst = rej[np.argmin(c.p_yes[rej])]
            out.pairs.append((prompt, c.tokens[best], c.tokens[worst]))
        if not len(acc):
            out.discard.append(prompt)
    return out


def split_for(c: Candidates, cfg) -> RoundData:
    """`split_candidates` with the SFT rule of a `LoopConfig`."""
    return split_candidates(c, cfg.max_per_prompt, cfg.balance, cfg.focus, cfg.solved_rows, cfg.min_accept_rate)


def put_candidates(store, c: Candidates) -> str:
    from unigap.store import records as rec

    return rec.put_arrays(
        store, prompts=np.array(c.prompts, dtype=str), tokens=c.tokens, p_yes=c.p_yes, accepted=c.accepted
    )


def get_candidates(store, ref: str) -> Candidates:
    from unigap.store import records as rec

    a = rec.get_arrays(store, ref)
    return Candidates(a["prompts"].tolist(), a["tokens"], a["p_yes"], a["accepted"])


def put_round_data(store, data: RoundData) -> str:
    """One round's training data as a single content-addressed arrays object."""
    from unigap.store import records as rec

    def stack(rows: list) -> np.ndarray:  # [rows, T]; an empty set keeps its 2-D shape
        return np.stack(rows) if rows else np.zeros((0, 0), dtype=np.int64)

    return rec.put_arrays(
        store,
        sft_prompts=np.array([p for p, _ in data.sft], dtype=str),
        sft_tokens=stack([t for _, t in data.sft]),
        pair_prompts=np.array([p for p, _, _ in data.pairs], dtype=str),
        chosen=stack([c for _, c, _ in data.pairs]),
        rejected=stack([x for _, _, x in data.pairs]),
        discard=np.array(data.discard, dtype=str),
    )


def get_round_data(store, ref: str) -> RoundData:
    from unigap.store import records as rec

    a = rec.get_arrays(store, ref)
    return RoundData(
        sft=list(zip(a["sft_prompts"].tolist(), a["sft_tokens"])),
        pairs=list(zip(a["pair_prompts"].tolist(), a["chosen"], a["rejected"])),
        discard=a["discard"].tolist(),
    )
