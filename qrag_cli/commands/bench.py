"""`qrag bench`: the benchmarks (generated tasks, real questions, layouts, answers, speed)
and `qrag bench data`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from qrag_cli import render
from qrag_cli.commands.options import (
    READER,
    DebugOpt,
    JsonOpt,
    LlmModelOpt,
    LlmOpt,
    ModelOpt,
    command_group,
)
from qrag_cli.config import (
    ReaderSettings,
)
from qrag_cli.flags import (
    SEED,
    check_output,
    int_range,
)
from qrag_cli.types import UsageError

bench_app = command_group()


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
    ] = READER.max_tokens,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Long-context multi-hop benchmarks, baselines, speed and scale -> a results folder.

    `qrag bench data TASK OUT.jsonl` writes training episodes of a generated task.
    `qrag bench --layouts` writes the layout bench (layouts.md, layouts.json).
    `qrag bench --answers` writes the answer bench (answers.md, answers.json).
    """
    from dataclasses import replace

    from qrag_cli.bench import require_extra, suite

    if split not in {"validation", "test", "both"}:
        raise UsageError("--split must be 'validation', 'test' or 'both'")
    if layouts and answers:
        raise UsageError("--layouts and --answers are two benches: run one at a time")
    if (layout or split != "validation") and not (layouts or answers):
        raise UsageError("--layout and --split go with --layouts or --answers")
    if ablation and not layouts:
        raise UsageError("--ablation goes with --layouts")
    if (llm or llm_model or max_tokens != READER.max_tokens) and not answers:
        raise UsageError("--llm, --llm-model and --max-tokens go with --answers")
    require_extra()
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
    from qrag_cli.haystack import own_paragraphs

    if task not in longctx.STORIES:
        raise UsageError(f"unknown task {task!r}; choose from {', '.join(longctx.TASKS)}")
    check_output(output, [("--haystack", haystack)], folder=False)
    own = own_paragraphs(haystack) if haystack else None
    examples = longctx.training_examples(task, n, seed, tokens, own)
    write_examples(examples, output)
    render.log(f"wrote {len(examples)} examples to {output}")
