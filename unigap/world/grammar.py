"""The prompt grammar of the shapes world: specs, their texts, parsing, negatives.

A `Spec` is the meaning of a prompt; `.text` renders it and `parse` inverts that,
so prompts, images and the evaluator all share one source of truth.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from functools import cache

COLOURS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle")
CATEGORIES = ("single_object", "colour", "position", "two_objects", "counting")
TIERS = ("easy", "medium", "hard")
POSITIONS = ("left", "right", "top", "bottom")
RELATIONS = ("left of", "right of", "above", "below")
COUNT_WORDS = {2: "two", 3: "three"}

# Shared by the renderer and the evaluator: the evaluator classifies pixels by
# their nearest palette colour, so both must use the same values.
PALETTE = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (235, 195, 20),
}

_POSITION_PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
}
# "A right of B" says the same as "B left of A"; canonical form uses left of / above.
_INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
_TWO_OBJECT_CATEGORIES = ("colour", "two_objects")


@dataclass(frozen=True, order=True)
class Obj:
    colour: str
    shape: str

    @property
    def text(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def order(self) -> tuple[int, int]:
        return COLOURS.index(self.colour), SHAPES.index(self.shape)


@dataclass(frozen=True)
class Spec:
    category: str
    objects: tuple[Obj, ...]
    position: str | None = None
    relation: str | None = None
    count: int = 1

    def __post_init__(self) -> None:
        # Fail early on specs the grammar cannot say: every consumer assumes validity.
        ok = self.category in CATEGORIES and all(o.colour in COLOURS and o.shape in SHAPES for o in self.objects)
        n = 2 if self.category in _TWO_OBJECT_CATEGORIES else 1
        ok = ok and len(self.objects) == n
        if self.category in _TWO_OBJECT_CATEGORIES:
            ok = ok and self.objects[0].colour != self.objects[1].colour
        ok = ok and (self.position is not None) == (self.category == "position")
        ok = ok and (self.position is None or self.position in POSITIONS)
        ok = ok and (self.relation is not None) == (self.category == "two_objects")
        ok = ok and (self.relation is None or self.relation in RELATIONS)
        ok = ok and (self.count in COUNT_WORDS if self.category == "counting" else self.count == 1)
        if not ok:
            raise ValueError(f"invalid spec: {self!r}")

    @property
    def text(self) -> str:
        a = self.objects[0]
        if self.category == "single_object":
            return f"a {a.text}"
        if self.category == "position":
            return f"a {a.text} {_POSITION_PHRASES[self.position]}"
        if self.category == "counting":
            return f"{COUNT_WORDS[self.count]} {a.text}s"
        b = self.objects[1]
        if self.category == "colour":
            return f"a {a.text} and a {b.text}"
        return f"a {a.text} {self.relation} a {b.text}"

    @property
    def tier(self) -> str:
        if self.category in ("single_object", "position"):
            return "easy"
        if self.category == "colour" or (self.category == "counting" and self.count == 2):
            return "medium"
        return "hard"

    def canonical(self) -> Spec:
        """The representative of all phrasings with the same meaning."""
        if self.category == "colour":
            return replace(self, objects=tuple(sorted(self.objects, key=lambda o: o.order)))
        if self.category == "two_objects" and self.relation in ("right of", "below"):
            return replace(self, objects=self.objects[::-1], relation=_INVERSE[self.relation])
        return self

    def equivalent(self, other: Spec) -> bool:
        return self.canonical() == other.canonical()


def _all_objects() -> list[Obj]:
    return [Obj(c, s) for c in COLOURS for s in SHAPES]


@cache
def _all_specs() -> tuple[Spec, ...]:
    objs = _all_objects()
    specs = [Spec("single_object", (o,)) for o in objs]
    specs += [Spec("position", (o,), position=p) for o in objs for p in POSITIONS]
    # Unordered pairs: only the canonical (palette-order) phrasing is generated.
    specs += [Spec("colour", (a, b)) for i, a in enumerate(objs) for b in objs[i + 1 :] if a.colour != b.colour]
    specs += [
        Spec("two_objects", (a, b), relation=r) for a in objs for b in objs if a.colour != b.colour for r in RELATIONS
    ]
    specs += [Spec("counting", (o,), count=n) for o in objs for n in COUNT_WORDS]
    return tuple(specs)


def all_specs() -> list[Spec]:
    """Every prompt of the grammar, in a fixed order."""
    return list(_all_specs())


_C = "|".join(COLOURS)
_S = "|".join(SHAPES)
_OBJ = rf"a ({_C}) ({_S})"
_PATTERNS = (
    ("single_object", re.compile(rf"{_OBJ}")),
    ("position", re.compile(rf"{_OBJ} ({'|'.join(_POSITION_PHRASES.values())})")),
    ("colour", re.compile(rf"{_OBJ} and {_OBJ}")),
    ("two_objects", re.compile(rf"{_OBJ} ({'|'.join(RELATIONS)}) {_OBJ}")),
    ("counting", re.compile(rf"({'|'.join(COUNT_WORDS.values())}) ({_C}) ({_S})s")),
)
_PHRASE_TO_POSITION = {v: k for k, v in _POSITION_PHRASES.items()}
_WORD_TO_COUNT = {v: k for k, v in COUNT_WORDS.items()}


def parse(text: str) -> Spec:
    """Inverse of `Spec.text`; tolerant of case, spacing and a trailing full stop."""
    norm = " ".join(text.strip().lower().split()).removesuffix(".").strip()
    for category, pattern in _PATTERNS:
        m = pattern.fullmatch(norm)
        if not m:
            continue
        g = m.groups()
        try:
            if category == "single_object":
                return Spec(category, (Obj(g[0], g[1]),))
            if category == "position":
                return Spec(category, (Obj(g[0], g[1]),), position=_PHRASE_TO_POSITION[g[2]])
            if category == "colour":
                return Spec(category, (Obj(g[0], g[1]), Obj(g[2], g[3])))
            if category == "two_objects":
                return Spec(category, (Obj(g[0], g[1]), Obj(g[3], g[4])), relation=g[2])
            return Spec(category, (Obj(g[1], g[2]),), count=_WORD_TO_COUNT[g[0]])
        except ValueError:
            break  # e.g. two objects of the same colour: well-formed but not in the grammar
    raise ValueError(f"not in the shapes-world grammar: {text!r}")


def _count_spec(obj: Obj, n: int) -> Spec:
    return Spec("single_object", (obj,)) if n == 1 else Spec("counting", (obj,), count=n)


# The kinds of one-attribute edit `negatives` labels its results with.
NEGATIVE_KINDS = ("colour", "shape", "position", "count", "relation", "swap")


def reversed_order(spec: Spec) -> Spec | None:
    """The relation reversed, "A left of B" as "A right of B" (which shows B left of A): the same
    objects on the same axis in the other order, or None for a prompt without a relation. One of
    `negatives`' relation edits and, worded the other way, its object swap; a judge that reads only
    which axis the objects lie on passes the other relation edits and fails this one."""
    return replace(spec, relation=_INVERSE[spec.relation]) if spec.relation else None


def _variants(spec: Spec) -> list[tuple[str, Spec]]:
    """All one-attribute edits of `spec`, duplicates and equivalents included."""
    out: list[tuple[str, Spec]] = []
    objs = spec.objects

    def with_obj(i: int, obj: Obj) -> Spec | None:
        new = objs[:i] + (obj,) + objs[i + 1 :]
        if len(new) == 2 and new[0].colour == new[1].colour:
            return None  # two objects must keep distinct colours
        return replace(spec, objects=new)

    for i, o in enumerate(objs):
        out += [("colour", with_obj(i, Obj(c, o.shape))) for c in COLOURS if c != o.colour]
        out += [("shape", with_obj(i, Obj(o.colour, s))) for s in SHAPES if s != o.shape]
    if spec.category == "position":
        out += [("position", replace(spec, position=p)) for p in POSITIONS if p != spec.position]
    if spec.category in ("single_object", "position", "counting"):
        out += [("count", _count_spec(objs[0], n)) for n in (1, 2, 3) if n != spec.count]
    if spec.category == "two_objects":
        out += [("relation", replace(spec, relation=r)) for r in RELATIONS if r != spec.relation]
    if spec.category in _TWO_OBJECT_CATEGORIES:
        a, b = objs
        swapped = (Obj(b.colour, a.shape), Obj(a.colour, b.shape))
        out.append(("swap", replace(spec, objects=swapped)))
        if spec.category == "two_objects":
            out.append(("swap", replace(spec, objects=(b, a))))
    return [(kind, s) for kind, s in out if s is not None]


def negatives(spec: Spec) -> list[tuple[str, Spec]]:
    """Specs one attribute away from `spec` whose images must NOT satisfy it.

    Results appear in `all_specs()`, are never equivalent to `spec`, and are
    unique (up to equivalence) within each label. The same meaning can appear under two
    labels (e.g. swapping the objects of "A left of B" equals the relation edit
    "A right of B"); both are kept since they probe different edits.
    Position is not varied for single_object: "a red circle on the left" still
    shows "a red circle", so it would not be a negative.
    """
    seen: set[tuple[str, Spec]] = set()
    out: list[tuple[str, Spec]] = []
    base = spec.canonical()
    for kind, s in _variants(spec):
        key = s.canonical()
        if key == base or (kind, key) in seen:
            continue
        seen.add((kind, key))
        # Colour pairs are generated in one order only; relations keep their wording.
        out.append((kind, key if s.category == "colour" else s))
    return out
