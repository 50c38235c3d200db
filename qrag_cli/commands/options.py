"""The flags several commands share, and the defaults every flag shows (declared once in
config.py)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from qrag_cli.cliparse import RunOrSubcommand
from qrag_cli.config import (
    AskOptions,
    ChunkConfig,
    TrainConfig,
    env_value,
)
from qrag_cli.flags import (
    model_name,
    reader_source,
)
from qrag_cli.types import UsageError

# The flags' defaults, declared once in config.py (help shows them).
CHUNKING, ASK, TRAIN = ChunkConfig(), AskOptions(), TrainConfig()
READER = ASK.reader

IndexOpt = Annotated[
    str | None,
    typer.Option("--index", "-i", help="Index name (under $QRAG_HOME/indexes) or folder."),
]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model", "-m", help="Model folder, 'base' (untrained all-MiniLM-L6-v2) or 'default'."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON to stdout.")]
# main() reads --debug from argv before parsing (an error raised while parsing needs it
# too); each command still declares the flag so that typer accepts and documents it.
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks.")]
# The reader flags of ask, mcp and bench --answers: checked when the command line is read.
LlmOpt = Annotated[
    str | None,
    typer.Option(
        parser=reader_source,
        help="The reader LLM: a GGUF file, or the base URL of an OpenAI-compatible server "
        "(http://127.0.0.1:8080/v1; API key from QRAG_LLM_API_KEY) [default: the configured "
        "one].",
    ),
]
LlmModelOpt = Annotated[
    str | None,
    typer.Option(
        parser=model_name, help="Model name to ask a served reader for (default: its only one)."
    ),
]
LexicalOpt = Annotated[
    str,
    typer.Option(
        "--lexical",
        help="on: Q adds the model's learned BM25 terms (if it has them); off: the "
        "pure dense Q (ablation).",
    ),
]


def lexical_on(value: str) -> bool:
    if value not in {"on", "off"}:
        raise UsageError("--lexical must be 'on' or 'off'")
    return value == "on"


def progress_enabled() -> bool:
    return sys.stderr.isatty() and env_value("TERM") != "dumb"


def command_group() -> typer.Typer:
    """A group that runs itself (`qrag train DATA`, `qrag bench`) or one of its subcommands
    (`qrag train eval ...`, `qrag bench data ...`): see cliparse.RunOrSubcommand."""
    return typer.Typer(
        cls=RunOrSubcommand, invoke_without_command=True, subcommand_metavar="| COMMAND [ARGS]..."
    )
