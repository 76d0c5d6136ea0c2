"""`unigap ...`: the command line. Thin: parse, check, call the library, print.

Bad input exits 2 with one line naming the problem, never a traceback.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from unigap.config import CONTROL_ARMS, MODULES, YES_NO, LoopConfig, TrainConfig
from unigap.paths import DEFAULT_MODEL

LOOP, TRAIN = LoopConfig(), TrainConfig()  # the default recipe, in one place
# `unigap controls` keeps the first defaults (config.FIRST): the ladder (README) was measured with them.
CONTROL = LoopConfig.from_dict({})
app = typer.Typer(
    help="Measure and close the generation-understanding gap of unified multimodal models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(width=None if sys.stdout.isatty() else 130)  # logs and CI: don't wrap tables


class BadInput(Exception):
    """A user mistake: reported in one line, exit status 2."""


def fail(message: str) -> None:
    raise BadInput(message)


def valid(make, *args, **settings):
    """Settings the dataclasses accept (unigap/config.py validates them), else one line and exit 2."""
    try:
        return make(*args, **settings)
    except ValueError as e:
        fail(str(e))


def check_model(path: Path) -> None:
    if not (path / "config.json").is_file():
        fail(f"no model at {path}: expected a folder written by save_pretrained (config.json)")


def check_device(device: str) -> None:
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        fail(f"--device must be cpu, cuda or cuda:N, not {device!r}")
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        fail(f"--device {device}: no such CUDA device here ({torch.cuda.device_count()} visible)")


def load_model(path: Path):
    from unigap.model.adapter import UnifiedModel

    check_model(path)
    return UnifiedModel.load(path)


def load_prompts(split: str) -> list:
    """Specs of a split name, or of a file with one prompt per line (or a JSON list)."""
    from unigap import world

    if split in world.SPLIT_NAMES:
        return world.split(split)
    path = Path(split)
    if not path.is_file():
        fail(f"--split {split!r} is neither a split ({', '.join(world.SPLIT_NAMES)}) nor a file")
    text = path.read_text()
    try:
        lines = json.loads(text) if path.suffix == ".json" else text.splitlines()
    except json.JSONDecodeError as e:
        fail(f"{path}: not valid JSON ({e.msg}, line {e.lineno})")
    if not isinstance(lines, list) or not all(isinstance(x, str) for x in lines):
        fail(f"{path}: expected a JSON list of prompt strings")
    specs = []
    for i, line in enumerate(lines, 1):
        if line.strip():
            try:
                specs.append(world.parse(line))
            except ValueError:
                fail(f"{path}:{i}: {line.strip()!r} is not a prompt of the shapes world")
    if not specs:
        fail(f"{path}: no prompts in the file")
    return specs


def check_mode(mode: str) -> None:
    from unigap.model.judge import MODES

    if mode not in MODES:
        fail(f"--mode must be one of {', '.join(MODES)}, not {mode!r}")


def check_sft_rule(threshold: float, max_per_prompt: int, balance: bool, focus: float, solved_rows: int, min_accept_rate: float) -> None:
    """The SFT set's rule, as `unigap loop` and `unigap controls` share it."""
    if not 0 < threshold < 1 or max_per_prompt < 0:
        fail("--threshold must be in (0, 1) and --max-per-prompt >= 0")
    if balance and max_per_prompt < 1:
        fail("--balance needs --max-per-prompt >= 1 (the rows each prompt gives)")
    if not 0 < focus <= 1:
        fail(f"--focus is an acceptance rate in (0, 1], not {focus}")
    if solved_rows < 0:
        fail(f"--solved-rows must be >= 0, not {solved_rows}")
    if not 0 <= min_accept_rate < focus:
        fail(f"--min-accept-rate is an acceptance rate in [0, --focus), not {min_accept_rate}")


def check_regulariser(train: TrainConfig) -> None:
    """The anchor and replay settings, as `unigap loop` and `unigap controls` share them. Flawed
    renders ride in the understanding replay's batches, so they need the replay."""
    if min(train.und_anchor, train.und_replay, train.gen_replay) < 0:
        fail("--und-anchor, --und-replay and --gen-replay must be >= 0")
    if train.und_batch < YES_NO:
        fail(f"--und-batch must be >= {YES_NO} (the replay asks yes/no of its first {YES_NO} renders), not {train.und_batch}")
    if train.und_every < 1:
        fail(f"--und-every must be >= 1 (1: the replay joins every batch), not {train.und_every}")
    if train.und_flawed < 0 or (train.und_flawed and not train.und_replay):
        fail(f"--und-flawed must be >= 0 and needs --und-replay > 0 (it adds to the replayed batch), "
             f"got {train.und_flawed} with --und-replay {train.und_replay}")


def pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def print_report(report: dict) -> None:
    table = Table(title="Non-unification score (own judge) and external accuracy", show_lines=False)
    # und: judge accuracy on own images / on rendered pairs; precision: the judge's among what it
    # accepts; cover: prompts with a right image among N / with one the judge accepts too.
    for col in ("group", "prompts", "images", "NU % [95% CI]", "gen %", "und own %", "und rendered %", "ext agree %", "precision %", "cover %", "judge cover %"):
        table.add_column(col, justify="left" if col == "group" else "right", no_wrap=col.startswith("NU"))

    def row(name, r, style=None):
        ci = f"{pct(r['nu'])} [{pct(r['nu_ci'][0])}, {pct(r['nu_ci'][1])}]"
        table.add_row(name, str(r.get("n_prompts", "")), str(r["n_images"]), ci, pct(r["gen_acc"]), pct(r["und_acc"]), pct(r["und_acc_rendered"]), pct(r["ext_agreement"]),
                      pct(r["judge_precision"]), pct(r["coverage"]), pct(r["judge_coverage"]), style=style)

    for name, r in report["by_category"].items():
        row(name, r)
    table.add_section()
    for name, r in report["by_tier"].items():
        row(f"tier: {name}", r)
    table.add_section()
    row("overall", report["overall"], style="bold")
    console.print(table)
    s = report["settings"]
    best = f" (each the judge's best of {s['best_of']})" if s["best_of"] > 1 else ""
    console.print(f"judge mode {s['judge_mode']}, N {s['n']} per prompt{best}, CFG {s['cfg']}, T {s['temperature']}, seed {s['seed']}")


