"""The typer app every command module registers on, and what they share: `fail` (one line, exit 2),
the console, and the checks and loaders of inputs several commands take (a model folder, a device,
prompts, the judge mode)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

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


def comma_list(value: str) -> list[str]:
    """The names of a comma-separated option ("shape, swap" -> ["shape", "swap"]), blanks dropped."""
    return [name.strip() for name in value.split(",") if name.strip()]


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


def check_mode(mode: str) -> None:
    from unigap.config import JudgeSettings

    try:
        JudgeSettings(mode=mode)
    except ValueError as e:
        fail(str(e))


def load_model(path: Path):
    from unigap.model.adapter import UnifiedModel

    check_model(path)
    try:
        return UnifiedModel.load(path)
    except ValueError as e:  # not a Janus checkpoint, or no processor and tokenizer beside it
        fail(f"--model: {e}")


def load_prompts(split: str) -> list:
    """Specs of a split name, or the prompts of a file (`unigap.prompts.load_prompts`: the shapes
    world's specs, or free text)."""
    from unigap import prompts, world

    if split in world.SPLIT_NAMES:
        return world.split(split)
    path = Path(split)
    if not path.is_file():
        fail(f"--split {split!r} is neither a split ({', '.join(world.SPLIT_NAMES)}) nor a file")
    try:
        return prompts.load_prompts(path)
    except ValueError as e:
        fail(str(e))
    except UnicodeDecodeError:
        fail(f"{path}: not a text file")


def load_evaluator(name: str):
    from unigap.evaluators import get_evaluator

    try:
        return get_evaluator(name)
    except ValueError as e:
        fail(f"--evaluator: {e}")


def check_judge_fits(mode: str, specs: list) -> None:
    """Refuse up front prompts the judge cannot judge (free text in likelihood mode)."""
    from unigap.evaluate import check_judge_fits as fits

    for s in specs:
        try:
            fits(mode, s.text)
        except ValueError as e:
            fail(f"--mode {mode}: {e}")


def pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def figures_table(title: str, columns) -> Table:
    """A table whose first column names each row (left-aligned) and whose others hold figures."""
    table = Table(title=title)
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    return table


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
