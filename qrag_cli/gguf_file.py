"""Check that a file is a whole GGUF model before llama.cpp is asked to open it.

A GGUF file is a header (metadata key/values and tensor descriptions, every length and
count written in the file itself) followed by the tensor data. A damaged or truncated
file can carry any numbers there; trusted, they make a reader allocate absurd sizes or
read past the end. This walks the header with every length checked against the file size
and checks that the tensor data it describes lies inside the file, so that such a file is
refused in one line that names it. Standard library only, and the file is memory-mapped:
checking a multi-GB model touches only its header.

Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"GGUF"
VERSIONS = (2, 3)  # llama.cpp no longer reads version 1
MAX_DIMS = 4  # GGML_MAX_DIMS
DEFAULT_ALIGNMENT = 32

# Metadata value types: id -> struct format of one scalar.
_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_STRING, _ARRAY = 8, 9
_U64 = struct.Struct("<Q")

# ggml tensor types: id -> (elements per block, bytes per block), as in ggml.c's type
# traits (and gguf-py's GGML_QUANT_SIZES). A type missing here (a newer one) is not
# size-checked: llama.cpp itself decides whether it knows it.
_TENSOR_TYPES = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
    9: (32, 40), 10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176),
    14: (256, 210), 15: (256, 292), 16: (256, 66), 17: (256, 74), 18: (256, 98),
    19: (256, 50), 20: (32, 18), 21: (256, 110), 22: (256, 82), 23: (256, 136), 24: (1, 1),
    25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8), 29: (256, 56), 30: (1, 2), 34: (256, 54),
    35: (256, 66), 39: (32, 17),
}  # fmt: skip


class GGUFFormatError(ValueError):
    """The file is not a readable GGUF model; the message says what is wrong."""


@dataclass(frozen=True)
class GGUFInfo:
    version: int
    tensors: int
    architecture: str | None  # general.architecture, when the header has it


class _Cursor:
    def __init__(self, buf: mmap.mmap | bytes) -> None:
        self.buf = buf
        self.pos = 0

    @property
    def left(self) -> int:
        return len(self.buf) - self.pos

    def take(self, n: int, what: str) -> int:
        """Advance over `n` bytes; returns where they start."""
        if n > self.left:
            raise GGUFFormatError(f"truncated ({what} runs past the end of the file)")
        start = self.pos
        self.pos += n
        return start

    def scalar(self, fmt: str, what: str) -> int | float | bool:
        size = struct.calcsize("<" + fmt)
        return struct.unpack_from("<" + fmt, self.buf, self.take(size, what))[0]

    def count(self, min_item_bytes: int, what: str) -> int:
        """A uint64 count of items that each take at least `min_item_bytes`."""
        n = int(self.scalar("Q", what))
        if n * min_item_bytes > self.left:
            raise GGUFFormatError(
                f"corrupt or truncated header ({what} {n} cannot fit in the file)"
            )
        return n

    def string(self, what: str) -> bytes:
        n = self.count(1, f"{what} length")
        start = self.take(n, what)
        return bytes(self.buf[start : start + n])

    def skip_strings(self, n: int, what: str) -> None:
        """Skip `n` strings: the tokenizer's vocabulary and merges are 10^4-10^5 of them,
        so this loop is kept lean."""
        buf, pos, end = self.buf, self.pos, len(self.buf)
        length_at = _U64.unpack_from
        for _ in range(n):
            if pos + 8 > end:
                break
            pos += 8 + length_at(buf, pos)[0]
            if pos > end:
                break
        else:
            self.pos = pos
            return
        raise GGUFFormatError(f"truncated ({what} runs past the end of the file)")

    def skip_value(self, vtype: int, what: str) -> None:
        if vtype in _SCALARS:
            self.take(struct.calcsize(_SCALARS[vtype]), what)
        elif vtype == _STRING:
            self.take(self.count(1, f"{what} length"), what)
        elif vtype == _ARRAY:
            item = int(self.scalar("I", what))
            if item in _SCALARS:
                self.take(
                    self.count(struct.calcsize(_SCALARS[item]), what)
                    * struct.calcsize(_SCALARS[item]),
                    what,
                )
            elif item == _STRING:
                self.skip_strings(self.count(8, what), what)  # a string is >= 8 bytes
            elif item == _ARRAY:
                for _ in range(self.count(12, what)):  # an array is >= 12 bytes
                    self.skip_value(item, what)
            else:
                raise GGUFFormatError(f"corrupt header (unknown value type {item} in {what})")
        else:
            raise GGUFFormatError(f"corrupt header (unknown value type {vtype} in {what})")


def read_header(path: Path) -> GGUFInfo:
    """Check `path` as a GGUF model; raises GGUFFormatError (or OSError) when it is not one."""
    with path.open("rb") as f:
        head = f.read(len(MAGIC))
        if not head:
            raise GGUFFormatError("the file is empty")
        if head != MAGIC:
            raise GGUFFormatError("no GGUF header")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _walk(_Cursor(buf))


def _walk(cur: _Cursor) -> GGUFInfo:
    cur.take(len(MAGIC), "magic")
    version = int(cur.scalar("I", "version"))
    if version not in VERSIONS:
        raise GGUFFormatError(f"unsupported GGUF version {version}")
    # A tensor description takes at least 24 bytes, a key/value at least 13.
    n_tensors = int(cur.scalar("Q", "tensor count"))
    if n_tensors * 24 > cur.left:
        raise GGUFFormatError(
            f"corrupt or truncated header (tensor count {n_tensors} cannot fit in the file)"
        )
    n_kv = cur.count(13, "metadata count")
    architecture: str | None = None
    alignment = DEFAULT_ALIGNMENT
    for i in range(n_kv):
        key = cur.string(f"metadata key {i}")
        vtype = int(cur.scalar("I", f"type of {key!r}"))
        name = key.decode("utf-8", "replace")
        if key == b"general.architecture" and vtype == _STRING:
            architecture = cur.string(name).decode("utf-8", "replace")
        elif key == b"general.alignment" and vtype == 4:
            alignment = int(cur.scalar("I", name))
            if alignment == 0 or alignment & (alignment - 1):
                raise GGUFFormatError(f"corrupt header (alignment {alignment})")
        else:
            cur.skip_value(vtype, name)
    extents: list[tuple[str, int, int]] = []  # (name, offset, bytes) of each tensor
    for i in range(n_tensors):
        name = cur.string(f"tensor name {i}").decode("utf-8", "replace")
        n_dims = int(cur.scalar("I", f"dimensions of {name}"))
        if not 1 <= n_dims <= MAX_DIMS:
            raise GGUFFormatError(f"corrupt header ({n_dims} dimensions in tensor {name})")
        elements = 1
        for _ in range(n_dims):
            elements *= int(cur.scalar("Q", f"shape of {name}"))
        ttype = int(cur.scalar("I", f"type of {name}"))
        offset = int(cur.scalar("Q", f"offset of {name}"))
        if ttype in _TENSOR_TYPES:
            block, block_bytes = _TENSOR_TYPES[ttype]
            extents.append((name, offset, -(-elements // block) * block_bytes))
    data_start = -(-cur.pos // alignment) * alignment
    data_bytes = len(cur.buf) - data_start
    for name, offset, size in extents:
        if offset + size > data_bytes:
            raise GGUFFormatError(
                f"truncated (tensor {name} needs {data_start + offset + size:,} bytes, "
                f"the file has {len(cur.buf):,})"
            )
    return GGUFInfo(version, n_tensors, architecture)
