"""`unigap score`, `generate`, `judge`: the gap of a model, its images, and its judgment of one image."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from unigap.cli.app import (
    app,
    check_judge_fits,
    check_mode,
    console,
    fail,
    figures_table,
    load_evaluator,
    load_model,
    load_prompts,
    pct,
    write_json,
)
from unigap.cli.options import field_option
from unigap.config import JudgeSettings, Sampling
from unigap.paths import DEFAULT_MODEL

PER_CATEGORY = 16  # `unigap score`'s prompts per category: every category, in a few minutes on 2 cores


def sampling(**settings) -> Sampling:
    try:
        return Sampling(**settings)
    except ValueError as e:
        fail(str(e))


def print_report(report: dict) -> None:
    table = Table(title="Non-unification score (own judge) and external accuracy", show_lines=False)
    # und: judge accuracy on own images / on rendered pairs; precision: the judge's among what it
    # accepts; cover: prompts with a right image among N / with one the judge accepts too.
    for col in (
        "group",
        "prompts",
        "images",
        "NU % [95% CI]",
        "gen %",
        "und own %",
        "und rendered %",
        "ext agree %",
        "precision %",
        "cover %",
        "judge cover %",
    ):
        table.add_column(col, justify="left" if col == "group" else "right", no_wrap=col.startswith("NU"))

    def row(name, r, style=None):
        ci = f"{pct(r['nu'])} [{pct(r['nu_ci'][0])}, {pct(r['nu_ci'][1])}]"
        table.add_row(
            name,
            str(r.get("n_prompts", "")),
            str(r["n_images"]),
            ci,
            pct(r["gen_acc"]),
            pct(r["und_acc"]),
            pct(r["und_acc_rendered"]),
            pct(r["ext_agreement"]),
            pct(r["judge_precision"]),
            pct(r["coverage"]),
            pct(r["judge_coverage"]),
            style=style,
        )

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
    console.print(
        f"judge mode {s['judge_mode']}, N {s['n']} per prompt{best}, CFG {s['cfg']}, T {s['temperature']}, "
        f"seed {s['seed']}"
    )
    told, images = report["overall"]["n_evaluated"], report["overall"]["n_images"]
    if told < images:
        absent = (
            "gen, und own, ext agree, precision, cover and judge cover are absent (-)"
            if told == 0
            else "gen, und own, ext agree, precision and cover count only those"
        )
        console.print(
            f"external evaluator {s.get('evaluator', 'shapes')}: a verdict on {told} of {images} images; {absent}"
        )
    if report["overall"].get("und_acc_rendered") is None:
        console.print("und rendered is absent (-): it needs the shapes world's renders")
    if report.get("und_by_negative"):
        kinds = figures_table("Understanding by kind of negative (renders)", ("negative", "pairs", "judge right %"))
        for kind, r in report["und_by_negative"].items():
            label = "order reversed (beside)" if kind == "order" else kind
            kinds.add_row(label, str(r["n_pairs"]), pct(r["acc"]), style="bold" if kind == "every kind alike" else None)
        console.print(kinds)
        if "order" in report["und_by_negative"]:
            console.print("order reversed: the relation edit that keeps the axis, apart from the kinds' figure")
    if report.get("judge_by_failure"):
        wrong = figures_table(
            "The judge on its own images, by what the evaluator finds wrong", ("image", "images", "judge accepts %")
        )
        for kind, r in report["judge_by_failure"].items():
            wrong.add_row(kind, str(r["images"]), pct(r["judge_accepts"]))
        console.print(wrong)


def report_gap(
    model: Path,
    split: str,
    per_category: int,
    mode: str,
    s: Sampling,
    json_out: Path | None,
    plot: Path | None,
    evaluator: str = "shapes",
) -> tuple[dict, list]:
    """Score a model on a split (unigap.evaluate.score_report), print the table, write the JSON and plot."""
    from unigap.evaluate import make_judge, score_report, select_prompts

    check_mode(mode)
    ev = load_evaluator(evaluator)
    specs = select_prompts(load_prompts(split), per_category, s.seed)
    check_judge_fits(mode, specs)
    um = load_model(model)
    try:
        report = score_report(um, make_judge(um, mode), specs, s, evaluator=ev)
    except ValueError as e:  # a user's evaluator that fails or answers something else
        fail(str(e))
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


@app.command("score")
def score_cmd(
    model: Path = typer.Option(
        DEFAULT_MODEL, help="Model folder (save_pretrained layout); default: the shipped tiny model."
    ),
    split: str = typer.Option(
        "heldout",
        help="A split (train, val, heldout = pool + test, novel) or a prompts file: one per line, or .jsonl with "
        '{"prompt": ..., "category": ...} (free text or shapes-world prompts).',
    ),
    n: int = field_option(Sampling, "n"),
    seed: int = field_option(Sampling, "seed"),
    mode: str = field_option(JudgeSettings, "mode"),
    per_category: int = typer.Option(
        PER_CATEGORY, help="At most this many prompts per category (0: all), chosen reproducibly."
    ),
    cfg: float = field_option(Sampling, "cfg"),
    temperature: float = field_option(Sampling, "temperature"),
    best_of: int = field_option(Sampling, "best_of"),
    json_out: Path | None = typer.Option(None, "--json", help="Write the figures to this JSON file."),
    plot: Path | None = typer.Option(None, help="Write a PNG chart of NU and accuracies per category and tier."),
    evaluator: str = typer.Option(
        "shapes",
        help="External evaluator: shapes (exact, shapes-world prompts), none (NU and the judge's figures only) "
        "or module:callable (your own).",
    ),
):
    """Generate N images per prompt, judge them with the model's own understanding, check them
    with the external evaluator, and print NU and accuracies per category and tier."""
    s = sampling(n=n, seed=seed, cfg=cfg, temperature=temperature, best_of=best_of)
    return report_gap(model, split, per_category, mode, s, json_out, plot, evaluator)


@app.command()
def generate(
    prompts: list[str] = typer.Argument(..., help='Prompts, e.g. "a red circle on the left".'),
    n: int = field_option(Sampling, "n"),
    out: Path = typer.Option(Path("generated"), help="Folder for the PNGs and generated.json."),
    model: Path = typer.Option(DEFAULT_MODEL, help="Model folder."),
    seed: int = field_option(Sampling, "seed"),
    cfg: float = field_option(Sampling, "cfg"),
    temperature: float = field_option(Sampling, "temperature"),
    mode: str = field_option(
        JudgeSettings,
        "mode",
        help="Judge mode for the p_yes written beside each image (probability for prompts outside the shapes world).",
    ),
    best_of: int = field_option(
        Sampling, "best_of", help="Write, for each image, the judge's pick among this many samples."
    ),
    evaluator: str = typer.Option(
        "none",
        help="External evaluator whose verdict (true, false or null: cannot tell) is written beside each image: "
        "none, shapes or module:callable.",
    ),
):
    """Generate images with the model and write PNGs plus a JSON of token ids and the model's own p_yes."""
    from PIL import Image

    from unigap.candidates import sample_and_judge
    from unigap.evaluate import make_judge

    s = sampling(n=n, seed=seed, cfg=cfg, temperature=temperature, best_of=best_of)
    if any(not p.strip() for p in prompts):
        fail("a prompt is empty")
    check_mode(mode)
    ev = load_evaluator(evaluator)
    um = load_model(model)
    try:
        res = sample_and_judge(um, make_judge(um, mode), prompts, s)
    except ValueError as e:
        fail(f"cannot judge in {mode} mode: {e}")
    try:
        verdicts = ev(res.images, res.prompts)
    except ValueError as e:
        fail(str(e))
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for r, (text, image) in enumerate(zip(res.prompts, res.images)):
        name = f"{res.prompt_index[r]:03d}_{r % n:02d}.png"
        Image.fromarray(image).save(out / name)
        records.append({"prompt": text, "file": name, "tokens": res.tokens[r].tolist(), "p_yes": float(res.p_yes[r])})
        if ev.measures:
            records[-1]["evaluator"] = bool(verdicts.correct[r]) if verdicts.known[r] else None
    write_json(out / "generated.json", records)
    for rec in records:
        console.print(f"{rec['file']}  p_yes {rec['p_yes']:.3f}  {rec['prompt']}")


@app.command()
def judge(
    image: Path = typer.Option(..., help="PNG to judge."),
    prompt: str = typer.Option(..., help="The prompt the image should show."),
    model: Path = typer.Option(DEFAULT_MODEL, help="Model folder."),
    mode: str = field_option(JudgeSettings, "mode"),
    threshold: float = field_option(JudgeSettings, "threshold"),
):
    """Ask the model's understanding whether an image shows a prompt: p_yes and decision."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    from unigap.evaluate import make_judge

    try:
        JudgeSettings(mode, threshold)
    except ValueError as e:
        fail(str(e))
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
