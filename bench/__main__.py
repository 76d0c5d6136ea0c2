"""`python -m bench` (or `make bench`): every benchmark, a table, and bench/results.json.

python -m bench                         # all, on the shipped model (about 2.5 minutes on 2 cores)
python -m bench --only sampling,dpo     # some
python -m bench --quick --out /tmp/r.json  # tiny sizes: checks that everything runs
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its thread pool

BENCHMARKS = ("judge", "sampling", "vq", "replay", "dpo", "efficiency", "memory")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", default=",".join(BENCHMARKS), help=f"comma-separated subset of {','.join(BENCHMARKS)}"
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes, one repetition: a smoke test, not a measurement"
    )
    parser.add_argument("--model", default=None, help="save_pretrained folder (default: the shipped model)")
    parser.add_argument("--out", type=Path, default=None, help="results JSON (default bench/results.json)")
    args = parser.parse_args(argv)
    chosen = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = [b for b in chosen if b not in BENCHMARKS]
    if unknown or not chosen:
        print(
            f"error: unknown benchmark {', '.join(unknown) or '(none)'}; choose from {', '.join(BENCHMARKS)}",
            file=sys.stderr,
        )
        return 2

    from rich.console import Console
    from transformers.utils import logging as hf_logging

    from bench.common import RESULTS, machine, setup_threads, table, write
    from unigap.model.adapter import UnifiedModel
    from unigap.paths import DEFAULT_MODEL

    hf_logging.disable_progress_bar()
    console = Console(width=max(Console().width, 132))
    threads = setup_threads()
    model = args.model or str(DEFAULT_MODEL)
    if not (Path(model) / "config.json").is_file():
        print(f"error: no model at {model}", file=sys.stderr)
        return 2
    um = UnifiedModel.load(model)
    m = machine()
    console.print(
        f"[bold]unigap bench[/] on {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({threads} threads), "
        f"load {m['load']}; model {model}"
    )
    results, start = [], time.perf_counter()
    for name in chosen:
        t = time.perf_counter()
        console.print(f"[bold]{name}[/] ...")
        results += importlib.import_module(f"bench.{name}").run(um, quick=args.quick, log=console.print)
        console.print(f"{name}: {time.perf_counter() - t:.0f} s")
    console.print(table(results))
    console.print(
        f"total {time.perf_counter() - start:.0f} s; load average now {machine()['load']} "
        "(other work on the machine slows both sides of each ratio)"
    )
    out = args.out or RESULTS
    write(results, out)
    console.print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
