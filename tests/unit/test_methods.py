"""`unigap table`: loop results over seeds -> one row per recipe, means and 95% intervals."""

import json
import subprocess
import sys
from dataclasses import asdict

import pytest
from scipy import stats

from unigap.config import LoopConfig
from unigap.methods import markdown, mean_ci, method_table, recipe, shipped


def row(r, gen, nu, und=0.95, promoted=True, win=0.6, div=0.9):
    return {
        "round": r,
        "gen_acc": gen,
        "nu": nu,
        "und_acc": und,
        "promoted": promoted,
        "win_rate": None if r == 0 else win,
        "diversity": div,
        "by_category": {"two_objects": gen / 2, "position": gen * 2},
    }


def result(seed, rounds, **cfg):
    train = {"seed": seed, **({"lr": 3e-4} if cfg.get("method") == "dpo" else {})}
    return {"config": asdict(LoopConfig.from_dict({"seed": seed, **cfg, "train": train})), "rounds": rounds}


def test_mean_ci_is_the_student_t_interval():
    m = mean_ci([0.1, 0.2, 0.3])
    half = stats.t.ppf(0.975, 2) * 0.1 / 3**0.5
    assert m["mean"] == pytest.approx(0.2) and m["ci"] == pytest.approx([0.2 - half, 0.2 + half]) and m["n"] == 3
    assert mean_ci([0.5]) == {"mean": 0.5, "ci": [None, None], "n": 1}
    assert mean_ci([0.9, 1.0, 1.0], bounds=(0.0, 1.0))["ci"][1] == 1.0  # a share's interval stays within [0, 1]
    assert mean_ci([None])["mean"] is None


def test_the_shipped_model_is_the_last_promoted_round():
    rounds = [row(0, 0.2, 0.8), row(1, 0.25, 0.7), row(2, 0.3, 0.6, promoted=False)]
    assert shipped(rounds)["round"] == 1
    assert shipped([row(0, 0.2, 0.8), row(1, 0.1, 0.9, promoted=False)])["round"] == 0


def test_recipes_are_named_by_their_flags_and_grouped_over_seeds():
    # Named against the first defaults (config.FIRST), so a row keeps its name when a default changes.
    assert recipe(asdict(LoopConfig.from_dict({"seed": 4}))) == "--method sft"
    cfg = asdict(
        LoopConfig.from_dict(
            {"method": "c-dpo", "judge_mode": "probability", "gate_external": False, "train": {"lora_rank": 8}}
        )
    )
    assert recipe(cfg) == "--method c-dpo --no-gate-external --mode probability --lora-rank 8"
    today = recipe(asdict(LoopConfig()))
    assert (
        "--pool pool+val" in today
        and "--eval-prompts test" in today
        and "--restart" in today
        and "--und-replay 1.0" in today
    )
    good = [result(s, [row(0, 0.2, 0.8), row(1, 0.25 + 0.01 * s, 0.7), row(2, 0.32 + 0.01 * s, 0.5)]) for s in range(3)]
    flat = [result(s, [row(0, 0.2, 0.8), row(1, 0.19, 0.82, promoted=False)], method="dpo") for s in range(2)]
    rows = {r["recipe"]: r for r in method_table(good + flat)}
    sft, dpo = rows["--method sft"], rows["--method dpo --lr 0.0003"]
    assert sft["seeds"] == [0, 1, 2] and sft["gen_gain"]["mean"] == pytest.approx(0.13)
    assert sft["nu_rel_drop"]["mean"] == pytest.approx(0.375) and sft["target_met"]
    assert dpo["gen_gain"]["mean"] == 0 and not dpo["target_met"]  # nothing promoted: the start is shipped
    assert sft["by_category"]["two_objects"]["shipped"]["mean"] == pytest.approx(0.165)
    assert [m["mean"] for m in dpo["gen_by_round"]] == pytest.approx([0.19])  # the rejected round still shows
    md = markdown(list(rows.values()))
    assert "| `--method sft` | 3 | 20.0 -> 33.0 [" in md and "| yes |" in md and "| no |" in md
    assert "| `--method dpo --lr 0.0003` | 19.0 [19.0, 19.0] | - |" in md  # its runs stopped after round 1


def test_the_same_seed_twice_is_refused():
    with pytest.raises(ValueError, match="same seed twice"):
        method_table([result(0, [row(0, 0.2, 0.8)])] * 2)


def test_table_command(tmp_path):
    paths = []
    for s in range(2):
        p = tmp_path / f"sft-{s}.json"
        p.write_text(json.dumps(result(s, [row(0, 0.2, 0.8), row(1, 0.22, 0.75)])))
        paths.append(str(p))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "unigap",
            "table",
            *paths,
            "--markdown",
            str(tmp_path / "t.md"),
            "--json",
            str(tmp_path / "t.json"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--method sft" in (tmp_path / "t.md").read_text()
    assert json.loads((tmp_path / "t.json").read_text())["rows"][0]["seeds"] == [0, 1]
    (tmp_path / "bad.json").write_text(json.dumps({"rounds": []}))
    bad = subprocess.run(
        [sys.executable, "-m", "unigap", "table", str(tmp_path / "bad.json")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "not a `unigap loop --json` result" in bad.stderr and "Traceback" not in bad.stderr


def test_the_docs_first_flags_put_back_every_first_default():
    """The first recipes are named by their flags against $FIRST (docs/findings.md): those flags must
    set every setting whose default changed back to its first default, or they would name other recipes."""
    import shlex
    from pathlib import Path

    import typer

    from unigap import cli
    from unigap.config import FIRST

    line = next(
        l
        for l in (Path(__file__).parents[2] / "docs" / "findings.md").read_text().splitlines()
        if l.startswith('FIRST="')
    )
    loop = typer.main.get_command(cli.app).commands["loop"]
    params = loop.make_context("loop", shlex.split(line.split("=", 1)[1].strip('"'))).params
    first = {**{k: v for k, v in FIRST.items() if k != "train"}, **FIRST["train"]}
    assert {k: params[k] for k in first} == first
