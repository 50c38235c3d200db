"""`qrag index` (files -> chunks -> vectors -> the index) and `qrag status`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from qrag_cli import render
from qrag_cli.commands.options import (
    CHUNKING,
    DebugOpt,
    IndexOpt,
    JsonOpt,
    ModelOpt,
    progress_enabled,
)
from qrag_cli.config import (
    DEFAULT_MAX_FILE_SIZE,
    qrag_home,
    resolve_index,
)
from qrag_cli.flags import (
    int_range,
    size,
)
from qrag_cli.types import QragError


def index(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(
            readable=False,  # an unreadable path is reported and skipped, not a usage error
            help="Files or folders to index; none = refresh the folders already indexed.",
        ),
    ] = None,
    index: IndexOpt = None,
    model: ModelOpt = None,
    chunk_tokens: Annotated[
        int | None,
        typer.Option(
            parser=int_range(16, 2048),
            help="Chunk size in cl100k tokens "
            f"[default: the index's own, else {CHUNKING.chunk_tokens}].",
        ),
    ] = None,
    overlap: Annotated[
        int | None,
        typer.Option(
            parser=int_range(0),
            help="Tokens shared by neighbouring chunks "
            f"[default: the index's own, else {CHUNKING.overlap}].",
        ),
    ] = None,
    max_file_size: Annotated[
        int | None,
        typer.Option(
            parser=size,
            help="Skip larger files (e.g. 10MB) "
            f"[default: the index's own, else {DEFAULT_MAX_FILE_SIZE >> 20}MB].",
        ),
    ] = None,
    include_secrets: Annotated[
        bool,
        typer.Option(help="Also index files holding keys, tokens or passwords (never by default)."),
    ] = False,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Chunk local files into an on-disk HNSW index (incremental).

    An existing index keeps the model and settings it was built with unless others are
    given; damaged index files are repaired.
    """
    from qrag_cli.indexer import IndexSummary, build_index, settings_for
    from qrag_cli.onnx_model import load_inference_model
    from qrag_cli.types import ModelError

    index_dir = resolve_index(index)
    settings = settings_for(index_dir, model, chunk_tokens, overlap, max_file_size)
    try:
        qmodel = load_inference_model(settings.model_spec)
    except ModelError as exc:
        if model is not None or not index_dir.exists():  # --model given, or a new index
            raise
        raise ModelError(
            f"index {index_dir} was built with --model {settings.model}, which "
            f"cannot be loaded ({exc}); give --model to rebuild it with another"
        ) from exc
    chunk_cfg = settings.chunking

    def run(on_progress: Callable[[int, int], None] = lambda done, total: None) -> IndexSummary:
        return build_index(
            paths or [],
            index_dir,
            qmodel,
            chunk_cfg,
            max_file_size=settings.max_file_size,
            model_spec=settings.model,
            include_secrets=include_secrets,
            on_problem=render.problem,
            on_progress=on_progress,
        )

    if progress_enabled():
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        # markup=False: the consoles read no markup, and a description is never parsed as any.
        with Progress(
            TextColumn("{task.description}", style="progress.description", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=render.err,
            transient=True,
        ) as bar:
            task = bar.add_task("indexing", total=None)
            summary = run(lambda done, total: bar.update(task, completed=done, total=total))
    else:
        summary = run()
    for repair in summary.repaired:
        render.log(f"repaired: {repair}")
    if summary.rebuild:
        render.log(f"full rebuild: {summary.rebuild}")
    if as_json:
        render.print_json(summary.to_dict())
        return
    rate = summary.tokens_embedded / summary.seconds if summary.seconds else 0.0
    render.log(
        f"{summary.new} new, {summary.changed} changed, {summary.removed} removed, "
        f"{summary.unchanged} unchanged, {summary.failed} failed, {summary.skipped} skipped; "
        f"{summary.chunks_embedded} chunks embedded ({rate:,.0f} tokens/s) in "
        f"{summary.seconds:.1f}s; index {index_dir}: {summary.files_total} files, "
        f"{summary.chunks_total} chunks"
    )


def status(
    index: IndexOpt = None,
    check: Annotated[
        bool,
        typer.Option(
            "--check", help="Verify every index file (read-only); exit 1 if any is damaged."
        ),
    ] = False,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Show indexes: files, chunks, tokens, model, size on disk."""
    from qrag_cli.store import check_index, index_status, list_indexes

    folders = [resolve_index(index)] if index else list_indexes(qrag_home())
    if index is None and not folders:
        if as_json:  # "no indexes" is an answer, not an error, to a script
            render.print_json([])
            return
        raise QragError(f"no indexes under {qrag_home()}; run `qrag index PATH` first")
    # One broken index is listed as broken; it does not hide the healthy ones.
    rows = [index_status(folder, strict=index is not None and not check) for folder in folders]
    if check:
        for row in rows:
            found = check_index(Path(row["index"]))
            row["ok"], row["problems"] = found["ok"], found["problems"]
    if as_json:
        render.print_json(rows[0] if index else rows)
    else:
        _print_status(rows, check)
    if check and not all(row["ok"] for row in rows):
        raise typer.Exit(1)


def _print_status(rows: list[dict], check: bool) -> None:
    from rich.table import Table

    table = Table(header_style="bold")
    for col in ("index", "files", "chunks", "tokens", "model", "size", "updated", "state"):
        table.add_column(col)
    for row in rows:
        if check:
            state = "ok" if row["ok"] else "damaged: " + "; ".join(row["problems"])
        else:
            state = f"broken: {row['error']}" if row["broken"] else "ok"
        if row["broken"]:
            table.add_row(render.plain(row["index"]), "", "", "", "", "", "", render.plain(state))
            continue
        table.add_row(
            render.plain(row["index"]),
            str(row["files"]),
            str(row["chunks"]),
            f"{row['tokens']:,}",
            render.plain(str(row["model"])),
            f"{row['bytes_on_disk'] / 1e6:.1f} MB",
            render.plain(str(row["updated"])),
            render.plain(state),
        )
    render.out.print(table)
