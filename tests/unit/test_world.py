"""Tests for the shapes world: grammar, splits, renderer and evaluator."""

from __future__ import annotations

import random
from collections import Counter, defaultdict

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from unigap.world import (
    CATEGORIES,
    NOVEL_OBJECTS,
    PALETTE,
    SPLIT_NAMES,
    Obj,
    Spec,
    all_specs,
    detect,
    evaluate,
    evaluate_batch,
    explain,
    failure,
    negatives,
    parse,
    render,
    render_batch,
    render_flawed,
    reversed_order,
    split,
)
from unigap.world import splits as splits_module

NEGATIVE_KINDS = ("colour", "shape", "position", "count", "relation", "swap")


def _sample(per_category: int, seed: int = 0) -> list[Spec]:
    """Up to `per_category` specs of every category, fixed by `seed`."""
    rng = random.Random(seed)
    out = []
    for c in CATEGORIES:
        specs = [s for s in all_specs() if s.category == c]
        out += rng.sample(specs, min(per_category, len(specs)))
    return out


def _degrade(images: np.ndarray, sigma: float = 0.6, noise: float = 12.0, seed: int = 0) -> np.ndarray:
    """Gaussian blur + pixel noise: a stand-in for VQ-decoded images."""
    f = ndimage.gaussian_filter(images.astype(np.float32), sigma=(0, sigma, sigma, 0))
    f += np.random.default_rng(seed).normal(0, noise, f.shape)
    return np.clip(np.rint(f), 0, 255).astype(np.uint8)


# --- grammar -----------------------------------------------------------------


def test_counts_per_category():
    counts = Counter(s.category for s in all_specs())
    # 12 objects; pairs need distinct colours (12 * 9 ordered pairs).
    assert counts == {
        "single_object": 12,
        "position": 48,
        "colour": 54,
        "two_objects": 432,
        "counting": 24,
    }
    assert len(set(all_specs())) == len(all_specs())
    assert all_specs() == all_specs()


def test_parse_round_trip():
    for s in all_specs():
        assert parse(s.text) == s
    assert parse("  Two   RED circles. ") == Spec("counting", (Obj("red", "circle"),), count=2)


@pytest.mark.parametrize(
    "text",
    ["", "a purple circle", "a red circle and a red square", "four red circles", "a red circles", "red circle"],
)
def test_parse_rejects_garbage(text):
    with pytest.raises(ValueError, match="grammar"):
        parse(text)


def test_texts_and_tiers():
    red, blue = Obj("red", "circle"), Obj("blue", "square")
    assert Spec("single_object", (red,)).tier == "easy"
    assert Spec("position", (red,), position="top").text == "a red circle at the top"
    assert Spec("colour", (red, blue)).text == "a red circle and a blue square"
    assert Spec("colour", (red, blue)).tier == "medium"
    assert Spec("counting", (blue,), count=3).text == "three blue squares"
    assert Spec("counting", (blue,), count=2).tier == "medium"
    assert Spec("counting", (blue,), count=3).tier == "hard"
    assert Spec("two_objects", (red, blue), relation="below").text == "a red circle below a blue square"


def test_equivalence():
    assert parse("a red circle left of a blue square").equivalent(parse("a blue square right of a red circle"))
    assert parse("a red circle above a blue square").equivalent(parse("a blue square below a red circle"))
    assert not parse("a red circle left of a blue square").equivalent(parse("a blue square left of a red circle"))
    assert parse("a blue square and a red circle").equivalent(parse("a red circle and a blue square"))