@app.command()
def score(
    model: Path = typer.Option(DEFAULT_MODEL, help="Model folder (save_pretrained layout); default: the shipped tiny model."),
    split: str = typer.Option("heldout", help="A split (train, val, heldout, novel) or a file of prompts, one per line."),
    n: int = typer.Option(4, help="Images generated per prompt."),
    seed: int = typer.Option(0, help="Sampling seed (fixed seeds make runs comparable)."),
    mode: str = typer.Option(LOOP.judge_mode, help="Judge: likelihood (caption vs competitors), probability (p_yes) or decision (parsed answer)."),
    per_category: int = typer.Option(16, help="At most this many prompts per category (0: all), chosen reproducibly."),
    cfg: float = typer.Option(1.5, help="Classifier-free guidance scale."),
    temperature: float = typer.Option(0.7, help="Sampling temperature (0: greedy)."),
    best_of: int = typer.Option(1, help="Each image is the model's own judge's pick among this many samples (its understanding as a verifier at generation time)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the figures to this JSON file."),
    plot: Optional[Path] = typer.Option(None, help="Write a PNG chart of NU and accuracies per category and tier."),
):
    """Generate N images per prompt, judge them with the model's own understanding, check them
    with the exact external evaluator, and print NU and accuracies per category and tier."""
    from unigap.candidates import Sampling
    from unigap.evaluate import make_judge, score_report, select_prompts

    if n < 1 or best_of < 1:
        fail(f"--n and --best-of must be at least 1, got {n} and {best_of}")
    if cfg <= 0 or temperature < 0:
        fail("--cfg must be > 0 and --temperature >= 0")
    check_mode(mode)
    specs = select_prompts(load_prompts(split), per_category, seed)
    um = load_model(model)
    report = score_report(um, make_judge(um, mode), specs, Sampling(n=n, seed=seed, cfg=cfg, temperature=temperature, best_of=best_of))
    samples = report.pop("_samples")
    report["settings"]["split"] = split
    print_report(report)
    if json_out:
        write_json(json_out, report)
    if plot:
        from unigap.plots import plot_score

        plot_score(report, plot)
        console.print(f"plot: {plot}")
    return report, samples


@app.command()
def generate(
    prompts: list[str] = typer.Argument(..., help="Prompts, e.g. \"a red circle on the left\"."),
    n: int = typer.Option(4, help="Images per prompt."),
    out: Path = typer.Option(Path("generated"), help="Folder for the PNGs and generated.json."),
    model: Path = typer.Option(DEFAULT_MODEL, help="Model folder."),
    seed: int = typer.Option(0),
    cfg: float = typer.Option(1.5, help="Classifier-free guidance scale."),
    temperature: float = typer.Option(0.7, help="Sampling temperature (0: greedy)."),
    mode: str = typer.Option(LOOP.judge_mode, help="Judge mode for the p_yes written beside each image (probability for prompts outside the shapes world)."),
    best_of: int = typer.Option(1, help="Write, for each image, the judge's pick among this many samples."),
):
    """Generate images with the model and write PNGs plus a JSON of token ids and the model's own p_yes."""
    from PIL import Image

    from unigap.candidates import Sampling, sample_and_judge
    from unigap.evaluate import make_judge

    if n < 1 or best_of < 1:
        fail(f"--n and --best-of must be at least 1, got {n} and {best_of}")
    if any(not p.strip() for p in prompts):
        fail("a prompt is empty")
    check_mode(mode)
    um = load_model(model)
    try:
        res = sample_and_judge(um, make_judge(um, mode), prompts, Sampling(n, seed, cfg, temperature, best_of=best_of))
    except ValueError as e:
        fail(f"cannot judge in {mode} mode: {e}")
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for r, (text, image) in enumerate(zip(res.prompts, res.images)):
        name = f"{res.prompt_index[r]:03d}_{r % n:02d}.png"
        Image.fromarray(image).save(out / name)
        records.append({"prompt": text, "file": name, "tokens": res.tokens[r].tolist(), "p_yes": float(res.p_yes[r])})
    write_json(out / "generated.json", records)
    for rec in records:
        console.print(f"{rec['file']}  p_yes {rec['p_yes']:.3f}  {rec['prompt']}")


