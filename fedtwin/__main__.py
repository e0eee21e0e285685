"""`python -m fedtwin` runs the CLI (used by tests and images without the console script)."""

from fedtwin.cli import entry

entry()