def test_negatives_are_valid_and_distinct():
    grammar = set(all_specs())
    kinds = Counter()
    for s in all_specs():
        negs = negatives(s)
        assert negs, s.text
        for kind, n in negs:
            kinds[kind] += 1
            assert n in grammar
            assert not n.equivalent(s)
        assert len({(k, n.canonical()) for k, n in negs}) == len(negs)
    assert set(kinds) == set(NEGATIVE_KINDS)
    labelled = {(k, n.text) for k, n in negatives(parse("a red circle left of a blue square"))}
    assert ("swap", "a blue circle left of a red square") in labelled
    assert ("swap", "a blue square left of a red circle") in labelled
    assert ("relation", "a red circle above a blue square") in labelled
    assert ("count", "a red circle") in {(k, n.text) for k, n in negatives(parse("three red circles"))}


# --- splits ------------------------------------------------------------------


PARTITION = ("train", "val", "pool", "test", "novel")  # heldout is pool and test together


def test_splits_partition_and_are_deterministic():
    parts = {n: split(n) for n in SPLIT_NAMES}
    seen = [s for n in PARTITION for s in parts[n]]
    assert len(seen) == len(set(seen)) == len(all_specs())
    assert set(parts["heldout"]) == set(parts["pool"]) | set(parts["test"])
    splits_module._splits.cache_clear()
    assert {n: split(n) for n in SPLIT_NAMES} == parts
    with pytest.raises(ValueError, match="train"):
        split("dev")


def test_test_and_pool_are_halves_of_heldout_in_every_category():
    for c in CATEGORIES:
        n = {name: sum(s.category == c for s in split(name)) for name in ("pool", "test")}
        assert n["test"] >= 1 and abs(n["test"] - n["pool"]) <= max(2, 0.1 * sum(n.values())), (c, n)
    assert len(split("test")) >= 60  # x 17 images: over 1,000 per evaluation


def test_novel_objects_only_in_novel():
    for name in ("train", "val", "heldout", "pool", "test"):
        assert not any(o in NOVEL_OBJECTS for s in split(name) for o in s.objects)
    assert all(any(o in NOVEL_OBJECTS for o in s.objects) for s in split("novel"))


def test_split_sizes_per_category():
    for c in CATEGORIES:
        n = {name: sum(s.category == c for s in split(name)) for name in ("train", "val", "heldout")}
        assert n["val"] >= 1 and n["heldout"] >= 1 and n["train"] > n["heldout"] > n["val"], (c, n)


def test_equivalent_phrasings_share_a_split():
    splits_of = defaultdict(set)
    for name in PARTITION:
        for s in split(name):
            splits_of[s.canonical()].add(name)
    assert all(len(v) == 1 for v in splits_of.values())
    # Every two_objects meaning has its two phrasings in the grammar.
    sizes = Counter(s.canonical() for s in all_specs() if s.category == "two_objects")
    assert set(sizes.values()) == {2}


# --- renderer ----------------------------------------------------------------


def test_render_deterministic_and_seed_dependent():
    s = parse("a red circle left of a blue square")
    a = render(s, 7)
    assert a.dtype == np.uint8 and a.shape == (32, 32, 3)
    assert np.array_equal(a, render(s, 7))
    assert len({render(s, seed).tobytes() for seed in range(10)}) == 10
    assert render(s, 3, size=64).shape == (64, 64, 3)
    batch = render_batch([s, s], [7, 8])
    assert batch.shape == (2, 32, 32, 3) and np.array_equal(batch[0], a)


def test_render_keeps_margin_and_palette():
    for s in _sample(6):
        img = render(s, 0)
        border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
        assert (border == 255).all(), s.text
        colours = {tuple(p) for p in img.reshape(-1, 3)}
        assert len(colours) == 1 + len({o.colour for o in s.objects}), s.text


def test_flawed_renders_never_show_their_spec():
    # Wrong by construction: the exact evaluator refuses every one, and each flaw occurs.
    flaws = Counter()
    for i, s in enumerate(_sample(12, seed=3)):
        for k in range(6):
            img, flaw = render_flawed(s, 10 * i + k)
            assert not evaluate(img, s), (s.text, flaw, explain(img, s))
            flaws[flaw] += 1
    assert set(flaws) == {"extra", "squashed", "bitten"}, flaws
    img, _ = render_flawed(parse("a red circle"), 5)
    assert np.array_equal(img, render_flawed(parse("a red circle"), 5)[0])