@app.command()
def judge(
    image: Path = typer.Option(..., help="PNG to judge."),
    prompt: str = typer.Option(..., help="The prompt the image should show."),
    model: Path = typer.Option(DEFAULT_MODEL, help="Model folder."),
    mode: str = typer.Option(LOOP.judge_mode, help="likelihood (caption vs competitors; shapes-world prompts), probability or decision."),
    threshold: float = typer.Option(0.5, help="Accept when p_yes >= threshold."),
):
    """Ask the model's understanding whether an image shows a prompt: p_yes and decision."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    from unigap.evaluate import make_judge

    check_mode(mode)
    if not prompt.strip():
        fail("--prompt is empty")
    try:
        pixels = np.asarray(Image.open(image).convert("RGB"))
    except (FileNotFoundError, UnidentifiedImageError, OSError) as e:
        fail(f"--image {image}: not a readable image ({e.__class__.__name__})")
    um = load_model(model)
    try:
        j = make_judge(um, mode, threshold).score(pixels[None], [prompt])
    except ValueError as e:
        fail(f"cannot judge in {mode} mode: {e}")
    result = {"prompt": prompt, "p_yes": float(j.p_yes[0]), "decision": bool(j.decision[0])}
    if j.answers is not None:
        result["answer"] = j.answers[0]
    console.print_json(json.dumps(result))


@app.command()
def pretrain(
    out: Path = typer.Option(Path("runs/tiny-shapes"), help="Folder for the trained model."),
    seed: int = typer.Option(0, help="Seed of everything: data, initialisation, order."),
    vq_steps: Optional[int] = typer.Option(None, help="VQ tokenizer steps (default: the shipped recipe)."),
    und_steps: Optional[int] = typer.Option(None, help="Understanding-only steps."),
    joint_steps: Optional[int] = typer.Option(None, help="Joint understanding + generation steps."),
):
    """Train the tiny unified model from scratch on the shapes world (about 25 minutes on 2 cores)."""
    from unigap.pretrain import PretrainConfig, pretrain as run

    cfg = PretrainConfig(seed=seed)
    for name, value in (("vq_steps", vq_steps), ("und_steps", und_steps), ("joint_steps", joint_steps)):
        if value is not None:
            if value < 0:
                fail(f"--{name.replace('_', '-')} must be >= 0")
            setattr(cfg, name, value)
    run(out, cfg)
    console.print(f"model written to {out}")


@app.command()
def grow(
    out: Path = typer.Option(..., help="Folder for the grown model."),
    model: Path = typer.Option(DEFAULT_MODEL, help="The trained model to grow."),
    layers: int = typer.Option(4, help="Depth of the grown language model (a multiple of the model's)."),
    steps: int = typer.Option(800, help="Joint understanding + generation steps after growing."),
    lr: float = typer.Option(5e-4, help="Peak learning rate of those steps."),
    seed: int = typer.Option(11, help="Seed of the data and order."),
):
    """Deepen a trained model's language model (each layer followed by copies of itself whose
    outputs start at zero, so nothing it could do is lost) and continue joint training: a
    larger generator from the shipped one without training from scratch."""
    from transformers import JanusConfig

    from unigap.pretrain import check_growth, grow as run

    if steps < 0 or not lr > 0:
        fail("--steps must be >= 0 and --lr > 0")
    check_model(model)
    try:  # checked on the config, before minutes of loading and training
        check_growth(JanusConfig.from_pretrained(model).text_config.num_hidden_layers, layers)
    except ValueError as e:
        fail(f"--layers: {e}")
    run(model, out, layers, steps, lr, seed)
    console.print(f"model written to {out}")


@app.command()
def loop(
    rounds: int = typer.Option(LOOP.rounds, help="Self-improvement rounds: the run's target (rerunning resumes the same run)."),
    more_rounds: int = typer.Option(0, help="Instead of --rounds: this many rounds beyond those the run has finished (what a scheduled job asks for)."),
    method: str = typer.Option(LOOP.method, help="sft, dpo, c-sft or c-dpo (c-: with the discard-pool curriculum)."),
    n: int = typer.Option(LOOP.n, help="Candidates sampled per prompt and round."),
    seed: int = typer.Option(LOOP.seed, help="Training seed (evaluation seeds are fixed)."),
    pool: str = typer.Option(LOOP.pool, help="Prompt TEXTS to improve on: train+heldout, train, heldout+val (the evaluated texts only: the gate's val is then in the pool, as heldout is), or a file."),
    store: str = typer.Option("runs/store", help="Preference store: a directory, or s3://bucket/prefix (endpoint and keys from UNIGAP_S3_*). Rerun the same command to resume."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the per-round figures to this JSON file."),
    report: Optional[Path] = typer.Option(None, help="Folder for the JSON and PNG plots of the run."),
    model: Path = typer.Option(DEFAULT_MODEL, help="Starting model folder."),
    via_services: Optional[str] = typer.Option(None, help="GENERATION,JUDGE gRPC addresses (host:port,host:port): generate and judge through the services (see `unigap serve`), train through --executor; the services serve the promoted model afterwards. Token from UNIGAP_TOKEN."),
    executor: str = typer.Option("local", help="With --via-services, where training runs: local (a subprocess) or kubernetes (a batch/v1 Job; settings from UNIGAP_K8S_*)."),
    trainer_procs: int = typer.Option(1, help="With --via-services, trainer processes (torchrun DDP: gloo on CPU, nccl on GPU)."),
    mode: str = typer.Option(LOOP.judge_mode, help="The model's own judge: likelihood, probability or decision."),
    threshold: float = typer.Option(LOOP.threshold, help="The judge accepts a candidate when p_yes >= threshold."),
    max_per_prompt: int = typer.Option(LOOP.max_per_prompt, help="SFT: at most this many accepted candidates per prompt (0: all)."),
    balance: bool = typer.Option(LOOP.balance, help="SFT: every prompt with an accepted candidate gives exactly --max-per-prompt rows (its accepted ones repeated), so rare successes weigh as much as easy ones."),
    focus: float = typer.Option(LOOP.focus, help="SFT: a prompt whose share of accepted candidates is above this gives --solved-rows rows only (1: off), so training goes where the model still fails."),
    solved_rows: int = typer.Option(LOOP.solved_rows, help="SFT: rows a prompt above --focus gives (0: none; then hold the rest with --gen-replay)."),
    min_accept_rate: float = typer.Option(LOOP.min_accept_rate, help="SFT: a prompt whose share of accepted candidates is below this gives no rows (rare accepts are mostly the judge's errors: `unigap audit`; yet 0.15 cost held-out generation, README)."),
    lr: float = typer.Option(TRAIN.lr, help="Learning rate of each round."),
    epochs: int = typer.Option(TRAIN.epochs, help="Epochs over each round's data."),
    beta: float = typer.Option(TRAIN.beta, help="DPO beta."),
    nll_weight: float = typer.Option(TRAIN.nll_weight, help="DPO: weight of the NLL on the chosen image."),
    kl_weight: float = typer.Option(TRAIN.kl_weight, help="SFT: weight of the KL anchor to the pre-round model."),
    und_anchor: float = typer.Option(TRAIN.und_anchor, help="Weight of the understanding anchor: KL of the judge's caption distributions on each batch's images to the pre-round model's (keeps understanding while generation trains hard)."),
    und_replay: float = typer.Option(TRAIN.und_replay, help="Weight of the understanding replay: each training step adds the pretraining understanding loss (captions and yes/no) on fresh renders, so the judge keeps what it knew while generation trains hard."),
    gen_replay: float = typer.Option(TRAIN.gen_replay, help="Weight of the generation replay: each training step adds the pretraining generation loss on fresh renders of `train` prompts (never an evaluated one), so a round that trains only where the model fails does not make it forget the rest."),
    und_flawed: int = typer.Option(TRAIN.und_flawed, help="With --und-replay: flawed renders (an extra object, a squashed or bitten shape) per replayed batch, captioned as showing no prompt; the judge's reject caption competes with every prompt, so the judge learns to refuse the errors its clean-scene negatives never showed it."),
    und_batch: int = typer.Option(TRAIN.und_batch, help="With --und-replay: renders captioned per replayed batch (pretraining used 32). The replay takes about two thirds of a training step's time at 32."),
    und_every: int = typer.Option(TRAIN.und_every, help="With --und-replay: the replay joins one batch in this many (drawn per batch) at this many times its weight: the same expected gradient for that fraction of its cost (1: every batch)."),
    modules: str = typer.Option(TRAIN.modules, help="What trains: lm (the shared language model) or lm+head."),
    lora_rank: int = typer.Option(TRAIN.lora_rank, help="Train the language model through LoRA adapters of this rank (peft; merged into the checkpoint). 0: full weights."),
    sample_cfg: float = typer.Option(LOOP.cfg, "--cfg", help="Guidance scale of the candidates (low for a weak generator: FINDINGS.md)."),
    temperature: float = typer.Option(LOOP.temperature, help="Sampling temperature of the candidates (0: greedy)."),
    canonical: bool = typer.Option(LOOP.canonical, help="Train on canonical tokens (decode, then re-encode) rather than the sampled ones."),
    curriculum_epoch: int = typer.Option(LOOP.curriculum_epoch, help="C-SFT / C-DPO: the epoch (counted from 0) before which the discard pool is replayed; with --rounds 1 and many --epochs this is the paper's one-pass Algorithm 1."),
    restart: bool = typer.Option(LOOP.restart, help="Each round trains on the candidates of every round so far (sampled by the last promoted model), from the model --warm says, instead of training the last promoted model on its own round's (--no-restart)."),
    warm: bool = typer.Option(LOOP.warm, help="With --restart: each round trains the last promoted model, not the starting one, on the candidates of every round so far, so the rounds' epochs add up (--no-warm: from the start, as STaR). Without --restart the last promoted model trains anyway."),
    gate_external: bool = typer.Option(LOOP.gate_external, help="The gate also requires val external accuracy not to fall."),
    gate_ext_tolerance: float = typer.Option(LOOP.gate_ext_tolerance, help="The external check lets val external accuracy fall by at most this (an accuracy, e.g. 0.01: one point), so a change within the noise of the val sample does not reject a round."),
    gate_fresh_val: bool = typer.Option(LOOP.gate_fresh_val, help="The gate evaluates the last promoted model again beside the round's model, on a val sample of the round's own seed, instead of reusing the figure it was promoted for (its luckiest: 1.5 NU points too low on average). Costs two val evaluations a round."),
    eval_n: int = typer.Option(LOOP.eval_n, help="Images per held-out prompt in each evaluation."),
    val_n: int = typer.Option(LOOP.val_n, help="Images per val prompt in each evaluation: the gate's sample (0: --eval-n). More images make the gate's comparisons less noisy."),
    val_pairs: int = typer.Option(LOOP.val_pairs, help="Rendered understanding pairs (the prompt's render and a hard negative's) per val prompt: the gate's understanding sample. With 1 (41 x 2 items), two more errors already fall by more than the 2-point tolerance."),
    eval_per_category: int = typer.Option(LOOP.eval_per_category, help="Evaluate at most this many prompts per category (0: all)."),
    device: str = typer.Option("cpu", help="Where the in-process loop samples, judges and trains: cpu, cuda or cuda:N. Not part of the run's key: a run resumed on another device goes on, with that device's float rounding."),
):
    """Run the self-improvement loop: sample, judge with the model's own understanding, train,
    evaluate on held-out prompts (external evaluator beside the own judge), promote or reject.
    A store that stays unreachable, or a stored object that fails its checksum, ends the run with
    one line and status 2; nothing half-done is published, and a rerun resumes."""
    from unigap.config import METHODS

    if method not in METHODS:
        fail(f"--method must be one of {', '.join(METHODS)}, not {method!r}")
    if rounds < 1 or more_rounds < 0:
        fail(f"--rounds must be at least 1 and --more-rounds at least 0, got {rounds} and {more_rounds}")
    if n < 1 or eval_n < 1 or epochs < 1:
        fail("--n, --eval-n and --epochs must be at least 1")
    if val_n < 0 or val_pairs < 1:
        fail(f"--val-n must be >= 0 (0: --eval-n) and --val-pairs >= 1, not {val_n} and {val_pairs}")
    if not 0 <= gate_ext_tolerance < 1:
        fail(f"--gate-ext-tolerance is an accuracy in [0, 1), not {gate_ext_tolerance}")
    if not (lr > 0 and beta > 0 and min(nll_weight, kl_weight) >= 0):
        fail("--lr and --beta must be > 0, --nll-weight and --kl-weight >= 0")
    if modules not in MODULES:
        fail(f"--modules must be one of {', '.join(MODULES)}")
    if lora_rank < 0 or sample_cfg <= 0 or temperature < 0:
        fail("--lora-rank must be >= 0, --cfg > 0 and --temperature >= 0")
    if method.startswith("c-") and not 0 < curriculum_epoch < epochs:
        fail(f"--curriculum-epoch must be between 1 and --epochs - 1 ({epochs - 1}) for {method}, not {curriculum_epoch}")
    check_mode(mode)
    check_model(model)
    check_device(device)
    train = valid(TrainConfig, epochs=epochs, lr=lr, beta=beta, nll_weight=nll_weight, kl_weight=kl_weight, modules=modules,
                        lora_rank=lora_rank, und_anchor=und_anchor, und_replay=und_replay, gen_replay=gen_replay, und_flawed=und_flawed,
                        und_batch=und_batch, und_every=und_every, seed=seed)
    check_sft_rule(threshold, max_per_prompt, balance, focus, solved_rows, min_accept_rate)
    check_regulariser(train)
    cfg = valid(LoopConfig, rounds=rounds, method=method, n=n, seed=seed, pool=pool, judge_mode=mode, train=train,
                     threshold=threshold, max_per_prompt=max_per_prompt, balance=balance, focus=focus, solved_rows=solved_rows, min_accept_rate=min_accept_rate, gate_external=gate_external,
                     gate_ext_tolerance=gate_ext_tolerance, gate_fresh_val=gate_fresh_val, eval_n=eval_n, val_n=val_n, val_pairs=val_pairs, eval_per_category=eval_per_category, cfg=sample_cfg, temperature=temperature,
                     canonical=canonical, curriculum_epoch=curriculum_epoch, restart=restart, warm=warm)
    if via_services:
        if device != "cpu":
            fail("--device is for the in-process loop; with --via-services the services and the trainer choose theirs")
        if train.regularised and trainer_procs > 1:
            fail("--und-anchor, --und-replay and --gen-replay run in a single trainer process: use --trainer-procs 1")
        return run_loop_via_services(cfg, store, model, via_services, executor, trainer_procs, json_out, more_rounds)
    return run_loop(cfg, store, model, json_out, report, more_rounds, device)


@app.command()
def controls(
    arms: str = typer.Option(",".join(CONTROL_ARMS), help="Comma-separated: render (ground-truth renders of the pool), oracle (own samples the exact evaluator accepts), judge (own samples the own judge accepts), all (every own sample)."),
    rounds: int = typer.Option(1, help="SFT rounds per arm, each from the arm's previous model (no gate)."),
    n: int = typer.Option(CONTROL.n, help="Candidates (or renders) per pool prompt and round."),
    seed: int = typer.Option(CONTROL.seed, help="Training and sampling seed (evaluation seeds are fixed)."),
    pool: str = typer.Option(CONTROL.pool, help="Prompt TEXTS to train on: train+heldout, train, heldout+val, or a file."),
    model: Path = typer.Option(DEFAULT_MODEL, help="Starting model folder."),
    lr: float = typer.Option(CONTROL.train.lr, help="Learning rate of each round."),
    epochs: int = typer.Option(CONTROL.train.epochs, help="Epochs over each round's data."),
    modules: str = typer.Option(CONTROL.train.modules, help="What trains: lm or lm+head."),
    und_anchor: float = typer.Option(CONTROL.train.und_anchor, help="Weight of the understanding anchor (as in `unigap loop`)."),
    und_replay: float = typer.Option(CONTROL.train.und_replay, help="Weight of the understanding replay (as in `unigap loop`)."),
    gen_replay: float = typer.Option(CONTROL.train.gen_replay, help="Weight of the generation replay (as in `unigap loop`)."),
    und_flawed: int = typer.Option(CONTROL.train.und_flawed, help="Flawed renders per replayed batch (as in `unigap loop`)."),
    max_per_prompt: int = typer.Option(CONTROL.max_per_prompt, help="Own-sample arms: at most this many kept candidates per prompt (0: all), as in `unigap loop`."),
    balance: bool = typer.Option(CONTROL.balance, help="Own-sample arms: every prompt with a kept candidate gives exactly --max-per-prompt rows, as in `unigap loop`."),
    focus: float = typer.Option(CONTROL.focus, help="Own-sample arms: a prompt whose share of kept candidates is above this gives --solved-rows rows only, as in `unigap loop`."),
    solved_rows: int = typer.Option(CONTROL.solved_rows, help="Own-sample arms: rows a prompt above --focus gives, as in `unigap loop`."),
    min_accept_rate: float = typer.Option(CONTROL.min_accept_rate, help="Own-sample arms: a prompt kept less often than this gives no rows, as in `unigap loop`."),
    threshold: float = typer.Option(CONTROL.threshold, help="The judge arm: accept when the judge's p_yes >= this, as in `unigap loop`."),
    eval_n: int = typer.Option(CONTROL.eval_n, help="Images per held-out prompt in each evaluation."),
    eval_per_category: int = typer.Option(CONTROL.eval_per_category, help="Evaluate at most this many prompts per category (0: all)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write every arm's figures per round to this JSON file."),
):
    """The ladder of controls (FINDINGS.md): the loop's SFT trained on ground-truth renders, on own
    samples filtered by the EXACT evaluator, by the model's own judge, and unfiltered. A diagnostic
    that names what limits the loop (the trainer, the samples, the judge); never a recipe, since two
    arms train on what the loop must never see."""
    from unigap.controls import run_controls
    from unigap.loop import pool_texts

    chosen = [a.strip() for a in arms.split(",") if a.strip()]
    unknown = [a for a in chosen if a not in CONTROL_ARMS]
    if not chosen or unknown:
        fail(f"--arms must name some of {', '.join(CONTROL_ARMS)}; unknown: {', '.join(unknown) or '(none given)'}")
    if rounds < 1 or n < 1 or epochs < 1 or eval_n < 1 or not lr > 0:
        fail("--rounds, --n, --epochs and --eval-n must be at least 1, --lr > 0")
    if modules not in MODULES:
        fail(f"--modules must be one of {', '.join(MODULES)}")
    # What the options do not set stays at the first defaults, as the rest of the controls' settings.
    train = valid(replace, CONTROL.train, lr=lr, epochs=epochs, modules=modules, und_anchor=und_anchor, und_replay=und_replay,
                    gen_replay=gen_replay, und_flawed=und_flawed, seed=seed)
    check_sft_rule(threshold, max_per_prompt, balance, focus, solved_rows, min_accept_rate)
    check_regulariser(train)
    check_model(model)
    try:
        prompts = pool_texts(pool)
    except ValueError as e:
        fail(str(e))
    cfg = valid(replace, CONTROL, rounds=rounds, n=n, seed=seed, pool=pool, eval_n=eval_n, eval_per_category=eval_per_category,
                  max_per_prompt=max_per_prompt, balance=balance, focus=focus, solved_rows=solved_rows, min_accept_rate=min_accept_rate,
                  threshold=threshold, train=train)
    result = run_controls(load_model(model), chosen, prompts, cfg, log=console.print)
    out = Table(title="Ladder of controls: held-out generation accuracy (external evaluator) and NU (own judge) per round")
    for col in ("arm", "trained on, per round", "gen % per round", "NU % per round", "judge's false accepts % per round"):
        out.add_column(col, justify="left" if col == "arm" else "right")
    for arm, rows in result["arms"].items():
        out.add_row(arm, ", ".join(str(r["n_train"]) for r in rows[1:]), " -> ".join(pct(r["gen_acc"]) for r in rows),
                    " -> ".join(pct(r["nu"]) for r in rows), " -> ".join(pct(r["judge_on_own"]["false_accepts"]) for r in rows))
    console.print(out)
    if json_out:
        write_json(json_out, result)


@app.command()
def table(
    runs: list[Path] = typer.Argument(..., help="JSON files written by `unigap loop --json`, one per training seed and recipe."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the table (with every run's figures) to this JSON file."),
    markdown_out: Optional[Path] = typer.Option(None, "--markdown", help="Write the table as Markdown to this file."),
):
    """Compare loop recipes over training seeds, in the shape of the paper's Table 1: for each recipe,
    held-out generation accuracy, NU and understanding of the starting and the shipped (last
    promoted) model, as means over seeds with 95% intervals, and whether the required outcome is met."""
    from unigap.methods import markdown, method_table, pct_ci

    results = []
    for path in runs:
        try:
            res = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            fail(f"{path}: cannot be read as JSON ({e})")
        if not (isinstance(res, dict) and isinstance(res.get("config"), dict) and res.get("rounds")):
            fail(f"{path}: not a `unigap loop --json` result (it needs `config` and `rounds`)")
        results.append(res)
    try:
        rows = method_table(results)
    except ValueError as e:
        fail(str(e))
    out = Table(title="Loop recipes on held-out prompts: start -> shipped model, mean over seeds [95% interval]")
    for col in ("recipe", "seeds", "gen %", "gen gain", "NU %", "NU rel. drop", "und drop", "win rate %", "target"):
        out.add_column(col, justify="right" if col != "recipe" else "left")
    for r in rows:
        def m(f: str, signed: bool = False, r=r) -> str:
            return pct_ci(r[f], signed, interval=not f.endswith("_start"))

        out.add_row(r["recipe"], ",".join(map(str, r["seeds"])), f"{m('gen_start')} -> {m('gen')}", m("gen_gain", True),
                    f"{m('nu_start')} -> {m('nu')}", m("nu_rel_drop", True), m("und_drop", True), m("win_rate"),
                    "met" if r["target_met"] else "not met")
    console.print(out)
    if json_out:
        write_json(json_out, {"rows": rows})
    if markdown_out:
        markdown_out.write_text(markdown(rows) + "\n")


@app.command()
def audit(
    run: Path = typer.Argument(..., help="A JSON file written by `unigap loop --json`."),
    store_url: str = typer.Option(..., "--store", help="The run's store: a folder or an s3:// URL."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write every round's figures to this JSON file."),
):
    """How clean is the data the loop trained on? Each round's judged candidates and SFT rows,
    decoded and checked by the external evaluator, per task category: the judge's precision and
    recall, the prompts SFT could learn from, and the share of SFT rows that are right; and how the
    held-out prompts moved, by the SFT rows each round gave them and whether its candidates called
    them solved (what --focus does to those), from the head model to the round's and, before, from
    the head's own head to the head. A report only: the loop never sees these figures."""
    from unigap.audit import SOLVED_RATE, audit_run
    from unigap.loop import baseline_record
    from unigap.store import StoreError

    try:
        result = json.loads(run.read_text())
        key, per_category = result["run"], result["config"]["eval_per_category"]
        baseline = baseline_record(LoopConfig.from_dict(result["config"]), result["rounds"][0]["checkpoint"])
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        fail(f"{run}: not a `unigap loop --json` result ({e.__class__.__name__}: {e})")
    store, cache = open_store_or_fail(store_url)
    try:
        rounds = audit_run(store, key, cache, eval_per_category=per_category, baseline=baseline)
    except StoreError as e:
        fail(str(e))
    if not rounds:
        fail(f"{store_url} holds no finished round of {key}: is it the store the run wrote to?")
    out = Table(title="Training data on the external evaluator: candidates (all judged) and SFT rows (trained on)")
    for col in ("round", "category", "images", "right %", "accepted %", "judge precision %", "judge recall %", "prompts to learn %", "SFT rows", "SFT right %"):
        out.add_column(col, justify="right" if col != "category" else "left")
    for r in rounds:
        for cat, c in r["candidates"].items():
            s = r.get("sft", {}).get(cat, {"rows": 0, "precision": None})
            out.add_row(str(r["round"]), cat, str(c["images"]), pct(c["truth"]), pct(c["accepted"]), pct(c["judge_precision"]),
                        pct(c["judge_recall"]), pct(c["judge_coverage"]), str(s["rows"]), pct(s["precision"]))
    console.print(out)
    rates = Table(title="The judge's precision by how often it accepts a prompt's candidates")
    for col in ("round", "prompt acceptance rate", "prompts", "accepted images", "judge precision %"):
        rates.add_column(col, justify="right")
    for r in rounds:
        for b in r["by_acceptance"]:
            rates.add_row(str(r["round"]), f"{b['rate_from']:.3g}-{b['rate_to']:.3g}", str(b["prompts"]), str(b["accepted"]), pct(b["judge_precision"]))
    console.print(rates)
    if any("change_by_rows" in r for r in rounds):
        change = Table(title="Held-out prompts from the head model to the round's, by the SFT rows the round gave each prompt "
                             f"and whether its candidates called it solved (accepted in over {SOLVED_RATE:.0%}); "
                             "before: from the head's own head to the head")
        for col in ("round", "SFT rows", "solved", "prompts", "NU change, points", "gen change, points", "before: NU", "before: gen"):
            change.add_column(col, justify="right")

        def points(g: dict, name: str) -> str:
            return f"{100 * g[name]:+.1f}" if name in g else ""

        for r in rounds:
            for g in r.get("change_by_rows", []):
                change.add_row(str(r["round"]), str(g["rows"]), "yes" if g["solved"] else "no", str(g["prompts"]),
                               *(points(g, k) for k in ("nu_change", "gen_change", "nu_change_before", "gen_change_before")))
        console.print(change)
    own = Table(title="The judge on each model's own held-out images, against the external evaluator: accepted = right - false "
                      "rejects + false accepts, so NU can fall by right images or by a judge that lets more wrong ones through")
    for col in ("model", "images", "right %", "accepted %", "agreement %", "accepts right %", "accepts wrong %", "false accepts %", "false rejects %"):
        own.add_column(col, justify="right")
    judged = ([("start", rounds[0]["judge_on_own_start"])] if "judge_on_own_start" in rounds[0] else [])
    for model, j in judged + [(f"round {r['round']}", r["judge_on_own"]) for r in rounds]:
        own.add_row(model, str(j["images"]), *(pct(j[k]) for k in ("right", "accepted", "agreement", "accepts_right", "accepts_wrong",
                                                                      "false_accepts", "false_rejects")))
    console.print(own)
    if json_out:
        write_json(json_out, {"run": key, "rounds": rounds})


