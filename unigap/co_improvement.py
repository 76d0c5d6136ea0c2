"""Co-improvement as the paper measures it: did self-improvement also make the model a better judge?

The self-improved model's judge and the starting model's judge both look at the STARTING model's
held-out images (those of the run's round-0 evaluation, already judged by the starting model and
checked by the external evaluator); where the two judges disagree, the external evaluator decides
who is right. The win rate is the share of disagreements the self-improved judge wins (0.5: no
change), with a bootstrap interval over prompts (a prompt's images stay together) and the number
of disagreements beside it: a rate over few disagreements says little.

This differs from the loop's per-round `win_rate`, which compares each round's judge with its
head's on the head's images: here the first and the last model meet on fixed images, so the
figure adds up every round. A report only: nothing here flows into training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from unigap.config import LoopConfig
from unigap.score import bootstrap_ci, win_rate


def final_checkpoint(result: dict) -> tuple[str, int]:
    """The model a finished run serves: the last promoted round's checkpoint (round 0: the start)."""
    last = max((r for r in result["rounds"] if r["promoted"]), key=lambda r: r["round"])
    return last["checkpoint"], last["round"]


def judges_compared(accepted_old, accepted_new, correct, prompt_of) -> dict:
    """Two judges' verdicts on the same images against the external evaluator's (`correct`),
    `prompt_of` each image's prompt: the new judge's win rate over their disagreements with its
    interval over prompts, how many disagreements there were, and each judge's agreement with the
    evaluator on every image (their difference is (2 x win rate - 1) x disagreements / images)."""
    old, new, truth = (np.asarray(x, dtype=bool) for x in (accepted_old, accepted_new, correct))
    prompts = np.asarray(prompt_of)
    disagree = old != new
    wins = (new == truth)[disagree]
    return {
        **win_rate(old, new, truth),  # the loop's per-round figure, so the two cannot drift apart
        "win_rate_ci": list(bootstrap_ci(wins, prompts[disagree])),
        "n_disagree_prompts": int(len(set(prompts[disagree]))),
        "n_images": int(len(old)),
        "agreement_old": float((old == truth).mean()),
        "agreement_new": float((new == truth).mean()),
        "new_wins_rejecting": int((wins & ~new[disagree]).sum()),  # it rightly rejects what the start accepted
        "new_wins_accepting": int((wins & new[disagree]).sum()),  # it rightly accepts what the start rejected
        # each disagreement, so runs pool into one rate with an interval over their prompts (`pooled`)
        "disagreements": [
            {"prompt": str(p), "new_accepts": bool(n), "new_right": bool(w)}
            for p, n, w in zip(prompts[disagree], new[disagree], wins)
        ],
    }


def pooled(reports: list[dict]) -> dict:
    """Several runs' `judges_compared` (e.g. one per training seed) as one win rate over all their
    disagreements, its interval resampling (run, prompt) groups."""
    rows = [(i, d) for i, r in enumerate(reports) for d in r["disagreements"]]
    wins = np.array([d["new_right"] for _, d in rows], dtype=bool)
    groups = np.array([f"{i}:{d['prompt']}" for i, d in rows])
    return {
        "win_rate": float(wins.mean()) if len(wins) else None,
        "win_rate_ci": list(bootstrap_ci(wins, groups)),
        "n_disagree": len(rows),
        "runs": len(reports),
    }


def compared_round(result: dict, round_: int | None = None) -> dict:
    """The run's row whose model meets the start: the served one (`final_checkpoint`), or round
    `round_`'s, whether or not its gate promoted it."""
    rows = {r["round"]: r for r in result["rounds"]}
    if round_ is None:
        round_ = final_checkpoint(result)[1]
    elif round_ < 1 or round_ not in rows:
        raise ValueError(f"the run has no round {round_} (rounds 1-{max(rows)})")
    return rows[round_]


def co_improvement(store, result: dict, cache: str | Path, round_: int | None = None) -> dict:
    """`judges_compared` for a finished loop run (`result`: its `unigap loop --json`): the starting
    model's judge against the served model's (with `round_`, that round's model, promoted or not:
    the judge training made, whatever the gate did) on the starting model's held-out images, both
    at the run's judge mode and threshold, on the images the run's evaluator could tell. Raises
    ValueError when the run has no external evaluator, no such round, or its store lacks the round-0
    evaluation."""
    from unigap.evaluate import make_judge
    from unigap.loop import baseline_record, evaluation_prompts, heldout_arrays
    from unigap.model.adapter import UnifiedModel
    from unigap.store import records as rec

    cfg = LoopConfig.from_dict(result["config"])
    if cfg.evaluator == "none":
        raise ValueError("the run has no external evaluator (--evaluator none): nothing can decide a disagreement")
    start = result["rounds"][0]["checkpoint"]
    zero = rec.get_record_json(store, f"{baseline_record(cfg, start)}/manifest.json")
    if zero is None:
        raise ValueError("the store holds no round-0 evaluation of this run: is it the store the run wrote to?")
    specs = evaluation_prompts(cfg.eval_prompts, "heldout", cfg.eval_per_category)
    a, prompts = heldout_arrays(store, rec.get_json(store, zero["eval"]), specs)
    compared = compared_round(result, round_)

    def decisions(ref: str) -> np.ndarray:
        judge = make_judge(UnifiedModel.load(rec.fetch_checkpoint(store, ref, cache)), cfg.judge_mode, cfg.threshold)
        step = 256
        return np.concatenate(
            [
                judge.score(a["images"][i : i + step], prompts[i : i + step]).decision
                for i in range(0, len(prompts), step)
            ]
        )

    k = a["known"]
    out = judges_compared(
        decisions(start)[k], decisions(compared["checkpoint"])[k], a["correct"][k], np.asarray(prompts)[k]
    )
    return {
        "start": start,
        "final": compared["checkpoint"],
        "final_round": compared["round"],
        "final_promoted": compared["promoted"],
        "threshold": cfg.threshold,
        **out,
    }
