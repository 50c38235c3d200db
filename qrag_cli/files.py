"""Paths on disk: how qrag shows them (`display_path`) and writes them (atomically).

Writing so that a crash never leaves a half-written file, the one way qrag does it:

Temp file in the same folder (a rename is atomic only within one file system) + fsync of
its data + rename over the final name + fsync of the folder (so the rename itself survives
a power cut). A failed write removes its temp file and leaves the old file as it was.
Temp names look like `.NAME.XXXXXXXX.tmp`: the store sweeps `.*.tmp` left by a killed run.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def display_path(path: str) -> str:
    """Relative to the working directory when under it (clickable, short), else as stored."""
    try:
        return os.path.relpath(path) if Path(path).is_relative_to(Path.cwd()) else path
    except ValueError:
        return path


def fsync_folder(folder: Path) -> None:
    """Make the names in `folder` (a rename, a new file) durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)  # fsync through a read-only descriptor is enough on POSIX
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yields a temp path beside `path` to write (by hand or by a library that saves to a
    path: safetensors, hnswlib); on leaving the block it becomes `path`, durably. The temp
    file is created by whoever writes it, with their mode (the umask applies)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def atomic_write(path: Path, data: bytes | str, mode: int = 0o666) -> None:
    """Replace `path` with `data` (str: UTF-8) atomically. `mode` is that of a new file
    before the umask, as for open(): 0o666 gives what a plain write would."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_output(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)


def sync_tree(folder: Path) -> None:
    """fsync every file and folder under `folder` (before renaming a folder written in
    full into place: the rename must not become durable before what it names)."""
    for parent, _dirs, names in os.walk(folder):
        for name in names:
            _fsync_file(Path(parent) / name)
        fsync_folder(Path(parent))
