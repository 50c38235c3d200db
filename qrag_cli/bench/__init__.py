"""Benchmarks: task generators and runners (`qrag bench`)."""

from __future__ import annotations

import importlib.util

from qrag_cli.types import UsageError

# What the benches import beyond qrag itself: BM25 top-k's bm25s and the plots' matplotlib.
# They are the `bench` extra, not dependencies of qrag: a user who only indexes and asks
# never needs them.
EXTRA = ("bm25s", "matplotlib")


def require_extra() -> None:
    """Refuse, before a bench starts, to run without the bench extra (one line, the fix)."""
    missing = [name for name in EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        raise UsageError(
            f"qrag bench needs {', '.join(missing)}: install the bench extra "
            "(pip install 'qrag[bench]', or `make install` in a checkout)"
        )
