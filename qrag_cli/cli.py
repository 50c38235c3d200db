"""The `qrag` command: parse -> config -> one library call -> render.

Library code raises QragError; only this module turns errors into exit codes.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from qrag_cli import render
from qrag_cli.cliparse import RunOrSubcommand, refuse_flag_values
from qrag_cli.config import (
    DEFAULT_MAX_FILE_SIZE,
    MAX_STEPS,
    AskOptions,
    ChunkConfig,
    ReaderSettings,
    TrainConfig,
    check_environment,
    env_value,
    qrag_home,
    resolve_index,
)
from qrag_cli.flags import (
    SEED,
    check_output,
    float_range,
    int_range,
    model_name,
    reader_source,
    size,
)
from qrag_cli.types import QragError, UsageError

# The flags' defaults, declared once in config.py (help shows them).
_CHUNKING, _ASK, _TRAIN = ChunkConfig(), AskOptions(), TrainConfig()
_READER = _ASK.reader

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Multi-step Q-value retrieval (Q-RAG) over your own files.",
)

IndexOpt = Annotated[
    str | None,
    typer.Option("--index", "-i", help="Index name (under $QRAG_HOME/indexes) or folder."),
]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model", "-m", help="Model folder, 'base' (untrained all-MiniLM-L6-v2) or 'default'."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON to stdout.")]
# main() reads --debug from argv before parsing (an error raised while parsing needs it
# too); each command still declares the flag so that typer accepts and documents it.
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks.")]
# The reader flags of ask, mcp and bench --answers: checked when the command line is read.
LlmOpt = Annotated[
    str | None,
    typer.Option(
        parser=reader_source,
        help="The reader LLM: a GGUF file, or the base URL of an OpenAI-compatible server "
        "(http://127.0.0.1:8080/v1; API key from QRAG_LLM_API_KEY) [default: the configured "
        "one].",
    ),
]
LlmModelOpt = Annotated[
    str | None,
    typer.Option(
        parser=model_name, help="Model name to ask a served reader for (default: its only one)."
    ),
]
LexicalOpt = Annotated[
    str,
    typer.Option(
        "--lexical",
        help="on: Q adds the model's learned BM25 terms (if it has them); off: the "
        "pure dense Q (ablation).",
    ),
]


def _lexical_on(value: str) -> bool:
    if value not in {"on", "off"}:
        raise UsageError("--lexical must be 'on' or 'off'")
    return value == "on"


def _print_version(wanted: bool) -> None:
    if wanted:
        from importlib.metadata import PackageNotFoundError, version

        try:
            number = version("qrag")
        except PackageNotFoundError:  # run from a source tree that was never installed
            number = "unknown (not installed)"
        render.out.print(f"qrag {number}", markup=False, highlight=False)
        raise typer.Exit()


@app.callback()
def _top_level(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version",
            is_eager=True,
            callback=_print_version,
            help="Print the qrag version and exit.",
        ),
    ] = False,
) -> None:
    """Multi-step Q-value retrieval (Q-RAG) over your own files."""


def _progress_enabled() -> bool:
    return sys.stderr.isatty() and env_value("TERM") != "dumb"


@app.command()
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
            f"[default: the index's own, else {_CHUNKING.chunk_tokens}].",
        ),
    ] = None,
    overlap: Annotated[
        int | None,
        typer.Option(
            parser=int_range(0),
            help="Tokens shared by neighbouring chunks "
            f"[default: the index's own, else {_CHUNKING.overlap}].",
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

    if _progress_enabled():
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


@app.command()
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


@app.command("config")
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
    from qrag_cli.config import effective_settings
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


# `qrag train DATA` trains; `qrag train eval|convert|pack ...` are its subcommands (and
# `qrag bench` / `qrag bench data` alike): see cliparse.RunOrSubcommand.
train_app = typer.Typer(
    cls=RunOrSubcommand, invoke_without_command=True, subcommand_metavar="| COMMAND [ARGS]..."
)
app.add_typer(train_app, name="train")


@train_app.callback()
def train_cmd(
    data: Annotated[Path | None, typer.Argument(help="Training JSONL.")] = None,
    eval_files: Annotated[
        list[Path] | None,
        typer.Option(
            "--eval", help="Held-out JSONL; repeat for one file per domain (selection: mean EM)."
        ),
    ] = None,
    eval_split: Annotated[
        float,
        typer.Option(
            parser=float_range(0, 1, lo_open=True, hi_open=True),
            help="Held-out share when no --eval.",
        ),
    ] = _TRAIN.eval_split,
    out: Annotated[Path, typer.Option(help="Model folder to write.")] = Path(_TRAIN.out),
    base: Annotated[str | None, typer.Option(help="Model to start from.")] = None,
    layers: Annotated[
        int | None, typer.Option(parser=int_range(1), help="Keep only N encoder layers.")
    ] = None,
    budget: Annotated[
        int, typer.Option(parser=int_range(1), help="Picks per episode (T).")
    ] = _TRAIN.budget,
    updates: Annotated[
        int, typer.Option(parser=int_range(1), help="Gradient updates.")
    ] = _TRAIN.updates,
    batch: Annotated[
        int, typer.Option(parser=int_range(1), help="Parallel episodes per update.")
    ] = _TRAIN.batch,
    lr: Annotated[
        float, typer.Option(parser=float_range(0, 1, lo_open=True), help="Peak learning rate.")
    ] = _TRAIN.lr,
    lexical_lr: Annotated[
        float,
        typer.Option(
            parser=float_range(0, 1, lo_open=True),
            help="Peak learning rate of the Q head (the dense and lexical weights; its bias "
            f"learns {_TRAIN.bias_lr_scale:g}x faster).",
        ),
    ] = _TRAIN.lexical_lr,
    alpha: Annotated[
        float, typer.Option(parser=float_range(0, lo_open=True), help="Initial temperature.")
    ] = _TRAIN.alpha,
    seed: Annotated[int, typer.Option(parser=SEED, help="Random seed.")] = _TRAIN.seed,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = _TRAIN.device,
    positions: Annotated[str, typer.Option(help="none|relative.")] = _TRAIN.positions,
    eval_every: Annotated[
        int, typer.Option(parser=int_range(1), help="Updates between evals.")
    ] = _TRAIN.eval_every,
    step_penalty: Annotated[bool, typer.Option(help="Penalise extra steps.")] = _TRAIN.step_penalty,
    bf16: Annotated[
        bool, typer.Option("--bf16", help="Gradient pass in bf16 autocast.")
    ] = _TRAIN.bf16,
    frozen_chunks: Annotated[
        bool,
        typer.Option(
            "--frozen-chunks", help="Train E_s only; E_a stays the base (indexes stay valid)."
        ),
    ] = _TRAIN.frozen_chunks,
    lexical: Annotated[
        str,
        typer.Option(
            help="The lexical terms of Q and their starting weights: model (the starting "
            "model's own terms and weights, learned further; none for the base), on (the "
            "model's, or 0.1,0.1 from the base), off (a pure dense Q: the model's terms "
            "dropped), or W_QUESTION,W_PICKED[,W_ORDER[,W_NAMED]]."
        ),
    ] = "model",
    lexical_query: Annotated[
        str | None,
        typer.Option(
            help="How the BM25 terms read the state: chunk (every new word of the picks) or "
            "names (the names, keys and codes of the sentences each hop followed, and the "
            "question's names and keys asked whole); default: the starting model's."
        ),
    ] = _TRAIN.lexical_query,
    state_chunk_cap: Annotated[
        int | None,
        typer.Option(
            parser=int_range(8, 512),
            help="Max encoder tokens of each picked chunk inside the state; default: the "
            "starting model's.",
        ),
    ] = _TRAIN.state_chunk_cap,
    only_lexical: Annotated[
        bool,
        typer.Option("--only-lexical", help="Keep the encoders; learn only the lexical weights."),
    ] = not _TRAIN.train_encoder,
    warm_start: Annotated[
        int,
        typer.Option(
            parser=int_range(0),
            help="First updates that imitate the oracle over all chunks (then Q-learning).",
        ),
    ] = _TRAIN.warm_start,
    stop: Annotated[
        str,
        typer.Option(
            help="apply: the calibrated Q threshold becomes the model's stop; record: kept in "
            "its metrics only (fixed --steps budget)."
        ),
    ] = "apply" if _TRAIN.apply_stop else "record",
    no_target: Annotated[
        bool, typer.Option("--no-target", help="Ablation.")
    ] = not _TRAIN.target_network,
    no_soft: Annotated[bool, typer.Option("--no-soft", help="Ablation.")] = not _TRAIN.soft_value,
    no_twin: Annotated[bool, typer.Option("--no-twin", help="Ablation.")] = not _TRAIN.twin,
    resume: Annotated[Path | None, typer.Option(help="Continue a run (its out folder).")] = None,
    skip_bad: Annotated[bool, typer.Option(help="Skip bad data lines.")] = _TRAIN.skip_bad,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """RL-fine-tune the embedder on labelled QA and write a model folder.

    `qrag train DATA.jsonl [OPTIONS]` trains; the commands below evaluate, convert, pack.
    """
    if data is None:
        raise UsageError("give a training JSONL: qrag train DATA.jsonl")
    from qrag_cli.pqn import train

    if device not in {"cpu", "cuda"} and not device.startswith("cuda:"):
        raise UsageError("--device must be cpu or cuda")
    if warm_start > updates:
        raise UsageError(f"--warm-start must be from 0 to --updates ({updates}), not {warm_start}")
    if stop not in {"apply", "record"}:
        raise UsageError("--stop must be 'apply' or 'record'")
    from qrag_cli.lexical import bad_query

    if lexical_query is not None and (why := bad_query(lexical_query)):
        raise UsageError(f"--lexical-query {why}")
    lexical_init = _lexical_weights(lexical, base)
    if resume is None:  # a resumed run writes to its own folder, by design
        check_output(
            out,
            [
                ("DATA", data),
                *[("--eval", f) for f in eval_files or []],
                ("--base", Path(base) if base and Path(base).exists() else None),
            ],
            folder=True,
        )
    cfg = TrainConfig(
        data=str(data),
        eval=[str(f) for f in eval_files] if eval_files else None,
        eval_split=eval_split,
        out=str(out),
        base=base,
        layers=layers,
        budget=budget,
        updates=updates,
        batch=batch,
        lr=lr,
        lexical_lr=lexical_lr,
        alpha=alpha,
        alpha_final=alpha / 10,
        seed=seed,
        device=device,
        positions=positions,
        eval_every=eval_every,
        step_penalty=step_penalty,
        bf16=bf16,
        frozen_chunks=frozen_chunks,
        lexical=lexical_init,
        lexical_query=lexical_query,
        state_chunk_cap=state_chunk_cap,
        train_encoder=not only_lexical,
        warm_start=warm_start,
        apply_stop=stop == "apply",
        target_network=not no_target,
        soft_value=not no_soft,
        twin=not no_twin,
        skip_bad=skip_bad,
    )
    if resume is not None:
        out = resume  # the run's own settings and folder are kept
    # The folder and its log are created only when training starts (the first event that is
    # not a skipped data line): a run refused while its inputs are checked leaves nothing.
    early_rows: list[dict] = []
    log_file = None

    def log(row: dict) -> None:
        nonlocal log_file
        if log_file is None and row["event"] != "skip":
            out.mkdir(parents=True, exist_ok=True)
            log_file = (out / "train_log.jsonl").open("a", encoding="utf-8")
            log_file.writelines(json.dumps(r) + "\n" for r in early_rows)
        if log_file is None:
            early_rows.append(row)
        else:
            log_file.write(json.dumps(row) + "\n")
            log_file.flush()
        if row["event"] == "skip":
            render.problem(row["message"])
        elif row["event"] == "eval":
            by_file = "".join(
                f"; {name} {m['fact_em']:.3f}" for name, m in (row.get("by_file") or {}).items()
            )
            render.log(
                f"update {row['update']}: eval fact EM {row['fact_em']:.3f}, "
                f"F1 {row['fact_f1']:.3f}{by_file}"
            )
        elif _progress_enabled() and row["update"] % 10 == 0:
            render.log(
                f"update {row['update']}: loss {row['loss']:.4f}, solved "
                f"{row['solved']:.2f}, lr {row['lr']:.2e}"
            )

    try:
        result = train(cfg, resume=resume, log=log)
    finally:
        if log_file is not None:
            log_file.close()
    summary = {
        "out": str(result.out),
        "before": result.before,
        "after": result.after,
        "threshold": result.threshold,
        "stop_right_share": result.stop_right_share,
        "updates_per_s": round(result.updates_per_s, 3),
        "episodes_per_s": round(result.episodes_per_s, 3),
    }
    if as_json:
        render.print_json(summary)
    else:
        render.log(
            f"wrote {result.out}: fact EM {result.before.get('fact_em', '?')} -> "
            f"{result.after['fact_em']} (budget {budget}); stop threshold "
            f"{result.threshold}; {result.updates_per_s:.2f} updates/s"
        )


def _lexical_weights(value: str, base: str | None) -> list[float] | None:
    """`qrag train --lexical`: model | on | off | W_QUESTION,W_PICKED[,W_ORDER[,W_NAMED]] ->
    starting weights (None: the starting model's; []: none; two: no order term; three: no
    named-title term)."""
    if value == "model":
        return None
    if value == "off":
        return []
    if value == "on":
        return None if base not in (None, "base") else [0.1, 0.1]  # a model keeps its own
    try:
        weights = [float(w) for w in value.split(",")]
    except ValueError:
        weights = []
    if len(weights) not in (2, 3, 4) or not all(math.isfinite(w) for w in weights):
        raise UsageError(
            "--lexical must be model, on, off or two to four weights like 0.3,0.3,0.5,0.3"
        )
    return weights


@train_app.command("eval")
def train_eval(
    data: Annotated[Path, typer.Argument(help="Labelled JSONL.")],
    model: ModelOpt = None,
    budget: Annotated[
        list[int] | None, typer.Option(parser=int_range(1), help="Fixed budgets (repeatable).")
    ] = None,
    threshold: Annotated[
        float | None, typer.Option(parser=float_range(), help="Override the stored threshold.")
    ] = None,
    skip_bad: Annotated[bool, typer.Option(help="Skip bad data lines.")] = False,
    lexical: LexicalOpt = "on",
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Fact EM, fact F1 and mean steps, with fixed budgets and the stored threshold."""
    lexical_on = _lexical_on(lexical)
    from qrag_cli.datasets import load_examples
    from qrag_cli.evaluate import evaluate
    from qrag_cli.model import load_model
    from qrag_cli.pqn import seed_everything

    seed_everything(0)
    examples = load_examples(data, skip_bad, on_problem=render.problem)
    qmodel = load_model(model)
    if not lexical_on:
        from qrag_cli.qvalue import without_lexical

        without_lexical(qmodel)
    result = {
        "model": qmodel.cfg.name,
        "data": str(data),
        "q": qmodel.cfg.q,
        **evaluate(qmodel, examples, budget or [1, 2, 3, 4], threshold),
    }
    if as_json:
        render.print_json(result)
        return
    from rich.table import Table

    table = Table(header_style="bold")
    for col in ("setting", "fact EM", "fact F1", "mean steps", "n"):
        table.add_column(col)
    for key, m in result.items():
        if isinstance(m, dict) and key != "stop":
            name = (
                f"{key} {m['value']:.3f}" if key in ("threshold", "head") else key.replace("_", " ")
            )
            table.add_row(
                render.plain(name),
                f"{m['fact_em']:.3f}",
                f"{m['fact_f1']:.3f}",
                f"{m['mean_steps']:.2f}",
                str(m["n"]),
            )
    render.out.print(table)
    if "stop" in result:
        render.out.print(render.stop_summary(result["stop"]))


