"""How clean is the data the loop trains on? The external evaluator's verdict on each round's
judged candidates and SFT rows, per task category.

A report only: the loop never sees these figures (it trains and gates on its own judge). They say
where the judge lets wrong images through, which bounds what SFT on its picks can teach.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable

import numpy as np
import torch

from unigap import world
from unigap.progress import bar
from unigap.score import gap_summary
from unigap.train.data import Candidates, RoundData


def _by_category(prompts: list[str], rows: Callable[[np.ndarray], dict]) -> dict:
    """`rows(mask)` for all rows, then for each category present."""
    cats = np.array([world.parse(p).category for p in prompts])
    out = {"all": rows(np.ones(len(prompts), dtype=bool))}
    out.update({c: rows(cats == c) for c in world.CATEGORIES if (cats == c).any()})
    return out


def external_verdicts(
    um, tokens: np.ndarray, prompts: list[str], batch: int = 512, progress: bool = False
) -> np.ndarray:
    """The external evaluator's verdict on each row of image tokens, decoded by `um` (the loop
    never trains the image tokenizer, so any of a run's models decodes its tokens alike)."""
    out = []
    for i in bar(range(0, len(prompts), batch), "decode and evaluate", progress):
        images = um.decode(torch.as_tensor(np.asarray(tokens[i : i + batch])))
        out.append(world.evaluate_batch(images, [world.parse(p) for p in prompts[i : i + batch]]))
    return np.concatenate(out) if out else np.zeros(0, dtype=bool)


ACCEPTANCE_BINS = (0.0, 0.0625, 0.125, 0.25, 0.5, 1.0)


def acceptance_rates(candidates: Candidates) -> dict[str, float]:
    """Each prompt's share of candidates the judge accepted (what `--focus` compares)."""
    names, prompt = np.unique(np.array(candidates.prompts), return_inverse=True)
    rates = np.bincount(prompt, candidates.accepted, len(names)) / np.bincount(prompt, minlength=len(names))
    return dict(zip(names.tolist(), rates.tolist()))


def by_acceptance(candidates: Candidates, ok: np.ndarray) -> list[dict]:
    """The judge's precision on prompts grouped by how often it accepts them: where it accepts
    a prompt rarely, its accepts are more often its own errors (what `--min-accept-rate` drops)."""
    rates, prompt = acceptance_rates(candidates), np.array(candidates.prompts)
    rate = np.array([rates[p] for p in candidates.prompts])
    out = []
    for lo, hi in zip(ACCEPTANCE_BINS, ACCEPTANCE_BINS[1:]):
        rows = candidates.accepted & (rate >= lo) & ((rate < hi) | (hi == 1.0))  # the last bin holds rate 1
        out.append(
            {
                "rate_from": lo,
                "rate_to": hi,
                "prompts": len(set(prompt[rows])),
                "accepted": int(rows.sum()),
                "judge_precision": float(ok[rows].mean()) if rows.any() else None,
            }
        )
    return out


def audit_round(
    candidates: Candidates, data: RoundData, correct: Callable[[np.ndarray, list[str]], np.ndarray]
) -> dict:
    """`correct(tokens, prompts)`: the external evaluator's verdict on each row's decoded image.

    - candidates: the judge's precision (accepted images that are right), recall (right images it
      accepts), and the share of prompts with an image both accept (what SFT can learn from);
    - sft: how many rows and the share that are right: the precision of what is trained on.
    """
    ok = correct(candidates.tokens, candidates.prompts)
    prompts = np.array(candidates.prompts)

    def judged(mask: np.ndarray) -> dict:
        a, c = candidates.accepted[mask], ok[mask]
        s = gap_summary(a, c, prompt_of=prompts[mask])  # recall is not among its figures (nor the judge service's)
        return {
            "images": s["n_images"],
            "truth": s["gen_acc"],
            "accepted": 1 - s["nu"],
            "judge_precision": s["judge_precision"],
            "judge_recall": float(a[c].mean()) if c.any() else None,
            "judge_coverage": s["judge_coverage"],
        }

    out = {"candidates": _by_category(candidates.prompts, judged), "by_acceptance": by_acceptance(candidates, ok)}
    if data.sft:
        sft_prompts = [p for p, _ in data.sft]
        sft_ok = correct(np.stack([t for _, t in data.sft]), sft_prompts)
        out["sft"] = _by_category(sft_prompts, lambda m: {"rows": int(m.sum()), "precision": float(sft_ok[m].mean())})
    return out


def judge_on_own_images(accepted: np.ndarray, correct: np.ndarray) -> dict:
    """The judge against the external evaluator on one model's own held-out images. The accepted
    share (1 - NU) is right - false_rejects + false_accepts: across rounds it tells a NU that falls
    because the images got right from one that falls because the judge accepts more wrong ones."""
    a, c = np.asarray(accepted, dtype=bool), np.asarray(correct, dtype=bool)
    return {
        "images": len(a),
        "right": float(c.mean()),
        "accepted": float(a.mean()),
        "agreement": float((a == c).mean()),
        "accepts_right": float(a[c].mean()) if c.any() else None,
        "accepts_wrong": float(a[~c].mean()) if (~c).any() else None,
        "false_accepts": float((a & ~c).mean()),
        "false_rejects": float((~a & c).mean()),
    }