# --- evaluator ---------------------------------------------------------------


@pytest.fixture(scope="module")
def accept_specs() -> list[Spec]:
    # All prompts of the small categories, a sample of the two_objects ones.
    return [s for s in all_specs() if s.category != "two_objects"] + [
        s for s in _sample(60, seed=1) if s.category == "two_objects"
    ]


def _rates_by_category(specs: list[Spec], images: np.ndarray) -> dict[str, float]:
    ok = evaluate_batch(images, specs)
    by = defaultdict(list)
    for s, v in zip(specs, ok):
        by[s.category].append(v)
    return {c: float(np.mean(v)) for c, v in by.items()}


def test_accepts_clean_renders(accept_specs):
    specs = [s for s in accept_specs for _ in range(20)]
    seeds = list(range(len(specs)))
    rates = _rates_by_category(specs, render_batch(specs, seeds))
    assert set(rates) == set(CATEGORIES)
    assert all(r >= 0.99 for r in rates.values()), rates


def test_accepts_degraded_renders(accept_specs):
    specs = [s for s in accept_specs for _ in range(4)]
    seeds = [1000 + i for i in range(len(specs))]
    rates = _rates_by_category(specs, _degrade(render_batch(specs, seeds)))
    assert all(r >= 0.97 for r in rates.values()), rates


def test_rejects_negatives():
    specs, negs, kinds = [], [], []
    for s in _sample(10, seed=2):
        for kind, n in negatives(s):
            for _ in range(4):
                specs.append(s)
                negs.append(n)
                kinds.append(kind)
    images = render_batch(negs, list(range(len(negs))))
    rejected = ~evaluate_batch(images, specs)
    by = defaultdict(list)
    for k, r in zip(kinds, rejected):
        by[k].append(r)
    rates = {k: float(np.mean(v)) for k, v in by.items()}
    assert set(rates) == set(NEGATIVE_KINDS)
    assert all(r >= 0.99 for r in rates.values()), rates


def test_detect_and_explain():
    s = parse("a red circle above a blue square")
    img = render(s, 0)
    dets = sorted(detect(img), key=lambda d: d.colour)
    assert [(d.colour, d.shape) for d in dets] == [("blue", "square"), ("red", "circle")]
    assert dets[1].cy < dets[0].cy
    assert explain(img, s) == "ok"
    assert evaluate(Image.fromarray(img), s)
    assert "expected 3 object(s), found 2" in explain(render(parse("two red circles"), 0), parse("three red circles"))
    blank = np.full((32, 32, 3), 255, np.uint8)
    assert not evaluate(blank, parse("a red circle"))
    assert detect(blank) == []


def test_failure_names_what_is_wrong():
    """Each render of an edited prompt fails the prompt for the reason the edit says (the relation
    reversed is `order`, the other relations `relation`); a blob of no shape is `unreadable shape`."""
    s = parse("a red circle above a blue square")
    img = render(s, 0)
    assert failure(img, s) is None
    assert failure(render(reversed_order(s), 0), s) == "order"
    assert failure(render(parse("a red circle left of a blue square"), 0), s) == "relation"
    assert failure(render(parse("a red circle above a green square"), 0), s) == "objects"
    assert failure(render(parse("a red circle"), 0), s) == "number of objects"
    assert failure(render(parse("a red circle on the left"), 0), parse("a red circle on the right")) == "position"
    assert failure(blank_with_blob(), parse("a red circle")) == "unreadable shape"


def blank_with_blob() -> np.ndarray:
    """A red bar three times as long as it is tall: no shape of the world."""
    img = np.full((32, 32, 3), 255, np.uint8)
    img[14:18, 4:16] = PALETTE["red"]
    return img
