"""Command-line options derived from the settings dataclasses (unigap/config.py): each option's name,
type, default, help text and `--help` panel come from its field, so no default is written twice.

`with_settings` gives a command one option per `LoopConfig` / `TrainConfig` field that has a flag and
calls it with the validated `LoopConfig` those options make (`cfg`) in place of them. With `recipe`, the
command also takes `--recipe FILE` (unigap/recipes.py) and `--set KEY=VALUE`: the recipe is the base,
options given on the command line override it, and `--set` overrides both.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Collection
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import typer

from unigap.cli.app import fail
from unigap.config import GROUPS, LoopConfig, flag
from unigap.recipes import NESTED, apply_overrides, build, recipe_settings

CONTEXT = "settings_context"  # the command's typer.Context: which options the command line gave
RECIPE_PARAMS = [
    inspect.Parameter(
        "recipe",
        inspect.Parameter.KEYWORD_ONLY,
        annotation=Path | None,
        default=typer.Option(
            None,
            help="A recipe file (recipes/*.yaml) of settings: the base that options given here override.",
            rich_help_panel="Run",
        ),
    ),
    inspect.Parameter(
        "sets",
        inspect.Parameter.KEYWORD_ONLY,
        annotation=list[str],
        default=typer.Option(
            [],
            "--set",
            metavar="KEY=VALUE",
            rich_help_panel="Run",
            help="Set any setting by its dotted name (train.epochs=3), over the recipe and the options.",
        ),
    ),
]


@dataclass(frozen=True)
class Setting:
    path: str  # dotted: "n", "train.lr"
    name: str  # the command's parameter: the field's name (train's field names are unique but for seed)
    kind: type
    flag: str
    help: str
    group: str


def settings(cls: type = LoopConfig, prefix: str = "") -> list[Setting]:
    """The fields of `cls` that have a command-line flag, nested dataclasses' (train) where they stand."""
    hints, out = typing.get_type_hints(cls), []
    for f in fields(cls):
        if not prefix and f.name in NESTED:
            out += settings(NESTED[f.name], f.name + ".")
        elif f.metadata.get("flag", "") is not None:
            out.append(
                Setting(
                    prefix + f.name, f.name, hints[f.name], flag(cls, f.name), f.metadata["help"], f.metadata["group"]
                )
            )
    return out


def value_at(d: dict, path: str):
    head, _, sub = path.partition(".")
    return d[head][sub] if sub else d[head]


def set_at(d: dict, path: str, value) -> None:
    head, _, sub = path.partition(".")
    if sub:
        d[head][sub] = value
    else:
        d[head] = value


def decls(name: str, flag: str) -> tuple:
    """The option's declarations: a derived flag is left to typer, so a bool gets its --x/--no-x pair."""
    return () if flag == "--" + name.replace("_", "-") else (flag,)


def option(default, s: Setting) -> typer.models.OptionInfo:
    return typer.Option(default, *decls(s.name, s.flag), help=s.help, rich_help_panel=s.group)


def with_settings(base: LoopConfig, only: Collection[str] | None = None, recipe: bool = False):
    """Decorate a command taking `cfg: LoopConfig`: it gets an option per setting (those whose dotted path
    is in `only`, or all), defaults from `base`. `train.seed` follows `seed`, as a run's seed trains it.
    A rejected setting (ValueError from the dataclasses or the recipe) ends the command with one line."""
    chosen = sorted((s for s in settings() if only is None or s.path in only), key=lambda s: GROUPS.index(s.group))
    defaults = asdict(base)

    def decorate(fn):
        hints = typing.get_type_hints(fn)
        own = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints.get(p.name, p.annotation))
            for p in inspect.signature(fn).parameters.values()
            if p.name != "cfg"
        ]
        extra = [
            inspect.Parameter(
                s.name, inspect.Parameter.KEYWORD_ONLY, annotation=s.kind, default=option(value_at(defaults, s.path), s)
            )
            for s in chosen
        ]
        if recipe:
            own = RECIPE_PARAMS + own

        @functools.wraps(fn)
        def command(**values):
            given = {s.path: values.pop(s.name) for s in chosen}
            path, sets = (values.pop("recipe"), values.pop("sets")) if recipe else (None, [])
            ctx = values.pop(CONTEXT)
            try:
                d = recipe_settings(path) if path else asdict(base)
                for s in chosen:
                    # By name: typer carries its own click, whose ParameterSource it does not export.
                    if path is None or ctx.get_parameter_source(s.name).name == "COMMANDLINE":
                        set_at(d, s.path, given[s.path])
                d["train"]["seed"] = d["seed"]
                apply_overrides(d, sets, str(path or "command line"))
                cfg = build(d, str(path) if path else None)
            except ValueError as e:
                fail(str(e))
            return fn(cfg=cfg, **values)

        params = own + extra + [inspect.Parameter(CONTEXT, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)]
        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return decorate


def field_option(cls: type, name: str, default=None, help: str | None = None) -> typer.models.OptionInfo:
    """An option for one field of a settings dataclass outside the loop's (Sampling, JudgeSettings): its
    flag, help and default (or `default` / `help`, where a command's own differ), no panel."""
    f = {f.name: f for f in fields(cls)}[name]
    return typer.Option(
        f.default if default is None else default, *decls(name, flag(cls, name)), help=help or f.metadata["help"]
    )
