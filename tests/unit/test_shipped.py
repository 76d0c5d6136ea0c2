"""The shipped tiny model: present, small, loadable, consistent, and showing the gap."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from unigap import world
from unigap.evaluate import make_judge, rendered_understanding, select_prompts
from unigap.model.adapter import UnifiedModel
from unigap.paths import DEFAULT_MODEL

pytestmark = pytest.mark.slow


def test_checkpoint_is_small_safetensors():
    files = {p.name: p.stat().st_size for p in DEFAULT_MODEL.iterdir()}
    assert "model.safetensors" in files and "config.json" in files and "tokenizer.json" in files
    assert sum(files.values()) < 20 * 2**20


def test_sampling_is_seeded_and_matches_teacher_forcing(shipped):
    prompts = ["a red circle", "a blue square left of a yellow circle"]
    a = shipped.sample(prompts, n=2, cfg=1.5, temperature=0.0, seed=1, decode=False)
    logits = shipped.image_logits([prompts[i] for i in a.prompt_index], a.tokens, cfg=1.5)
    assert torch.equal(logits.argmax(-1), a.tokens)
    b = shipped.sample(prompts, n=2, cfg=1.5, temperature=0.7, seed=1)
    c = shipped.sample(prompts, n=2, cfg=1.5, temperature=0.7, seed=1)
    assert torch.equal(b.tokens, c.tokens)


def test_single_objects_come_out_clean(shipped):
    specs = [s for s in world.split("train") if s.category == "single_object"]
    out = shipped.sample([s.text for s in specs], n=4, seed=0)
    ok = world.evaluate_batch(out.images, [specs[i] for i in out.prompt_index])
    assert ok.mean() >= 0.8


def test_canonical_tokens_keep_the_image(shipped):
    """Re-encoding a generated image (the loop trains on these canonical tokens) keeps what it shows."""
    specs = [world.parse(p) for p in ("a green circle on the left", "two red squares", "a blue square")]
    out = shipped.sample([s.text for s in specs], n=8, seed=2)
    rows = [specs[i] for i in out.prompt_index]
    again = shipped.decode(shipped.encode(out.images))
    same = world.evaluate_batch(out.images, rows) == world.evaluate_batch(again, rows)
    assert same.mean() >= 0.9
    assert np.abs(again.astype(int) - out.images.astype(int)).mean() < 12


def test_judge_understands_rendered_images(shipped):
    specs = select_prompts(world.split("heldout"), 6)
    acc = rendered_understanding(make_judge(shipped, "likelihood"), specs)
    assert acc.mean() >= 0.9


def test_best_of_keeps_the_judges_pick_of_each_group(shipped):
    from unigap.candidates import Sampling, sample_and_judge

    prompts = ["a red circle above a blue square", "two green circles"]
    judge = make_judge(shipped, "likelihood")
    picked = sample_and_judge(shipped, judge, prompts, Sampling(n=2, seed=3, best_of=3), progress=False)
    every = sample_and_judge(shipped, judge, prompts, Sampling(n=6, seed=3), progress=False)
    best = every.p_yes.reshape(4, 3).argmax(1) + np.arange(0, 12, 3)  # rows: 2 prompts x 2 groups of 3
    assert np.array_equal(picked.tokens, every.tokens[best])
    assert np.array_equal(picked.p_yes, every.p_yes[best]) and picked.prompts == [every.prompts[i] for i in best]
    assert list(picked.prompt_index) == [0, 0, 1, 1]


def test_save_load_round_trip(shipped, tmp_path):
    shipped.save(tmp_path / "copy")
    loaded = UnifiedModel.load(tmp_path / "copy")
    a = shipped.sample(["two blue triangles"], n=2, seed=4)
    b = loaded.sample(["two blue triangles"], n=2, seed=4)
    assert torch.equal(a.tokens, b.tokens)
    images = a.images
    q = ["Describe the image."] * 2
    assert torch.allclose(
        shipped.answer_logprobs(images, q, ["two blue triangles"] * 2),
        loaded.answer_logprobs(images, q, ["two blue triangles"] * 2),
    )


def test_score_cli_json(tmp_path):
    out = tmp_path / "score.json"
    plot = tmp_path / "score.png"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "unigap",
            "score",
            "--n",
            "1",
            "--per-category",
            "3",
            "--json",
            str(out),
            "--plot",
            str(plot),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    keys = {"nu", "nu_ci", "gen_acc", "und_acc", "und_acc_rendered", "ext_agreement", "n_images"}
    assert keys <= set(report["overall"])
    assert set(report["by_category"]) == set(world.CATEGORIES)
    assert set(report["by_tier"]) == set(world.TIERS)
    for group in list(report["by_category"].values()) + list(report["by_tier"].values()):
        assert keys <= set(group)
    assert report["overall"]["n_images"] == sum(g["n_images"] for g in report["by_category"].values())
    lo, hi = report["overall"]["nu_ci"]
    assert lo <= report["overall"]["nu"] <= hi
    assert plot.stat().st_size > 1000
    assert "overall" in proc.stdout
    kinds = report["und_by_negative"]  # rendered understanding per kind of hard negative
    assert {"colour", "shape", "position", "count", "relation", "swap", "every kind alike", "order"} == set(kinds)
    assert "by kind of negative" in proc.stdout
    by_failure = report["judge_by_failure"]  # the judge on its own images, by what is wrong with them
    assert set(by_failure) <= {"right", *world.FAILURES}
    assert sum(r["images"] for r in by_failure.values()) == report["overall"]["n_images"]
    right = by_failure.get("right", {"images": 0})["images"]
    assert right / report["overall"]["n_images"] == report["overall"]["gen_acc"]


def test_generate_and_judge_cli(tmp_path):
    out = tmp_path / "gen"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "unigap",
            "generate",
            "a red circle",
            "two green squares",
            "--n",
            "2",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    records = json.loads((out / "generated.json").read_text())
    assert len(records) == 4 and all(0 <= r["p_yes"] <= 1 and len(r["tokens"]) == 64 for r in records)
    png = out / records[0]["file"]
    for mode in ("probability", "decision", "likelihood"):
        proc = subprocess.run(
            [sys.executable, "-m", "unigap", "judge", "--image", str(png), "--prompt", "a red circle", "--mode", mode],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        assert 0 <= result["p_yes"] <= 1 and isinstance(result["decision"], bool)
        assert ("answer" in result) == (mode == "decision")
