"""Fixed prompt splits of the shapes world.

- `train`: pretraining's prompts (generation and understanding);
- `val`: recipe choice and the loop's promotion gate;
- `heldout`: prompts generation never saw in pretraining (understanding did), in two halves of
  the same distribution: `pool`, texts the loop may improve on, and `test`, texts no loop pool,
  recipe choice or gate ever touches (the headline figures);
- `novel`: every prompt that mentions an object never seen in pretraining (neither branch knows
  them, so the judge rejects everything there).

Equivalent phrasings of a prompt always share a split, so no meaning leaks across them."""

from __future__ import annotations

import random
from functools import cache

from .grammar import CATEGORIES, Obj, Spec, all_specs

SPLIT_NAMES = ("train", "val", "heldout", "pool", "test", "novel")
NOVEL_OBJECTS = (Obj("green", "triangle"), Obj("yellow", "square"))
SEED = 1234
VAL_FRACTION = 0.1
HELDOUT_FRACTION = 0.3


@cache
def _splits() -> dict[str, tuple[Spec, ...]]:
    order = {s: i for i, s in enumerate(all_specs())}
    assigned: dict[Spec, str] = {}
    for category in CATEGORIES:
        # Equivalent phrasings share a group so no meaning leaks across splits.
        groups: dict[Spec, list[Spec]] = {}
        for s in all_specs():
            if s.category != category:
                continue
            if any(o in NOVEL_OBJECTS for o in s.objects):
                assigned[s] = "novel"
            else:
                groups.setdefault(s.canonical(), []).append(s)
        keys = sorted(groups, key=lambda k: k.text)  # sorted: independent of enumeration order
        random.Random(SEED).shuffle(keys)
        n = len(keys)
        n_val = max(1, round(VAL_FRACTION * n)) if n >= 3 else 0
        n_heldout = max(1, round(HELDOUT_FRACTION * n)) if n >= 3 else 0
        for i, k in enumerate(keys):
            # heldout alternates test / pool over the shuffled groups: halves of one distribution
            # (test takes the odd one out, so a category with one held-out group still tests it).
            heldout = "test" if (i - n_val) % 2 == 0 else "pool"
            name = "val" if i < n_val else heldout if i < n_val + n_heldout else "train"
            for s in groups[k]:
                assigned[s] = name
    by_name = {name: [s for s, v in assigned.items() if v == name] for name in SPLIT_NAMES}
    by_name["heldout"] = by_name["pool"] + by_name["test"]
    return {name: tuple(sorted(specs, key=order.__getitem__)) for name, specs in by_name.items()}


def split(name: str) -> list[Spec]:
    """The specs of one split, in `all_specs()` order (`heldout` is `pool` and `test` together)."""
    if name not in SPLIT_NAMES:
        raise ValueError(f"unknown split {name!r}; valid: {', '.join(SPLIT_NAMES)}")
    return list(_splits()[name])
