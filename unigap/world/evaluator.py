"""Exact programmatic evaluator: does an image show precisely what a spec says?

It must judge clean renders and the blurry, noisy, colour-drifted output of a
small image generator alike, so every step is a coarse, measured decision:
per-pixel colour unmixed against the white background, connected components
per colour, shape from two scale-free cues, and layout rules with margins.
When unsure it rejects.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from .grammar import COLOURS, PALETTE, Obj, Spec

# Pixels are unmixed against white: a blurred edge pixel is a blend of one
# palette colour and the background, so each pixel is matched to the nearest
# segment white..colour. It belongs to that colour when it is at least half
# colour and close to the segment; otherwise it is background. Plain nearest-
# colour matching fails here: a half red, half white pixel is nearer to yellow
# than to red or white.
MIN_COVERAGE = 0.5
MAX_SEGMENT_DIST = 80.0  # RGB euclidean; tolerates colour drift and noise
MIN_AREA_32 = 12  # smallest component kept at 32 px; scales with image area

# Shape cues (thresholds measured on renders of 7-14 px shapes, clean and with
# gaussian blur sigma 0.6 + noise std 12; ranges in brackets are clean / degraded):
# - top/bottom: pixels in the top half of the box over those in the bottom half.
#   triangle 0.29-0.38 / 0.29-0.45; circle, square 1.0 / 1.0-1.03.
# - fill: area / box area. square 1.0 / >=0.99; circle 0.75-0.81 / 0.75-0.81;
#   triangle 0.50-0.56 / 0.50-0.69.
# Thresholds sit in the gaps with room for heavier degradation. Fills between
# CIRCLE_MAX_FILL and SQUARE_MIN_FILL are left "unknown": under heavy blur
# squares round off, and rejecting beats calling them circles.
TRIANGLE_MAX_TOP_BOTTOM = 0.72
SQUARE_MIN_FILL = 0.9
CIRCLE_MAX_FILL = 0.86
CIRCLE_MIN_FILL = 0.6
MAX_ASPECT = 1.6  # every shape has a square box; a long blob is two merged shapes or junk

# Layout rules: a position must be off-centre by 10% of the image along its axis
# and more along that axis than across it; a relation needs a 2 px (at 32 px)
# margin along its axis, which must dominate (so "above" never reads as "left of").
POSITION_OFFSET = 0.1
RELATION_MARGIN_32 = 2.0

_WHITE = np.array((255, 255, 255), dtype=np.float32)
_DIRS = np.array([PALETTE[c] for c in COLOURS], dtype=np.float32) - _WHITE  # (4, 3)
_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Detection:
    colour: str
    shape: str  # one of SHAPES, or "unknown"
    cx: float  # box centre in pixel units (0 = left edge of the image)
    cy: float
    area: int

    @property
    def obj(self) -> Obj:
        return Obj(self.colour, self.shape)


def _as_array(image: np.ndarray | Image.Image) -> np.ndarray:
    if isinstance(image, Image.Image):
        image = image.convert("RGB")
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 HxWx3 image, got {arr.dtype} {arr.shape}")
    return arr


def colour_map(image: np.ndarray | Image.Image) -> np.ndarray:
    """Per-pixel colour index into COLOURS, or -1 for background."""
    v = _as_array(image).astype(np.float32) - _WHITE  # (H, W, 3)
    # Coverage of each colour: projection onto white->colour, clipped to the segment.
    alpha = np.clip(v @ _DIRS.T / (_DIRS**2).sum(1), 0.0, 1.0)  # (H, W, 4)
    dist = np.linalg.norm(v[:, :, None, :] - alpha[..., None] * _DIRS, axis=-1)
    labels = dist.argmin(-1)
    best_alpha = np.take_along_axis(alpha, labels[..., None], -1)[..., 0]
    labels[(best_alpha < MIN_COVERAGE) | (dist.min(-1) > MAX_SEGMENT_DIST)] = -1
    return labels


def _shape(mask: np.ndarray) -> str:
    h, w = mask.shape
    if max(h, w) > MAX_ASPECT * min(h, w):
        return "unknown"
    fill = mask.sum() / (h * w)
    half = h // 2  # the middle row of an odd box counts for neither half
    top, bottom = mask[:half].sum(), mask[h - half :].sum()
    if top < TRIANGLE_MAX_TOP_BOTTOM * bottom and fill < SQUARE_MIN_FILL:
        return "triangle"
    if top < TRIANGLE_MAX_TOP_BOTTOM * bottom or bottom < TRIANGLE_MAX_TOP_BOTTOM * top:
        return "unknown"  # lopsided but not a triangle (e.g. one pointing down)
    if fill >= SQUARE_MIN_FILL:
        return "square"
    if CIRCLE_MIN_FILL <= fill <= CIRCLE_MAX_FILL:
        return "circle"
    return "unknown"


def detect(image: np.ndarray | Image.Image) -> list[Detection]:
    """All coloured shapes in the image, ordered by colour then position."""
    labels = colour_map(image)
    h, w = labels.shape
    min_area = MIN_AREA_32 * h * w / 32**2
    out = []
    for ci, colour in enumerate(COLOURS):
        comp, _ = ndimage.label(labels == ci, structure=_EIGHT)
        for j, sl in enumerate(ndimage.find_objects(comp), start=1):
            mask = comp[sl] == j
            area = int(mask.sum())
            if area < min_area:
                continue  # speckle noise
            ys, xs = sl
            out.append(
                Detection(
                    colour=colour,
                    shape=_shape(mask),
                    # Box centre, not centroid: a triangle's centroid sits 1/6 of
                    # its height below the box centre, which the renderer places.
                    cx=(xs.start + xs.stop) / 2,
                    cy=(ys.start + ys.stop) / 2,
                    area=area,
                )
            )
    return out


def _off_centre(d: Detection, position: str, w: int, h: int) -> bool:
    dx, dy = d.cx - w / 2, d.cy - h / 2
    along, across, extent = {
        "left": (-dx, dy, w),
        "right": (dx, dy, w),
        "top": (-dy, dx, h),
        "bottom": (dy, dx, h),
    }[position]
    return along > POSITION_OFFSET * extent and along > abs(across)


def _related(a: Detection, b: Detection, relation: str, w: int) -> bool:
    dx, dy = b.cx - a.cx, b.cy - a.cy  # from A to B
    along, across = {
        "left of": (dx, dy),
        "right of": (-dx, dy),
        "above": (dy, dx),
        "below": (-dy, dx),
    }[relation]
    return along > RELATION_MARGIN_32 * w / 32 and along > abs(across)


def _describe(dets: Sequence[Detection]) -> str:
    return ", ".join(f"{d.colour} {d.shape} at ({d.cx:.1f}, {d.cy:.1f})" for d in dets) or "nothing"


# What is wrong with an image, coarsest first (`failure`): the number of objects; a shape the
# evaluator cannot read; which objects (colour or shape); a single object's place; two objects in
# the right places but the other way round along the asked axis (`order`); any other arrangement.
FAILURES = ("number of objects", "unreadable shape", "objects", "position", "order", "relation")


def _failure(dets: list[Detection], spec: Spec, w: int, h: int) -> tuple[str, str] | None:
    """(kind from FAILURES, one-line reason) the detections do not show `spec`, or None when they do."""
    want = list(spec.objects) * spec.count
    if len(dets) != len(want):
        return "number of objects", f"expected {len(want)} object(s), found {len(dets)}: {_describe(dets)}"
    if Counter(d.obj for d in dets) != Counter(want):
        kind = "unreadable shape" if any(d.shape == "unknown" for d in dets) else "objects"
        return kind, f"expected {', '.join(o.text for o in want)}; found {_describe(dets)}"
    if spec.category == "position" and not _off_centre(dets[0], spec.position, w, h):
        return "position", f"expected {spec.position}; found {_describe(dets)}"
    if spec.category == "two_objects":
        a, b = (next(d for d in dets if d.obj == o) for o in spec.objects)
        if not _related(a, b, spec.relation, w):
            kind = "order" if _related(b, a, spec.relation, w) else "relation"
            return (
                kind,
                f"expected {spec.objects[0].text} {spec.relation} {spec.objects[1].text}; found {_describe(dets)}",
            )
    return None


def _judged(image: np.ndarray | Image.Image, spec: Spec) -> tuple[str, str] | None:
    arr = _as_array(image)
    return _failure(detect(arr), spec, arr.shape[1], arr.shape[0])


def evaluate(image: np.ndarray | Image.Image, spec: Spec) -> bool:
    """True iff the image shows exactly the spec's objects, arranged as it says."""
    return _judged(image, spec) is None


def explain(image: np.ndarray | Image.Image, spec: Spec) -> str:
    """'ok', or a one-line reason the image fails the spec (for reports)."""
    why = _judged(image, spec)
    return why[1] if why else "ok"


def failure(image: np.ndarray | Image.Image, spec: Spec) -> str | None:
    """None when the image shows the spec, else what is wrong: one of FAILURES."""
    why = _judged(image, spec)
    return why[0] if why else None


def evaluate_batch(images: np.ndarray | Sequence, specs: Sequence[Spec]) -> np.ndarray:
    """Boolean array, one verdict per (image, spec) pair."""
    if len(images) != len(specs):
        raise ValueError(f"{len(images)} images but {len(specs)} specs")
    return np.array([evaluate(img, s) for img, s in zip(images, specs)], dtype=bool)
