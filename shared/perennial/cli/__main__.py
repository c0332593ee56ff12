"""`python -m perennial.cli`: the same as the `perennial` command."""

from perennial.cli import main

main()