def open_store_or_fail(url: str):
    """The store at a path or s3:// URL, and a local folder for fetched checkpoints."""
    from unigap.store import StoreError, open_store

    try:
        store = open_store(url)
    except (ValueError, StoreError) as e:
        fail(str(e))
    cache = Path(url) / "cache" if "://" not in url else Path("runs/cache")
    return store, cache


@contextmanager
def store_failures():
    """The store failing mid-run (unreachable after its retries, an object whose checksum does not
    match) ends the run with one line and status 2. Finished steps stay in the store and no
    manifest is written for the interrupted round: rerunning the same command resumes it."""
    from unigap.store import CorruptObjectError, StoreError

    try:
        yield
    except StoreError as e:
        fail(f"{e}; the round was not published and its finished steps are kept: rerun the same command once the store is back")
    except CorruptObjectError as e:
        fail(f"{e}; nothing was trained on it and the round was not published")


def run_loop(cfg: LoopConfig, store_url: str, model: Path, json_out: Optional[Path], report: Optional[Path], more_rounds: int = 0,
             device: str = "cpu") -> dict:
    from unigap.loop import Loop
    from unigap.store import StoreError

    store, cache = open_store_or_fail(str(store_url))
    try:
        runner = Loop(cfg, store, cache, model, log=console.print, device=device)
    except (ValueError, StoreError) as e:
        fail(str(e))
    if more_rounds:
        runner.extend(more_rounds)
    with store_failures():
        result = runner.run_all()
    print_rounds(result)
    if json_out:
        write_json(json_out, result)
    if report:
        write_loop_report(runner, result, report)
    return result


