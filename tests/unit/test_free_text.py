"""Free-text prompts and pluggable external evaluators: the prompts file, the evaluator
interface, the figures without an evaluator, and `unigap score` on free text."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_cli import assert_one_line_error, run

from unigap import world
from unigap.evaluators import NONE, SHAPES, get_evaluator
from unigap.prompts import FREE, Prompt, load_prompts
from unigap.score import gap_summary

ROOT = Path(__file__).resolve().parents[2]


def test_prompt_files_give_world_specs_or_free_text(tmp_path):
    shapes = tmp_path / "shapes.txt"
    shapes.write_text("a red circle\n\ntwo blue squares\n")
    assert load_prompts(shapes) == [world.parse("a red circle"), world.parse("two blue squares")]
    mixed = tmp_path / "mixed.txt"
    mixed.write_text("a red circle\na photo of a cat on a sofa\n")
    assert load_prompts(mixed) == [Prompt("a red circle"), Prompt("a photo of a cat on a sofa")]
    assert load_prompts(mixed)[1].category == FREE and load_prompts(mixed)[1].tier is None
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "a cat", "category": "animals", "count": 1}\n{"prompt": "a mug"}\n')
    cat, mug = load_prompts(jsonl)
    assert (cat.text, cat.category, cat.metadata) == ("a cat", "animals", {"count": 1})
    assert (mug.category, mug.metadata) == (FREE, {})
    as_json = tmp_path / "p.json"
    as_json.write_text('["a cat", {"prompt": "a mug", "category": "kitchen"}]')
    assert [(p.text, p.category) for p in load_prompts(as_json)] == [("a cat", FREE), ("a mug", "kitchen")]
    for name, text, words in (
        ("e.txt", "\n \n", "no prompts"),
        ("b.jsonl", '{"prompt": ""}\n', "b.jsonl:1"),
        ("c.jsonl", "[1]\n", "c.jsonl:1"),
        ("d.jsonl", "{nope\n", "not valid JSON"),
    ):
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=words):
            load_prompts(tmp_path / name)


def test_shapes_evaluator_tells_inside_its_world_only():
    specs = [world.parse("a red circle"), world.parse("two blue squares")]
    images = world.render_batch(specs, [1, 2], 64)
    v = SHAPES(np.concatenate([images, images[:1]]), ["a red circle", "a red circle", "a photo of a cat"])
    assert v.known.tolist() == [True, True, False]
    assert v.correct.tolist() == [True, False, False]
    assert v.correct[:2].tolist() == world.evaluate_batch(images, [specs[0]] * 2).tolist()
    none = NONE(images, ["a red circle", "x"])
    assert not none.known.any() and not NONE.measures


USER_EVALUATORS = """
import numpy as np


def dark_enough(image, prompt, metadata):
    # right when the image is darker than metadata["max_mean"]; cannot tell without it
    if "max_mean" not in metadata:
        return None
    return bool(np.asarray(image).mean() < metadata["max_mean"])


def counts_words(images, prompts, metadata):
    return [len(p.split()) > 2 for p in prompts]


counts_words.batched = True
not_callable = 3


def says_maybe(image, prompt, metadata):
    return "maybe"


def crashes(image, prompt, metadata):
    return 1 / 0
