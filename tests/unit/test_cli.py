"""The CLI's answers to bad input: exit 2, one line naming the problem, no traceback."""

import json
import subprocess
import sys

import pytest


def run(*args):
    return subprocess.run([sys.executable, "-m", "unigap", *args], capture_output=True, text=True, timeout=120)


def assert_one_line_error(proc, *words):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_help_explains_itself():
    proc = run("--help")
    assert proc.returncode == 0
    for cmd in ("score", "generate", "judge", "pretrain", "demo"):
        assert cmd in proc.stdout
    assert "non-unification" in run("score", "--help").stdout.lower() or "judge" in run("score", "--help").stdout
    module = subprocess.run([sys.executable, "-m", "unigap.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert module.returncode == 0 and all(cmd in module.stdout for cmd in ("score", "loop", "controls", "serve"))


@pytest.mark.parametrize(
    "args, words",
    [
        (["score", "--model", "/nonexistent/model"], ["no model at", "/nonexistent/model"]),
        (["score", "--n", "0"], ["--n", "at least 1"]),
        (["score", "--split", "nope"], ["--split", "nope"]),
        (["score", "--mode", "vibes"], ["--mode", "vibes"]),
        (["generate", "a red circle", "--n", "0"], ["--n"]),
        (["generate", "a red circle", "--best-of", "0"], ["--best-of", "at least 1"]),
        (["score", "--best-of", "0"], ["--best-of", "at least 1"]),
        (["generate", " "], ["empty"]),
        (["judge", "--image", "/nonexistent.png", "--prompt", "a red circle"], ["--image", "not a readable image"]),
        (["pretrain", "--vq-steps", "-1"], ["--vq-steps"]),
        (["pretrain", "--yes-no", "40"], ["--yes-no", "32 renders"]),
        (["grow", "--out", "/tmp/unused-grown", "--layers", "3"], ["--layers", "multiple of the model's 2"]),
        (["grow", "--out", "/tmp/unused-grown", "--paired-yes-no", "--yes-no", "40"], ["--yes-no", "32 renders"]),
        (
            ["grow", "--out", "/tmp/unused-grown", "--paired-yes-no", "--negative-kinds", "hue"],
            ["--negative-kinds", "hue"],
        ),
        (["pretrain", "--negative-kinds", "shape"], ["--negative-kinds", "--paired-yes-no"]),
        (["loop", "--more-rounds", "-1"], ["--more-rounds"]),
        (["loop", "--via-services", "localhost"], ["--via-services", "host:port,host:port"]),
        (["loop", "--via-services", "a:1,b:2", "--executor", "slurm"], ["executor", "slurm"]),
        (["loop", "--lora-rank", "-1"], ["--lora-rank"]),
        (["loop", "--und-anchor", "-1"], ["--und-anchor"]),
        (["loop", "--und-replay", "-1"], ["--und-replay"]),
        (["controls", "--und-replay", "-1"], ["--und-replay"]),
        (["controls", "--threshold", "1"], ["--threshold"]),
        (
            ["loop", "--via-services", "a:1,b:2", "--und-anchor", "1", "--trainer-procs", "2"],
            ["--und-anchor", "--trainer-procs 1"],
        ),
        (
            ["loop", "--via-services", "a:1,b:2", "--und-replay", "1", "--trainer-procs", "2"],
            ["--und-replay", "--trainer-procs 1"],
        ),
        (["loop", "--cfg", "0"], ["--cfg"]),
        (["loop", "--device", "tpu"], ["--device", "cpu, cuda or cuda:N"]),
        (["loop", "--device", "cuda:7"], ["--device cuda:7", "no such CUDA device"]),
        (
            ["loop", "--method", "c-sft", "--epochs", "4", "--curriculum-epoch", "4"],
            ["--curriculum-epoch", "between 1 and"],
        ),
        (["controls", "--arms", "render,vibes"], ["--arms", "vibes"]),
        (["controls", "--rounds", "0"], ["--rounds"]),
        (["loop", "--balance", "--max-per-prompt", "0"], ["--balance", "--max-per-prompt >= 1"]),
        (["controls", "--balance", "--max-per-prompt", "0"], ["--balance", "--max-per-prompt >= 1"]),
        (["loop", "--focus", "0"], ["--focus", "(0, 1]"]),
        (["controls", "--focus", "1.5"], ["--focus", "(0, 1]"]),
        (["loop", "--und-flawed", "4", "--und-replay", "0"], ["--und-flawed", "--und-replay > 0"]),
        (["loop", "--und-replay", "1", "--und-batch", "4"], ["--und-batch", ">= 8"]),
        (["loop", "--und-every", "0"], ["--und-every", ">= 1"]),
        (["loop", "--focus", "0.5", "--solved-rows", "-1"], ["--solved-rows", ">= 0"]),
        (["loop", "--val-n", "-1"], ["--val-n", ">= 0"]),
        (["loop", "--focus", "0.5", "--min-accept-rate", "0.5"], ["--min-accept-rate", "[0, --focus)"]),
        (["controls", "--min-accept-rate", "-0.1"], ["--min-accept-rate"]),
        (["loop", "--val-pairs", "0"], ["--val-pairs >= 1"]),
        (["loop", "--gate-ext-tolerance", "-0.1"], ["--gate-ext-tolerance", "[0, 1)"]),
        (["controls", "--gen-replay", "-1"], ["--gen-replay"]),
        (["controls", "--und-flawed", "-1", "--und-replay", "1"], ["--und-flawed", ">= 0"]),
        (["table", "/nonexistent/loop.json"], ["/nonexistent/loop.json", "cannot be read"]),
        (
            ["audit", "/nonexistent/loop.json", "--store", "/tmp/unused-store"],
            ["/nonexistent/loop.json", "not a `unigap loop --json`"],
        ),
        (["promote", "abc", "--store", "/tmp/unused-store"], ["not a checkpoint reference"]),
        (["serve", "--generation-port", "50051", "--judge-port", "50051"], ["ports must be distinct"]),
        (["serve", "--model", "/nonexistent/model"], ["--model", "neither a model folder"]),
        (["serve", "--evaluator", "no_such_module_here:judge"], ["--evaluator", "cannot import"]),
    ],
)
def test_bad_arguments(args, words):
    assert_one_line_error(run(*args), *words)


def test_bad_prompt_files(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert_one_line_error(run("score", "--split", str(empty)), "no prompts")
    free = tmp_path / "free.txt"  # free text is welcome, but the likelihood judge (the default) needs the world's
    free.write_text("a red circle\na purple hexagon\n")
    assert_one_line_error(
        run("score", "--split", str(free)), "--mode likelihood", "purple hexagon", "probability or decision"
    )
    # the controls render their pool and check it exactly: free text is refused whatever the judge
    assert_one_line_error(
        run("controls", "--pool", str(free), "--mode", "probability"), "shapes world", "purple hexagon"
    )
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text('{"prompt": "a cat"}\n{"category": "animals"}\n')
    assert_one_line_error(run("score", "--split", str(jsonl), "--mode", "decision"), "bad.jsonl:2", "prompt")
    broken = tmp_path / "broken.json"
    broken.write_text('["a red circle", ')
    assert_one_line_error(run("score", "--split", str(broken)), "not valid JSON")
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"a": 1}')
    assert_one_line_error(run("score", "--split", str(wrong)), "JSON list")


def test_not_an_image(tmp_path):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x89PNG not really")
    assert_one_line_error(run("judge", "--image", str(junk), "--prompt", "a red circle"), "not a readable image")


def test_promote_sets_the_serving_record(tmp_path):
    """`unigap promote` checks the reference is a checkpoint of the store, then records it."""
    from unigap.paths import DEFAULT_MODEL
    from unigap.store import LocalStore
    from unigap.store import records as rec

    store = LocalStore(tmp_path / "store")
    ref = rec.put_checkpoint(store, DEFAULT_MODEL)
    not_a_checkpoint = rec.put_json(store, {"hello": 1})
    assert_one_line_error(run("promote", not_a_checkpoint, "--store", str(tmp_path / "store")), "not a checkpoint")
    assert_one_line_error(run("promote", "f" * 64, "--store", str(tmp_path / "store")), "not a readable object")
    proc = run("promote", ref, "--store", str(tmp_path / "store"))
    assert proc.returncode == 0, proc.stderr
    assert rec.get_serving(store) == ref


def test_demo_scores_the_shipped_model_then_runs_the_default_loop(tmp_path, monkeypatch):
    """`unigap demo` wires its steps right: the gap of the shipped model (score.json, score.png),
    then the loop with every setting at its default, then co-improvement on the loop's run. The
    loop and the co-improvement measurement are replaced here (the loop takes 13 to 21 minutes:
    README.md); the tests of tests/unit/test_loop.py run both."""
    from typer.testing import CliRunner

    from unigap import cli, co_improvement
    from unigap.cli import runs
    from unigap.config import LoopConfig

    called, figures = [], {"final_round": 3, "n_images": 600, "n_disagree": 25, "win_rate": 0.4}
    figures |= {"win_rate_ci": [0.2, 0.6], "agreement_old": 0.9, "agreement_new": 0.89}

    def loop(cfg, store, model, json_out, report):
        called.append((cfg, store, report))
        return {"run": "runs/demo"}

    monkeypatch.setattr(runs, "run_loop", loop)
    monkeypatch.setattr(co_improvement, "co_improvement", lambda store, result, cache: figures)
    result = CliRunner().invoke(cli.app, ["demo", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "score.json").is_file() and (tmp_path / "score.png").is_file()
    assert called == [(LoopConfig(rounds=3), str(tmp_path / "store"), tmp_path)]
    # then whether the loop's shipped model is the better judge, measured on the run it made
    assert json.loads((tmp_path / "co-improvement.json").read_text()) == {"run": "runs/demo", **figures}


def test_the_cli_defaults_are_the_dataclasses():
    """Every option derived from a setting has the setting's default: `unigap loop` today's recipe,
    `unigap controls` the first defaults, the sampling and judge options `Sampling`'s and `JudgeSettings`'."""
    from dataclasses import asdict

    import typer

    from unigap import cli
    from unigap.cli.loop import CONTROL, CONTROL_SETTINGS
    from unigap.cli.options import settings, value_at
    from unigap.config import JudgeSettings, LoopConfig, Sampling

    commands = typer.main.get_command(cli.app).commands
    for name, base, paths in (("loop", LoopConfig(), None), ("controls", CONTROL, CONTROL_SETTINGS)):
        params = {p.name: p for p in commands[name].params}
        derived = [s for s in settings() if paths is None or s.path in paths]
        assert len(derived) == (len(settings()) if paths is None else len(paths))
        for s in derived:
            assert params[s.name].default == value_at(asdict(base), s.path), (name, s.path)
            assert s.flag in params[s.name].opts
    controls = {p.name: p.default for p in commands["controls"].params}
    assert controls["rounds"] == 1 and not {"method", "restart"} & set(controls)  # its own, and no more
    for name in ("score", "generate"):
        params = {p.name: p.default for p in commands[name].params}
        assert {k: params[k] for k in ("n", "seed", "cfg", "temperature", "best_of", "mode")} == {
            **{k: getattr(Sampling(), k) for k in ("n", "seed", "cfg", "temperature", "best_of")},
            "mode": JudgeSettings().mode,
        }
    params = {p.name: p.default for p in commands["judge"].params}
    assert (params["mode"], params["threshold"]) == (JudgeSettings().mode, JudgeSettings().threshold)


def test_a_recipe_is_the_base_options_and_set_override_it(tmp_path, monkeypatch):
    """`unigap loop --recipe F`: the recipe's settings, then options given on the command line, then --set."""
    from dataclasses import replace

    from typer.testing import CliRunner

    from unigap import cli
    from unigap.cli import runs
    from unigap.config import LoopConfig, TrainConfig

    seen = []
    monkeypatch.setattr(runs, "run_loop", lambda cfg, *rest: seen.append(cfg))

    def cfg_of(*args):
        result = CliRunner().invoke(cli.app, ["loop", "--store", str(tmp_path / "store"), *args])
        assert result.exit_code == 0, result.output
        return seen.pop()

    default = cfg_of()
    assert default == LoopConfig() == cfg_of("--recipe", "recipes/default.yaml")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("n: 4\nbalance: false\ntrain:\n  epochs: 2\n  lr: 0.01\n")
    assert cfg_of("--recipe", str(recipe), "--seed", "3") == LoopConfig(
        n=4, balance=False, seed=3, train=TrainConfig(epochs=2, lr=0.01, seed=3)
    )
    # Options given on the command line override the recipe, even at the option's default value.
    got = cfg_of("--recipe", str(recipe), "--n", "32", "--epochs", "5", "--balance")
    assert (got.n, got.train.epochs, got.balance, got.train.lr) == (32, 5, True, 0.01)
    got = cfg_of("--recipe", str(recipe), "--epochs", "5", "--set", "train.epochs=7", "--set", "pool=train")
    assert (got.train.epochs, got.pool) == (7, "train")
    assert cfg_of("--set", "train.und_every=2") == replace(default, train=TrainConfig(und_every=2))


def test_bad_recipes_exit_2_with_one_line(tmp_path):
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("n: 4\nfocuss: 0.5\n")
    assert_one_line_error(run("loop", "--recipe", str(unknown)), "unknown.yaml", "unknown setting 'focuss'")
    typo = tmp_path / "typo.yaml"
    typo.write_text("train:\n  epochs: six\n")
    assert_one_line_error(run("loop", "--recipe", str(typo)), "typo.yaml", "train.epochs must be int")
    assert_one_line_error(run("loop", "--set", "train.epochs"), "--set 'train.epochs'", "KEY=VALUE")
    assert_one_line_error(run("loop", "--set", "seed=2"), "seed is given per run")
    assert_one_line_error(run("loop", "--recipe", str(tmp_path / "absent.yaml")), "absent.yaml", "cannot be read")