def run_loop_via_services(cfg: LoopConfig, store_url: str, model: Path, addresses: str, executor: str, procs: int,
                          json_out: Optional[Path], more_rounds: int = 0) -> dict:
    """The loop through the gRPC services (the service layers are imported only here)."""
    import os

    from pipelines.executors import executor_from_env
    from pipelines.orchestrator import parse_addresses, run_via_services
    from services.common.client import ServiceError

    try:
        parse_addresses(addresses)
        runner = executor_from_env(executor, store_url, procs)
    except ValueError as e:
        fail(str(e))
    store, cache = open_store_or_fail(store_url)
    try:
        with store_failures():
            result = run_via_services(cfg, store, cache, model, addresses, runner, token=os.environ.get("UNIGAP_TOKEN"),
                                      tls_ca=os.environ.get("UNIGAP_TLS_CA"), more_rounds=more_rounds, log=console.print)
    except ServiceError as e:  # the clients turn every failed RPC into one
        fail(f"a service failed: {e}")
    except ValueError as e:
        fail(str(e))
    print_rounds(result)
    if json_out:
        write_json(json_out, result)
    return result


@app.command()
def promote(
    checkpoint: str = typer.Argument(..., help="The checkpoint reference (64 hex digits) to serve, e.g. a round manifest's `checkpoint` or `base`."),
    store: str = typer.Option(..., help="The store the servers follow (a directory, or s3://bucket/prefix)."),
):
    """Make CHECKPOINT the model every server following the store serves (servers started with
    --follow-s reload within that time; new ones start with it). A rollback promotes an earlier one."""
    from unigap.store import CorruptObjectError
    from unigap.store import records as rec
    from unigap.store.base import is_ref

    if not is_ref(checkpoint):
        fail(f"{checkpoint!r} is not a checkpoint reference (64 hex digits)")
    st, _ = open_store_or_fail(store)
    try:
        index = rec.get_json(st, checkpoint)
    except (KeyError, CorruptObjectError, ValueError) as e:
        fail(f"{checkpoint} is not a readable object in {store} ({e})")
    if not isinstance(index, dict) or "config.json" not in index.get("files", {}):
        fail(f"{checkpoint} in {store} is not a checkpoint (no save_pretrained file index)")
    previous = rec.get_serving(st)
    rec.set_serving(st, checkpoint, promoted_by="unigap promote")
    console.print(f"serving record: {previous or 'none'} -> {checkpoint}")


