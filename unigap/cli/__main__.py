"""`python -m unigap.cli`: the same as `unigap` and `python -m unigap`."""

from unigap.cli import main

main()
