"""Round data, losses and the local store: small hand-checked cases."""

import math

import numpy as np
import pytest
import torch

from unigap.store import CorruptObjectError, LocalStore, StoreError
from unigap.store import records as rec
from unigap.train.data import Candidates, split_candidates
from unigap.train.losses import dpo_loss, kl_anchor, sft_loss


def test_split_candidates():
    prompts = ["a"] * 3 + ["b"] * 3 + ["c"] * 2
    tokens = np.arange(8)[:, None].repeat(4, 1)
    p_yes = np.array([0.9, 0.6, 0.2, 0.1, 0.3, 0.05, 0.7, 0.8])
    accepted = p_yes >= 0.5
    d = split_candidates(Candidates(prompts, tokens, p_yes, accepted))
    assert [(p, int(t[0])) for p, t in d.sft] == [("a", 0), ("a", 1), ("c", 6), ("c", 7)]
    assert [(p, int(w[0]), int(l[0])) for p, w, l in d.pairs] == [("a", 0, 2)]  # best accepted vs worst rejected
    assert d.discard == ["b"]


def test_dpo_loss_values():
    z = torch.zeros(2)
    loss, margin = dpo_loss(z, z, z, z, beta=0.1)
    assert loss.item() == pytest.approx(math.log(2))
    loss, margin = dpo_loss(
        torch.tensor([-10.0]), torch.tensor([-20.0]), torch.tensor([-12.0]), torch.tensor([-18.0]), beta=0.5
    )
    # policy margin 10, reference margin 6 -> beta * 4 = 2
    assert margin.item() == pytest.approx(2.0)
    assert loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-2))))


def test_sft_and_kl():
    lp = torch.log(torch.tensor([[0.5, 0.25]]))
    assert sft_loss(lp).item() == pytest.approx(-(math.log(0.5) + math.log(0.25)) / 2)
    assert kl_anchor(lp, lp).item() == pytest.approx(0.0)
    assert kl_anchor(lp, lp - 1).item() > 0


def test_local_store_objects_records_and_corruption(tmp_path):
    st = LocalStore(tmp_path / "s")
    sha = st.put_object(b"hello")
    assert st.put_object(b"hello") == sha and st.get_object(sha) == b"hello" and st.has_object(sha)
    with pytest.raises(KeyError, match="not in the store"):
        st.get_object("0" * 64)
    path = tmp_path / "s" / "objects" / sha[:2] / sha
    path.write_bytes(b"hellO")
    with pytest.raises(CorruptObjectError, match=sha):
        st.get_object(sha)
    rec.put_record_json(st, "runs/x/round-1/manifest.json", {"a": 1})
    assert rec.get_record_json(st, "runs/x/round-1/manifest.json") == {"a": 1}
    assert rec.get_record_json(st, "runs/x/missing.json") is None
    assert st.list_records("runs/x") == ["runs/x/round-1/manifest.json"]
    ref = rec.put_arrays(st, a=np.arange(3), b=np.array(["x", "y"]))
    back = rec.get_arrays(st, ref)
    assert back["a"].tolist() == [0, 1, 2] and back["b"].tolist() == ["x", "y"]


def test_checkpoint_round_trip(tmp_path):
    st = LocalStore(tmp_path / "s")
    src = tmp_path / "ckpt"
    src.mkdir()
    (src / "config.json").write_text("{}")
    (src / "model.safetensors").write_bytes(b"\0" * 100)
    ref = rec.put_checkpoint(st, src)
    out = rec.fetch_checkpoint(st, ref, tmp_path / "cache")
    assert (out / "model.safetensors").read_bytes() == b"\0" * 100
    assert rec.fetch_checkpoint(st, ref, tmp_path / "cache") == out


def test_store_that_cannot_be_created(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="cannot be created"):
        LocalStore(blocker / "store")


def test_split_candidates_caps_accepted_per_prompt():
    prompts = ["a"] * 4
    p_yes = np.array([0.6, 0.9, 0.7, 0.2])
    d = split_candidates(Candidates(prompts, np.arange(4)[:, None], p_yes, p_yes >= 0.5), max_per_prompt=2)
    assert [int(t[0]) for _, t in d.sft] == [1, 2]  # the two the judge is surest of
    assert [(int(w[0]), int(l[0])) for _, w, l in d.pairs] == [(1, 3)]


