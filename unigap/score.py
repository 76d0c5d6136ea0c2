"""Metrics of the gap (docs/method.md): NU with a bootstrap interval, accuracies, agreement.

Pure functions over arrays; nothing here knows about models or servers.
"""

from __future__ import annotations

import numpy as np


def bootstrap_ci(
    values, groups=None, n_boot: int = 2000, seed: int = 0, level: float = 0.95, chunk: int = 250
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values`.

    With `groups` (each value's group, e.g. the prompt an image was generated for), whole groups
    are resampled: a prompt's images are correlated (an easy prompt gives many right images), so
    resampling images alone would understate the interval. Memory is bounded by `chunk` x the number
    of groups whatever `n_boot` is: each replicate is a count per group, and its mean is the
    count-weighted sum over the groups' sums divided by the count-weighted number of values.
    """
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return (float("nan"), float("nan"))
    group = np.arange(len(x)) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1]
    sums, sizes = np.bincount(group, x), np.bincount(group).astype(float)
    k = len(sums)
    rng = np.random.default_rng(seed)
    means = []
    for start in range(0, n_boot, chunk):
        m = min(chunk, n_boot - start)
        picks = rng.integers(0, k, (m, k)) + (np.arange(m) * k)[:, None]
        counts = np.bincount(picks.ravel(), minlength=m * k).reshape(m, k).astype(float)
        means.append((counts @ sums) / (counts @ sizes))
    lo, hi = np.quantile(np.concatenate(means), [(1 - level) / 2, (1 + level) / 2])
    return (float(lo), float(hi))


def _mean(x) -> float | None:
    x = np.asarray(x, dtype=float)
    return float(x.mean()) if len(x) else None


def gap_summary(accepted, correct, n_prompts: int | None = None, prompt_of=None, known=None) -> dict:
    """NU and friends for one group of generated images.

    accepted: the model's own judge accepted the image; correct: the external evaluator did;
    known: where the evaluator could tell (default: everywhere). The evaluator's figures count only
    images it could tell, and are None when it could tell none (no evaluator): NU never needs it.
    - nu: share of images the model's own understanding rejects;
    - gen_acc: share the external evaluator accepts;
    - und_acc: share where the judge agrees with the external evaluator;
    - ext_agreement: among images the judge rejects, the share the evaluator also rejects
      (above 0.5: the gap is weak generation, not misunderstanding);
    - judge_precision: among images the judge accepts, the share the evaluator accepts: how
      clean the self-improvement loop's training set would be;
    - n_evaluated: images the evaluator could tell.
    With `prompt_of` (each image's prompt), what rejection sampling can reach at this N, among the
    prompts with at least one image the evaluator could tell:
    - coverage: share of prompts with at least one correct image;
    - judge_coverage: share of prompts with at least one image both the judge and the evaluator
      accept (the prompts the loop can learn from).
    """
    a = np.asarray(accepted, dtype=bool)
    c = np.asarray(correct, dtype=bool)
    k = np.ones(len(a), bool) if known is None else np.asarray(known, dtype=bool)
    rejected = ~a
    out = {
        "nu": _mean(rejected),
        "nu_ci": list(bootstrap_ci(rejected, prompt_of)),
        "gen_acc": _mean(c[k]),
        "und_acc": _mean((a == c)[k]),
        "ext_agreement": _mean(~c[rejected & k]),
        "judge_precision": _mean(c[a & k]),
        "n_images": int(len(a)),
        "n_evaluated": int(k.sum()),
    }
    if prompt_of is not None:
        names, prompt = np.unique(np.asarray(prompt_of), return_inverse=True)
        told = np.bincount(prompt, k, len(names)) > 0
        out["coverage"] = _mean((np.bincount(prompt, c & k, len(names)) > 0)[told])
        out["judge_coverage"] = _mean((np.bincount(prompt, a & c & k, len(names)) > 0)[told])
    if n_prompts is not None:
        out["n_prompts"] = n_prompts
    return out


def win_rate(old_accepts, new_accepts, truth) -> dict:
    """The paper's understanding win rate over images where old and new judges disagree.

    Returns the share of disagreements where the NEW judge agrees with the external evaluator
    (0.5 = no change) and how many disagreements there were.
    """
    old, new, t = (np.asarray(x, dtype=bool) for x in (old_accepts, new_accepts, truth))
    disagree = old != new
    return {"win_rate": _mean(new[disagree] == t[disagree]), "n_disagree": int(disagree.sum())}
