"""`unigap ...`: the command line, one module per command group. Thin: parse, check, call the library, print.

Bad input exits 2 with one line naming the problem, never a traceback. `main` is the entry point.
"""

# Imported in the order `unigap --help` lists their commands; importing registers them.
from unigap.cli import score, model, loop, reports, serve, demo  # noqa: F401, I001
from unigap.cli.app import app, fail, main

__all__ = ["app", "fail", "main"]