def test_split_candidates_balances_prompts():
    # "easy": 4 of 4 accepted; "hard": 1 of 4; "none": 0 of 4. Balanced to 3 rows per prompt.
    prompts = ["easy"] * 4 + ["hard"] * 4 + ["none"] * 4
    p_yes = np.array([0.9, 0.8, 0.7, 0.6, 0.1, 0.7, 0.2, 0.3, 0.1, 0.1, 0.2, 0.3])
    d = split_candidates(
        Candidates(prompts, np.arange(12)[:, None], p_yes, p_yes >= 0.5), max_per_prompt=3, balance=True
    )
    assert [(p, int(t[0])) for p, t in d.sft] == [
        ("easy", 0),
        ("easy", 1),
        ("easy", 2),
        ("hard", 5),
        ("hard", 5),
        ("hard", 5),
    ]
    assert d.discard == ["none"]
    two = split_candidates(
        Candidates(prompts[:8], np.arange(8)[:, None], p_yes[:8], np.array([0, 1, 1, 0, 1, 1, 0, 0], bool)), 3, True
    )
    assert [int(t[0]) for _, t in two.sft] == [1, 2, 1, 5, 4, 5]  # cycles best first
    with pytest.raises(ValueError, match="max_per_prompt"):
        split_candidates(Candidates(prompts, np.arange(12)[:, None], p_yes, p_yes >= 0.5), balance=True)


def test_split_candidates_focuses_on_failing_prompts():
    # Acceptance rates: "easy" 4/4, "half" 2/4, "hard" 1/4. With focus 0.5, "easy" gives its best only.
    prompts = ["easy"] * 4 + ["half"] * 4 + ["hard"] * 4
    p_yes = np.array([0.9, 0.8, 0.7, 0.6, 0.9, 0.8, 0.2, 0.1, 0.6, 0.1, 0.2, 0.3])
    c = Candidates(prompts, np.arange(12)[:, None], p_yes, p_yes >= 0.5)
    d = split_candidates(c, max_per_prompt=2, balance=True, focus=0.5)
    assert [(p, int(t[0])) for p, t in d.sft] == [("easy", 0), ("half", 4), ("half", 5), ("hard", 8), ("hard", 8)]
    assert len(d.pairs) == 2 and d.discard == []  # DPO pairs and the discard pool are not focused
    assert [int(t[0]) for _, t in split_candidates(c, focus=0.25).sft] == [0, 4, 8]
    # solved_rows: what a prompt above focus gives; 0 drops it (the generation replay holds it).
    dropped = split_candidates(c, max_per_prompt=2, balance=True, focus=0.5, solved_rows=0)
    assert [(p, int(t[0])) for p, t in dropped.sft] == [("half", 4), ("half", 5), ("hard", 8), ("hard", 8)]
    assert [int(t[0]) for _, t in split_candidates(c, max_per_prompt=2, focus=0.5, solved_rows=2).sft] == [
        0,
        1,
        4,
        5,
        8,
    ]
    with pytest.raises(ValueError, match="focus"):
        split_candidates(c, focus=0)
    with pytest.raises(ValueError, match="solved_rows"):
        split_candidates(c, focus=0.5, solved_rows=-1)


def test_split_candidates_drops_rarely_accepted_prompts():
    # Acceptance rates as above: "easy" 4/4, "half" 2/4, "hard" 1/4. Below 0.5, "hard" gives no rows.
    prompts = ["easy"] * 4 + ["half"] * 4 + ["hard"] * 4
    p_yes = np.array([0.9, 0.8, 0.7, 0.6, 0.9, 0.8, 0.2, 0.1, 0.6, 0.1, 0.2, 0.3])
    c = Candidates(prompts, np.arange(12)[:, None], p_yes, p_yes >= 0.5)
    d = split_candidates(c, max_per_prompt=2, balance=True, focus=0.75, min_accept_rate=0.5)
    assert [(p, int(t[0])) for p, t in d.sft] == [("easy", 0), ("half", 4), ("half", 5)]  # 2 of 4 is not below 0.5
    assert [p for p, _, _ in d.pairs] == ["half", "hard"] and d.discard == []  # DPO pairs and the discard pool keep it
    assert [int(t[0]) for _, t in split_candidates(c, min_accept_rate=0.25).sft] == [0, 1, 2, 3, 4, 5, 8]
    with pytest.raises(ValueError, match="min_accept_rate"):
        split_candidates(c, min_accept_rate=1)