# A prompt the head model's candidates pass more often than this is "called solved": `--focus`'s
# usual value, fixed here so runs without --focus (which call nothing solved) are grouped alike.
SOLVED_RATE = 0.5


def change_by_rows(
    data: RoundData,
    rates: dict[str, float],
    before: tuple[dict, list[str]],
    after: tuple[dict, list[str]],
    earlier: tuple[dict, list[str]] | None = None,
) -> list[dict]:
    """What the SFT rule did to each kind of prompt: per held-out prompt, the change in NU and
    external accuracy from the head model's evaluation (`before`) to the round's model's (`after`),
    each its stored arrays (`accepted`, `correct`) and the prompt of each image, averaged over the
    prompts grouped by how many SFT rows the round gave them and by whether the round's candidates
    (`rates`: each prompt's acceptance rate) call them solved. `--focus` gives the prompts it calls
    solved `--solved-rows`; a run without it gives them full rows, which tells the loss of rows
    apart from what befalls solved prompts whatever they are given. With `earlier` (the head's own
    head's evaluation), each group also has its change from there to the head (`*_before`): how
    the prompts moved before the round's candidates called them solved or not."""

    def per_prompt(a: dict, prompts: list[str]) -> dict[str, np.ndarray]:
        names, idx = np.unique(np.array(prompts), return_inverse=True)
        n = np.bincount(idx)
        nu, acc = np.bincount(idx, ~a["accepted"].astype(bool)) / n, np.bincount(idx, a["correct"].astype(float)) / n
        return {t: np.array([nu[i], acc[i]]) for i, t in enumerate(names)}

    old, new, counts = per_prompt(*before), per_prompt(*after), Counter(p for p, _ in data.sft)
    first = per_prompt(*earlier) if earlier is not None else old  # no earlier: the "before" change is 0, not reported
    groups: dict[tuple[int, bool], list[np.ndarray]] = {}
    for t in new:
        groups.setdefault((counts.get(t, 0), rates.get(t, 0.0) > SOLVED_RATE), []).append(
            np.concatenate([new[t] - old[t], old[t] - first[t]])
        )
    out = []
    for (k, solved), d in sorted(groups.items()):
        mean = np.mean(d, 0)
        out.append(
            {"rows": k, "solved": solved, "prompts": len(d), "nu_change": float(mean[0]), "gen_change": float(mean[1])}
        )
        if earlier is not None:
            out[-1] |= {"nu_change_before": float(mean[2]), "gen_change_before": float(mean[3])}
    return out


def audit_run(store, run: str, cache, specs: list, progress: bool = True, baseline: str | None = None) -> list[dict]:
    """`audit_round` for every finished round of a loop run (`run`: its `runs/<key>` prefix), its
    tokens decoded by the model that sampled them (`specs`: the prompts of its reported evaluation); and `change_by_rows` for each round whose head
    model's evaluation is found: one of the run's own rounds, or the starting model's when
    `baseline` names its record (`loop.baseline_record`). Each round has `judge_on_own` for its
    model's held-out evaluation, and round 1 `judge_on_own_start` for the starting model's when
    `baseline` names it."""
    from unigap.loop import heldout_arrays
    from unigap.model.adapter import UnifiedModel
    from unigap.store import records as rec
    from unigap.train.data import get_candidates, get_round_data

    @functools.cache  # a model's evaluation serves up to three rounds (as theirs, their head's, their head's head)
    def evaluation(ref: str) -> tuple[dict, list[str]]:
        return heldout_arrays(store, rec.get_json(store, ref), specs)

    def heldout(m: dict) -> tuple[dict, list[str]]:
        return evaluation(m["eval"])

    def judged(m: dict) -> dict:
        a = heldout(m)[0]
        return judge_on_own_images(a["accepted"], a["correct"])

    rounds, manifests, r = [], {}, 1
    if baseline is not None and (m0 := rec.get_record_json(store, f"{baseline}/manifest.json")) is not None:
        manifests[m0["checkpoint"]] = m0
    while (m := rec.get_record_json(store, f"{run}/round-{r}/manifest.json")) is not None:
        manifests[m["checkpoint"]] = m
        um = UnifiedModel.load(rec.fetch_checkpoint(store, m["base"], cache))
        verdicts = functools.partial(external_verdicts, um, progress=progress)
        data, candidates = get_round_data(store, m["data"]), get_candidates(store, m["candidates"])
        row = {"round": r, "promoted": m["promoted"], **audit_round(candidates, data, verdicts)}
        row["judge_on_own"] = judged(m)
        if r == 1 and (start := manifests.get(m["base"])) is not None:
            row["judge_on_own_start"] = judged(start)
        if (head := manifests.get(m["base"])) is not None and head is not m:
            earlier = manifests.get(head.get("base", ""))  # the starting model's round 0 has no base
            row["change_by_rows"] = change_by_rows(
                data,
                acceptance_rates(candidates),
                heldout(head),
                heldout(m),
                heldout(earlier) if earlier is not None else None,
            )
        rounds.append(row)
        r += 1
    return rounds
