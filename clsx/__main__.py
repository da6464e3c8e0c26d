"""``python -m clsx`` runs the command line."""

from clsx.cli import main

main()