def test_lr_schedule():
    from unigap.train.trainer import lr_factor

    assert lr_factor(0, 100) == pytest.approx(0.1)  # warm-up over the first tenth
    assert lr_factor(9, 100) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.09)))
    assert lr_factor(50, 100) == pytest.approx(0.5)
    assert 0 < lr_factor(99, 100) < 0.01
    assert lr_factor(100, 100) == 0.0


def test_curriculum_samples_are_trained_at_a_live_rate(tiny_random, monkeypatch):
    """Samples the curriculum adds before epoch 2 must not fall past the end of the schedule."""
    import copy

    from support.trainer_settings import first_train

    from unigap.model.adapter import UnifiedModel
    from unigap.train import trainer

    rates = []
    real = trainer.update
    monkeypatch.setattr(
        trainer, "update", lambda loss, opt, params, lr: (rates.append(lr), real(loss, opt, params, lr))
    )
    um = UnifiedModel(copy.deepcopy(tiny_random.model), tiny_random.processor)
    rng = np.random.default_rng(0)
    first = [("a red circle", rng.integers(0, 64, 64)) for _ in range(4)]
    more = [("two blue squares", rng.integers(0, 64, 64)) for _ in range(8)]
    trainer.train_sft(um, first, first_train(epochs=2, batch=4), on_epoch=lambda e: more, progress=False)
    assert len(rates) == 1 + 3  # epoch 1: one batch; epoch 2: three batches with the replayed samples
    assert all(r > 0 for r in rates)


def test_lora_trains_a_low_rank_change_of_the_lm_and_merges_it(tiny_random, tmp_path):
    """--lora-rank: only the LM's projections move, each by a change of rank <= r, and what is
    left afterwards is a plain Janus (no adapter weights) that saves and loads like any other."""
    import copy

    from support.trainer_settings import first_train

    from unigap.model.adapter import UnifiedModel
    from unigap.train.trainer import train_sft

    um = UnifiedModel(copy.deepcopy(tiny_random.model), tiny_random.processor)
    before = {k: v.clone() for k, v in um.model.state_dict().items()}
    rng = np.random.default_rng(0)
    samples = [("a red circle", rng.integers(0, 64, 64)) for _ in range(8)]
    torch.manual_seed(0)
    train_sft(um, samples, first_train(epochs=2, batch=4, lr=1e-2, lora_rank=2), progress=False)
    after = um.model.state_dict()
    assert set(after) == set(before)  # merged: no lora_A / lora_B left
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith("model.language_model.") and k.endswith("proj.weight") for k in moved)
    for k in moved:
        assert torch.linalg.matrix_rank((after[k] - before[k]).double(), atol=1e-6) <= 2
    um.save(tmp_path / "m")
    back = UnifiedModel.load(tmp_path / "m")
    assert all(torch.equal(back.model.state_dict()[k], after[k]) for k in after)


def test_dpo_with_the_reference_run_in_each_step_trains_as_with_precomputed_log_probs(tiny_random):
    import copy

    from support.trainer_settings import first_train

    from unigap.model.adapter import UnifiedModel
    from unigap.train.trainer import sequence_logps, train_dpo

    rng = np.random.default_rng(0)
    pairs = [("a red circle", rng.integers(0, 64, 64), rng.integers(0, 64, 64)) for _ in range(6)]
    prompts = [p for p, _, _ in pairs]
    ref = UnifiedModel(copy.deepcopy(tiny_random.model), tiny_random.processor)
    cfg = first_train(epochs=2, batch=3, lr=1e-3)
    a, b = (UnifiedModel(copy.deepcopy(tiny_random.model), tiny_random.processor) for _ in range(2))
    log_a = train_dpo(
        a,
        pairs,
        sequence_logps(ref, prompts, np.array([w for _, w, _ in pairs])),
        sequence_logps(ref, prompts, np.array([x for _, _, x in pairs])),
        cfg,
        progress=False,
    )
    log_b = train_dpo(b, pairs, None, None, cfg, progress=False, reference=ref)
    assert [round(x["loss"], 5) for x in log_a] == [round(x["loss"], 5) for x in log_b]
    with pytest.raises(ValueError, match="reference"):
        train_dpo(b, pairs, None, None, cfg, progress=False)


