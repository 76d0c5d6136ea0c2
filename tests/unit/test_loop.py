"""The loop end to end on a tiny random model: rounds, JSON shape, resume after a kill."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from test_cli import run as unigap

from unigap.store import LocalStore
from unigap.store import records as rec
from unigap.store.base import is_ref

POOL = ["a red circle", "two blue squares", "a green circle left of a red square"]
FAST = ["--n", "2", "--eval-n", "2", "--eval-per-category", "1", "--epochs", "2"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, tiny_random):
    path = tmp_path_factory.mktemp("model") / "tiny"
    tiny_random.save(path)
    pool = path.parent / "pool.txt"
    pool.write_text("\n".join(POOL) + "\n")
    return path, pool


def loop_cmd(model, pool, store, *extra):
    return [
        sys.executable,
        "-m",
        "unigap",
        "loop",
        "--model",
        str(model),
        "--pool",
        str(pool),
        "--store",
        str(store),
        *FAST,
        *extra,
    ]


@pytest.mark.parametrize("method", ["sft", "dpo", "c-sft", "c-dpo"])
def test_loop_rounds_json(tiny_model, tmp_path, method):
    model, pool = tiny_model
    out = tmp_path / "loop.json"
    proc = subprocess.run(
        loop_cmd(model, pool, tmp_path / "store", "--rounds", "2", "--method", method, "--json", str(out)),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    rounds = result["rounds"]
    assert result["sampler"] == "counter-gumbel"  # docs/results.md tells runs of another noise apart by it
    assert [r["round"] for r in rounds] == [0, 1, 2]
    for r in rounds:
        for key in ("round", "nu", "gen_acc", "und_acc", "win_rate", "promoted", "n_sft", "n_pairs", "n_discard"):
            assert key in r
    assert rounds[1]["n_sft"] + rounds[1]["n_discard"] > 0
    if rounds[1]["promoted"] is False:
        assert rounds[1]["reasons"]  # a rejected round says why


def test_kill_mid_round_and_resume(tiny_model, tmp_path):
    model, pool = tiny_model
    store = tmp_path / "store"
    cmd = loop_cmd(model, pool, store, "--rounds", "1", "--json", str(tmp_path / "a.json"))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    st = LocalStore(store)
    deadline = time.time() + 300
    progress = None
    while time.time() < deadline:  # kill once round 1 has finished a step but not the round
        keys = [k for k in st.list_records("runs/") if k.endswith("round-1/progress.json")]
        if keys:
            progress = rec.get_record_json(st, keys[0])
            if progress and "candidates" in progress:
                break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert progress and "candidates" in progress, "the run never reached round 1"
    run = keys[0].rsplit("/round-1", 1)[0]
    assert rec.get_record_json(st, f"{run}/round-1/manifest.json") is None  # killed before the round ended
    # A kill mid-write leaves at most hidden temporaries (".<name>.<random>") beside what they were to become:
    # never a visible object or record; every visible record is whole JSON (objects: checked below).
    for tmp in (p for p in store.rglob(".*") if p.is_file()):
        target = tmp.name[1:].rsplit(".", 1)[0]
        if tmp.parent.parent.name == "objects":
            assert is_ref(target) and tmp.parent.name == target[:2], tmp
    for key in st.list_records(""):
        assert not key.rsplit("/", 1)[-1].startswith(".") and json.loads(st.get_record(key)) is not None, key
    for sha_dir in (store / "objects").iterdir():  # every object is whole: its name is its checksum
        for obj in sha_dir.iterdir():
            if not obj.name.startswith("."):
                st.get_object(obj.name)

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    after = rec.get_record_json(st, f"{run}/round-1/progress.json")
    assert after["candidates"] == progress["candidates"]  # not recomputed
    resumed = json.loads((tmp_path / "a.json").read_text())["rounds"]

    fresh = subprocess.run(
        loop_cmd(model, pool, tmp_path / "fresh", "--rounds", "1", "--json", str(tmp_path / "b.json")),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert fresh.returncode == 0
    uninterrupted = json.loads((tmp_path / "b.json").read_text())["rounds"]
    for a, b in zip(resumed, uninterrupted):
        assert a["nu"] == b["nu"] and a["gen_acc"] == b["gen_acc"] and a["n_sft"] == b["n_sft"]


def test_loop_bad_input(tiny_model, tmp_path):
    model, pool = tiny_model
    blocker = tmp_path / "file"
    blocker.write_text("x")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    cases = [
        (["--method", "ppo"], "--method"),
        (["--rounds", "0"], "--rounds"),
        (["--store", str(blocker / "store")], "cannot be created"),
    ]
    for extra, words in cases:
        cmd = loop_cmd(model, pool, tmp_path / "s", *extra)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and words in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    proc = subprocess.run(loop_cmd(model, empty, tmp_path / "s"), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no prompts" in proc.stderr


@pytest.mark.parametrize("warm", [False, True])
def test_restart_trains_the_start_on_every_rounds_candidates(tiny_model, tmp_path, warm):
    """--restart (STaR): round 2 fine-tunes the starting model, not round 1's, on the candidates of
    rounds 1 and 2 together (with --warm: the last promoted model, on the same rows); --val-n and
    --val-pairs size the gate's val sample."""
    from unigap.train.data import concat_candidates, get_candidates, get_round_data, split_candidates

    model, pool = tiny_model
    store = tmp_path / "store"
    out = tmp_path / "loop.json"
    every_accept = [
        "--max-per-prompt",
        "0",
        "--no-balance",
        "--focus",
        "1",
        "--threshold",
        "1e-9",
    ]  # the rows: every candidate
    proc = subprocess.run(
        loop_cmd(
            model,
            pool,
            store,
            "--rounds",
            "2",
            "--restart",
            "--val-n",
            "3",
            "--val-pairs",
            "2",
            "--lr",
            "1e-2",
            *every_accept,
            "--warm" if warm else "--no-warm",
            "--json",
            str(out),
        ),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    st = LocalStore(store)
    run = next(k for k in st.list_records("runs/") if k.endswith("round-2/manifest.json")).rsplit("/round-2", 1)[0]
    one, two = (rec.get_record_json(st, f"{run}/round-{r}/manifest.json") for r in (1, 2))
    start = one["base"]
    assert two["base"] == (one["checkpoint"] if one["promoted"] else start)  # candidates still come from the head
    assert one["trained_from"] == start and two["trained_from"] == (two["base"] if warm else start)
    if warm:
        return  # the rows are the same as without --warm: checked below (which model trains: below)

    first, second = get_candidates(st, one["candidates"]), get_candidates(st, two["candidates"])
    both = concat_candidates([first, second])
    assert len(both.prompts) == 2 * 2 * len(POOL)  # --n 2, two rounds
    expected = split_candidates(both)  # every accepted candidate of both rounds
    got = get_round_data(st, two["data"])
    assert len(got.sft) == len(expected.sft) > len(split_candidates(second).sft)  # round 1's accepted ones too
    for (p, t), (q, u) in zip(got.sft, expected.sft):
        assert p == q and (t == u).all()
    val = rec.get_json(st, one["eval"])["val"]
    assert val["n_images"] == 3 * val["n_prompts"]

    # The audit of the run's training data: every candidate and SFT row checked.
    audit = tmp_path / "audit.json"
    proc = subprocess.run(
        [sys.executable, "-m", "unigap", "audit", str(out), "--store", str(store), "--json", str(audit)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    audited = json.loads(audit.read_text())["rounds"]
    assert [a["round"] for a in audited] == [1, 2]
    assert audited[1]["candidates"]["all"]["images"] == 2 * len(POOL)  # round 2's own candidates, --n 2
    assert audited[1]["sft"]["all"]["rows"] == len(got.sft)  # its SFT rows: both rounds' (restart)
    # Every round's held-out prompts against its head's, round 1's head being the starting model
    # (its evaluation is the run's round 0, kept apart under baselines/).
    moved = [sum(g["prompts"] for g in a["change_by_rows"]) for a in audited]
    assert moved[0] == moved[1] > 0
    assert all("nu_change_before" in g for g in audited[1]["change_by_rows"]) == (
        two["base"] != start
    )  # round 2 has a head before its head only if round 1 was promoted
    assert not any("nu_change_before" in g for g in audited[0]["change_by_rows"])  # the start has no head before it
    # The judge on each model's own held-out images: the run's JSON says what share it accepted.
    result = json.loads(out.read_text())["rounds"]
    judged = [audited[0]["judge_on_own_start"]] + [a["judge_on_own"] for a in audited]
    assert [j["accepted"] for j in judged] == pytest.approx([1 - r["nu"] for r in result])
    assert "The judge on each model's own held-out images" in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "unigap", "audit", str(out), "--store", str(tmp_path / "empty")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "holds no finished round" in proc.stderr

    # Co-improvement as the paper measures it: the served model's judge against the start's on the start's
    # held-out images. The start's judge agrees with the evaluator as the run's round 0 says.
    co = tmp_path / "co.json"
    proc = unigap("co-improvement", str(out), "--store", str(store), "--json", str(co))
    assert proc.returncode == 0, proc.stderr[-2000:]
    c = json.loads(co.read_text())
    promoted = [r["round"] for r in result if r["promoted"]]
    assert c["final_round"] == promoted[-1] and c["final"] == result[promoted[-1]]["checkpoint"]
    assert c["agreement_old"] == pytest.approx(result[0]["und_acc_own"])
    assert c["n_disagree"] == len(c["disagreements"]) and (c["win_rate"] is None) == (c["n_disagree"] == 0)
    if c["n_disagree"]:  # the new judge's gain in agreement is what it wins over what it loses
        gain = (2 * c["win_rate"] - 1) * c["n_disagree"] / c["n_images"]
        assert c["agreement_new"] - c["agreement_old"] == pytest.approx(gain)
    # --round 1: round 1's model, promoted or not, against the start: what the round's own win rate measured
    proc = unigap("co-improvement", str(out), "--store", str(store), "--round", "1", "--json", str(co))
    assert proc.returncode == 0, proc.stderr[-2000:]
    c = json.loads(co.read_text())
    assert (c["final"], c["final_promoted"]) == (result[1]["checkpoint"], result[1]["promoted"])
    assert (c["win_rate"], c["n_disagree"]) == (result[1]["win_rate"], result[1]["n_disagree"])
    proc = unigap("co-improvement", str(out), "--store", str(store), "--round", "3")
    assert proc.returncode == 2 and "no round 3 (rounds 1-2)" in proc.stderr


def test_gate_fresh_val_measures_the_incumbent_again(tiny_model, tmp_path):
    """--gate-fresh-val: the gate compares the incumbent and the round's model on a val sample of
    the round's own seed, both evaluated then, and the JSON shows what it compared."""
    model, pool = tiny_model
    store, out = tmp_path / "store", tmp_path / "loop.json"
    proc = subprocess.run(
        loop_cmd(
            model,
            pool,
            store,
            "--rounds",
            "1",
            "--val-n",
            "3",
            "--lr",
            "1e-2",
            "--threshold",
            "1e-100",
            "--gate-fresh-val",
            "--json",
            str(out),
        ),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    zero, one = json.loads(out.read_text())["rounds"]
    assert "gate_val" not in zero
    # One threshold for every evaluation: the held-out and val figures judge at --threshold too.
    assert zero["nu"] == 0.0
    old, new = one["gate_val"]["old"], one["gate_val"]["new"]
    assert (
        old["diversity"] != zero["val"]["diversity"]
    )  # the start model again, on other seeds than its stored evaluation
    st = LocalStore(store)
    manifest = rec.get_record_json(st, next(k for k in st.list_records("runs/") if k.endswith("round-1/manifest.json")))
    sample = rec.get_json(st, manifest["gate_eval"])
    assert sample["old"]["n_images"] == sample["new"]["n_images"] == 3 * sample["old"]["n_prompts"]  # --val-n 3
    nu_fell = new["nu"] < old["nu"]
    assert one["promoted"] == (nu_fell and not one["reasons"])
    if not nu_fell:
        assert f"val NU did not fall ({old['nu']:.3f} -> {new['nu']:.3f})" in one["reasons"]


def test_rendered_understanding_pairs_per_prompt(tiny_random):
    """The gate's understanding sample: per_prompt pairs (a render and a negative's) per prompt."""
    from unigap import world
    from unigap.evaluate import make_judge, rendered_understanding

    judge = make_judge(tiny_random, "likelihood", 0.5)
    specs = world.split("val")[:3]
    one, three = rendered_understanding(judge, specs, 7), rendered_understanding(judge, specs, 7, per_prompt=3)
    assert one.shape == (6,) and three.shape == (18,)


def test_understanding_by_negative_tells_a_binding_judge_from_a_bag_of_features(tiny_random):
    """Per kind of negative, a judge that reads the scene exactly is right on every pair; one that
    only checks which colours and shapes appear passes colour and shape edits and is at chance on
    swaps and relations (which keep them)."""
    from types import SimpleNamespace

    import numpy as np

    from unigap import world
    from unigap.evaluate import understanding_by_negative

    def judge_by(rule):
        def score(images, prompts):
            return SimpleNamespace(decision=np.array([rule(im, world.parse(p)) for im, p in zip(images, prompts)]))

        return SimpleNamespace(image_size=32, score=score)

    specs = [s for s in world.split("val") if s.category == "two_objects"][:6]
    exact = understanding_by_negative(judge_by(lambda im, spec: bool(world.evaluate_batch(im[None], [spec])[0])), specs)
    assert {k for k in exact} == {"colour", "shape", "relation", "swap", "every kind alike", "order"}
    assert all(v["acc"] == 1.0 for v in exact.values()) and exact["every kind alike"]["n_pairs"] == 6 * 4
    assert exact["order"]["n_pairs"] == 6

    def colours_in(image):  # palette colours covering a few pixels: a bag of features, no places, no shapes
        px = image.reshape(-1, 1, 3).astype(int)
        near = np.abs(px - np.array(list(world.PALETTE.values()))[None]).sum(-1) < 60
        return {c for c, n in zip(world.PALETTE, near.sum(0)) if n >= 4}

    bag = understanding_by_negative(
        judge_by(lambda im, spec: colours_in(im) == {o.colour for o in spec.objects}), specs
    )
    assert bag["colour"]["acc"] == 1.0
    assert bag["shape"]["acc"] == bag["swap"]["acc"] == bag["relation"]["acc"] == bag["order"]["acc"] == 0.5

    def axis_of(image):  # where the two colours' pixels lie apart most: an axis, not an order
        ys, xs = np.nonzero(np.abs(image.astype(int) - 255).sum(-1) > 60)
        return "left of" if np.ptp(xs) > np.ptp(ys) else "above"

    def same_axis(relation):
        return "left of" if relation in ("left of", "right of") else "above"

    axis = understanding_by_negative(judge_by(lambda im, spec: axis_of(im) == same_axis(spec.relation)), specs)
    assert axis["relation"]["acc"] > 0.75 and axis["order"]["acc"] == 0.5  # the axis passes two edits in three


def test_named_pools_are_their_splits_texts(tmp_path):
    """A named pool is its splits' texts in the order named (so a file of the same texts, in the
    same order, is the same run); a name that is neither a pool nor a file is refused by name."""
    from unigap import world
    from unigap.config import LoopConfig
    from unigap.loop import pool_texts

    def texts(split):
        return [s.text for s in world.split(split)]

    assert pool_texts("train+heldout") == texts("train") + texts("heldout")
    assert pool_texts("heldout+val") == texts("heldout") + texts("val")
    assert not set(pool_texts("heldout+val")) & set(texts("train") + texts("novel"))
    # the default pool never holds a text the default run reports
    assert LoopConfig().pool == "pool+val" and LoopConfig().eval_prompts == "test"
    assert pool_texts("pool+val") == texts("pool") + texts("val")
    assert not set(pool_texts("pool+val")) & set(texts("test"))
    same = tmp_path / "pool.txt"
    same.write_text("\n".join(texts("heldout") + texts("val")) + "\n")
    assert pool_texts(str(same)) == pool_texts("heldout+val")
    with pytest.raises(ValueError, match="heldout\\+val"):
        pool_texts("val+heldout")


def test_restart_rounds_train_the_start_or_with_warm_the_head(tiny_model, tmp_path):
    """Which model a round trains (Loop.trains_from, what the round's TrainJob gets): the head
    without --restart, the start with --restart --no-warm (STaR), the head with --restart --warm."""
    from dataclasses import replace

    from unigap.config import LoopConfig
    from unigap.loop import Loop

    model, _ = tiny_model
    base = LoopConfig.from_dict({"pool": "train"})
    for restart, warm, trains in (
        (False, False, "head"),
        (False, True, "head"),
        (True, False, "start"),
        (True, True, "head"),
    ):
        loop = Loop(
            replace(base, restart=restart, warm=warm),
            LocalStore(tmp_path / "store"),
            tmp_path / "cache",
            model,
            progress=False,
        )
        assert loop.trains_from("head-ref") == {"head": "head-ref", "start": loop.start_ref}[trains], (restart, warm)
