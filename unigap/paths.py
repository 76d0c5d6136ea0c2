"""Where the shipped model lives (inside the package, so a wheel carries it)."""

from pathlib import Path

DEFAULT_MODEL = Path(__file__).parent / "checkpoints" / "tiny-shapes"
