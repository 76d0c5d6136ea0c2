"""recipes/*.yaml, results/<recipe>/s<seed>.json and docs/results.md agree (unigap/results_doc.py)."""

import json
import re
import shutil
from dataclasses import asdict, fields
from pathlib import Path

import pytest
import yaml

from unigap.config import LoopConfig, TrainConfig
from unigap.results_doc import main, recipe_runs, render

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


def runs_in(folder: Path) -> list[Path]:
    """The loop runs of a results folder, s<seed>.json (results/rescore/ has start-seed*.json)."""
    return sorted(p for p in folder.iterdir() if re.fullmatch(r"s\d+\.json", p.name))


RESULT_FOLDERS = sorted(p for p in (ROOT / "results").iterdir() if p.is_dir() and runs_in(p))


def seeded(recipe: dict, seed: int) -> LoopConfig:
    """A full recipe's run config for one seed (a recipe lists every setting but the seed)."""
    return LoopConfig.from_dict({**recipe, "seed": seed, "train": {**recipe["train"], "seed": seed}})


def test_the_checked_in_results_doc_is_what_results_generate():
    assert (ROOT / "docs" / "results.md").read_text() == render(), "run `make results` and commit docs/results.md"


def test_each_table_row_names_its_recipe_file():
    doc = (ROOT / "docs" / "results.md").read_text()
    tables = [t.split("\n## ")[0] for t in doc.split("## Table 1")[1:]]
    assert [t.split("`")[1] for t in tables] == ["test", "heldout"], "the headline split first"
    named = [n for t in tables for n in re.findall(r"^\| `(recipes/[^`]+\.yaml)` \| \d+ \|", t, flags=re.MULTILINE)]
    assert sorted(named) == sorted(f"recipes/{name}.yaml" for name in recipe_runs(ROOT / "results"))
    on_test = re.findall(r"^\| `(recipes/[^`]+\.yaml)` \| \d+ \|", tables[0], flags=re.MULTILINE)
    assert on_test[0] == "recipes/default.yaml", "the default recipe heads the headline table"
    assert len(named) == len(RESULT_FOLDERS) > 20


def test_recipes_reported_on_test_are_shown_on_val_where_they_are_chosen():
    doc = (ROOT / "docs" / "results.md").read_text()
    section = doc.split("## Where recipes are chosen: the gate's `val` texts")[1].split("\n## ")[0]
    rows = dict(re.findall(r"^\| `recipes/([^`]+)\.yaml` \| \d+ \| ([^|]+) \|", section, flags=re.MULTILINE))
    found = recipe_runs(ROOT / "results").items()
    on_test = [n for n, runs in found if LoopConfig.from_dict(runs[0]["config"]).reported_on == "test"]
    assert sorted(rows) == sorted(on_test) and "default" in rows
    shipped_val = []
    for path in runs_in(ROOT / "results" / "default"):
        rounds = json.loads(path.read_text())["rounds"]
        shipped_val.append([r for r in rounds if r["round"] == 0 or r["promoted"]][-1]["val"]["gen_acc"])
    start = json.loads(runs_in(ROOT / "results" / "default")[0].read_text())["rounds"][0]["val"]["gen_acc"]
    assert rows["default"].startswith(f"{100 * start:.1f} -> {100 * sum(shipped_val) / len(shipped_val):.1f} [")


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_a_recipe_opens_with_what_it_is_and_lists_every_setting(path):
    text = path.read_text()
    head = [line for line in text.splitlines() if line.startswith("#")]
    name = path.stem
    assert text.startswith("# ") and len(head) >= 3
    assert (
        f"# Run: unigap loop --recipe recipes/{name}.yaml --seed 0 --store runs/{name}-s0 --json results/{name}/s0.json"
    ) in head
    assert any(line.startswith("# Override: ") and "--set train." in line for line in head)
    recipe = yaml.safe_load(text)
    assert list(recipe) == [f.name for f in fields(LoopConfig) if f.name != "seed"]
    assert list(recipe["train"]) == [f.name for f in fields(TrainConfig) if f.name != "seed"]
    # every value has its default's type (YAML reads 1e-3 as a string), and the config keeps it as written
    defaults = asdict(LoopConfig())
    assert {k: type(v) for k, v in recipe.items()} == {k: type(defaults[k]) for k in recipe}
    assert {k: type(v) for k, v in recipe["train"].items()} == {k: type(defaults["train"][k]) for k in recipe["train"]}
    config = asdict(seeded(recipe, 7))
    assert {**config, "train": {**config["train"], "seed": 0}, "seed": 0} == {
        **recipe,
        "seed": 0,
        "train": {**recipe["train"], "seed": 0},
    }


@pytest.mark.parametrize("folder", RESULT_FOLDERS, ids=lambda p: p.name)
def test_each_results_folder_holds_runs_of_its_recipe(folder):
    path = ROOT / "recipes" / f"{folder.name}.yaml"
    if not path.exists():
        assert folder.name == "default", f"results/{folder.name}/ has no recipes/{folder.name}.yaml"
        pytest.skip("recipes/default.yaml is written with the recipe loader; the next test checks its runs")
    recipe = yaml.safe_load(path.read_text())
    for run in runs_in(folder):
        config = json.loads(run.read_text())["config"]
        assert asdict(LoopConfig.from_dict(config)) == asdict(seeded(recipe, config["seed"])), run


def test_the_default_runs_are_what_unigap_loop_runs_today():
    runs = runs_in(ROOT / "results" / "default")
    assert len(runs) == 3
    for run in runs:
        config = json.loads(run.read_text())["config"]
        assert asdict(LoopConfig.from_dict(config)) == asdict(
            LoopConfig(seed=config["seed"], train=TrainConfig(seed=config["seed"]))
        )


