"""The pretraining command end to end at toy size: it trains, saves, and resumes to the same model."""

import json
import math
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from unigap import world
from unigap.model.adapter import UnifiedModel
from unigap.model.build import TinySize
from unigap.pretrain import PretrainConfig, pretrain

SIZE = TinySize(hidden=64, layers=1, heads=2, vision_hidden=64, vision_layers=1, codebook=64)
CFG = PretrainConfig(batch=4, gen_batch=4, yes_no=2, vq_steps=2, und_steps=2, joint_steps=2, final_steps=2)


def test_pretrain_saves_a_loadable_model_and_resumes_identically(tmp_path):
    pretrain(tmp_path / "a", CFG, SIZE)
    assert (tmp_path / "a" / "stage-vq" / "weights.safetensors").is_file()
    assert (tmp_path / "a" / "stage-joint" / "weights.safetensors").is_file()
    um = UnifiedModel.load(tmp_path / "a")
    assert um.sample(["a red circle"], n=1, seed=0).images.shape == (1, 32, 32, 3)

    # A run interrupted after its joint stage: only the final stage is left to do.
    shutil.copytree(tmp_path / "a" / "stage-vq", tmp_path / "b" / "stage-vq")
    shutil.copytree(tmp_path / "a" / "stage-joint", tmp_path / "b" / "stage-joint")
    pretrain(tmp_path / "b", CFG, SIZE)
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_growing_depth_keeps_what_the_model_computes(tmp_path):
    from unigap.model.build import build_tiny
    from unigap.pretrain import grow, grow_depth, vocabulary

    model, processor = build_tiny(vocabulary(), SIZE, seed=0)
    um = UnifiedModel(model.eval(), processor)
    for p in um.model.parameters():  # away from the initialisation's zeros, so zeroed outputs are what is checked
        p.data.add_(0.01 * torch.randn_like(p))
    deep = grow_depth(um, 3)
    assert deep.model.config.text_config.num_hidden_layers == 3
    prompts = ["a red circle", "two blue squares"]
    tokens = um.sample(prompts, n=2, seed=1, decode=False).tokens
    rows = [prompts[i] for i in (0, 0, 1, 1)]
    assert torch.allclose(um.image_logprobs(rows, tokens), deep.image_logprobs(rows, tokens), atol=1e-5)
    q = ["Describe the image."] * 4
    images = um.decode(tokens)
    assert torch.allclose(um.answer_logprobs(images, q, rows), deep.answer_logprobs(images, q, rows), atol=1e-5)
    with pytest.raises(ValueError, match="multiple"):
        grow_depth(um, 0)
    same = grow_depth(um, 1)  # its own depth: the control for growing, the same model
    assert same.model.config.text_config.num_hidden_layers == 1
    assert torch.allclose(um.image_logprobs(rows, tokens), same.image_logprobs(rows, tokens))

    um.save(tmp_path / "start")
    paired = replace(CFG, paired_yes_no=True, adaptive_kinds=True)
    grow(tmp_path / "start", tmp_path / "grown", 2, 2, cfg=paired)
    grown = UnifiedModel.load(tmp_path / "grown")
    assert grown.model.config.text_config.num_hidden_layers == 2
    record = json.loads((tmp_path / "grown" / "grow.json").read_text())
    assert record["config"]["adaptive_kinds"] and set(record["log"][-1]["kind_error"]) == set(world.NEGATIVE_KINDS)


@pytest.mark.parametrize("paired", [False, True])
def test_the_yes_no_questions_of_an_understanding_batch(tiny_random, monkeypatch, paired):
    """The shipped recipe asks yes_no renders one question each, in rows of their own; paired_yes_no
    asks each of them its own prompt ("1") and a negative ("0"), packed behind the image with its
    caption, and sees `novel` prompts too."""
    from unigap.model.judge import CAPTION_QUESTION
    from unigap.pretrain import _streams, understanding_loss

    cfg = PretrainConfig(batch=10, yes_no=4, paired_yes_no=paired, recon_share=0.0)
    calls = []
    for name in ("answer_token_logprobs", "dialogue_token_logprobs"):
        real = getattr(tiny_random, name)
        monkeypatch.setattr(tiny_random, name, lambda *a, real=real, name=name: calls.append((name, a)) or real(*a))
    data = _streams(0, tiny_random.image_size, cfg)
    novel = {s.canonical() for s in world.split("novel")}
    assert any(s.canonical() in novel for specs in data.und.by_cat.values() for s in specs) == paired
    with torch.no_grad():
        loss = understanding_loss(tiny_random, data, cfg)
    assert torch.isfinite(loss)
    ((name, args),) = calls
    if not paired:
        images, questions, answers = args
        assert name == "answer_token_logprobs" and questions.count(CAPTION_QUESTION) == 10 and len(questions) == 14
        return
    images, turns, counts = args
    assert name == "dialogue_token_logprobs" and len(images) == 10 and counts == [3] * 4 + [1] * 6
    assert [q for q, _ in turns].count(CAPTION_QUESTION) == 10 and len(turns) == 18
    assert [a for q, a in turns if q != CAPTION_QUESTION] == ["The score is 1", "The score is 0"] * 4
    # the kinds asked took the NLL of their "no" answers into their running error (adaptive_kinds)
    assert any(error != math.log(2) for error in data.und.kind_error.values())


