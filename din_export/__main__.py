"""`python -m din_export` is `din-export` (also what `torchrun -m din_export train ...` runs)."""

from din_export.cli import main

main(prog_name="din-export")
