"""External evaluators: an outside check of a generated image against its prompt.

One small interface. A user's evaluator is a callable

    evaluate(image, prompt, metadata) -> True | False | None

taking one HxWx3 uint8 image, the prompt text and the prompt's metadata (a dict, possibly empty;
e.g. the fields of a JSONL prompts file), and answering right, wrong or cannot tell. A callable
with a truthy attribute `batched` is called once per batch instead, with lists of images, prompts
and metadata, and returns one answer per image.

Built in: `shapes` (the exact evaluator of the shapes world; it cannot tell on prompts outside the
world's grammar) and `none` (no evaluator: every answer is cannot tell). `module:callable` names a
user's own. The evaluator only measures: nothing it says flows into training.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from unigap import world
from unigap.config import BUILT_IN_EVALUATORS as BUILT_IN


@dataclass
class Verdicts:
    """One batch's answers: `correct[i]` is meaningful only where `known[i]` (False where unknown)."""

    correct: np.ndarray  # [images] bool
    known: np.ndarray  # [images] bool: the evaluator could tell

    @classmethod
    def of(cls, answers: Sequence[bool | None]) -> Verdicts:
        known = np.array([a is not None for a in answers], dtype=bool)
        return cls(np.array([bool(a) for a in answers], dtype=bool), known)


@dataclass
class Evaluator:
    """A named external evaluator; `measures` is False for `none` (no figure can come from it)."""

    name: str
    fn: Callable | None
    batched: bool = False

    @property
    def measures(self) -> bool:
        return self.fn is not None

    def __call__(self, images, prompts: Sequence[str], metadata: Sequence[dict] | None = None) -> Verdicts:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        metadata = list(metadata) if metadata is not None else [{} for _ in prompts]
        if self.fn is None:
            return Verdicts.of([None] * len(prompts))
        try:
            if self.batched:
                answers = list(self.fn(list(images), list(prompts), metadata))
            else:
                answers = [self.fn(np.asarray(im), p, m) for im, p, m in zip(images, prompts, metadata)]
        except Exception as e:  # a user's code may fail in any way: one line naming it, not a traceback
            raise ValueError(f"evaluator {self.name} failed: {e.__class__.__name__}: {e}") from e
        if len(answers) != len(prompts):
            raise ValueError(f"evaluator {self.name} gave {len(answers)} answers for {len(prompts)} images")
        for a in answers:
            if a is not None and not isinstance(a, (bool, np.bool_)):
                raise ValueError(f"evaluator {self.name} answered {a!r}: expected True, False or None")
        return Verdicts.of([None if a is None else bool(a) for a in answers])


def _shapes_batch(images, prompts: list[str], metadata: list[dict]) -> list[bool | None]:
    """The shapes world's exact evaluator; None on prompts outside its grammar."""
    specs = []
    for p in prompts:
        try:
            specs.append(world.parse(p))
        except ValueError:
            specs.append(None)
    inside = [i for i, s in enumerate(specs) if s is not None]
    out: list[bool | None] = [None] * len(prompts)
    if inside:
        verdicts = world.evaluate_batch([images[i] for i in inside], [specs[i] for i in inside])
        for i, v in zip(inside, verdicts):
            out[i] = bool(v)
    return out


SHAPES = Evaluator("shapes", _shapes_batch, batched=True)
NONE = Evaluator("none", None)


def get_evaluator(name: str) -> Evaluator:
    """`shapes`, `none`, or a user's callable named `module:callable` (the module on the import
    path). Raises ValueError naming `name` when it is none of these, cannot be imported or is not
    callable."""
    if name == "shapes":
        return SHAPES
    if name == "none":
        return NONE
    module, sep, attr = name.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"evaluator {name!r}: expected {', '.join(BUILT_IN)} or module:callable")
    try:
        obj = importlib.import_module(module)
    except Exception as e:  # a user's module may fail in any way while importing
        raise ValueError(f"evaluator {name!r}: cannot import {module!r} ({e.__class__.__name__}: {e})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"evaluator {name!r}: {module!r} has no {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"evaluator {name!r}: {attr!r} is not callable")
    return Evaluator(name, obj, batched=bool(getattr(obj, "batched", False)))
