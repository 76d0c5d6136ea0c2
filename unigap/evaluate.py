"""`unigap score`: generate, judge with the model's own understanding, check with the evaluator.

The external evaluator only measures here; nothing it says flows back into training. Prompts are
the shapes world's specs or free-text `unigap.prompts.Prompt`s; the evaluator is any
`unigap.evaluators.Evaluator` (`none` included: then only the judge's figures exist).
"""

from __future__ import annotations

import numpy as np

from unigap import world
from unigap.candidates import Sampling, sample_and_judge
from unigap.config import JudgeSettings
from unigap.evaluators import SHAPES, Evaluator
from unigap.model.adapter import UnifiedModel
from unigap.model.judge import REJECT_CAPTION, Judge
from unigap.prompts import in_world, metadata_of
from unigap.score import gap_summary


def competitors(prompt: str) -> list[str]:
    """Competing captions for the likelihood judge: the prompt with one attribute changed, for
    two-object prompts each object alone (an image missing an object matches neither), and the
    reject caption (an image that shows no prompt: it wins only for a model taught it).
    Raises ValueError on a prompt outside the shapes world: only the world supplies competitors."""
    try:
        spec = world.parse(prompt)
    except ValueError:
        raise ValueError(
            f"the likelihood judge needs competing captions, which only the shapes world supplies; {prompt!r} is "
            "not one of its prompts (judge free text with the probability or decision mode)"
        ) from None
    out = [s.text for _, s in world.negatives(spec)]
    if len(spec.objects) == 2:
        out += [world.Spec("single_object", (o,)).text for o in spec.objects]
    return out + [REJECT_CAPTION]


def check_judge_fits(mode: str, prompt: str) -> None:
    """Raise ValueError (why) when the `mode` judge cannot judge `prompt`: the likelihood judge
    needs competing captions, which only the shapes world supplies; the other modes judge any text.
    The one place this rule lives: the CLI, the loop and both judge services ask it."""
    if mode == "likelihood":
        competitors(prompt)


def make_judge(um: UnifiedModel, mode: str, threshold: float = JudgeSettings.threshold) -> Judge:
    return Judge(um, mode, threshold, competitors=competitors)


def select_prompts(specs: list, per_category: int, seed: int = 0) -> list:
    """At most `per_category` prompts of each category (all when 0), chosen reproducibly.

    Balancing makes `overall` a mean over tasks, as GenEval reports it, rather than a figure
    dominated by the largest category. Free-text prompts are balanced over their own categories.
    """
    if per_category <= 0:
        return list(specs)
    rng = np.random.default_rng(seed)
    out = []
    for cat in dict.fromkeys([*world.CATEGORIES, *(s.category for s in specs)]):
        group = [s for s in specs if s.category == cat]
        pick = sorted(rng.permutation(len(group))[:per_category])
        out += [group[i] for i in pick]
    return out


def generate_and_judge(
    um: UnifiedModel, judge: Judge, specs: list, s: Sampling, progress=True, evaluator: Evaluator = SHAPES
) -> dict:
    """Sample N images per prompt, judge each with the model, evaluate each with the evaluator.

    `correct` holds the evaluator's verdicts and `known` where it could tell (`correct` is False
    where it could not); the shapes evaluator tells on every prompt of its world."""
    res = sample_and_judge(um, judge, [x.text for x in specs], s, progress)
    rows = [specs[k] for k in res.prompt_index]
    v = evaluator(res.images, [x.text for x in rows], [metadata_of(x) for x in rows])
    return {"specs": rows, "judged": res, "correct": v.correct, "known": v.known}


def rendered_understanding(judge: Judge, specs: list, seed: int = 0, per_prompt: int = 1) -> np.ndarray:
    """Judge accuracy on balanced pairs: each prompt with a render of itself and of a hard negative
    (`per_prompt` such pairs per prompt, each with its own renders and negative)."""
    specs = [s for s in specs for _ in range(per_prompt)]
    rng = np.random.default_rng(seed + 7919)
    negs = [world.negatives(s) for s in specs]
    others = [n[rng.integers(len(n))][1] for n in negs]
    seeds = [int(x) for x in rng.integers(0, 2**31, 2 * len(specs))]
    images = world.render_batch(list(specs) + others, seeds, judge.image_size)
    prompts = [s.text for s in specs] * 2
    truth = np.array([True] * len(specs) + [False] * len(specs))
    return judge.score(images, prompts).decision == truth


