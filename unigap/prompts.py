"""Prompts files: the shapes world's prompts or a user's free text.

Formats, by the file's suffix:
- `.jsonl`: one JSON object a line, `{"prompt": "...", "category": "..."}`; `category` is optional
  and every other field is kept as the prompt's metadata (passed to the external evaluator);
- `.json`: a JSON list of prompt strings or of such objects;
- anything else: one prompt a line.
Blank lines are skipped. When every prompt is a sentence of the shapes world's grammar the file
gives the world's specs (categories, tiers, renders and competitors come from the world, and a
file's own categories and metadata are not used); otherwise it gives free-text `Prompt`s.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from unigap import world

FREE = "free text"  # the category of a free-text prompt that names none


@dataclass(frozen=True)
class Prompt:
    """A free-text prompt; like `world.Spec` it has `text` and `category` (and no tier)."""

    text: str
    category: str = FREE
    metadata: dict = field(default_factory=dict, compare=False, hash=False)
    tier = None


def in_world(prompts: list) -> bool:
    """Whether these are the shapes world's specs (renders, competitors and tiers exist)."""
    return all(isinstance(p, world.Spec) for p in prompts)


def metadata_of(prompt) -> dict:
    return getattr(prompt, "metadata", None) or {}


def _record(item, where: str) -> Prompt:
    if isinstance(item, str):
        return Prompt(item.strip())
    if not isinstance(item, dict):
        raise ValueError(f'{where}: expected a prompt string or an object with a "prompt" field')
    text, category = item.get("prompt"), item.get("category", FREE)
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f'{where}: "prompt" must be a non-empty string')
    if not isinstance(category, str) or not category.strip():
        raise ValueError(f'{where}: "category" must be a non-empty string')
    meta = {k: v for k, v in item.items() if k not in ("prompt", "category")}
    return Prompt(text.strip(), category.strip(), meta)


def load_prompts(path: str | Path) -> list:
    """The prompts of a file (formats in the module's docstring): the world's `Spec`s when every
    prompt is one, else `Prompt`s. Raises ValueError with the file (and line) on bad content or
    an empty file; FileNotFoundError when there is no such file."""
    path = Path(path)
    text = path.read_text()
    items: list = []
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of prompt strings or objects")
        for i, item in enumerate(data, 1):
            if not (isinstance(item, str) and not item.strip()):
                items.append(_record(item, f"{path}: item {i}"))
    else:
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            if path.suffix == ".jsonl":
                try:
                    item = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{i}: not valid JSON ({e.msg})") from None
                items.append(_record(item, f"{path}:{i}"))
            else:
                items.append(Prompt(line.strip()))
    if not items:
        raise ValueError(f"{path}: no prompts in the file")
    return as_prompts(items)


def as_prompts(items: list) -> list:
    """The world's `Spec`s when every item (a text or a `Prompt`) is a sentence of its grammar, else
    every item as a free-text `Prompt`: one set never mixes the two."""
    items = [Prompt(x) if isinstance(x, str) else x for x in items]
    try:
        return [world.parse(p.text) for p in items]
    except ValueError:
        return items