@app.command()
def serve(
    model: str = typer.Option(str(DEFAULT_MODEL), help="Model both servers start with: a folder, or a checkpoint reference in --store."),
    generation_port: int = typer.Option(50051, help="GenerationService port."),
    judge_port: int = typer.Option(50052, help="JudgeService (gRPC front of the Triton judge) port."),
    s3_port: Optional[int] = typer.Option(None, help="Also start a local S3 endpoint (moto) on this port and use it as the store."),
    store: Optional[str] = typer.Option(None, help="Store the servers fetch checkpoint references from (a directory or s3:// URL)."),
    mode: str = typer.Option(LOOP.judge_mode, help="The judge's reading of the understanding branch."),
    host: str = typer.Option("127.0.0.1", help="Address every server binds."),
    triton_http_port: int = typer.Option(8000, help="Triton's HTTP (KServe v2) port in the judge."),
    triton_grpc_port: int = typer.Option(8001, help="Triton's gRPC (KServe v2) port in the judge."),
):
    """Start the judge (Triton + gRPC front), the generation server and optionally a local S3
    endpoint; print their addresses; stop them all on Ctrl-C or SIGTERM. Servers take their
    other settings (token, TLS, limits, metrics) from UNIGAP_* environment variables."""
    from services import launcher
    from unigap.store.base import is_ref

    check_mode(mode)
    if not (Path(model) / "config.json").is_file() and not is_ref(model):
        fail(f"--model {model!r} is neither a model folder nor a 64-hex checkpoint reference")
    ports = [generation_port, judge_port, triton_http_port, triton_grpc_port] + ([s3_port] if s3_port is not None else [])
    if len(set(ports)) != len(ports) or not all(0 < p < 65536 for p in ports):
        fail(f"ports must be distinct and in 1..65535, got {ports}")
    try:
        children = launcher.plan(model, store, generation_port, judge_port, s3_port, mode, host, (triton_http_port, triton_grpc_port))
    except ValueError as e:
        fail(str(e))

    def on_ready(started):
        table = Table(title="unigap services (Ctrl-C stops them all)")
        table.add_column("service")
        table.add_column("address")
        for c in started:
            table.add_row(c.name, c.address if c.kind == "grpc" else f"http://{c.address}")
        table.add_row("triton (KServe v2)", f"http://{host}:{triton_http_port}, grpc {host}:{triton_grpc_port}")
        console.print(table)

    raise typer.Exit(launcher.serve(children, on_ready))


