"""Progress bars: tqdm on a terminal, one line per finished bar in a log.

A log (a file, a pod's output, CI) is not a terminal: tqdm's carriage-return updates fill it with
thousands of characters per bar, and its tail, what a failure shows, becomes unreadable. There a
bar is one line when it finishes instead: what it counted, how many, how long, its last figures.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator

from tqdm import tqdm


def is_terminal() -> bool:
    return sys.stderr.isatty()


def quiet_transformers_in_logs() -> None:
    """transformers' own bars (loading and writing weights) have no place in a log either. It reads
    the variable when imported (a user's own setting wins); if it already is, it is told directly."""
    if is_terminal():
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


class _LoggedBar:
    """What a bar says in a log: one line at its end, with its last `set_postfix` figures."""

    def __init__(self, iterable: Iterable, desc: str, total: int | None, initial: int):
        self.iterable, self.desc, self.initial, self.postfix = iterable, desc, initial, ""
        self.total = total if total is not None else (initial + len(iterable) if hasattr(iterable, "__len__") else None)

    def set_postfix(self, values: dict | None = None, **kwargs) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in {**(values or {}), **kwargs}.items())

    def __iter__(self) -> Iterator:
        start, n = time.monotonic(), self.initial
        for item in self.iterable:
            yield item
            n += 1
        done = f"{n}/{self.total}" if self.total is not None else str(n)
        tail = f" ({self.postfix})" if self.postfix else ""
        print(f"{self.desc}: {done} in {time.monotonic() - start:.0f} s{tail}", file=sys.stderr, flush=True)


def bar(iterable: Iterable, desc: str, enabled: bool = True, total: int | None = None, initial: int = 0):
    """Iterate `iterable` with a progress bar named `desc` (none when not `enabled`). The result has
    tqdm's `set_postfix`; `initial`/`total` count from a resumed position."""
    if enabled and not is_terminal():
        return _LoggedBar(iterable, desc, total, initial)
    return tqdm(iterable, desc=desc, leave=False, total=total, initial=initial, disable=not enabled)
