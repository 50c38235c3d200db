"""Where things live, and the settings saved with every index."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import platformdirs

from qrag_cli.types import UsageError

DEFAULT_INDEX = "default"


def qrag_home() -> Path:
    """Root of qrag's data: $QRAG_HOME if set, else the platform's user data dir."""
    env = os.environ.get("QRAG_HOME")
    return Path(env).expanduser() if env else Path(platformdirs.user_data_dir("qrag"))


def config_dir() -> Path:
    """Folder of `config.toml`: $QRAG_HOME if set (tests), else the user config dir."""
    env = os.environ.get("QRAG_HOME")
    return Path(env).expanduser() if env else Path(platformdirs.user_config_dir("qrag"))


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """Files created meanwhile are 0600 and folders 0700, whatever the user's umask: an index
    holds the text of the files it indexed, and those may have been private (0600)."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def resolve_index(name_or_dir: str | None) -> Path:
    """`--index` takes a name (kept under qrag_home()/indexes) or a folder path."""
    value = name_or_dir or DEFAULT_INDEX
    if os.sep in value or value.startswith(".") or (os.altsep and os.altsep in value):
        return Path(value).expanduser().resolve()
    if not value.replace("-", "").replace("_", "").isalnum():
        raise UsageError(f"bad index name {value!r}: use letters, digits, '-' and '_', or a path")
    return qrag_home() / "indexes" / value


@dataclass(frozen=True)
class ChunkConfig:
    """How files are cut into chunks; a change means a full re-index."""

    chunk_tokens: int = 128
    """Target chunk size in cl100k_base tokens."""
    overlap: int = 16
    """Tokens repeated from the end of one chunk at the start of the next."""
    version: int = 1
    """Chunker algorithm version, bumped whenever its output changes."""

    def to_dict(self) -> dict[str, int]:
        return asdict(self)
