"""Parsers for numeric command-line flags: every value is checked when the command line is
parsed, before any work starts, and a bad one is refused in one line that names the flag
and the allowed range (click prefixes "Invalid value for '--flag':"; exit code 2).

Typer's own min=/max= only name the bound that was crossed and let inf through, so the
flags use these `parser=` functions instead.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import typer

from qrag_cli.config import llm_source
from qrag_cli.types import UsageError

SEED_MAX = 2**32 - 1  # numpy and llama.cpp take 32-bit unsigned seeds

_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]?)(I?B?)", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
SIZE_MAX = 1 << 50  # 1024 TB: far beyond any file, far below where float arithmetic rounds


def _bounds(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    low = None if lo is None else f"{'more than' if lo_open else 'at least'} {lo}"
    high = None if hi is None else f"{'less than' if hi_open else 'at most'} {hi}"
    if low and high:
        return f"from {lo} to {hi}" if not (lo_open or hi_open) else f"{low} and {high}"
    return low or high or "finite"


def int_range(lo: int | None = None, hi: int | None = None) -> Callable[[object], int | None]:
    """Parser of a whole number from `lo` to `hi` (inclusive; None = unbounded)."""
    allowed = _bounds(lo, hi, False, False)

    def parse(value: object) -> int | None:
        if value is None or isinstance(value, int):
            number = value
        else:
            try:
                number = int(str(value).strip())
            except ValueError:
                raise typer.BadParameter(
                    f"must be a whole number {allowed}, not {value!r}"
                ) from None
        if number is not None and (
            (lo is not None and number < lo) or (hi is not None and number > hi)
        ):
            raise typer.BadParameter(f"must be {allowed}, not {number}")
        return number

    parse.__name__ = "integer"  # help shows a parser's name, upper-cased, as its type
    return parse


def float_range(
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
) -> Callable[[object], float | None]:
    """Parser of a finite number within the bounds (`*_open`: the bound itself is out)."""
    allowed = _bounds(lo, hi, lo_open, hi_open)

    def parse(value: object) -> float | None:
        if value is None:
            return None
        try:
            number = float(str(value).strip())
        except ValueError:
            raise typer.BadParameter(f"must be a number {allowed}, not {value!r}") from None
        # nan compares False with everything, so it would slip through the bounds below.
        if (
            not math.isfinite(number)
            or (lo is not None and (number <= lo if lo_open else number < lo))
            or (hi is not None and (number >= hi if hi_open else number > hi))
        ):
            what = "a finite number" if allowed == "finite" else f"a number {allowed}"
            raise typer.BadParameter(f"must be {what}, not {value}")
        return number

    parse.__name__ = "float"  # help shows a parser's name, upper-cased, as its type
    return parse


SEED = int_range(0, SEED_MAX)


def parse_size(text: str) -> int:
    """'500KB', '10MB', '1.5G', '4096' -> bytes (binary units); ValueError when malformed or
    out of range (1 B to 1024 TB)."""
    match = _SIZE.fullmatch(text.strip())
    size = 0.0
    if match and match.group(3).upper() != "I":
        size = float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()]
    if not 1 <= size <= SIZE_MAX:
        raise ValueError(
            f"must be a size from 1B to 1024TB such as 500KB, 10MB or 1GB, not {text[:40]!r}"
        )
    return int(size)


def size(value: object) -> int | None:
    """Parser of a byte size flag such as --max-file-size (None: not given)."""
    if value is None or isinstance(value, int):
        return value
    try:
        return parse_size(str(value))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


# ---- output paths -------------------------------------------------------------------------
def same_path(a: Path, b: Path) -> bool:
    """Whether two paths name the same file or folder, through links and hard links."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one does not exist (yet): compare where it would be
        pass
    try:
        return a.expanduser().resolve() == b.expanduser().resolve()
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop
        return False


def check_output(out: Path, inputs: Iterable[tuple[str, Path | None]], *, folder: bool) -> None:
    """Refuse, before anything is written, an output that is one of the command's inputs
    (writing it would destroy what is being read) or the wrong kind of thing."""
    for name, path in inputs:
        if path is not None and same_path(out, path):
            raise UsageError(f"the output {out} is also the input {name}; write to another path")
    if folder and out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a folder; give a folder to write")
    if not folder and out.is_dir():
        raise UsageError(f"{out} is a folder; give a file path to write")


def reader_source(value: object) -> str | None:
    """Parser of `--llm`: a GGUF path or the base URL of an OpenAI-compatible server
    (config.llm_source). A bad URL is refused without repeating it: it may hold a
    password. The text is kept as given; the commands resolve it."""
    if value is None:
        return None
    text = str(value)
    if not text.strip():
        raise typer.BadParameter("is empty")
    try:
        llm_source(text)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    return text


reader_source.__name__ = "path_or_url"


def model_name(value: object) -> str | None:
    """Parser of `--llm-model`: a served reader's model name, not blank."""
    if value is None:
        return None
    name = str(value).strip()
    if not name:
        raise typer.BadParameter("is empty")
    return name


model_name.__name__ = "text"
