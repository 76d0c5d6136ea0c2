"""Co-improvement as the paper measures it: two judges on the same images, the evaluator deciding."""

import json
from pathlib import Path

import pytest

from unigap.co_improvement import final_checkpoint, judges_compared, pooled

ROOT = Path(__file__).resolve().parents[2]


def test_the_new_judge_wins_the_disagreements_the_evaluator_decides_its_way():
    old = [True, True, False, False, True, True]
    new = [True, False, True, False, False, True]  # disagrees on images 1, 2, 4
    truth = [True, False, False, False, True, True]  # new is right on 1, wrong on 2 and 4
    out = judges_compared(old, new, truth, ["a", "a", "b", "b", "c", "c"])
    assert out["n_disagree"] == 3 and out["n_disagree_prompts"] == 3
    assert out["win_rate"] == pytest.approx(1 / 3)
    assert (out["new_wins_rejecting"], out["new_wins_accepting"]) == (1, 0)
    assert out["agreement_old"] == pytest.approx(5 / 6) and out["agreement_new"] == pytest.approx(4 / 6)
    assert [d["prompt"] for d in out["disagreements"]] == ["a", "b", "c"]
    same = judges_compared(old, old, truth, ["a"] * 6)
    assert same["win_rate"] is None and same["n_disagree"] == 0 and same["disagreements"] == []


def test_runs_pool_into_one_rate_over_all_their_disagreements():
    one = judges_compared([True, False], [False, True], [False, False], ["a", "b"])  # wins 1 of 2
    two = judges_compared([True, True, True], [False, False, False], [False, False, True], ["a", "a", "c"])  # 2 of 3
    both = pooled([one, two])
    assert both["win_rate"] == pytest.approx(3 / 5) and both["n_disagree"] == 5 and both["runs"] == 2
    lo, hi = both["win_rate_ci"]
    assert 0 <= lo <= 3 / 5 <= hi <= 1


def test_the_final_model_is_the_last_promoted_round():
    rounds = [{"round": 0, "promoted": True, "checkpoint": "s"}, {"round": 1, "promoted": True, "checkpoint": "a"}]
    rounds.append({"round": 2, "promoted": False, "checkpoint": "b"})
    assert final_checkpoint({"rounds": rounds}) == ("a", 1)
    assert final_checkpoint({"rounds": rounds[:1]}) == ("s", 0)


def test_a_co_improvement_file_must_measure_its_folders_run(tmp_path):
    from unigap.results_doc import render

    results = tmp_path / "results"
    (results / "default").mkdir(parents=True)
    run = json.loads(open(ROOT / "results/default-evaluated-texts/s0.json").read())
    (results / "default" / "s0.json").write_text(json.dumps(run))
    co = json.loads(open(ROOT / "results/default-evaluated-texts/co-improvement-s0.json").read())
    (results / "default" / "co-improvement-s0.json").write_text(json.dumps(co))
    assert "| `recipes/default.yaml` | 0 | 600 | 36.0 (25) |" in render(results, tmp_path)
    (results / "default" / "co-improvement-s0.json").write_text(json.dumps({**co, "run": "runs/another"}))
    with pytest.raises(ValueError, match="measures no run"):
        render(results, tmp_path)
