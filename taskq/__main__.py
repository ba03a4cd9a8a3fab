"""``python -m taskq`` runs the CLI."""

from taskq.cli import main

main()
