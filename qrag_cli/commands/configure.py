"""`qrag config`: the settings in effect and where each came from; setting the default reader."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from qrag_cli import render
from qrag_cli.commands.options import (
    DebugOpt,
    JsonOpt,
)
from qrag_cli.config import (
    DEFAULT_MAX_FILE_SIZE,
    DEFAULT_SOURCE,
    LLM_KEY_VAR,
    AskOptions,
    ChunkConfig,
    config_path,
    env_setting,
    qrag_home,
)
from qrag_cli.flags import (
    model_name,
    reader_source,
)


def config_cmd(
    llm: Annotated[
        str | None,
        typer.Option(
            parser=reader_source,
            help="Set the default reader: a GGUF file or an OpenAI-compatible base URL.",
        ),
    ] = None,
    llm_model: Annotated[
        str | None,
        typer.Option(
            parser=model_name,
            help="Set the model name asked of a served reader (default: its only one).",
        ),
    ] = None,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Show the settings in effect and their sources, or set the default reader LLM (`--llm`).

    Each setting's source is its default, config.toml or an environment variable. A served
    reader's API key is read from QRAG_LLM_API_KEY only, never written to config.toml.
    """
    from qrag_cli.reader import check_llm, save_default_llm, save_default_llm_model

    if llm is not None:
        value, written = save_default_llm(check_llm(llm))
        render.log(f"default reader set to {value} (in {written})")
    if llm_model is not None:
        written = save_default_llm_model(llm_model)
        render.log(f"served reader model set to {llm_model} (in {written})")
    settings = effective_settings()
    if as_json:
        render.print_json(
            {**{s.name: s.value for s in settings}, "sources": {s.name: s.source for s in settings}}
        )
        return
    from rich.table import Table

    table = Table(header_style="bold")
    for col in ("setting", "value", "source"):
        table.add_column(col)
    for s in settings:
        shown = s.value if isinstance(s.value, str) else json.dumps(s.value)
        table.add_row(s.name, render.plain(shown), s.source)
    render.out.print(table)


# --- what is in effect (`qrag config`) -------------------------------------------------


@dataclass(frozen=True)
class Setting:
    name: str
    value: Any  # JSON-ready: str, number, bool or None
    source: str  # "default", "config.toml" or "environment variable NAME"


def effective_settings() -> list[Setting]:
    """Every setting a command starts from, with where its value came from."""
    # Here, not at the top: every command imports this module, and only `qrag config`
    # needs these.
    from qrag_cli.model_dirs import default_model_dir
    from qrag_cli.reader import find_default_llm, find_default_llm_model

    def from_env(setting: str, name: str) -> Setting:
        value, source = env_setting(name)
        return Setting(setting, str(value) if isinstance(value, Path) else value, source)

    home_source = env_setting("QRAG_HOME")[1]
    rows = [
        Setting("home", str(qrag_home()), home_source),
        Setting("config_file", str(config_path()), home_source),
    ]
    model, source = env_setting("QRAG_MODEL")
    if model is None:  # the trained model installed with qrag (missing: an error)
        model = default_model_dir()
    rows.append(Setting("model", str(model), source))
    llm, source = find_default_llm()
    rows.append(Setting("llm", None if llm is None else str(llm), source))
    llm_model, source = find_default_llm_model()
    rows.append(Setting("llm_model", llm_model, source))
    key, source = env_setting(LLM_KEY_VAR)
    rows.append(Setting("llm_api_key", None if key is None else "(set)", source))
    dtype = from_env("dtype", "QRAG_DTYPE")
    rows.append(Setting("dtype", dtype.value or "auto", dtype.source))
    engine = from_env("engine", "QRAG_ENGINE")
    rows.append(Setting("engine", engine.value or "auto", engine.source))
    rows += [
        from_env(setting, name)
        for setting, name in (
            ("data", "QRAG_DATA"),
            ("debug", "QRAG_DEBUG"),
            ("embed_group", "QRAG_EMBED_GROUP"),
            ("commit_interval", "QRAG_COMMIT_INTERVAL"),
            ("no_color", "NO_COLOR"),
            ("term", "TERM"),
        )
    ]
    chunking, ask = ChunkConfig(), AskOptions()
    defaults: dict[str, Any] = {
        "index.chunk_tokens": chunking.chunk_tokens,
        "index.overlap": chunking.overlap,
        "index.max_file_size": DEFAULT_MAX_FILE_SIZE,
        "ask.steps": ask.steps,
        **{
            f"reader.{key}": value
            for key, value in asdict(ask.reader).items()
            if key not in {"llm", "llm_model", "verbose"}
        },
    }
    rows += [Setting(name, value, DEFAULT_SOURCE) for name, value in defaults.items()]
    return rows
