"""Recipe files (recipes/*.yaml) read into the loop's settings."""

from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from unigap.config import LoopConfig, TrainConfig
from unigap.recipes import PER_RUN, load_recipe, to_yaml

ROOT = Path(__file__).parents[2]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


def test_the_default_recipe_is_the_default():
    """`unigap loop --recipe recipes/default.yaml` runs exactly what `unigap loop` runs."""
    assert load_recipe(ROOT / "recipes" / "default.yaml") == LoopConfig()
    body = [line for line in (ROOT / "recipes" / "default.yaml").read_text().splitlines() if not line.startswith("#")]
    assert "\n".join(body) + "\n" == to_yaml(LoopConfig())  # every setting, in declaration order


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_recipe_loads_and_lists_every_setting(path):
    """A recipe says everything it runs (a changed default cannot change it) and how to run it."""
    load_recipe(path)
    data = yaml.safe_load(path.read_text())
    every = {f.name for f in fields(LoopConfig)} - set(PER_RUN)
    assert set(data) == every, sorted(set(data) ^ every)
    assert set(data["train"]) == {f.name for f in fields(TrainConfig)} - {"seed"}
    head = path.read_text().splitlines()[0]
    assert head.startswith("# "), f"{path.name} must open with a comment saying what it is"
    assert f"unigap loop --recipe recipes/{path.name}" in path.read_text()


def test_overrides_set_any_field_by_its_dotted_name():
    cfg = load_recipe(ROOT / "recipes" / "default.yaml", ["train.epochs=3", "focus=1", "method=dpo", "balance=false"])
    assert (cfg.train.epochs, cfg.focus, cfg.method, cfg.balance) == (3, 1.0, "dpo", False)
    assert isinstance(cfg.focus, float)
    assert cfg == LoopConfig(focus=1.0, method="dpo", balance=False, train=TrainConfig(epochs=3))


def test_a_recipe_leaves_out_what_takes_the_default(tmp_path):
    path = tmp_path / "short.yaml"
    path.write_text("method: c-sft\ntrain:\n  epochs: 4\n")
    assert load_recipe(path) == LoopConfig(method="c-sft", train=TrainConfig(epochs=4))


@pytest.mark.parametrize(
    "text, overrides, words",
    [
        ("nope: 1\n", [], ["unknown setting 'nope'"]),
        ("train:\n  nope: 1\n", [], ["unknown setting 'train.nope'"]),
        ("n: many\n", [], ["n must be int", "'many'"]),
        ("balance: 1\n", [], ["balance must be bool"]),
        ("n: true\n", [], ["n must be int"]),
        ("train: 3\n", [], ["train must be a mapping"]),
        ("seed: 3\n", [], ["seed is given per run"]),
        ("train:\n  seed: 3\n", [], ["train.seed is given per run"]),
        ("- n\n", [], ["expected a mapping"]),
        ("n: [1\n", [], ["not valid YAML"]),
        ("train:\n  und_every: 0\n", [], ["--und-every must be >= 1"]),
        ("method: c-sft\ncurriculum_epoch: 9\n", [], ["--curriculum-epoch"]),
        ("", ["train.epochs"], ["--set 'train.epochs'", "KEY=VALUE"]),
        ("", ["train.epochs=three"], ["--set", "train.epochs must be int"]),
        ("", ["train.lr.x=1"], ["unknown setting 'train.lr.x'"]),
        ("", ["train=1"], ["train is a mapping"]),
    ],
)
def test_bad_recipes_name_the_key_and_the_file(tmp_path, text, overrides, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as e:
        load_recipe(path, overrides)
    assert str(path) in str(e.value)
    for w in words:
        assert w in str(e.value)


def test_a_missing_recipe_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="cannot be read"):
        load_recipe(tmp_path / "absent.yaml")
