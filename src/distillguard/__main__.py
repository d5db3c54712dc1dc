"""`python -m distillguard` runs the CLI."""

from distillguard.cli import main

main()