def test_paired_negatives_of_the_kinds_asked():
    """negative_kinds keeps the paired "no" questions to those kinds of edit; a prompt with none of
    them is contrasted with an unrelated prompt; a kind the world lacks, or the setting without
    paired questions, is refused by name."""
    from unigap.pretrain import Data

    data = Data(0, 32, ("train",))
    swap_or_shape = {
        s: {n.canonical() for k, n in world.negatives(s) if k in ("shape", "swap")}
        for specs in data.by_cat.values()
        for s in specs
    }
    for spec, allowed in list(swap_or_shape.items())[:200]:
        kind, other = data.negative_by_kind(spec, easy=0.0, kinds=("shape", "swap"))
        assert kind in ("shape", "swap") and other.canonical() in allowed
    (single,) = [s for s in world.split("train") if s.category == "single_object"][:1]
    kind, other = data.negative_by_kind(single, easy=0.0, kinds=("swap",))
    assert kind == "unrelated" and not set(other.objects) & set(single.objects)
    with pytest.raises(ValueError, match="unknown kind hue"):
        PretrainConfig(paired_yes_no=True, negative_kinds=("shape", "hue"))
    with pytest.raises(ValueError, match="--negative-kinds .* --paired-yes-no"):
        PretrainConfig(negative_kinds=("shape",))
    with pytest.raises(ValueError, match="--adaptive-kinds .* --paired-yes-no"):
        PretrainConfig(adaptive_kinds=True)


def test_order_is_asked_only_when_named():
    """The kind "order" asks a relation prompt reversed, in either wording (both mean the image's
    objects the other way round on the same axis); the default draws never ask it as a kind of its own."""
    from unigap.pretrain import Data

    data = Data(0, 32, ("train",))
    two = [s for s in world.split("train") if s.category == "two_objects"][:50]
    for spec in two:
        kind, other = data.negative_by_kind(spec, easy=0.0, kinds=("order",))
        assert kind == "order" and other.canonical() == world.reversed_order(spec).canonical()
        assert data.negative_by_kind(spec, easy=0.0)[0] in world.NEGATIVE_KINDS
    data.observe_kind_errors(["order", "unrelated"], np.array([0.1, 0.2]))
    assert "order" in data.kind_error and "unrelated" not in data.kind_error
    assert PretrainConfig(paired_yes_no=True, negative_kinds=("order",)).negative_kinds == ("order",)


def test_adaptive_kinds_ask_what_the_judge_fails():
    """adaptive_kinds draws a kind in proportion to its running error, which follows the NLL of
    that kind's "no" answers: a kind told apart is asked rarely, never not at all."""
    from collections import Counter

    from unigap.pretrain import KIND_ERROR_FLOOR, Data

    data = Data(0, 32, ("train",))
    two = next(s for s in world.split("train") if s.category == "two_objects")
    assert set(data.by_kind[two]) == {"colour", "shape", "relation", "swap", "order"}  # order only when named
    for _ in range(100):  # colour, shape and relation learnt; swap at chance
        data.observe_kind_errors(["colour", "shape", "relation", "swap"], np.array([0.0, 0.0, 0.0, 0.69]))
    assert data.kind_error["colour"] < 1e-4 and abs(data.kind_error["swap"] - 0.69) < 1e-3
    drawn = Counter(data.negative_by_kind(two, easy=0.0, adaptive=True)[0] for _ in range(2000))
    share = (0.69 + KIND_ERROR_FLOOR) / (0.69 + 4 * KIND_ERROR_FLOOR)  # swap's weight over all four
    assert abs(drawn["swap"] / 2000 - share) < 0.02 and drawn["colour"] > 0
    fixed = Counter(data.negative_by_kind(two, easy=0.0)[0] for _ in range(2000))
    assert abs(fixed["swap"] / 2000 - 3 / 8) < 0.04  # without it: the binding kinds three times as often
