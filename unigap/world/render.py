"""Deterministic renderer: (spec, seed) -> small RGB image of flat, aliased shapes.

Flat colours without antialiasing keep the evaluator exact on clean renders;
seeded jitter of size and place gives the generator variety to learn from.
Layouts leave a margin and a gap between objects so shapes never touch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from .grammar import COLOURS, PALETTE, SHAPES, Obj, Spec

BACKGROUND = (255, 255, 255)
MARGIN = 1  # empty pixels between any shape and the canvas border
GAP = 3  # empty pixels between the boxes of two shapes
_MAX_TRIES = 1000

Box = tuple[int, int, int]  # top-left pixel x0, y0 and side s (pixels x0 .. x0 + s - 1)


def _box(cx: float, cy: float, s: int) -> Box:
    # The box centre (x0 + s/2) is the sampled centre up to rounding.
    return int(round(cx - s / 2)), int(round(cy - s / 2)), s


def _half_centre(rng: np.random.Generator, s: int, first: bool, size: int) -> float:
    """A centre keeping a shape of side s inside one half, leaving room for GAP."""
    half = size / 2
    lo, hi = (MARGIN + s / 2, half - GAP / 2 - s / 2) if first else (half + GAP / 2 + s / 2, size - MARGIN - s / 2)
    return rng.uniform(lo, max(lo, hi))


def _propose(spec: Spec, rng: np.random.Generator, size: int) -> list[Box]:
    k = size / 32  # all pixel ranges below are tuned for 32 px and scale with size
    c = size / 2

    def side(lo: int, hi: int) -> int:
        return int(rng.integers(round(lo * k), round(hi * k) + 1))

    def jitter(r: float) -> float:
        return c + rng.uniform(-r * k, r * k)

    if spec.category == "single_object":
        return [_box(jitter(4), jitter(4), side(10, 14))]
    if spec.category == "position":
        s = side(9, 12)
        along, across = rng.uniform(0.18, 0.30) * size, jitter(4)
        cx, cy = {
            "left": (along, across),
            "right": (size - along, across),
            "top": (across, along),
            "bottom": (across, size - along),
        }[spec.position]
        return [_box(cx, cy, s)]
    if spec.category == "counting":
        boxes = []
        for _ in range(spec.count):
            s = side(7, 9)
            boxes.append(_box(*rng.uniform(MARGIN + s / 2, size - MARGIN - s / 2, 2), s))
        return boxes
    # Two objects: one per half. For `colour` the axis and order are random;
    # for relations "A left of B" puts A in the left half, "A above B" in the top.
    if spec.category == "colour":
        horizontal, a_first = bool(rng.integers(2)), bool(rng.integers(2))
    else:
        horizontal = spec.relation in ("left of", "right of")
        a_first = spec.relation in ("left of", "above")
    boxes = []
    for first in (a_first, not a_first):
        s = side(9, 12)
        along, across = _half_centre(rng, s, first, size), jitter(4)
        boxes.append(_box(along, across, s) if horizontal else _box(across, along, s))
    return boxes


def _valid(boxes: list[Box], size: int) -> bool:
    for i, (x, y, s) in enumerate(boxes):
        if min(x, y) < MARGIN or max(x, y) + s > size - MARGIN:
            return False
        for x2, y2, s2 in boxes[:i]:
            gap = max(x2 - (x + s), x - (x2 + s2), y2 - (y + s), y - (y2 + s2))
            if gap < GAP:
                return False
    return True


def layout(spec: Spec, seed: int, size: int = 32) -> list[tuple[Obj, Box]]:
    """Objects with their boxes, by rejection sampling until margins and gaps hold."""
    rng = np.random.default_rng(seed)
    objects = spec.objects * spec.count
    for _ in range(_MAX_TRIES):
        boxes = _propose(spec, rng, size)
        if _valid(boxes, size):
            return list(zip(objects, boxes))
    raise RuntimeError(f"no valid layout for {spec.text!r} at size {size}")


def _draw(draw: ImageDraw.ImageDraw, obj: Obj, box: Box, height: int | None = None) -> None:
    """`obj` in the square `box`; with `height`, squashed to that many rows (a flawed shape)."""
    x, y, s = box
    x1, y1 = x + s - 1, y + (height or s) - 1  # PIL boxes are inclusive
    fill = PALETTE[obj.colour]
    if obj.shape == "circle":
        draw.ellipse((x, y, x1, y1), fill=fill)
    elif obj.shape == "square":
        draw.rectangle((x, y, x1, y1), fill=fill)
    else:  # isosceles triangle pointing up
        draw.polygon([(x + (s - 1) / 2, y), (x1, y1), (x, y1)], fill=fill)


FLAWS = ("extra", "squashed", "bitten")


def render_flawed(spec: Spec, seed: int, size: int = 32) -> tuple[np.ndarray, str]:
    """A render of `spec` made wrong by one flaw the one-attribute negatives never show, and the
    flaw's name: an `extra` object in free space, one shape `squashed` to half its height (no
    shape of the world is that long), or one circle or square `bitten` (a corner square of over
    half its side erased). These are errors a small generator makes that a judge trained on
    clean scenes accepts. Wrong by construction, never by the evaluator's say."""
    rng = np.random.default_rng(seed)
    placed = layout(spec, seed, size)
    flaw = FLAWS[int(rng.integers(len(FLAWS)))]
    extra = None
    if flaw == "extra":
        s = int(rng.integers(round(7 * size / 32), round(10 * size / 32) + 1))
        for _ in range(200):  # free space for one more shape, or fall back to a bitten one
            box = (
                int(rng.integers(MARGIN, size - MARGIN - s + 1)),
                int(rng.integers(MARGIN, size - MARGIN - s + 1)),
                s,
            )
            if _valid([b for _, b in placed] + [box], size):
                extra = (Obj(COLOURS[rng.integers(len(COLOURS))], SHAPES[rng.integers(len(SHAPES))]), box)
                break
        flaw = "extra" if extra else "bitten"
    img = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(img)
    hit = int(rng.integers(len(placed)))
    if flaw == "bitten" and placed[hit][0].shape == "triangle":
        flaw = "squashed"  # a bitten triangle is still a (thinner) triangle
    for i, (obj, box) in enumerate(placed):
        _draw(draw, obj, box, height=box[2] // 2 if flaw == "squashed" and i == hit else None)
    if extra:
        _draw(draw, *extra)
    if flaw == "bitten":
        x, y, s = placed[hit][1]
        b = int(np.ceil(s * rng.uniform(0.55, 0.7)))
        bx, by = (x, x + s - b)[rng.integers(2)], (y, y + s - b)[rng.integers(2)]
        draw.rectangle((bx, by, bx + b - 1, by + b - 1), fill=BACKGROUND)
    return np.asarray(img, dtype=np.uint8).copy(), flaw


def render(spec: Spec, seed: int, size: int = 32) -> np.ndarray:
    """A uint8 (size, size, 3) image of `spec`, identical for identical (spec, seed)."""
    img = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for obj, box in layout(spec, seed, size):
        _draw(draw, obj, box)
    return np.asarray(img, dtype=np.uint8).copy()


def render_batch(specs: Sequence[Spec], seeds: Sequence[int], size: int = 32) -> np.ndarray:
    """Stack of renders, shape (N, size, size, 3)."""
    if len(specs) != len(seeds):
        raise ValueError(f"{len(specs)} specs but {len(seeds)} seeds")
    out = np.empty((len(specs), size, size, 3), dtype=np.uint8)
    for i, (spec, seed) in enumerate(zip(specs, seeds)):
        out[i] = render(spec, seed, size)
    return out
