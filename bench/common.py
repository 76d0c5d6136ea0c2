"""Shared pieces of the benchmarks: machine facts, interleaved timing, results, the table.

Every benchmark measures its baseline in the same run, on the same machine, interleaved with the
candidate (baseline, candidate, baseline, candidate, ...), and reports medians: a neighbour that
loads the machine for a while slows both sides rather than one.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results.json"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def machine() -> dict:
    """What the numbers were measured on; `load` is os.getloadavg() when asked (other work on
    the machine slows both sides of a ratio, but it is worth knowing)."""
    import transformers

    return {
        "cpu": cpu_model(),
        "cores": cores(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load": [round(x, 2) for x in os.getloadavg()],
    }


def setup_threads() -> int:
    """One torch thread per available core (the same count for baseline and candidate)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # oversubscribed OpenMP spins badly
    n = cores()
    torch.set_num_threads(n)
    return n


def interleaved(
    fns: dict[str, Callable[[], object]], reps: int, log: Callable[[str], None] | None = None
) -> dict[str, list[float]]:
    """Wall seconds of each function, `reps` times, in turn (a, b, a, b, ...)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(reps):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
            if log:
                log(f"  {name}: rep {r + 1}/{reps} {times[name][-1]:.2f} s")
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def paired_ratio(baseline_s: list[float], candidate_s: list[float]) -> float:
    """Median over repetitions of baseline time / candidate time, each pair run back to back (so
    under the same load): a second estimate of the ratio, steadier on a shared machine."""
    return round(statistics.median(b / c for b, c in zip(baseline_s, candidate_s)), 4)


@dataclass
class Result:
    """One benchmark row; every unit is higher-is-better, so ratio = candidate / baseline."""

    name: str
    baseline: float
    candidate: float
    unit: str
    target: float | None
    what: str = ""  # one line: baseline vs candidate
    extra: dict = field(default_factory=dict)
    machine: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.candidate / self.baseline if self.baseline else float("nan")

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.ratio >= self.target

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "baseline": round(self.baseline, 6),
            "candidate": round(self.candidate, 6),
            "unit": self.unit,
            "ratio": round(self.ratio, 4),
            "target": self.target,
            "met": self.met,
            "what": self.what,
            **self.extra,
            "machine": self.machine,
        }


def write(results: list[Result], path: Path = RESULTS) -> None:
    """A JSON list of result objects (the issue's shape), machine facts in each entry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps([r.to_json() for r in results], indent=2) + "\n")
    tmp.replace(path)


def table(results: list[Result], title: str = "unigap benchmarks (ratio = candidate / baseline, higher is better)"):
    from rich.table import Table

    t = Table(title=title)
    for col, kw in (
        ("benchmark", {}),
        ("baseline", {"justify": "right"}),
        ("candidate", {"justify": "right"}),
        ("unit", {}),
        ("ratio", {"justify": "right"}),
        ("target", {"justify": "right"}),
        ("", {}),
    ):
        t.add_column(col, **kw)
    for r in results:
        mark = "" if r.met is None else ("[green]met[/]" if r.met else "[red]missed[/]")
        t.add_row(
            r.name,
            f"{r.baseline:.4g}",
            f"{r.candidate:.4g}",
            r.unit,
            f"{r.ratio:.2f}",
            "-" if r.target is None else f">= {r.target:g}",
            mark,
        )
    return t