def test_the_paper_recipe_is_the_papers_configuration():
    cfg = seeded(yaml.safe_load((ROOT / "recipes" / "paper-sft.yaml").read_text()), 0)
    assert (cfg.method, cfg.max_per_prompt, cfg.balance, cfg.focus, cfg.threshold, cfg.rounds) == (
        "sft",
        0,
        False,
        1.0,
        0.5,
        1,
    )
    t = cfg.train
    assert (t.modules, t.epochs, t.und_replay, t.gen_replay, t.und_anchor, t.kl_weight) == (
        "lm",
        20,
        0.0,
        0.0,
        0.0,
        0.0,
    )


def _copy(tmp_path: Path, *names: str) -> Path:
    """A results folder with the named recipes' runs."""
    out = tmp_path / "results"
    for name in names:
        shutil.copytree(ROOT / "results" / name, out / name)
    return out


def test_the_generator_lists_recipes_without_results_as_not_yet_measured(tmp_path):
    results = _copy(tmp_path, "e5-every3", "first-defaults")
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    for name in ("e5-every3", "paper-sft"):
        shutil.copy(ROOT / "recipes" / f"{name}.yaml", recipes)
    text = render(results, recipes)
    assert text.index("`recipes/e5-every3.yaml` | 3 |") < text.index("`recipes/first-defaults.yaml` | 3 |")
    assert text.split("## Not yet measured")[1].strip() == "- `recipes/paper-sft.yaml`"
    assert "600 (120 x 5) images" in text


def test_a_folder_mixing_two_configs_or_misnamed_seeds_is_refused(tmp_path):
    results = _copy(tmp_path, "e5-every3")
    shutil.copy(ROOT / "results" / "default" / "s1.json", results / "e5-every3" / "s1.json")
    with pytest.raises(ValueError, match=r"e5-every3/s1\.json: its settings differ from s0\.json's"):
        render(results, tmp_path)
    shutil.copy(ROOT / "results" / "e5-every3" / "s2.json", results / "e5-every3" / "s1.json")
    with pytest.raises(ValueError, match=r"s1\.json: its config's seed is 2, its name says s1\.json"):
        render(results, tmp_path)
    run = json.loads((ROOT / "results" / "e5-every3" / "s1.json").read_text())
    (results / "e5-every3" / "s1.json").write_text(json.dumps({**run, "sampler": "counter-gumbel"}))
    with pytest.raises(ValueError, match=r"s1\.json: sampled by other noise than s0\.json"):
        render(results, tmp_path)
    (results / "e5-every3" / "s1.json").write_text('{"rows": []}')
    with pytest.raises(ValueError, match=r"s1\.json: not a `unigap loop --json` result"):
        render(results, tmp_path)


def test_the_command_writes_the_doc_and_says_bad_input_in_one_line(tmp_path, capsys):
    out = tmp_path / "docs" / "results.md"
    assert main(["--results", str(_copy(tmp_path, "floor-steps")), "--recipes", str(tmp_path), "--out", str(out)]) == 0
    assert (
        "`recipes/floor-steps.yaml` | sft | train+heldout | heldout | 1 x 18 | 0, 1, 2 | per-candidate streams |"
        in out.read_text()
    )
    (tmp_path / "results" / "floor-steps" / "s0.json").write_text("{")
    with pytest.raises(SystemExit) as e:
        main(["--results", str(tmp_path / "results"), "--out", str(out)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "floor-steps/s0.json: not JSON" in err and "\n" not in err
    with pytest.raises(SystemExit) as e:
        main(["--results", str(tmp_path / "nowhere")])
    assert e.value.code == 2


DEPTH = ROOT / "results" / "by-depth"


def test_the_depth_runs_are_the_default_recipes_first_round():
    """results/by-depth: each depth's runs are recipes/default.yaml cut to one round, each with the
    co-improvement of that round (what the doc's depth table pools)."""
    recipe = {**yaml.safe_load((ROOT / "recipes" / "default.yaml").read_text()), "rounds": 1}
    runs = sorted(DEPTH.glob("L*-s*.json"))
    assert {p.name.split("-")[0] for p in runs} == {"L2", "L4", "L6"}
    starts = {}
    for path in runs:
        run = json.loads(path.read_text())
        assert asdict(LoopConfig.from_dict(run["config"])) == asdict(seeded(recipe, run["config"]["seed"])), path
        assert json.loads((DEPTH / f"co-{path.name}").read_text())["final_round"] == 1
        starts.setdefault(path.name.split("-")[0], set()).add(run["rounds"][0]["checkpoint"])
    assert all(len(s) == 1 for s in starts.values()) and len(set.union(*starts.values())) == 3, "one model a depth"
    section = (ROOT / "docs" / "results.md").read_text().split("## Co-improvement over model depth")[1]
    assert [int(n) for n in re.findall(r"^\| (\d+) \|", section, flags=re.MULTILINE)] == [2, 4, 6]


def test_a_depth_run_without_its_co_improvement_or_cosines_is_refused(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(DEPTH, results / "by-depth")
    (results / "by-depth" / "dynamics-L4.json").unlink()
    with pytest.raises(ValueError, match=r"dynamics-L4\.json: missing \(its `unigap dynamics`\)"):
        render(results, tmp_path)
    (results / "by-depth" / "co-L2-s1.json").unlink()
    with pytest.raises(ValueError, match=r"co-L2-s1\.json: missing"):
        render(results, tmp_path)
