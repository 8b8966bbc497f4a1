"""`python -m ragopt`: the ragopt command."""

from ragopt.cli import main

main()