def test_understanding_anchor_is_a_kl_between_caption_distributions():
    from unigap.train.losses import understanding_anchor

    a = [torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([-5.0, -5.0])]
    assert understanding_anchor(a, a).item() == pytest.approx(0.0, abs=1e-7)
    shifted = [x + 3.0 for x in a]  # the same distributions: only the normaliser differs
    assert understanding_anchor(shifted, a).item() == pytest.approx(0.0, abs=1e-6)
    other = [torch.tensor([-3.0, -2.0, -1.0]), torch.tensor([-5.0, -5.0])]
    p, q = torch.softmax(a[0], 0), torch.softmax(other[0], 0)
    assert understanding_anchor(other, a).item() == pytest.approx(((p * (p / q).log()).sum() / 2).item(), rel=1e-5)


def test_the_understanding_anchor_holds_the_judge_while_generation_trains(tiny_random):
    """The same hard SFT moves the judge's caption distributions on the trained images far less
    with the anchor on. The SFT must move the judge for this to mean anything: at lr 3e-3 the
    drift was so small (0.016) that the anchor's own step noise decided the outcome, and a
    change of environment flipped it; at lr 1e-2 the drift is 0.08 and the anchor cuts it ~6x."""
    import copy

    from support.trainer_settings import first_train

    from unigap.model.adapter import UnifiedModel
    from unigap.train.round import regulariser, understanding_anchor_loss
    from unigap.train.trainer import train_sft

    rng = np.random.default_rng(0)
    prompts = ["a red circle", "two blue squares", "a green circle left of a red square", "a blue triangle"]
    samples = [(p, rng.integers(0, 64, 64)) for p in prompts for _ in range(2)]
    reference = UnifiedModel(copy.deepcopy(tiny_random.model), tiny_random.processor)
    drift = {}
    tokens = torch.as_tensor(np.stack([t for _, t in samples]))
    for weight in (0.0, 1.0):
        um = UnifiedModel(copy.deepcopy(tiny_random.model), tiny_random.processor)
        cfg = first_train(epochs=4, batch=4, lr=1e-2, und_anchor=weight)
        train_sft(um, samples, cfg, progress=False, anchor=regulariser(um, reference, cfg))
        with torch.no_grad():
            drift[weight] = understanding_anchor_loss(um, reference)([p for p, _ in samples], tokens).item()
    assert drift[1.0] < 0.5 * drift[0.0], drift
    with pytest.raises(ValueError, match="need an anchor"):  # a weight with nothing to weigh is refused, not ignored
        train_sft(um, samples, first_train(und_anchor=1.0), progress=False)
    with pytest.raises(ValueError, match="need an anchor"):
        train_sft(um, samples, first_train(und_replay=1.0), progress=False)


