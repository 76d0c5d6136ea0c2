import numpy as np
import pytest

from unigap.score import bootstrap_ci, gap_summary, win_rate


def test_gap_summary_hand_computed():
    # 4 images: judge accepts 1 and 2; evaluator accepts 1 and 3.
    accepted = [True, True, False, False]
    correct = [True, False, True, False]
    s = gap_summary(accepted, correct, n_prompts=2)
    assert s["nu"] == 0.5
    assert s["gen_acc"] == 0.5
    assert s["und_acc"] == 0.5  # agrees on images 1 and 4
    assert s["ext_agreement"] == 0.5  # rejected: 3 (evaluator accepts) and 4 (evaluator rejects)
    assert s["n_images"] == 4 and s["n_prompts"] == 2
    lo, hi = s["nu_ci"]
    assert 0 <= lo <= 0.5 <= hi <= 1
    assert s["judge_precision"] == 0.5  # accepted: 1 (right) and 2 (wrong)
    assert "coverage" not in s  # needs each image's prompt


def test_coverage_counts_prompts_with_a_correct_and_an_accepted_correct_image():
    # Prompts a, b, c with 2 images each: a has a correct image the judge rejects, b one it
    # accepts, c none.
    prompt_of = ["a", "a", "b", "b", "c", "c"]
    correct = [False, True, True, False, False, False]
    accepted = [True, False, True, True, True, False]
    s = gap_summary(accepted, correct, prompt_of=prompt_of)
    assert s["coverage"] == pytest.approx(2 / 3)
    assert s["judge_coverage"] == pytest.approx(1 / 3)
    assert s["judge_precision"] == pytest.approx(1 / 4)


def test_nothing_accepted_has_no_precision():
    s = gap_summary([False, False], [True, False], prompt_of=[0, 0])
    assert s["judge_precision"] is None and s["coverage"] == 1.0 and s["judge_coverage"] == 0.0


def test_no_rejections_has_no_agreement():
    s = gap_summary([True, True], [True, False])
    assert s["nu"] == 0.0 and s["ext_agreement"] is None and s["nu_ci"] == [0.0, 0.0]


def test_bootstrap_ci_brackets_mean_and_narrows():
    rng = np.random.default_rng(1)
    x = rng.random(2000) < 0.3
    lo, hi = bootstrap_ci(x)
    assert lo < x.mean() < hi
    assert hi - lo < 0.05
    lo_small, hi_small = bootstrap_ci(x[:50])
    assert hi_small - lo_small > hi - lo
    assert bootstrap_ci([1, 1, 1]) == (1.0, 1.0)


def test_bootstrap_ci_matches_normal_approximation():
    x = np.r_[np.ones(300), np.zeros(700)]
    lo, hi = bootstrap_ci(x, n_boot=4000)
    se = np.sqrt(0.3 * 0.7 / 1000)
    assert lo == pytest.approx(0.3 - 1.96 * se, abs=0.006)
    assert hi == pytest.approx(0.3 + 1.96 * se, abs=0.006)


def test_bootstrap_over_prompts_keeps_a_prompts_images_together():
    """40 prompts x 10 images. When a prompt's images all agree, the mean varies as a mean of 40
    prompts (sd = sqrt(.5 * .5 / 40) = 0.079, a 95% interval about 0.31 wide), not of 400 images
    (0.10 wide): resampling images would understate it threefold. Independent images: alike."""
    rng = np.random.default_rng(3)
    prompt = np.repeat(np.arange(40), 10)
    same = np.repeat(rng.random(40) < 0.5, 10)
    lo_img, hi_img = bootstrap_ci(same)
    lo, hi = bootstrap_ci(same, prompt)
    assert lo < same.mean() < hi
    assert hi - lo == pytest.approx(0.31, abs=0.06)
    assert (hi - lo) > 2.5 * (hi_img - lo_img)
    indep = rng.random(400) < 0.5
    width_img, width_prompt = np.subtract(*bootstrap_ci(indep)[::-1]), np.subtract(*bootstrap_ci(indep, prompt)[::-1])
    assert 0.75 < width_prompt / width_img < 1.33


def test_bootstrap_memory_is_bounded_by_the_chunk_not_the_replicates():
    """Replicates are drawn `chunk` at a time; the interval does not depend on the chunk size
    beyond the bootstrap's own noise, and a large n_boot over many prompts stays cheap."""
    rng = np.random.default_rng(4)
    prompt = np.repeat(np.arange(500), 4)
    x = rng.random(2000) < 0.3
    a = bootstrap_ci(x, prompt, n_boot=4000, chunk=4000)
    b = bootstrap_ci(x, prompt, n_boot=4000, chunk=64)
    assert a == pytest.approx(b, abs=0.006)


def test_gap_summary_intervals_resample_prompts():
    prompt = np.repeat(np.arange(20), 10)
    accepted = np.repeat(np.arange(20) % 2 == 0, 10)
    by_image = gap_summary(accepted, accepted)["nu_ci"]
    by_prompt = gap_summary(accepted, accepted, prompt_of=prompt)["nu_ci"]
    assert by_prompt[1] - by_prompt[0] > 2 * (by_image[1] - by_image[0])


def test_win_rate_only_counts_disagreements():
    old = [True, True, False, False, True]
    new = [True, False, True, False, False]
    truth = [False, False, False, True, True]
    # disagreements at 1 (new rejects, truth False: win), 2 (new accepts, truth False: loss),
    # 4 (new rejects, truth True: loss)
    assert win_rate(old, new, truth) == {"win_rate": pytest.approx(1 / 3), "n_disagree": 3}
