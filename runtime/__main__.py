"""`python -m din_runtime` is `din-score`."""

from din_runtime.cli import main

main(prog_name="din-score")