@train_app.command("stop")
def train_stop(
    src: Annotated[Path, typer.Argument(help="Trained model folder.")],
    data: Annotated[Path, typer.Option("--data", help="Training JSONL (fits the stop head).")],
    eval_files: Annotated[
        list[Path],
        typer.Option("--eval", help="Labelled JSONL that chooses the cut (repeatable)."),
    ],
    out: Annotated[Path, typer.Option(help="Model folder to write (SRC plus its stop).")],
    kind: Annotated[
        str,
        typer.Option(
            help="head: a learned stop head; threshold: a Q threshold chosen for fact EM."
        ),
    ] = "head",
    budget: Annotated[
        int | None,
        typer.Option(parser=int_range(1), help="Ceiling (default: the model's training budget)."),
    ] = None,
    examples: Annotated[
        int, typer.Option(parser=int_range(2), help="Training examples sampled (seeded).")
    ] = 300,
    seed: Annotated[int, typer.Option(parser=SEED, help="Sampling seed.")] = 0,
    skip_bad: Annotated[bool, typer.Option(help="Skip bad data lines.")] = False,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Fit a model's stop on top of its encoders (nothing else changes) -> a new folder.

    The rule stops when it judges the gold evidence complete; its cut (or threshold) is
    the one with the fewest steps whose fact EM on --eval stays within 0.02 of the
    fixed budget's."""
    import random
    import shutil
    from dataclasses import asdict

    from qrag_cli.datasets import load_examples
    from qrag_cli.model import load_model, save_model, write_model_card
    from qrag_cli.pqn import seed_everything
    from qrag_cli.stopfit import fit_model_stop

    if kind not in {"head", "threshold"}:
        raise UsageError("--kind must be 'head' or 'threshold'")
    if not (src / "config.json").is_file():
        raise UsageError(f"{src} is not a model folder (no config.json)")
    check_output(
        out,
        [("MODEL_DIR", src), ("--data", data), *[("--eval", f) for f in eval_files]],
        folder=True,
    )
    seed_everything(seed)
    train = load_examples(data, skip_bad, on_problem=render.problem)
    train = random.Random(seed).sample(train, min(examples, len(train)))
    held = [ex for f in eval_files for ex in load_examples(f, skip_bad, on_problem=render.problem)]
    qmodel = load_model(str(src))
    ceiling = budget or int((qmodel.cfg.train or {}).get("budget") or 4)
    try:
        fitted = fit_model_stop(qmodel, train, held, ceiling, kind)
    except ValueError as exc:
        raise UsageError(f"cannot fit a stop: {exc}") from exc
    qmodel.cfg.metrics = {**(qmodel.cfg.metrics or {}), "stop_fit": fitted}
    qmodel.cfg.name = out.name
    save_model(qmodel, out, compact=qmodel.cfg.delta_base is not None)
    write_model_card(out, {"config": asdict(qmodel.cfg)})
    if (src / "train_log.jsonl").is_file():
        shutil.copyfile(src / "train_log.jsonl", out / "train_log.jsonl")
    if as_json:
        render.print_json({"src": str(src), "out": str(out), **fitted})
    else:
        accuracy = fitted.get("count_accuracy")
        read = f"; question chunk counts read right: {accuracy:.0%}" if accuracy is not None else ""
        render.log(f"wrote {out}: {render.stop_summary(fitted)}{read}")


@train_app.command("convert")
def train_convert(
    src: Annotated[Path, typer.Argument(help="File in an official format.")],
    dest: Annotated[Path, typer.Argument(help="Training JSONL to write.")],
    from_format: Annotated[
        str, typer.Option("--from", help="hotpotqa|hotpotqa-evidence|musique|2wiki|ruler|babi.")
    ] = "",
    debug: DebugOpt = False,
) -> None:
    """Convert official HotpotQA / MuSiQue / 2Wiki / RULER / bAbI files to the training JSONL."""
    from qrag_cli.datasets import CONVERTERS, write_examples

    if from_format not in CONVERTERS:
        raise UsageError(f"--from must be one of {', '.join(CONVERTERS)}")
    if not src.is_file():
        raise UsageError(f"no such file: {src}")
    check_output(dest, [("IN", src)], folder=False)
    count = write_examples(CONVERTERS[from_format](src, on_problem=render.problem), dest)
    render.log(f"wrote {count} examples to {dest}")


@train_app.command("pack")
def train_pack(
    src: Annotated[Path, typer.Argument(help="Trained model folder.")],
    dest: Annotated[Path, typer.Argument(help="Compact model folder to write.")],
    layouts: Annotated[
        Path | None,
        typer.Option(
            help="layouts.json of `qrag bench --layouts -m SRC`: its validation table "
            "goes into the model's metrics and card."
        ),
    ] = None,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Write a compact copy of a trained model: fp16, only what differs from the base.

    This is how models/qrag-default is stored."""
    import shutil
    from dataclasses import asdict

    from qrag_cli.model import load_model, save_model, write_model_card

    if not (src / "config.json").is_file():
        raise UsageError(f"{src} is not a model folder (no config.json)")
    check_output(dest, [("MODEL_DIR", src), ("--layouts", layouts)], folder=True)
    measured = _layout_metrics(layouts) if layouts is not None else None
    qmodel = load_model(str(src))
    qmodel.cfg.name = dest.name
    if measured is not None:
        qmodel.cfg.metrics = {**(qmodel.cfg.metrics or {}), "layouts": measured}
    save_model(qmodel, dest, compact=True)
    write_model_card(dest, {"config": asdict(qmodel.cfg)})  # under its new name
    if (src / "train_log.jsonl").is_file():
        shutil.copyfile(src / "train_log.jsonl", dest / "train_log.jsonl")
    size = (dest / "model.safetensors").stat().st_size
    result = {
        "src": str(src),
        "dest": str(dest),
        "weights_bytes": size,
        "source_weights_bytes": (src / "model.safetensors").stat().st_size,
        "fingerprint": qmodel.cfg.fingerprint,
    }
    if as_json:
        render.print_json(result)
    else:
        render.log(
            f"wrote {dest}: weights {size / 1e6:.1f} MB "
            f"(from {result['source_weights_bytes'] / 1e6:.1f} MB)"
        )


def _layout_metrics(path: Path) -> dict:
    """The validation part of a layout bench result (the test split never goes into a
    model: it is reported once, in BENCHMARKS.md)."""
    try:
        result = json.loads(path.read_text())
        part = result["splits"]["validation"]
        return {"budget": result["budget"], **part}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(
            f"--layouts {path}: not a layout bench result with a validation split ({exc})"
        ) from None


@app.command()
def ask(
    question: Annotated[str | None, typer.Argument(help="The question.")] = None,
    index: IndexOpt = None,
    model: ModelOpt = None,
    steps: Annotated[
        int,
        typer.Option("--steps", "-n", parser=int_range(1, MAX_STEPS), help="Most chunks to pick."),
    ] = _ASK.steps,
    threshold: Annotated[
        float | None,
        typer.Option(
            parser=float_range(),
            help="Stop when the best Q falls below this (default: the model's own).",
        ),
    ] = None,
    no_stop: Annotated[
        bool, typer.Option("--no-stop", help="Always use all --steps.")
    ] = _ASK.no_stop,
    exact: Annotated[bool, typer.Option(help="Score every chunk (no HNSW).")] = _ASK.exact,
    lexical: LexicalOpt = "on" if _ASK.lexical else "off",
    show_text: Annotated[bool, typer.Option(help="Print whole chunks.")] = False,
    explain: Annotated[
        bool, typer.Option(help="Show the top alternatives per step.")
    ] = _ASK.explain,
    questions: Annotated[
        Path | None,
        typer.Option(help='JSONL file of {"id"?, "question"}: prints one JSON line per question.'),
    ] = None,
    answer: Annotated[
        bool, typer.Option(help="Let the reader LLM (--llm) answer from the evidence.")
    ] = _ASK.answer,
    llm: LlmOpt = None,
    llm_model: LlmModelOpt = None,
    llm_timeout: Annotated[
        float,
        typer.Option(
            parser=float_range(0.1, 86400),
            help="Seconds a served reader may stay silent before qrag gives up.",
        ),
    ] = _READER.timeout,
    max_tokens: Annotated[
        int, typer.Option(parser=int_range(1), help="Most tokens the LLM generates.")
    ] = _READER.max_tokens,
    temperature: Annotated[
        float, typer.Option(parser=float_range(0), help="LLM sampling temperature.")
    ] = _READER.temperature,
    seed: Annotated[int, typer.Option(parser=SEED, help="LLM sampling seed.")] = _READER.seed,
    n_ctx: Annotated[
        int,
        typer.Option(
            parser=int_range(1, 1 << 20),
            help="Context size in tokens of a GGUF reader (a server has its own).",
        ),
    ] = _READER.n_ctx,
    threads: Annotated[
        int | None,
        typer.Option(
            parser=int_range(1, 1024), help="Threads of a GGUF reader (default: all cores)."
        ),
    ] = _READER.threads,
    gpu_layers: Annotated[
        int, typer.Option(parser=int_range(-1), help="Layers offloaded to a GPU (-1: all).")
    ] = _READER.gpu_layers,
    order: Annotated[
        str, typer.Option(help="Evidence order in the prompt: document|retrieval.")
    ] = _READER.order,
    verbose: Annotated[bool, typer.Option(help="Show llama.cpp logs on stderr.")] = _READER.verbose,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Multi-step Q-value retrieval: evidence with path:line, optionally an answer."""
    from qrag_cli.asking import Asker
    from qrag_cli.datasets import load_questions

    if (question is None) == (questions is None):
        raise UsageError("give a question, or --questions FILE.jsonl")
    if question is not None and not question.strip():
        raise UsageError("the question is empty")
    if order not in {"document", "retrieval"}:
        raise UsageError("--order must be 'document' or 'retrieval'")
    reader = ReaderSettings(
        llm=llm,
        llm_model=llm_model,
        timeout=llm_timeout,
        n_ctx=n_ctx,
        max_tokens=max_tokens,
        temperature=temperature,
        seed=seed,
        threads=threads,
        gpu_layers=gpu_layers,
        order=order,
        verbose=verbose,
    )
    opts = AskOptions(
        steps=steps,
        threshold=threshold,
        no_stop=no_stop,
        exact=exact,
        lexical=_lexical_on(lexical),
        explain=explain,
        answer=answer,
        reader=reader,
    )
    items = load_questions(questions) if questions else [{"question": question}]
    with Asker(resolve_index(index), model, opts, notify=render.log) as asker:
        for number, item in enumerate(items, start=1):
            n_tokens, cap = asker.question_tokens(item["question"]), asker.model.cfg.question_cap
            if n_tokens > cap:
                label = (
                    "the question" if questions is None else f"question {item.get('id', number)}"
                )
                render.log(
                    f"note: {label} is {n_tokens} tokens long; retrieval reads only "
                    f"its first {cap} (put the key words first)"
                )
            stream = not as_json and questions is None
            tokens = render.TerminalStream(sys.stdout) if stream else None
            result = asker.ask(item["question"], on_token=None if tokens is None else tokens.write)
            if tokens is not None:
                tokens.close()
            label = "" if questions is None else f"question {item.get('id', number)}: "
            note = render.more_steps_note(result.episode, label)
            if note is not None:
                render.log(note)
            if questions is not None:
                render.print_json({"id": item.get("id"), **render.ask_json(result, explain)})
            elif as_json:
                render.print_json(render.ask_json(result, explain))
            else:
                render.print_ask(result, show_text=show_text, explain=explain, streamed=stream)
            note = None if result.answer is None else render.uncited_note(result.answer, label)
            if note is not None:  # after the sources, which the user is told to check
                render.log(note)


@app.command()
def mcp(
    index: IndexOpt = None,
    model: ModelOpt = None,
    llm: LlmOpt = None,
    debug: DebugOpt = False,
) -> None:
    """MCP server over stdio: ask, get and status as tools for agents, model kept loaded."""
    from qrag_cli.mcp_server import serve

    serve(resolve_index(index), model, llm, debug=debug)


bench_app = typer.Typer(
    cls=RunOrSubcommand, invoke_without_command=True, subcommand_metavar="| COMMAND [ARGS]..."
)
app.add_typer(bench_app, name="bench")


@bench_app.callback()
def bench_cmd(
    profile: Annotated[str, typer.Option(help="quick (< 15 min on 2 cores) or full.")] = "quick",
    out: Annotated[Path, typer.Option(help="Results folder.")] = Path("bench-results"),
    model: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help="Trained Q-RAG model folder to compare (repeatable)."),
    ] = None,
    task: Annotated[list[str] | None, typer.Option(help="Only these tasks (repeatable).")] = None,
    length: Annotated[
        list[int] | None,
        typer.Option(parser=int_range(512), help="Context lengths in tokens (repeatable)."),
    ] = None,
    questions: Annotated[
        int | None, typer.Option(parser=int_range(1), help="Questions per task and length.")
    ] = None,
    steps: Annotated[
        int | None, typer.Option(parser=int_range(1), help="Retrieval budget (and k of top-k).")
    ] = None,
    seed: Annotated[
        int, typer.Option(parser=SEED, help="Seed of the generated tasks and split.")
    ] = 0,
    haystack: Annotated[
        Path | None, typer.Option(help="Folder of your own text to use as filler.")
    ] = None,
    no_speed: Annotated[bool, typer.Option("--no-speed", help="Skip speed and scale.")] = False,
    no_real: Annotated[bool, typer.Option("--no-real", help="Skip HotpotQA/MuSiQue.")] = False,
    lexical: Annotated[
        str,
        typer.Option(
            "--lexical",
            help="on: Q-RAG models use their BM25 terms; off: dense Q only; both: "
            "each model twice (the ablation).",
        ),
    ] = "on",
    layouts: Annotated[
        bool,
        typer.Option(
            "--layouts",
            help="Run the layout bench instead: the same real questions with their "
            "paragraphs written in several file layouts (default, BM25, dense top-k).",
        ),
    ] = False,
    layout: Annotated[
        list[str] | None, typer.Option(help="With --layouts: only these layouts (repeatable).")
    ] = None,
    ablation: Annotated[
        bool,
        typer.Option(
            "--ablation",
            help="With --layouts: what each part of Q adds: the model, its E_s untrained, "
            "dense only, each lexical term and rule taken out, beside BM25 and dense top-k "
            "(default layouts: plain and notes) -> ablation.md, ablation.json.",
        ),
    ] = False,
    split: Annotated[
        str,
        typer.Option(
            help="With --layouts or --answers: validation (choose on it), test (once per "
            "issue, at the end) or both (--layouts only)."
        ),
    ] = "validation",
    answers: Annotated[
        bool,
        typer.Option(
            "--answers",
            help="Run the answer bench instead: a reader answers the layout bench's real "
            "questions from qrag's, BM25's, dense top-k's and the gold evidence "
            "(EM, F1, echoes) -> answers.md, answers.json (default: 30 questions, notes layout).",
        ),
    ] = False,
    llm: LlmOpt = None,
    llm_model: LlmModelOpt = None,
    max_tokens: Annotated[
        int, typer.Option(parser=int_range(1), help="With --answers: most tokens per answer.")
    ] = _READER.max_tokens,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Long-context multi-hop benchmarks, baselines, speed and scale -> a results folder.

    `qrag bench data TASK OUT.jsonl` writes training episodes of a generated task.
    `qrag bench --layouts` writes the layout bench (layouts.md, layouts.json).
    `qrag bench --answers` writes the answer bench (answers.md, answers.json).
    """
    from dataclasses import replace

    from qrag_cli.bench import suite

    if split not in {"validation", "test", "both"}:
        raise UsageError("--split must be 'validation', 'test' or 'both'")
    if layouts and answers:
        raise UsageError("--layouts and --answers are two benches: run one at a time")
    if (layout or split != "validation") and not (layouts or answers):
        raise UsageError("--layout and --split go with --layouts or --answers")
    if ablation and not layouts:
        raise UsageError("--ablation goes with --layouts")
    if (llm or llm_model or max_tokens != _READER.max_tokens) and not answers:
        raise UsageError("--llm, --llm-model and --max-tokens go with --answers")
    if answers:
        from qrag_cli.bench import answers as answer_bench

        if split == "both":
            raise UsageError("--answers runs one --split: validation or test")
        if len(layout or []) > 1 or len(model or []) > 1:
            raise UsageError("--answers takes one --layout and one --model")
        check_output(out, [], folder=True)
        result = answer_bench.run(
            out,
            ReaderSettings(llm=llm, llm_model=llm_model, max_tokens=max_tokens, temperature=0.0),
            split=split,
            layout=(layout or [answer_bench.DEFAULT_LAYOUT])[0],
            n_questions=questions or answer_bench.DEFAULT_QUESTIONS,
            model_spec=(model or ["default"])[0],
            log=render.log,
        )
        _show_bench(result, out / "answers.md", as_json)
        return
    if layouts:
        from qrag_cli.bench import layouts as layout_bench

        if len(model or []) > 1:
            raise UsageError("--layouts measures one --model at a time")
        check_output(out, [], folder=True)
        if ablation:
            result = layout_bench.ablation(
                out,
                splits=layout_bench.SPLITS if split == "both" else (split,),
                layouts=tuple(layout or ("plain", "notes")),
                n_questions=questions,
                model_spec=(model or ["default"])[0],
                log=render.log,
            )
            _show_bench(result, out / "ablation.md", as_json)
            return
        result = layout_bench.run(
            out,
            splits=layout_bench.SPLITS if split == "both" else (split,),
            layouts=tuple(layout or layout_bench.LAYOUTS),
            n_questions=questions,
            model_spec=(model or ["default"])[0],
            log=render.log,
        )  # an unknown --layout is refused there, before anything is written
        _show_bench(result, out / "layouts.md", as_json)
        return

    if profile not in suite.PROFILES:
        raise UsageError(f"--profile must be one of {', '.join(suite.PROFILES)}")
    if haystack is not None and not haystack.is_dir():
        raise UsageError(f"--haystack {haystack}: not a folder")
    if lexical not in {"on", "off", "both"}:
        raise UsageError("--lexical must be 'on', 'off' or 'both'")
    check_output(
        out,
        [
            ("--haystack", haystack),
            *[("--model", Path(m)) for m in model or [] if Path(m).exists()],
        ],
        folder=True,
    )
    chosen = suite.PROFILES[profile]
    changes: dict = {}
    if task:
        changes["tasks"] = tuple(task)
    if length:
        changes["lengths"] = tuple(length)
    if questions is not None:
        changes["questions"] = questions
    if steps is not None:
        changes["steps"] = steps
    if no_real:
        changes["real_eval"] = 0
    chosen = replace(chosen, **changes)
    if chosen.questions < 1 or chosen.steps < 1:
        raise UsageError("--questions and --steps must be at least 1")
    result = suite.run(
        out,
        chosen,
        models=model or (),
        seed=seed,
        haystack=haystack,
        speed=not no_speed,
        lexical=lexical,
        log=render.log,
    )
    _show_bench(result, out / "results.md", as_json)


def _show_bench(result: dict, table: Path, as_json: bool) -> None:
    """A bench's result on stdout: its JSON, or the Markdown table it wrote."""
    if as_json:
        render.print_json(result)
    else:
        render.out.print(render.plain(table.read_text(), multiline=True))
        render.log(f"results in {table.parent} ({result['seconds']} s)")


@bench_app.command("speed")
def bench_speed(
    tokens: Annotated[
        list[int] | None,
        typer.Option(
            parser=int_range(1000), help="Corpus sizes in tokens (repeatable; default 100K, 1M)."
        ),
    ] = None,
    engine: Annotated[
        list[str] | None,
        typer.Option(help="torch and/or onnx (repeatable; default both, paired)."),
    ] = None,
    questions: Annotated[int, typer.Option(parser=int_range(1), help="Questions timed.")] = 30,
    steps: Annotated[int, typer.Option(parser=int_range(1), help="Steps per question.")] = 4,
    model: ModelOpt = None,
    out: Annotated[Path, typer.Option(help="Results folder.")] = Path("bench-results/speed"),
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Index and ask speed on the torch and the ONNX path, paired in one run -> speed.md."""
    import tempfile

    from qrag_cli.bench import speed as speed_bench

    engines = tuple(dict.fromkeys(engine or speed_bench.ENGINES))
    if not set(engines) <= set(speed_bench.ENGINES):
        raise UsageError("--engine must be torch or onnx")
    check_output(out, [], folder=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="qrag-speed-") as work:
        result = speed_bench.run(
            tuple(tokens or speed_bench.SIZES),
            model_spec=model,
            questions=questions,
            steps=steps,
            workdir=Path(work),
            engines=engines,
            log=render.log,
        )
    result["seconds"] = round(time.perf_counter() - started, 1)
    speed_bench.write(result, out)
    _show_bench(result, out / "speed.md", as_json)


@bench_app.command("data")
def bench_data(
    task: Annotated[str, typer.Argument(help="Task name (see qrag bench --help).")],
    output: Annotated[Path, typer.Argument(help="Training JSONL to write.")],
    n: Annotated[int, typer.Option(parser=int_range(1), help="Episodes.")] = 1000,
    tokens: Annotated[int, typer.Option(parser=int_range(512), help="Tokens per episode.")] = 4096,
    seed: Annotated[int, typer.Option(parser=SEED, help="Seed.")] = 0,
    haystack: Annotated[Path | None, typer.Option(help="Folder of filler text.")] = None,
    debug: DebugOpt = False,
) -> None:
    """Write `qrag train` episodes of a generated task."""
    from qrag_cli.bench import longctx
    from qrag_cli.datasets import write_examples

    if task not in longctx.STORIES:
        raise UsageError(f"unknown task {task!r}; choose from {', '.join(longctx.TASKS)}")
    check_output(output, [("--haystack", haystack)], folder=False)
    own = longctx.own_paragraphs(haystack) if haystack else None
    examples = longctx.training_examples(task, n, seed, tokens, own)
    write_examples(examples, output)
    render.log(f"wrote {len(examples)} examples to {output}")


def _disk_full(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) is a full disk: ENOSPC/EDQUOT from a write, or
    SQLite's "database or disk is full"."""
    import errno
    import sqlite3

    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(exc, sqlite3.OperationalError) and "disk is full" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def main() -> None:
    debug = "--debug" in sys.argv

    def fail(message: str, code: int) -> None:
        render.log(message, label="error:", label_style="red")
        sys.exit(code)

    args = sys.argv[1:]
    try:
        debug = debug or env_value("QRAG_DEBUG")
        check_environment()  # a bad value is refused before any work, naming the variable
        command = typer.main.get_command(app)
        refuse_flag_values(command, args)
        # prog_name: help says `qrag ...` however it was started (`python -m qrag_cli`).
        code = command.main(args, prog_name="qrag", standalone_mode=False)
        if code == 130:  # typer turns Ctrl-C into exit code 130 before we see it
            raise KeyboardInterrupt
    except QragError as exc:
        if debug:
            raise
        fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        render.log("interrupted")
        sys.exit(130)
    except BrokenPipeError:  # `qrag ask ... | head`
        sys.stderr.close()
        sys.exit(1)
    except Exception as exc:
        if debug:
            raise
        if _disk_full(exc):  # SQLite or a plain write: what was committed before stays
            fail(
                "disk full: free some space and run the command again (what was "
                "committed before is kept)",
                1,
            )
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):  # usage errors
            hint = " (see --help)" if exc.exit_code == 2 else ""
            fail(f"{exc.format_message()}{hint}", exc.exit_code)
        fail(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for details)", 1)
    sys.exit(code if isinstance(code, int) else 0)
