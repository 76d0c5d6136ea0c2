"""`unigap pretrain`, `grow`, `dynamics`: train the tiny model, deepen it, and analyse its learning dynamics."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from unigap.cli.app import app, check_model, comma_list, console, fail, load_model, write_json
from unigap.config import YES_NO
from unigap.paths import DEFAULT_MODEL

YES_NO_OPTION = typer.Option(None, help=f"Yes/no questions per understanding batch (default: {YES_NO}).")
PAIRED_OPTION = typer.Option(
    False,
    help="Ask each yes/no render both its own prompt and a negative, packed with its caption, and let "
    "understanding see the novel prompts too: the recipe for the paper's yes/no judge (slower; not the "
    "shipped model's).",
)

NEGATIVE_KINDS_OPTION = typer.Option(
    None,
    metavar="KIND,...",
    help="With --paired-yes-no: ask only these kinds of hard negative (colour, shape, position, count, "
    "relation, swap, or order: the relation reversed), to train a judge further on the kinds it fails "
    "(default: every kind but order, which relation and swap hold among their edits).",
)

ADAPTIVE_KINDS_OPTION = typer.Option(
    False,
    help="With --paired-yes-no: draw each hard negative's kind in proportion to the judge's running error "
    "on that kind, so training follows the kinds it fails without forgetting the others.",
)


def pretrain_config(**given):
    """The PretrainConfig of the options given (None: the recipe's default; --negative-kinds as the
    command line gives it, comma-separated); exit 2 naming a bad one."""
    from unigap.pretrain import PretrainConfig

    if given.get("negative_kinds") is not None:
        given["negative_kinds"] = tuple(comma_list(given["negative_kinds"]))
    try:
        return PretrainConfig(**{k: v for k, v in given.items() if v is not None})
    except ValueError as e:
        fail(str(e))


@app.command("pretrain")
def pretrain_cmd(
    out: Path = typer.Option(Path("runs/tiny-shapes"), help="Folder for the trained model."),
    seed: int = typer.Option(0, help="Seed of everything: data, initialisation, order."),
    vq_steps: int | None = typer.Option(None, help="VQ tokenizer steps (default: the shipped recipe)."),
    und_steps: int | None = typer.Option(None, help="Understanding-only steps."),
    joint_steps: int | None = typer.Option(None, help="Joint understanding + generation steps."),
    yes_no: int | None = YES_NO_OPTION,
    paired_yes_no: bool = PAIRED_OPTION,
    negative_kinds: str | None = NEGATIVE_KINDS_OPTION,
    adaptive_kinds: bool = ADAPTIVE_KINDS_OPTION,
):
    """Train the tiny unified model from scratch on the shapes world: the shipped model's recipe
    (about 43 minutes on 2 cores), or with --paired-yes-no the one for the paper's yes/no judge."""
    from unigap.pretrain import pretrain as run

    given = {"vq_steps": vq_steps, "und_steps": und_steps, "joint_steps": joint_steps}
    given |= {"negative_kinds": negative_kinds, "adaptive_kinds": adaptive_kinds}
    run(out, pretrain_config(seed=seed, paired_yes_no=paired_yes_no, yes_no=yes_no, **given))
    console.print(f"model written to {out}")


@app.command()
def grow(
    out: Path = typer.Option(..., help="Folder for the grown model."),
    model: Path = typer.Option(DEFAULT_MODEL, help="The trained model to grow."),
    layers: int = typer.Option(
        4,
        help="Depth of the grown language model: a multiple of the model's (its own depth adds no layer, "
        "only the steps: the control for growing).",
    ),
    steps: int = typer.Option(800, help="Joint understanding + generation steps after growing."),
    lr: float = typer.Option(5e-4, help="Peak learning rate of those steps."),
    seed: int = typer.Option(11, help="Seed of the data and order."),
    yes_no: int | None = YES_NO_OPTION,
    paired_yes_no: bool = PAIRED_OPTION,
    negative_kinds: str | None = NEGATIVE_KINDS_OPTION,
    adaptive_kinds: bool = ADAPTIVE_KINDS_OPTION,
):
    """Deepen a trained model's language model (each layer followed by copies of itself whose
    outputs start at zero, so nothing it could do is lost) and continue joint training: a
    larger generator from the shipped one without training from scratch (with --paired-yes-no,
    joint training asks the paper's yes/no question in pairs)."""
    from transformers import JanusConfig

    from unigap.pretrain import check_growth
    from unigap.pretrain import grow as run

    if steps < 0 or not lr > 0:
        fail("--steps must be >= 0 and --lr > 0")
    check_model(model)
    try:  # checked on the config, before minutes of loading and training
        check_growth(JanusConfig.from_pretrained(model).text_config.num_hidden_layers, layers)
    except ValueError as e:
        fail(f"--layers: {e}")
    cfg = pretrain_config(
        paired_yes_no=paired_yes_no,
        yes_no=yes_no,
        negative_kinds=negative_kinds,
        adaptive_kinds=adaptive_kinds,
    )
    run(model, out, layers, steps, lr, seed, cfg)
    console.print(f"model written to {out}")


@app.command("dynamics")
def dynamics_cmd(
    model: Path = typer.Option(DEFAULT_MODEL, help="Model folder (the 'before' model)."),
    after: Path | None = typer.Option(None, help="A second model (e.g. after a round) to analyse the same way."),
    n_train: int = typer.Option(8, help="Training samples, each given one SGD step on its generation loss."),
    n_heldout: int = typer.Option(16, help="Held-out samples whose change is predicted and observed."),
    step: float = typer.Option(0.01, help="Length (in parameter space) of the one generation step."),
    seed: int = typer.Option(0, help="Which prompts and samples."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the analysis to this JSON file."),
    plot: Path | None = typer.Option(
        None, help="Write predicted-vs-observed scatter plots and the cosine matrix (PNG)."
    ),
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
    for col in (
        "model",
        "cos(gen, und) matched",
        "mismatched",
        "r(pred, obs) generation",
        "r(pred, obs) understanding",
    ):
        table.add_column(col, justify="right")

    def f(x):
        return "-" if x is None else f"{x:.3f}"

    for name, r in results.items():
        table.add_row(
            name,
            f(r["cos_gen_und_matched"]),
            f(r["cos_gen_und_mismatched"]),
            f(r["gen_correlation"]),
            f(r["und_correlation"]),
        )
    console.print(table)
    if json_out:
        write_json(json_out, results)
    if plot:
        from unigap.plots import plot_dynamics

        plot_dynamics(results, plot)
        console.print(f"plot: {plot}")
    return results
