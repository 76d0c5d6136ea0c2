"""Recipes: YAML files of loop settings (`recipes/<name>.yaml`), read into a `LoopConfig`.

A recipe is a mapping of `LoopConfig` field names to values, `train:` a nested mapping of `TrainConfig`
fields. It never holds `seed` (nor `train.seed`): a run's seed is given per run (`unigap loop --seed`),
so one recipe runs over many seeds. A setting the recipe leaves out takes the dataclass default.
Overrides (`--set train.epochs=3`) name a field by its dotted name; their values are YAML scalars.
Every value is type-checked against its field; validation is the dataclasses' own (unigap/config.py).
"""

from __future__ import annotations

import typing
from collections.abc import Iterable
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path

import yaml

from unigap.config import LoopConfig, TrainConfig

NESTED = {"train": TrainConfig}  # LoopConfig fields that are dataclasses, read from nested mappings
PER_RUN = ("seed", "train.seed")  # given per run, never by a recipe


def load_recipe(path: str | Path, overrides: Iterable[str] = ()) -> LoopConfig:
    """The `LoopConfig` of a recipe file with `KEY=VALUE` overrides applied (seed at its default).

    Raises ValueError naming the key and the file for an unknown key, a value of the wrong type, a
    malformed override or a setting the dataclasses reject."""
    settings = recipe_settings(path)
    apply_overrides(settings, overrides, str(path))
    return build(settings, str(path))


def recipe_settings(path: str | Path) -> dict:
    """A recipe file's settings as a full nested dict (`asdict` shape): the defaults, then the file's keys."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ValueError(f"recipe {path}: cannot be read ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise ValueError(f"recipe {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):  # a bad file is bad input: ValueError, as every recipe error
        raise ValueError(  # noqa: TRY004
            f"recipe {path}: expected a mapping of settings, not {type(data).__name__}"
        )
    settings = asdict(LoopConfig())
    for key, value in data.items():
        if key in NESTED:
            if not isinstance(value, dict):
                raise ValueError(f"recipe {path}: {key} must be a mapping of {NESTED[key].__name__} settings")
            for sub, v in value.items():
                set_setting(settings, f"{key}.{sub}", v, str(path))
        else:
            set_setting(settings, str(key), value, str(path))
    return settings


def apply_overrides(settings: dict, overrides: Iterable[str], source: str) -> None:
    """Apply `KEY=VALUE` overrides (dotted keys, YAML scalar values) to a nested settings dict in place."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{source}: --set {item!r}: expected KEY=VALUE, e.g. train.epochs=3")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ValueError(f"{source}: --set {item!r}: {text!r} is not a YAML value") from None
        set_setting(settings, key.strip(), value, f"{source} --set")


def set_setting(settings: dict, key: str, value, source: str) -> None:
    """Set one dotted setting in a nested settings dict, after checking the key exists and the type fits."""
    if key in PER_RUN:
        raise ValueError(f"{source}: {key} is given per run (--seed), not by a recipe")
    head, _, sub = key.partition(".")
    cls, name, target = LoopConfig, head, settings
    if sub:
        if head not in NESTED or "." in sub:
            raise ValueError(f"{source}: unknown setting {key!r}")
        cls, name, target = NESTED[head], sub, settings[head]
    elif head in NESTED:
        raise ValueError(f"{source}: {key} is a mapping; set its fields, e.g. {key}.epochs")
    types = typing.get_type_hints(cls)
    if name not in {f.name for f in fields(cls)}:
        raise ValueError(f"{source}: unknown setting {key!r}")
    target[name] = checked(types[name], value, key, source)


def checked(kind: type, value, key: str, source: str):
    """`value` as a field of type `kind` takes it: an int is a float too, a bool is not an int."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise ValueError(f"{source}: {key} must be {kind.__name__}, not {type(value).__name__} {value!r}")


def build(settings: dict, source: str | None = None) -> LoopConfig:
    """A validated `LoopConfig` from a nested settings dict; a rejected setting names the source if given."""
    try:
        return LoopConfig(**{k: NESTED[k](**v) if k in NESTED else v for k, v in settings.items()})
    except ValueError as e:
        raise ValueError(f"{source}: {e}" if source else str(e)) from None


def to_yaml(cfg: LoopConfig) -> str:
    """A recipe's settings as YAML: every field of `cfg` but the per-run seed, in declaration order."""
    out = {}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if f.name not in PER_RUN:
            out[f.name] = (
                {k: v for k, v in asdict(value).items() if f"{f.name}.{k}" not in PER_RUN}
                if is_dataclass(value)
                else value
            )
    return yaml.safe_dump(out, sort_keys=False)
