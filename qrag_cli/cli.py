"""The `qrag` command: parse -> config -> one library call -> render.

Library code raises QragError; only this module turns errors into exit codes.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from qrag_cli import render
from qrag_cli.cliparse import refuse_flag_values
from qrag_cli.commands import ask, bench, configure, index, train
from qrag_cli.config import (
    check_environment,
    env_value,
)
from qrag_cli.types import QragError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Multi-step Q-value retrieval (Q-RAG) over your own files.",
)


def _print_version(wanted: bool) -> None:
    if wanted:
        from importlib.metadata import PackageNotFoundError, version

        try:
            number = version("qrag")
        except PackageNotFoundError:  # run from a source tree that was never installed
            number = "unknown (not installed)"
        render.out.print(f"qrag {number}", markup=False, highlight=False)
        raise typer.Exit()


@app.callback()
def _top_level(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version",
            is_eager=True,
            callback=_print_version,
            help="Print the qrag version and exit.",
        ),
    ] = False,
) -> None:
    """Multi-step Q-value retrieval (Q-RAG) over your own files."""


# One module per command group (qrag_cli/commands/), registered in the order help lists them.
app.command()(index.index)
app.command()(index.status)
app.command("config")(configure.config_cmd)
app.add_typer(train.train_app, name="train")
app.command()(ask.ask)
app.command()(ask.mcp)
app.add_typer(bench.bench_app, name="bench")


def _disk_full(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) is a full disk: ENOSPC/EDQUOT from a write, or
    SQLite's "database or disk is full"."""
    import errno
    import sqlite3

    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(exc, sqlite3.OperationalError) and "disk is full" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def main() -> None:
    debug = "--debug" in sys.argv

    def fail(message: str, code: int) -> None:
        render.log(message, label="error:", label_style="red")
        sys.exit(code)

    args = sys.argv[1:]
    try:
        debug = debug or env_value("QRAG_DEBUG")
        check_environment()  # a bad value is refused before any work, naming the variable
        command = typer.main.get_command(app)
        refuse_flag_values(command, args)
        # prog_name: help says `qrag ...` however it was started (`python -m qrag_cli`).
        code = command.main(args, prog_name="qrag", standalone_mode=False)
        if code == 130:  # typer turns Ctrl-C into exit code 130 before we see it
            raise KeyboardInterrupt
    except QragError as exc:
        if debug:
            raise
        fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        render.log("interrupted")
        sys.exit(130)
    except BrokenPipeError:  # `qrag ask ... | head`
        sys.stderr.close()
        sys.exit(1)
    except Exception as exc:
        if debug:
            raise
        if _disk_full(exc):  # SQLite or a plain write: what was committed before stays
            fail(
                "disk full: free some space and run the command again (what was "
                "committed before is kept)",
                1,
            )
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):  # usage errors
            hint = " (see --help)" if exc.exit_code == 2 else ""
            fail(f"{exc.format_message()}{hint}", exc.exit_code)
        fail(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for details)", 1)
    sys.exit(code if isinstance(code, int) else 0)