def understanding_by_negative(judge: Judge, specs: list, seed: int = 0) -> dict[str, dict]:
    """Judge accuracy on rendered pairs per kind of hard negative (colour, shape, position, count,
    relation, swap): for each prompt and each kind it has, a render of the prompt (answer yes) and
    a render of one negative of that kind (answer no), asked about the prompt. A judge that checks
    a bag of features (which colours, which shapes) passes colour and shape edits and fails the
    kinds that keep them (position, relation, swap); the overall figure counts every kind alike.

    Beside the kinds, not in the overall figure, `order`: each two-object prompt with its relation
    reversed (`world.reversed_order`), on renders of its own. Relation and swap each hold that edit
    among others, so a judge that reads only the axis the objects lie on still passes two relation
    edits in three; `order` shows it at chance."""
    rng = np.random.default_rng(seed + 104729)
    asked, shown, kinds = [], [], []
    for spec in specs:
        by_kind: dict[str, list] = {}
        for kind, other in world.negatives(spec):
            by_kind.setdefault(kind, []).append(other)
        for kind, others in by_kind.items():
            asked += [spec, spec]
            shown += [spec, others[rng.integers(len(others))]]
            kinds += [kind, kind]
    if not asked:
        return {}
    images = world.render_batch(shown, [int(x) for x in rng.integers(0, 2**31, len(shown))], judge.image_size)
    right = judge.score(images, [s.text for s in asked]).decision == np.tile([True, False], len(asked) // 2)
    kinds = np.array(kinds)
    out = {
        k: {"acc": float(right[kinds == k].mean()), "n_pairs": int((kinds == k).sum() // 2)}
        for k in dict.fromkeys(kinds)
    }
    out["every kind alike"] = {"acc": float(np.mean([v["acc"] for v in out.values()])), "n_pairs": len(asked) // 2}
    relational = [s for s in specs if world.reversed_order(s)]
    if relational:  # its own stream: the kinds' pairs stay what they were without it
        shown = relational + [world.reversed_order(s) for s in relational]
        seeds = np.random.default_rng(seed + 15485863).integers(0, 2**31, len(shown))
        images = world.render_batch(shown, [int(x) for x in seeds], judge.image_size)
        truth = np.repeat([True, False], len(relational))
        right = judge.score(images, [s.text for s in relational] * 2).decision == truth
        out["order"] = {"acc": float(right.mean()), "n_pairs": len(relational)}
    return out


def judge_by_failure(images, specs: list, accepted) -> dict[str, dict]:
    """The judge on the model's own images grouped by what the exact evaluator finds wrong with
    each (`world.FAILURES`; "right" where it finds none): how many, and the share the judge
    accepts. A kind of error the judge accepts is one the loop cannot teach the generator to avoid."""
    kinds = np.array([world.failure(image, spec) or "right" for image, spec in zip(images, specs)])
    accepted = np.asarray(accepted, bool)
    return {
        k: {"images": int((kinds == k).sum()), "judge_accepts": float(accepted[kinds == k].mean())}
        for k in ("right", *world.FAILURES)
        if (kinds == k).any()
    }


def group_by(specs, key) -> dict[str, np.ndarray]:
    names = [key(s) for s in specs]
    return {v: np.array([n == v for n in names]) for v in dict.fromkeys(names)}


def gap_report(specs: list, rows: list, accepted, correct, extra=None, known=None) -> dict:
    """`gap_summary` overall, by category and by tier of images generated for `specs`.

    rows: the spec (or free-text prompt) of each image; accepted / correct: the judge's and the
    evaluator's verdict per image; known: where the evaluator could tell (default: everywhere).
    The world's categories and tiers come in the world's order, free-text categories after them in
    order of appearance; free text has no tier. `extra(img_mask, spec_mask)` may add fields to each
    group's figures. Shared by `unigap score` and the judge service, so both report the same numbers.
    """
    accepted, correct = np.asarray(accepted, bool), np.asarray(correct, bool)
    known = np.ones(len(rows), bool) if known is None else np.asarray(known, bool)
    prompt_of = np.array([s.text for s in rows])

    def summary(img_mask, spec_mask) -> dict:
        out = gap_summary(
            accepted[img_mask], correct[img_mask], int(spec_mask.sum()), prompt_of[img_mask], known[img_mask]
        )
        return {**out, **extra(img_mask, spec_mask)} if extra else out

    all_imgs, all_specs = np.ones(len(rows), bool), np.ones(len(specs), bool)
    report = {"overall": summary(all_imgs, all_specs), "by_category": {}, "by_tier": {}}
    groupings = (("by_category", lambda x: x.category, world.CATEGORIES), ("by_tier", lambda x: x.tier, world.TIERS))
    for field, key, order in groupings:
        img_groups, spec_groups = group_by(rows, key), group_by(specs, key)
        for name in dict.fromkeys([*order, *spec_groups]):
            if name is not None and name in spec_groups:
                report[field][name] = summary(img_groups[name], spec_groups[name])
    return report


def score_report(
    um: UnifiedModel, judge: Judge, specs: list, s: Sampling, progress=True, evaluator: Evaluator = SHAPES
) -> dict:
    """The `unigap score` figures: overall, by category and by tier (keys as the issue names).

    `und_acc_rendered` (the judge on rendered pairs) needs the shapes world's renders: None on
    free text. The evaluator's figures are None where it could tell on no image (`none`)."""
    res = generate_and_judge(um, judge, specs, s, progress, evaluator)
    rendered = rendered_understanding(judge, specs, s.seed) if in_world(specs) else None

    def und_acc_rendered(img_mask, spec_mask) -> dict:
        both = np.concatenate([spec_mask, spec_mask])
        return {"und_acc_rendered": float(rendered[both].mean()) if rendered is not None and both.any() else None}

    report = gap_report(specs, res["specs"], res["judged"].accepted, res["correct"], und_acc_rendered, res["known"])
    if rendered is not None:
        report["und_by_negative"] = understanding_by_negative(judge, specs, s.seed)
    if rendered is not None and evaluator is SHAPES:
        report["judge_by_failure"] = judge_by_failure(res["judged"].images, res["specs"], res["judged"].accepted)
    report["settings"] = {
        **s.__dict__,
        "judge_mode": judge.mode,
        "threshold": judge.threshold,
        "model": um.path,
        "evaluator": evaluator.name,
    }
    report["_samples"] = res  # for plots and sample grids; dropped from the JSON
    return report
