"""Output: rich tables for people, JSON for scripts. stdout = results, stderr = the rest."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from qrag_cli.types import Episode, Evidence

# Piped output is not cut to 80 columns: paths must survive intact for scripts.
out = Console(soft_wrap=False, highlight=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def display_path(path: str) -> str:
    """Relative to the working directory when under it (clickable, short), else as stored."""
    try:
        return os.path.relpath(path) if Path(path).is_relative_to(Path.cwd()) else path
    except ValueError:
        return path


def location(ev: Evidence) -> str:
    return f"{display_path(ev.path)}:{ev.start_line}-{ev.end_line}"


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def evidence_json(ev: Evidence, explain: bool = False, absolute: bool = False) -> dict:
    item = {"step": ev.step, "q": round(ev.q, 6), "chunk_id": ev.chunk_id,
            "path": ev.path if absolute else display_path(ev.path), "start_line": ev.start_line,
            "end_line": ev.end_line, "text": ev.text}
    if explain:
        item["alternatives"] = [{"chunk_id": c, "q": round(q, 6)} for c, q in ev.alternatives]
    return item


def snippet(text: str, width: int = 90) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def episode_table(episode: Episode, show_text: bool, explain: bool,
                  alt_rows: dict[int, tuple[str, str]] | None = None) -> Table:
    table = Table(show_header=True, header_style="bold", expand=False)
    table.add_column("step", justify="right")
    table.add_column("Q", justify="right")
    table.add_column("where", no_wrap=True)
    table.add_column("text", overflow="fold")
    for ev in episode.evidence:
        table.add_row(str(ev.step), f"{ev.q:.3f}", location(ev),
                      ev.text if show_text else snippet(ev.text))
        if explain:
            for chunk_id, q in ev.alternatives:
                where, text = (alt_rows or {}).get(chunk_id, (f"chunk {chunk_id}", ""))
                table.add_row("", f"[dim]{q:.3f}[/dim]", f"[dim]{where}[/dim]",
                              f"[dim]{snippet(text, 60)}[/dim]")
    return table


def stop_reason(episode: Episode) -> str:
    return {"threshold": "stopped: best Q fell below the model's stop threshold",
            "budget": "stopped: step budget reached",
            "exhausted": "stopped: no chunks left"}[episode.stop]