"""


def test_user_evaluator_by_import_path(tmp_path, monkeypatch):
    (tmp_path / "team_evaluators.py").write_text(USER_EVALUATORS)
    monkeypatch.syspath_prepend(str(tmp_path))
    images = np.stack([np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 3), 255, np.uint8)])
    ev = get_evaluator("team_evaluators:dark_enough")
    assert ev.measures and not ev.batched
    v = ev(images, ["a", "b"], [{"max_mean": 100}, {"max_mean": 100}])
    assert v.correct.tolist() == [True, False] and v.known.all()
    assert not ev(images, ["a", "b"]).known.any()  # no metadata: cannot tell
    batched = get_evaluator("team_evaluators:counts_words")
    assert batched.batched and batched(images, ["a cat", "a big cat"]).correct.tolist() == [False, True]
    with pytest.raises(ValueError, match="'maybe'"):
        get_evaluator("team_evaluators:says_maybe")(images, ["a", "b"])
    with pytest.raises(ValueError, match="team_evaluators:crashes failed: ZeroDivisionError"):
        get_evaluator("team_evaluators:crashes")(images, ["a", "b"])
    for name, words in (
        ("nosuchmodule_xyz:f", "cannot import"),
        ("team_evaluators:missing", "has no"),
        ("team_evaluators:not_callable", "not callable"),
        ("gibberish", "module:callable"),
    ):
        with pytest.raises(ValueError, match=words) as e:
            get_evaluator(name)
        assert name in str(e.value)


def test_figures_count_only_what_the_evaluator_could_tell():
    accepted = np.array([1, 0, 1, 0, 1], bool)
    correct = np.array([1, 0, 0, 0, 0], bool)
    known = np.array([1, 1, 1, 0, 0], bool)
    s = gap_summary(accepted, correct, 3, prompt_of=["p", "p", "q", "r", "r"], known=known)
    assert s["nu"] == pytest.approx(2 / 5)  # NU never needs the evaluator
    assert s["gen_acc"] == pytest.approx(1 / 3) and s["und_acc"] == pytest.approx(2 / 3)
    assert s["ext_agreement"] == 1.0 and s["judge_precision"] == pytest.approx(1 / 2)
    assert s["coverage"] == pytest.approx(1 / 2) and s["n_evaluated"] == 3  # prompt r: never told
    blind = gap_summary(accepted, correct, 3, prompt_of=["p", "p", "q", "r", "r"], known=np.zeros(5, bool))
    assert blind["nu"] == s["nu"] and blind["n_evaluated"] == 0
    for k in ("gen_acc", "und_acc", "ext_agreement", "judge_precision", "coverage", "judge_coverage"):
        assert blind[k] is None, k


def test_score_prints_nu_on_free_text_without_an_evaluator(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        '{"prompt": "a photo of a cat on a sofa", "category": "animals"}\n'
        '{"prompt": "a red circle"}\n{"prompt": "two dogs in the snow", "category": "animals"}\n'
    )
    out = tmp_path / "score.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "unigap",
            "score",
            "--split",
            str(prompts),
            "--mode",
            "decision",
            "--evaluator",
            "none",
            "--n",
            "2",
            "--json",
            str(out),
            "--plot",
            str(tmp_path / "score.png"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    overall = report["overall"]
    assert overall["n_images"] == 6 and overall["n_prompts"] == 3 and overall["n_evaluated"] == 0
    assert 0 <= overall["nu"] <= 1 and overall["nu_ci"][0] <= overall["nu"] <= overall["nu_ci"][1]
    assert overall["gen_acc"] is None and overall["und_acc_rendered"] is None
    assert set(report["by_category"]) == {"animals", FREE} and report["by_tier"] == {}
    assert report["by_category"]["animals"]["n_images"] == 4
    assert report["settings"]["evaluator"] == "none"
    assert "NU" in proc.stdout and "absent" in proc.stdout and "verdict on 0 of 6" in proc.stdout
    assert (tmp_path / "score.png").stat().st_size > 1000  # absent figures get no bar


def test_prompts_are_balanced_over_their_own_categories():
    from unigap.evaluate import select_prompts

    prompts = [Prompt(f"p{i}", "animals" if i % 3 else "food") for i in range(12)]
    picked = select_prompts(prompts, 2, seed=1)
    assert [p.category for p in picked] == ["food", "food", "animals", "animals"]  # in order of appearance
    assert picked == select_prompts(prompts, 2, seed=1) and select_prompts(prompts, 0) == prompts


def test_score_refuses_what_it_cannot_do(tmp_path):
    free = tmp_path / "free.txt"
    free.write_text("a photo of a cat on a sofa\n")
    assert_one_line_error(
        run("score", "--split", str(free), "--mode", "likelihood", "--evaluator", "none"),
        "likelihood",
        "a photo of a cat",
        "probability or decision",
    )
    assert_one_line_error(
        run("score", "--split", str(free), "--mode", "decision", "--evaluator", "nosuchmodule_xyz:f"),
        "--evaluator",
        "nosuchmodule_xyz:f",
        "cannot import",
    )
    assert_one_line_error(
        run("score", "--split", str(free), "--mode", "decision", "--evaluator", "shapes-ish"),
        "--evaluator",
        "module:callable",
    )
    (tmp_path / "team_evaluators.py").write_text(USER_EVALUATORS)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "unigap",
            "score",
            "--split",
            str(free),
            "--mode",
            "probability",
            "--n",
            "1",
            "--evaluator",
            "team_evaluators:crashes",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"},
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr  # after the sampling's progress line: one error line
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: evaluator team_evaluators:crashes failed: ZeroDivisionError: division by zero"
    )
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert_one_line_error(
        run("score", "--split", str(empty), "--mode", "decision", "--evaluator", "none"), "no prompts"
    )


def test_generate_writes_the_evaluators_verdicts(tmp_path):
    out = tmp_path / "gen"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "unigap",
            "generate",
            "a red circle",
            "a photo of a cat",
            "--n",
            "2",
            "--out",
            str(out),
            "--mode",
            "probability",
            "--evaluator",
            "shapes",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    records = json.loads((out / "generated.json").read_text())
    from PIL import Image

    for r in records[:2]:  # the shapes world's prompt: the exact evaluator's verdict on the written image
        image = np.asarray(Image.open(out / r["file"]).convert("RGB"))
        assert r["evaluator"] == bool(world.evaluate(image, world.parse("a red circle")))
    assert [r["evaluator"] for r in records[2:]] == [None, None]  # free text: cannot tell