def test_the_generation_replay_trains_the_pretraining_generation_loss(tiny_random):
    """The generation replay is the pretraining generation loss on renders of `train` prompts drawn
    from the trained batch; with it on, the same hard SFT on other images leaves that loss (on a
    fixed batch of renders) lower than without it. A weight with no regulariser is refused."""
    import copy

    from support.trainer_settings import first_train

    from unigap.model.adapter import UnifiedModel
    from unigap.train.round import generation_replay_loss, regulariser
    from unigap.train.trainer import train_sft

    rng = np.random.default_rng(0)
    samples = [(p, rng.integers(0, 64, 64)) for p in ["a red circle", "two blue squares"] for _ in range(4)]
    a, b = (torch.as_tensor(np.stack([t for _, t in samples[i : i + 2]])) for i in (0, 4))
    with torch.no_grad():
        replay = generation_replay_loss(tiny_random, seed=3, batch=4)
        assert replay(["x"], a).item() == replay(["y"], a).item() != replay(["x"], b).item()
    after = {}
    for weight in (0.0, 1.0):
        um = UnifiedModel(copy.deepcopy(tiny_random.model), tiny_random.processor)
        cfg = first_train(epochs=4, batch=4, lr=1e-2, modules="lm+head", gen_replay=weight)
        train_sft(um, samples, cfg, progress=False, anchor=regulariser(um, None, cfg))
        with torch.no_grad():
            after[weight] = generation_replay_loss(um, seed=99, batch=8)(["x"], a).item()
    assert after[1.0] < after[0.0] - 0.3, after  # nats per image token; uniform over the codebook is 4.16
    with pytest.raises(ValueError, match="need an anchor"):
        train_sft(um, samples, first_train(gen_replay=1.0), progress=False)


def test_the_understanding_replay_teaches_the_reject_caption_on_flawed_renders(tiny_random):
    """With und_flawed, the replay captions flawed renders as showing no prompt: after the same
    SFT, the reject caption is likelier on flawed renders than without it."""
    import copy

    from support.trainer_settings import first_train

    from unigap import world
    from unigap.model.adapter import UnifiedModel
    from unigap.model.judge import CAPTION_QUESTION, REJECT_CAPTION
    from unigap.train.round import regulariser
    from unigap.train.trainer import train_sft

    rng = np.random.default_rng(0)
    samples = [(p, rng.integers(0, 64, 64)) for p in ["a red circle", "two blue squares"] for _ in range(4)]
    specs = [world.parse(t) for t in ("a red circle left of a blue square", "a green triangle", "two yellow circles")]
    flawed = np.stack([world.render_flawed(s, k, tiny_random.image_size)[0] for s in specs for k in range(2)])
    reject = {}
    for n in (0, 8):
        um = UnifiedModel(copy.deepcopy(tiny_random.model), tiny_random.processor)
        cfg = first_train(epochs=4, batch=4, lr=3e-3, und_replay=1.0, und_flawed=n)
        train_sft(um, samples, cfg, progress=False, anchor=regulariser(um, None, cfg))
        with torch.no_grad():
            reject[n] = (
                um.answer_logprobs(flawed, [CAPTION_QUESTION] * len(flawed), [REJECT_CAPTION] * len(flawed))
                .mean()
                .item()
            )
    assert reject[8] > reject[0] + 1.0, reject


def test_the_understanding_replay_trains_the_pretraining_understanding_loss(tiny_random):
    """The replay is the pretraining understanding loss on renders drawn from the trained batch:
    the same batch replays the same renders, another batch others; with it on, the same hard SFT
    leaves that loss (on a fixed batch of renders) lower than without it."""
    import copy

    from support.trainer_settings import first_train

    from unigap.model.adapter import UnifiedModel
    from unigap.train.round import regulariser, understanding_replay_loss
    from unigap.train.trainer import train_sft

    rng = np.random.default_rng(0)
    samples = [(p, rng.integers(0, 64, 64)) for p in ["a red circle", "two blue squares"] for _ in range(4)]
    a, b = (torch.as_tensor(np.stack([t for _, t in samples[i : i + 2]])) for i in (0, 4))
    with torch.no_grad():
        replay = understanding_replay_loss(tiny_random, seed=3)
        assert replay(["x"], a).item() == replay(["y"], a).item() != replay(["x"], b).item()
    after = {}
    for weight in (0.0, 1.0):
        um = UnifiedModel(copy.deepcopy(tiny_random.model), tiny_random.processor)
        cfg = first_train(epochs=4, batch=4, lr=3e-3, und_replay=weight)
        train_sft(um, samples, cfg, progress=False, anchor=regulariser(um, None, cfg))
        with torch.no_grad():
            after[weight] = understanding_replay_loss(um, seed=99)(["x"], a).item()
    assert after[1.0] < 0.8 * after[0.0], after


