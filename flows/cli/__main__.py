"""`python -m flows.cli`: the `warmstart` command line."""

from flows.cli import main

main()
