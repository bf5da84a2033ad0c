"""`python -m visionops` runs the CLI."""

from visionops.cli.app import main

main()
