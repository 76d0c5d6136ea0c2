"""The loop on free-text prompts with no external evaluator: candidates judged by the model's own
judge (probability mode), evaluation and gate on NU and diversity, the evaluator's figures and the
checks that need it or the shapes world's renders absent; bad input refused in one line."""

import json
import subprocess
import sys

import pytest
from test_cli import assert_one_line_error, run

POOL = ["a photo of a cat on a sofa", "two dogs playing in the snow", "a red bicycle leaning on a wall"]
EVAL = ['{"prompt": "a cat asleep on a chair", "category": "animals"}', '{"prompt": "a blue bicycle"}']
VAL = ["a dog in the snow", "a bowl of fruit"]
FAST = ["--n", "2", "--eval-n", "2", "--val-n", "2", "--val-pairs", "1", "--epochs", "2", "--rounds", "1"]
# A random model's p_yes sits just below 0.5: a low threshold makes its judge accept, so the round trains
# and the gate decides (at 0.5 it accepts nothing and the round keeps the model untrained).
JUDGE = ["--evaluator", "none", "--mode", "probability", "--threshold", "0.1"]
NO_REPLAY = ["--und-replay", "0", "--gen-replay", "0"]  # the replays are the shapes world's renders


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_random):
    folder = tmp_path_factory.mktemp("free-loop")
    tiny_random.save(folder / "tiny")
    for name, lines in (("pool.txt", POOL), ("eval.jsonl", EVAL), ("val.txt", VAL)):
        (folder / name).write_text("\n".join(lines) + "\n")
    return folder


def loop(files, store, *extra):
    args = ["loop", "--model", str(files / "tiny"), "--pool", str(files / "pool.txt"), "--store", str(store)]
    return [*args, "--eval-prompts", str(files / "eval.jsonl"), "--val-prompts", str(files / "val.txt"), *extra]


def test_one_round_on_free_text_without_an_evaluator(files, tmp_path):
    out = tmp_path / "loop.json"
    args = loop(files, tmp_path / "store", *FAST, *JUDGE, *NO_REPLAY, "--json", str(out))
    args += ["--report", str(tmp_path / "report")]
    proc = subprocess.run([sys.executable, "-m", "unigap", *args], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["config"]["evaluator"] == "none"
    start, first = result["rounds"]
    assert (start["round"], first["round"]) == (0, 1)
    assert first["n_sft"] + first["n_discard"] > 0  # the round sampled and judged the pool
    for row in (start, first):
        assert 0 <= row["nu"] <= 1 and 0 <= row["val"]["nu"] <= 1 and row["diversity"] >= 0
        assert row["gen_acc"] is None and row["und_acc"] is None and row["und_acc_own"] is None
        assert row["val"]["gen_acc"] is None and row["val"]["und_acc"] is None
        assert row["win_rate"] is None and row["by_category"] == {}
        assert "novel" not in row  # the world's novel split goes with the world's heldout only
    assert "gen -  und -" in proc.stdout  # absent figures are printed "-"
    assert (tmp_path / "report" / "gen_vs_und_per_round.png").stat().st_size > 0  # absent figures: no points
    assert_one_line_error(run("audit", str(out), "--store", str(tmp_path / "store")), "--evaluator none")
    assert first["n_sft"] > 0 and first["reasons"] != ["nothing was trained"]
    # The gate decided on val NU and diversity alone, and says which checks it could not run.
    absent = " ".join(first["gate_absent"])
    assert "val understanding" in absent and "val external accuracy" in absent and "none" in absent
    old, new = start["val"], first["val"]
    nu_fell, diverse = new["nu"] < old["nu"], new["diversity"] >= 0.7 * old["diversity"]
    assert any(r.startswith("val NU did not fall") for r in first["reasons"]) == (not nu_fell)
    assert any(r.startswith("diversity collapsed") for r in first["reasons"]) == (not diverse)
    assert len(first["reasons"]) == (not nu_fell) + (not diverse)
    assert first["promoted"] == (nu_fell and diverse)


def test_free_text_needs_a_judge_without_competing_captions(files, tmp_path):
    assert_one_line_error(run(*loop(files, tmp_path / "store", "--mode", "likelihood")), "pool.txt:1", "likelihood")
    # a model of one's own must not be trained on the shapes world's renders: the replays are refused
    free = run(*loop(files, tmp_path / "store", *JUDGE))
    assert_one_line_error(free, "is free text", "--und-replay and --gen-replay")
    world_pool = tmp_path / "world.txt"
    world_pool.write_text("a red circle\n")
    args = ["loop", "--model", str(files / "tiny"), "--pool", str(world_pool), "--store", str(tmp_path / "s")]
    assert_one_line_error(run(*args, "--val-prompts", str(files / "val.txt")), "--val-prompts", "likelihood")
    assert_one_line_error(run(*args, "--eval-prompts", str(tmp_path / "nope.txt")), "--eval-prompts", "no such file")
    assert_one_line_error(run(*args, "--evaluator", "nomodule_here:judge"), "nomodule_here")
    assert_one_line_error(run(*args, "--evaluator", "bogus"), "--evaluator")
    controls = ["controls", "--model", str(files / "tiny"), "--pool", str(files / "pool.txt")]
    assert_one_line_error(run(*controls), "pool.txt:1", "competing captions")  # its arms live in the shapes world


def test_an_edited_prompts_file_is_another_run_and_baseline(files, tmp_path):
    """Runs and their round-0 evaluation are keyed by the prompts files' texts, not their names."""
    from unigap.config import LoopConfig, TrainConfig
    from unigap.loop import Loop, baseline_record
    from unigap.store import LocalStore

    store, val = LocalStore(tmp_path / "store"), tmp_path / "val.txt"
    no_replay = TrainConfig(und_replay=0.0, gen_replay=0.0)
    cfg = LoopConfig(
        pool=str(files / "pool.txt"), judge_mode="probability", evaluator="none", val_prompts=str(val), train=no_replay
    )

    def keys(texts):
        val.write_text("\n".join(texts) + "\n")
        loop = Loop(cfg, store, tmp_path / "cache", files / "tiny", progress=False, log=lambda _: None)
        assert [p.text for p in loop.specs["val"]] == texts
        return loop.run, baseline_record(cfg, loop.start_ref)

    first = keys(VAL)
    assert keys(VAL) == first
    edited = keys([*VAL, "a kite over a beach"])
    assert edited[0] != first[0] and edited[1] != first[1]
    world_val = Loop(
        LoopConfig(pool=str(files / "pool.txt"), judge_mode="probability", eval_prompts="", train=no_replay),
        store,
        tmp_path / "cache",
        files / "tiny",
    )
    assert world_val.run not in (first[0], edited[0]) and "novel" in world_val.novel