def print_rounds(result: dict) -> None:
    table = Table(title="Self-improvement rounds (held-out prompts; external evaluator beside the own judge)")
    for col in ("round", "NU %", "gen acc %", "und acc %", "win rate %", "diversity", "SFT", "pairs", "discard", "promoted"):
        table.add_column(col, justify="right")
    for row in result["rounds"]:
        table.add_row(
            str(row["round"]), pct(row["nu"]), pct(row["gen_acc"]), pct(row["und_acc"]), pct(row["win_rate"]),
            f"{row['diversity']:.3f}", str(row["n_sft"]), str(row["n_pairs"]), str(row["n_discard"]),
            "start" if row["round"] == 0 else ("yes" if row["promoted"] else "no: " + "; ".join(row["reasons"])),
        )
    console.print(table)


def write_loop_report(runner, result: dict, folder: Path) -> None:
    import numpy as np

    from unigap.plots import image_grid, plot_rounds

    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "loop.json", result)
    paths = plot_rounds(result, folder)
    last = result["rounds"][-1]["round"]
    before, prompts, ok0 = runner.heldout_samples(0)
    after, _, ok1 = runner.heldout_samples(last)
    pick = list(range(0, len(before), max(1, len(before) // 8)))[:8]
    labels = [f"r0 {'ok' if ok0[i] else 'x'}: {prompts[i]}" for i in pick] + [f"r{last} {'ok' if ok1[i] else 'x'}: {prompts[i]}" for i in pick]
    image_grid(np.concatenate([before[pick], after[pick]]), labels, folder / "samples_before_after.png", cols=len(pick))
    console.print(f"report: {folder} ({', '.join(p.name for p in paths)}, samples_before_after.png, loop.json)")


@app.command()
def dynamics(
    model: Path = typer.Option(DEFAULT_MODEL, help="Model folder (the 'before' model)."),
    after: Optional[Path] = typer.Option(None, help="A second model (e.g. after a round) to analyse the same way."),
    n_train: int = typer.Option(8, help="Training samples, each given one SGD step on its generation loss."),
    n_heldout: int = typer.Option(16, help="Held-out samples whose change is predicted and observed."),
    step: float = typer.Option(0.01, help="Length (in parameter space) of the one generation step."),
    seed: int = typer.Option(0, help="Which prompts and samples."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the analysis to this JSON file."),
    plot: Optional[Path] = typer.Option(None, help="Write predicted-vs-observed scatter plots and the cosine matrix (PNG)."),
):
    """Empirical NTK over the shared language model: do generation and understanding gradients
    align, and does the kernel predict how one generation step moves both branches?"""
    import numpy as np

    from unigap import world
    from unigap.dynamics import Sample, analyse

    if n_train < 1 or n_heldout < 2 or step <= 0:
        fail("--n-train must be >= 1, --n-heldout >= 2 and --step > 0")
    rng = np.random.default_rng(seed)
    train_specs, held_specs = world.split("train"), world.split("heldout")
    train = [train_specs[i].text for i in rng.permutation(len(train_specs))[:n_train]]
    held = [held_specs[i].text for i in rng.permutation(len(held_specs))[:n_heldout]]
    results = {}
    for name, path in (("before", model), ("after", after)):
        if path is None:
            continue
        um = load_model(path)
        out = um.sample(train + held, n=1, seed=seed)
        samples = [Sample(p, t.numpy(), im) for p, t, im in zip(train + held, out.tokens, out.images)]
        results[name] = analyse(um, samples[:n_train], samples[n_train:], step)
    table = Table(title="Empirical NTK over the shared language model")
    for col in ("model", "cos(gen, und) matched", "mismatched", "r(pred, obs) generation", "r(pred, obs) understanding"):
        table.add_column(col, justify="right")
    f = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    for name, r in results.items():
        table.add_row(name, f(r["cos_gen_und_matched"]), f(r["cos_gen_und_mismatched"]), f(r["gen_correlation"]), f(r["und_correlation"]))
    console.print(table)
    if json_out:
        write_json(json_out, results)
    if plot:
        from unigap.plots import plot_dynamics

        plot_dynamics(results, plot)
        console.print(f"plot: {plot}")
    return results


@app.command()
def demo(
    out: Path = typer.Option(Path("reports/demo"), help="Folder for the JSON reports and PNG plots."),
    rounds: int = typer.Option(LOOP.rounds, help="Self-improvement rounds."),
):
    """The whole loop on the shipped model, on one machine: measure the gap, then run rounds of
    self-judged SFT with the default recipe and evaluate each on held-out prompts (about 9
    minutes on 2 cores)."""
    out.mkdir(parents=True, exist_ok=True)
    console.rule("1. The internal gap of the shipped tiny model (held-out prompts)")
    score(
        model=DEFAULT_MODEL, split="heldout", n=4, seed=0, mode=LOOP.judge_mode, per_category=16,
        cfg=1.5, temperature=0.7, best_of=1, json_out=out / "score.json", plot=out / "score.png",
    )
    console.rule(f"2. The self-improvement loop: {rounds} rounds of SFT on the model's own judgment")
    run_loop(LoopConfig(rounds=rounds), str(out / "store"), DEFAULT_MODEL, None, out)


def write_json(path: Path, obj) -> None:
    from unigap.io import atomic_write_text

    atomic_write_text(path, json.dumps(obj, indent=1))


def main() -> None:
    from unigap.progress import quiet_transformers_in_logs

    quiet_transformers_in_logs()
    try:
        app()
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
