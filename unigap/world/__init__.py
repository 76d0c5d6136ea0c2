"""Synthetic shapes world: prompt grammar, fixed splits, renderer and exact evaluator."""

from .evaluator import FAILURES, Detection, detect, evaluate, evaluate_batch, explain, failure
from .grammar import (
    CATEGORIES,
    COLOURS,
    COUNT_WORDS,
    NEGATIVE_KINDS,
    PALETTE,
    POSITIONS,
    RELATIONS,
    SHAPES,
    TIERS,
    Obj,
    Spec,
    all_specs,
    negatives,
    parse,
    reversed_order,
)
from .render import FLAWS, render, render_batch, render_flawed
from .splits import NOVEL_OBJECTS, SPLIT_NAMES, split

__all__ = [
    "CATEGORIES",
    "FAILURES",
    "FLAWS",
    "COLOURS",
    "COUNT_WORDS",
    "NEGATIVE_KINDS",
    "NOVEL_OBJECTS",
    "PALETTE",
    "POSITIONS",
    "RELATIONS",
    "SHAPES",
    "SPLIT_NAMES",
    "TIERS",
    "Detection",
    "Obj",
    "Spec",
    "all_specs",
    "detect",
    "evaluate",
    "evaluate_batch",
    "explain",
    "failure",
    "negatives",
    "parse",
    "render",
    "render_batch",
    "render_flawed",
    "reversed_order",
    "split",
]
