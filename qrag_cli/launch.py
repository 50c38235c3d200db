"""The `qrag` entry point. Importing the CLI (typer, rich, ...) takes the first tenth of a
second of every run; Ctrl-C in that window must end like Ctrl-C anywhere later (one line,
`interrupted`, exit code 130: cli.main), not with an import traceback.

When the command is done, the process ends without tearing down every module and object
one by one: that was a large share of each cold `qrag ask` on a small machine (issue 39,
BENCHMARKS.md "ONNX"). The exit handlers still run (temporary folders, logging, worker threads) and
both output streams are flushed first; a traceback (--debug) takes the normal way out."""

from __future__ import annotations

import atexit
import os
import sys


def main() -> None:
    try:
        from qrag_cli.cli import main as run
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    try:
        run()
        code: object = 0
    except SystemExit as exc:
        code = exc.code
    _exit(code)


def _exit(code: object) -> None:
    """sys.exit(code) as Python would end it, minus the module teardown."""
    if code is None:
        code = 0
    elif not isinstance(code, int):  # sys.exit("message"): printed, exit code 1
        sys.stderr.write(f"{code}\n")
        code = 1
    atexit._run_exitfuncs()  # what Python's own exit runs first (CPython's, stable since 2.x)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`qrag ask ... | head`) or stream
            code = code or 1
    os._exit(code)
