"""`qrag train` and its subcommands: training, evaluation, the stop rule, data conversion and
packing a model folder."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer

from qrag_cli import render
from qrag_cli.commands.options import (
    TRAIN,
    DebugOpt,
    JsonOpt,
    LexicalOpt,
    ModelOpt,
    command_group,
    lexical_on,
    progress_enabled,
)
from qrag_cli.config import (
    TrainConfig,
)
from qrag_cli.flags import (
    SEED,
    check_output,
    float_range,
    int_range,
)
from qrag_cli.types import UsageError

# `qrag train DATA` trains; `qrag train eval|convert|pack ...` are its subcommands.
train_app = command_group()


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
    ] = TRAIN.eval_split,
    out: Annotated[Path, typer.Option(help="Model folder to write.")] = Path(TRAIN.out),
    base: Annotated[str | None, typer.Option(help="Model to start from.")] = None,
    layers: Annotated[
        int | None, typer.Option(parser=int_range(1), help="Keep only N encoder layers.")
    ] = None,
    budget: Annotated[
        int, typer.Option(parser=int_range(1), help="Picks per episode (T).")
    ] = TRAIN.budget,
    updates: Annotated[
        int, typer.Option(parser=int_range(1), help="Gradient updates.")
    ] = TRAIN.updates,
    batch: Annotated[
        int, typer.Option(parser=int_range(1), help="Parallel episodes per update.")
    ] = TRAIN.batch,
    lr: Annotated[
        float, typer.Option(parser=float_range(0, 1, lo_open=True), help="Peak learning rate.")
    ] = TRAIN.lr,
    lexical_lr: Annotated[
        float,
        typer.Option(
            parser=float_range(0, 1, lo_open=True),
            help="Peak learning rate of the Q head (the dense and lexical weights; its bias "
            f"learns {TRAIN.bias_lr_scale:g}x faster).",
        ),
    ] = TRAIN.lexical_lr,
    alpha: Annotated[
        float, typer.Option(parser=float_range(0, lo_open=True), help="Initial temperature.")
    ] = TRAIN.alpha,
    seed: Annotated[int, typer.Option(parser=SEED, help="Random seed.")] = TRAIN.seed,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = TRAIN.device,
    positions: Annotated[str, typer.Option(help="none|relative.")] = TRAIN.positions,
    eval_every: Annotated[
        int, typer.Option(parser=int_range(1), help="Updates between evals.")
    ] = TRAIN.eval_every,
    step_penalty: Annotated[bool, typer.Option(help="Penalise extra steps.")] = TRAIN.step_penalty,
    bf16: Annotated[
        bool, typer.Option("--bf16", help="Gradient pass in bf16 autocast.")
    ] = TRAIN.bf16,
    frozen_chunks: Annotated[
        bool,
        typer.Option(
            "--frozen-chunks", help="Train E_s only; E_a stays the base (indexes stay valid)."
        ),
    ] = TRAIN.frozen_chunks,
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
    ] = TRAIN.lexical_query,
    state_chunk_cap: Annotated[
        int | None,
        typer.Option(
            parser=int_range(8, 512),
            help="Max encoder tokens of each picked chunk inside the state; default: the "
            "starting model's.",
        ),
    ] = TRAIN.state_chunk_cap,
    only_lexical: Annotated[
        bool,
        typer.Option("--only-lexical", help="Keep the encoders; learn only the lexical weights."),
    ] = not TRAIN.train_encoder,
    warm_start: Annotated[
        int,
        typer.Option(
            parser=int_range(0),
            help="First updates that imitate the oracle over all chunks (then Q-learning).",
        ),
    ] = TRAIN.warm_start,
    stop: Annotated[
        str,
        typer.Option(
            help="apply: the calibrated Q threshold becomes the model's stop; record: kept in "
            "its metrics only (fixed --steps budget)."
        ),
    ] = "apply" if TRAIN.apply_stop else "record",
    no_target: Annotated[
        bool, typer.Option("--no-target", help="Ablation.")
    ] = not TRAIN.target_network,
    no_soft: Annotated[bool, typer.Option("--no-soft", help="Ablation.")] = not TRAIN.soft_value,
    no_twin: Annotated[bool, typer.Option("--no-twin", help="Ablation.")] = not TRAIN.twin,
    resume: Annotated[Path | None, typer.Option(help="Continue a run (its out folder).")] = None,
    skip_bad: Annotated[bool, typer.Option(help="Skip bad data lines.")] = TRAIN.skip_bad,
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
        elif progress_enabled() and row["update"] % 10 == 0:
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
    use_lexical = lexical_on(lexical)
    from qrag_cli.datasets import load_examples
    from qrag_cli.evaluate import evaluate
    from qrag_cli.model import load_model
    from qrag_cli.pqn import seed_everything

    seed_everything(0)
    examples = load_examples(data, skip_bad, on_problem=render.problem)
    qmodel = load_model(model)
    if not use_lexical:
        from qrag_cli.qvalue import without_lexical

        qmodel = without_lexical(qmodel)
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
