"""The `qrag` entry point. Importing the CLI (typer, rich, ...) takes the first tenth of a
second of every run; Ctrl-C in that window must end like Ctrl-C anywhere later (one line,
`interrupted`, exit code 130: cli.main), not with an import traceback."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from qrag_cli.cli import main as run
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    run()
