"""The training-data audit: the external evaluator's verdict on judged candidates and SFT rows."""

import numpy as np
import pytest

from unigap import world
from unigap.audit import audit_round, by_acceptance, change_by_rows, external_verdicts, judge_on_own_images
from unigap.train.data import Candidates, RoundData

PROMPTS = ["a red circle", "two blue squares"]


@pytest.fixture(scope="module")
def rows(shipped):
    """Per prompt, two renders of it and two of a near miss (one attribute changed), as the
    shipped model's image tokens; the truth of each row is known by construction."""
    prompts, specs, truth = [], [], []
    for p in PROMPTS:
        miss = world.negatives(world.parse(p))[0][1]
        for spec, right in ((world.parse(p), True), (miss, False)) * 2:
            prompts.append(p)
            specs.append(spec)
            truth.append(right)
    tokens = np.asarray(shipped.encode(world.render_batch(specs, list(range(len(specs))), shipped.image_size)))
    return prompts, tokens, np.array(truth)


def test_external_verdicts_decode_and_evaluate(shipped, rows):
    prompts, tokens, truth = rows
    assert external_verdicts(shipped, tokens, prompts, batch=3).tolist() == truth.tolist()  # several batches


def test_audit_round_precision_recall_and_sft_rows(shipped, rows):
    prompts, tokens, truth = rows
    # "a red circle": one right and one wrong image accepted; "two blue squares": both right ones.
    accepted = np.array([True, True, False, False, True, False, True, False])
    c = Candidates(prompts, tokens, np.where(accepted, 0.9, 0.1), accepted)
    data = RoundData(sft=[(prompts[i], tokens[i]) for i in (0, 1, 4)])
    a = audit_round(c, data, lambda t, p: external_verdicts(shipped, t, p))
    assert a["candidates"]["all"] == {
        "images": 8,
        "truth": 0.5,
        "accepted": 0.5,
        "judge_precision": 0.75,
        "judge_recall": 0.75,
        "judge_coverage": 1.0,
    }
    assert a["candidates"]["single_object"]["judge_precision"] == 0.5
    assert a["candidates"]["counting"]["judge_recall"] == 1.0
    assert a["sft"]["all"]["rows"] == 3 and a["sft"]["all"]["precision"] == pytest.approx(2 / 3)
    assert a["sft"]["single_object"] == {"rows": 2, "precision": 0.5}
    assert "sft" not in audit_round(c, RoundData(), lambda t, p: external_verdicts(shipped, t, p))


def test_precision_by_acceptance_rate(rows):
    prompts, tokens, truth = rows
    # "a red circle": 1 of 4 accepted (a wrong one); "two blue squares": 2 of 4 (both right).
    accepted = np.array([False, True, False, False, True, False, True, False])
    bins = by_acceptance(Candidates(prompts, tokens, accepted * 1.0, accepted), truth)
    got = {(b["rate_from"], b["rate_to"]): (b["prompts"], b["accepted"], b["judge_precision"]) for b in bins}
    assert got[(0.25, 0.5)] == (1, 1, 0.0) and got[(0.5, 1.0)] == (1, 2, 1.0)
    assert got[(0.0, 0.0625)] == (0, 0, None)


def test_judge_on_own_images_splits_the_accepted_share_into_right_images_and_judge_errors():
    accepted = np.array([True, True, False, True, False, False, False, True])
    correct = np.array([True, False, False, False, True, False, False, True])
    j = judge_on_own_images(accepted, correct)
    assert j == {
        "images": 8,
        "right": 3 / 8,
        "accepted": 0.5,
        "agreement": 5 / 8,
        "accepts_right": 2 / 3,
        "accepts_wrong": 2 / 5,
        "false_accepts": 2 / 8,
        "false_rejects": 1 / 8,
    }
    assert j["accepted"] == pytest.approx(j["right"] - j["false_rejects"] + j["false_accepts"])
    assert judge_on_own_images(np.ones(2, bool), np.zeros(2, bool))["accepts_right"] is None


def test_change_by_rows_groups_prompts_by_their_sft_rows_and_whether_they_were_called_solved():
    texts = ["a red circle", "two blue squares", "a green triangle", "a blue square"]
    # Two images per prompt before and after; prompts 0 and 3 got 1 SFT row, prompt 1 two, prompt 2
    # none. The round's candidates call prompt 3 solved (accepted in 0.75 of them), not prompt 0 (0.5).
    idx = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    before = {"accepted": np.array([1, 1, 0, 0, 1, 0, 1, 1], bool), "correct": np.array([1, 1, 0, 0, 0, 0, 1, 1], bool)}
    after = {"accepted": np.array([1, 0, 1, 1, 1, 0, 0, 0], bool), "correct": np.array([1, 0, 1, 0, 0, 0, 1, 0], bool)}
    data = RoundData(
        sft=[(texts[0], np.zeros(4)), (texts[1], np.zeros(4)), (texts[1], np.ones(4)), (texts[3], np.ones(4))]
    )
    rates = {texts[0]: 0.5, texts[1]: 0.25, texts[2]: 0.0, texts[3]: 0.75}
    per_image = [texts[i] for i in idx]
    got = {(g["rows"], g["solved"]): g for g in change_by_rows(data, rates, (before, per_image), (after, per_image))}
    assert set(got) == {(0, False), (1, False), (1, True), (2, False)}
    assert got[1, False] == {"rows": 1, "solved": False, "prompts": 1, "nu_change": 0.5, "gen_change": -0.5}
    assert got[1, True] == {"rows": 1, "solved": True, "prompts": 1, "nu_change": 1.0, "gen_change": -0.5}
    assert got[2, False] == {"rows": 2, "solved": False, "prompts": 1, "nu_change": -1.0, "gen_change": 0.5}
    assert got[0, False] == {"rows": 0, "solved": False, "prompts": 1, "nu_change": 0.0, "gen_change": 0.0}
    # With the head's own head's evaluation, each group also has the change from there to the head.
    earlier = {
        "accepted": np.array([0, 0, 0, 0, 1, 1, 0, 1], bool),
        "correct": np.array([0, 1, 0, 0, 0, 0, 0, 0], bool),
    }
    got = {
        (g["rows"], g["solved"]): g
        for g in change_by_rows(data, rates, (before, per_image), (after, per_image), (earlier, per_image))
    }
    assert got[1, True] == {
        "rows": 1,
        "solved": True,
        "prompts": 1,
        "nu_change": 1.0,
        "gen_change": -0.5,
        "nu_change_before": -0.5,
        "gen_change_before": 1.0,
    }
    assert (got[0, False]["nu_change_before"], got[0, False]["gen_change_before"]) == (0.5, 0.0)
