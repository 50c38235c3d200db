"""`qrag ask` (question -> episode -> evidence -> reader) and `qrag mcp` (the same, as tools
for agents)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from qrag_cli import render
from qrag_cli.commands.options import (
    ASK,
    READER,
    DebugOpt,
    IndexOpt,
    JsonOpt,
    LexicalOpt,
    LlmModelOpt,
    LlmOpt,
    ModelOpt,
    lexical_on,
)
from qrag_cli.config import (
    MAX_STEPS,
    AskOptions,
    ReaderSettings,
    resolve_index,
)
from qrag_cli.flags import (
    SEED,
    float_range,
    int_range,
)
from qrag_cli.types import UsageError


def ask(
    question: Annotated[str | None, typer.Argument(help="The question.")] = None,
    index: IndexOpt = None,
    model: ModelOpt = None,
    steps: Annotated[
        int,
        typer.Option("--steps", "-n", parser=int_range(1, MAX_STEPS), help="Most chunks to pick."),
    ] = ASK.steps,
    threshold: Annotated[
        float | None,
        typer.Option(
            parser=float_range(),
            help="Stop when the best Q falls below this (default: the model's own).",
        ),
    ] = None,
    no_stop: Annotated[
        bool, typer.Option("--no-stop", help="Always use all --steps.")
    ] = ASK.no_stop,
    exact: Annotated[bool, typer.Option(help="Score every chunk (no HNSW).")] = ASK.exact,
    lexical: LexicalOpt = "on" if ASK.lexical else "off",
    show_text: Annotated[bool, typer.Option(help="Print whole chunks.")] = False,
    explain: Annotated[
        bool, typer.Option(help="Show the top alternatives per step.")
    ] = ASK.explain,
    questions: Annotated[
        Path | None,
        typer.Option(help='JSONL file of {"id"?, "question"}: prints one JSON line per question.'),
    ] = None,
    answer: Annotated[
        bool, typer.Option(help="Let the reader LLM (--llm) answer from the evidence.")
    ] = ASK.answer,
    llm: LlmOpt = None,
    llm_model: LlmModelOpt = None,
    llm_timeout: Annotated[
        float,
        typer.Option(
            parser=float_range(0.1, 86400),
            help="Seconds a served reader may stay silent before qrag gives up.",
        ),
    ] = READER.timeout,
    max_tokens: Annotated[
        int, typer.Option(parser=int_range(1), help="Most tokens the LLM generates.")
    ] = READER.max_tokens,
    temperature: Annotated[
        float, typer.Option(parser=float_range(0), help="LLM sampling temperature.")
    ] = READER.temperature,
    seed: Annotated[int, typer.Option(parser=SEED, help="LLM sampling seed.")] = READER.seed,
    n_ctx: Annotated[
        int,
        typer.Option(
            parser=int_range(1, 1 << 20),
            help="Context size in tokens of a GGUF reader (a server has its own).",
        ),
    ] = READER.n_ctx,
    threads: Annotated[
        int | None,
        typer.Option(
            parser=int_range(1, 1024), help="Threads of a GGUF reader (default: all cores)."
        ),
    ] = READER.threads,
    gpu_layers: Annotated[
        int, typer.Option(parser=int_range(-1), help="Layers offloaded to a GPU (-1: all).")
    ] = READER.gpu_layers,
    order: Annotated[
        str, typer.Option(help="Evidence order in the prompt: document|retrieval.")
    ] = READER.order,
    verbose: Annotated[bool, typer.Option(help="Show llama.cpp logs on stderr.")] = READER.verbose,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Multi-step Q-value retrieval: evidence with path:line, optionally an answer."""
    from qrag_cli.asking import Asker

    if (question is None) == (questions is None):
        raise UsageError("give a question, or --questions FILE.jsonl")
    if question is not None and not question.strip():
        raise UsageError("the question is empty")
    from qrag_cli.prompt import ORDERS  # light: no reader is loaded

    if order not in ORDERS:
        raise UsageError(f"--order must be one of {', '.join(ORDERS)}")
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
        lexical=lexical_on(lexical),
        explain=explain,
        answer=answer,
        reader=reader,
    )
    if questions:
        from qrag_cli.datasets import load_questions  # the training-data reader: only here

        items = load_questions(questions)
    else:
        items = [{"question": question}]
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


def mcp(
    index: IndexOpt = None,
    model: ModelOpt = None,
    llm: LlmOpt = None,
    debug: DebugOpt = False,
) -> None:
    """MCP server over stdio: ask, get and status as tools for agents, model kept loaded."""
    from qrag_cli.mcp_server import serve

    serve(resolve_index(index), model, llm, debug=debug)
