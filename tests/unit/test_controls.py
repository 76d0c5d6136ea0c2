"""`unigap controls`: what each arm of the ladder trains on."""

import numpy as np
import pytest
import torch

from unigap import world
from unigap.config import LoopConfig
from unigap.controls import control_samples, run_controls
from unigap.evaluate import make_judge
from unigap.train.round import collect

PROMPTS = ["a red circle", "a blue square left of a red circle", "two green circles"]


@pytest.fixture(scope="module")
def cfg():
    # The first defaults, as `unigap controls` has them (unigap.cli.loop.CONTROL): every kept sample is a row.
    return LoopConfig.from_dict({"n": 3, "rounds": 1, "eval_n": 1, "eval_per_category": 1})


def test_render_arm_trains_on_ground_truth_renders(shipped, cfg):
    rows = control_samples("render", shipped, PROMPTS, cfg, seed=1, progress=False)
    assert [p for p, _ in rows] == [p for p in PROMPTS for _ in range(3)]
    images = shipped.decode(torch.as_tensor(np.stack([t for _, t in rows])))
    assert world.evaluate_batch(images, [world.parse(p) for p, _ in rows]).mean() >= 0.8  # VQ keeps their meaning


def test_own_sample_arms_filter_the_same_candidates(shipped, cfg):
    c = collect(shipped, make_judge(shipped, cfg.judge_mode, cfg.threshold), PROMPTS, cfg, 7, progress=False)
    truth = world.evaluate_batch(shipped.decode(torch.as_tensor(c.tokens)), [world.parse(p) for p in c.prompts])
    got = {
        arm: control_samples(arm, shipped, PROMPTS, cfg, seed=7, progress=False) for arm in ("oracle", "judge", "all")
    }
    assert len(got["all"]) == len(c.prompts) == 9
    for arm, keep in (("oracle", truth), ("judge", c.accepted)):
        expected = [t for t, k in zip(c.tokens, keep) if k]
        assert len(got[arm]) == len(expected) and all(np.array_equal(a[1], b) for a, b in zip(got[arm], expected))
    with pytest.raises(ValueError, match="unknown control"):
        control_samples("vibes", shipped, PROMPTS, cfg, 0, False)


def test_run_controls_reports_every_round(shipped, cfg):
    out = run_controls(shipped, ["judge"], PROMPTS, cfg, progress=False, log=lambda s: None)
    rows = out["arms"]["judge"]
    assert [r["round"] for r in rows] == [0, 1]
    # round 1 trains on what the judge arm keeps of round 1's candidates (seed: cfg.seed * 1000 + round)
    kept = control_samples("judge", shipped, PROMPTS, cfg, cfg.seed * 1000 + 1, progress=False)
    assert rows[1]["n_train"] == len(kept)
    assert {"gen_acc", "nu", "und_acc", "diversity", "by_category"} <= set(rows[1])
    for r in rows:  # the judge split adds up to the accepted share, 1 - NU
        split = r["judge_on_own"]
        assert split["right"] == pytest.approx(r["gen_acc"]) and split["accepted"] == pytest.approx(1 - r["nu"])
        assert split["accepted"] == pytest.approx(split["right"] - split["false_rejects"] + split["false_accepts"])