def test_the_understanding_replay_captions_und_batch_renders_and_asks_yes_no_of_the_first(tiny_random, monkeypatch):
    """TrainConfig.und_batch sets the replay's renders per step (its cost): that many captions,
    plus YES_NO yes/no questions on the first of them."""
    from support.trainer_settings import first_train

    from unigap.config import YES_NO
    from unigap.model.judge import CAPTION_QUESTION
    from unigap.train.round import regulariser

    asked = []
    real = tiny_random.answer_token_logprobs
    monkeypatch.setattr(
        tiny_random,
        "answer_token_logprobs",
        lambda images, questions, answers: asked.append(questions) or real(images, questions, answers),
    )
    tokens = torch.as_tensor(np.random.default_rng(0).integers(0, 64, (2, 64)))
    for batch in (12, 32):
        with torch.no_grad():
            regulariser(tiny_random, None, first_train(und_replay=1.0, und_batch=batch))(["x", "y"], tokens)
        assert asked[-1].count(CAPTION_QUESTION) == batch and len(asked[-1]) == batch + YES_NO


def test_the_understanding_replay_every_k_joins_about_one_batch_in_k_at_k_times_its_loss(tiny_random, monkeypatch):
    """TrainConfig.und_every K: the replay runs on about one batch in K, chosen by the batch (the
    same batch always decides alike, as a resumed run needs), and weighs K times its loss there."""
    from support.trainer_settings import first_train

    from unigap.train import round as round_mod

    losses = []
    real = round_mod.understanding_loss
    monkeypatch.setattr(round_mod, "understanding_loss", lambda *a: losses.append(real(*a)) or losses[-1])
    replay = round_mod.regulariser(tiny_random, None, first_train(und_replay=1.0, und_every=3))
    rng = np.random.default_rng(0)
    batches = [torch.as_tensor(rng.integers(0, 64, (2, 64))) for _ in range(60)]
    with torch.no_grad():
        out = [replay(["x", "y"], t) for t in batches]
        again = [replay(["x", "y"], t) for t in batches[:10]]
    ran = [float(v) != 0 for v in out]
    assert 10 <= sum(ran) <= 30 and len(losses) == sum(ran) + sum(float(v) != 0 for v in again)
    assert [float(v) for v in out if float(v)] == pytest.approx([3 * float(v) for v in losses[: sum(ran)]])
    assert [float(v) for v in again] == [float(v) for v in out[:10]]


def test_run_key_ignores_settings_at_their_defaults():
    """The same command resumes the same run; a changed setting is another run; a setting added
    later at its default (a field of LoopConfig or TrainConfig) does not change old runs' keys."""
    from dataclasses import asdict, replace

    from unigap import config
    from unigap.config import LoopConfig

    base = LoopConfig.from_dict({"n": 32, "train": {"lr": 1e-3}})  # the first defaults, but for n and lr
    key = base.key("start", ["a red circle"])
    assert replace(base, rounds=9).key("start", ["a red circle"]) == key
    assert replace(base, train=replace(base.train, gen_replay=1.0)).key("start", ["a red circle"]) != key
    assert base.key("other start", ["a red circle"]) != key and base.key("start", ["a blue square"]) != key
    # Keyed against the first defaults: the fields at those drop out, whatever today's defaults are.
    first = LoopConfig.from_dict({})
    assert config._changed(asdict(first), config.first_defaults()) == {}
    assert config._changed(asdict(base), config.first_defaults()) == {"n": 32, "train": {"lr": 1e-3}}
    assert first.key("start", ["a red circle"]) != LoopConfig().key("start", ["a red circle"])


def test_a_result_written_before_a_setting_existed_reads_it_as_it_was_then():
    """A loop JSON or job record without a field means the field's first default, not today's:
    runs made before the demo-time recipe became the default read back as what they ran."""
    from dataclasses import asdict

    from unigap.config import FIRST, LoopConfig

    old = asdict(LoopConfig.from_dict({}))
    for field in ("pool", "n", "restart"):
        assert old[field] == FIRST[field] != asdict(LoopConfig())[field]
    restart_run = asdict(LoopConfig())
    del restart_run["warm"]  # a --restart run written before --warm existed trained from the start
    assert LoopConfig.from_dict(restart_run).warm is False and LoopConfig().warm is True
