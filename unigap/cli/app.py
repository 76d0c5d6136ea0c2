"""The typer app every command module registers on, and what they share: `fail` (one line, exit 2),
the console, and the checks and loaders of inputs several commands take (a model folder, a device,
prompts, the judge mode)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console

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


def pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


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
