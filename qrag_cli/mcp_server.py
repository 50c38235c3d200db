"""`qrag mcp`: ask, get and status as Model Context Protocol tools over stdio, warm.

The official MCP SDK (`mcp`, MCPServer) speaks the protocol; this module only maps tools to
`Service`, which keeps the model (and, once asked for, the reader LLM) loaded and one
`Asker` per index. Before each question the Asker moves to the index's latest committed
state and after it lets go of its snapshot, so a `qrag index` in another terminal is seen
by the next call and is never held up by this server.

Every tool body runs on one worker thread: SQLite connections belong to the thread that
opened them, and questions over the one model are answered one at a time anyway.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal

from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, Field, ValidationError

from qrag_cli import render
from qrag_cli.asking import LOAD_TIMINGS, Asker, AskOptions, load_llm
from qrag_cli.config import MAX_STEPS, ReaderSettings, qrag_home, resolve_index
from qrag_cli.documents import last_line, line_span, read_document
from qrag_cli.onnx_model import load_inference_model
from qrag_cli.qtext import QNetwork
from qrag_cli.secretscan import find_secret
from qrag_cli.store import index_exists, index_status, list_indexes, open_snapshot
from qrag_cli.types import QragError, UsageError

MAX_GET_LINES = 400

log = logging.getLogger("qrag.mcp")


# --- what the tools return (their JSON schemas are what an agent reads) -------------------
class EvidenceItem(BaseModel):
    step: int = Field(description="Retrieval step that picked this chunk (1 = first).")
    q: float = Field(
        description="Q value of the pick: how useful the model judged it, given "
        "the question and the chunks picked before it."
    )
    chunk_id: int = Field(description="Chunk id inside the index.")
    path: str = Field(description="Absolute path of the file the chunk comes from.")
    start_line: int = Field(description="First source line of the chunk (page, for a PDF).")
    end_line: int = Field(description="Last source line of the chunk (page, for a PDF).")
    text: str = Field(description="The chunk's text.")


class Citation(BaseModel):
    n: int = Field(description="The [n] marker used in the answer.")
    chunk_id: int
    path: str
    start_line: int
    end_line: int


class AskOutput(BaseModel):
    question: str
    index: str = Field(description="Index folder that was searched.")
    model: str = Field(description="Retrieval model.")
    engine: Literal["onnx", "torch"] = Field(
        description="What ran the retrieval model's encoders (onnx: ONNX Runtime)."
    )
    evidence: list[EvidenceItem] = Field(description="Picked chunks, in the order picked.")
    stop: Literal["complete", "budget", "exhausted"] = Field(
        description="Why retrieval stopped: complete = the model's stop rule judged the "
        "evidence complete; budget = `steps` chunks were picked; exhausted = no chunks left."
    )
    more_expected: bool | None = Field(
        default=None,
        description="With stop = budget: true when the model still expected more evidence "
        "(ask again with more `steps`). null when the model has no stop rule.",
    )
    stop_reason: str = Field(description="`stop` in words.")
    answer: str | None = Field(
        description="The reader LLM's answer from the evidence "
        "(only when `answer` was true, else null)."
    )
    citations: list[Citation] | None = Field(
        default=None, description="Evidence the answer cites (only with an answer)."
    )
    trimmed: list[int] | None = Field(
        default=None, description="chunk_ids left out of the LLM's prompt for lack of room."
    )
    timings_ms: dict[str, float] = Field(description="Time spent on this call, in ms.")


class GetOutput(BaseModel):
    path: str = Field(description="Absolute path of the file.")
    start_line: int
    end_line: int = Field(description="Last line returned (may be less than asked for).")
    total_lines: int = Field(description="Lines (pages, for a PDF) the file has now.")
    truncated: bool = Field(
        description=f"True when more than {MAX_GET_LINES} lines were "
        "asked for and only the first ones are returned."
    )
    text: str = Field(
        description="Text of those lines as qrag reads the file (HTML: its "
        "visible text; PDF: its text layer)."
    )


class IndexInfo(BaseModel):
    index: str = Field(description="Index folder (pass it, or its name, as `index`).")
    files: int
    chunks: int
    tokens: int
    model: str | None = Field(description="Model the index was built with.")
    generation: int = Field(description="Committed generation; grows with each change.")
    updated: str | None = Field(description="Time of the last commit.")
    bytes_on_disk: int
    roots: list[str] = Field(
        description="Files and folders the index covers; `get` reads only indexed files under them."
    )
    error: str | None = Field(
        None,
        description="Set when the index cannot be read (damaged); "
        "its counts are then 0. `qrag index` repairs or rebuilds it.",
    )


class StatusOutput(BaseModel):
    model: str = Field(description="Retrieval model this server has loaded.")
    default_index: str = Field(description="Index used when a call names none.")
    indexes: list[IndexInfo]


# --- the work, without MCP ---------------------------------------------------------------
class Service:
    """One loaded model and reader LLM; one warm Asker per index asked about."""

    def __init__(self, default_index: Path, model_spec: str | None, llm: str | None) -> None:
        self.default_index = default_index
        self.model_spec = model_spec
        self.model: QNetwork = load_inference_model(model_spec)
        self.llm_opts = AskOptions(reader=ReaderSettings(llm=llm))
        self.llm = None  # loaded on the first `answer` request: most agents never ask
        self.askers: dict[Path, Asker] = {}

    def _index(self, index: str | None) -> Path:
        return resolve_index(index) if index else self.default_index

    def _asker(self, index_dir: Path) -> Asker:
        asker = self.askers.get(index_dir)
        if asker is None:
            asker = Asker(
                index_dir, self.model_spec, AskOptions(), model=self.model, notify=render.log
            )
            self.askers[index_dir] = asker
        return asker

    def ask(self, question: str, steps: int, index: str | None, answer: bool) -> dict:
        if not question.strip():
            raise UsageError("the question is empty")
        if not 1 <= steps <= MAX_STEPS:
            raise UsageError(f"steps must be between 1 and {MAX_STEPS}")
        index_dir = self._index(index)
        if answer and self.llm is None:
            self.llm = load_llm(self.llm_opts)
        try:
            asker = self._asker(index_dir)
            asker.refresh()
            result = asker.ask(question, llm=self.llm if answer else None, steps=steps)
        except QragError:
            self._drop(index_dir)  # an index that failed is reopened from scratch next time
            raise
        finally:
            if index_dir in self.askers:
                self.askers[index_dir].release()
        out = render.ask_json(result, absolute=True)
        out["stop_reason"] = render.stop_reason(result.episode)
        out["timings_ms"] = {k: v for k, v in out["timings_ms"].items() if k not in LOAD_TIMINGS}
        return out

    def _drop(self, index_dir: Path) -> None:
        asker = self.askers.pop(index_dir, None)
        if asker is not None:
            asker.__exit__(None, None, None)

    def get(self, path: str, start_line: int, end_line: int | None, index: str | None) -> dict:
        if start_line < 1:
            raise UsageError("start_line must be at least 1")
        if end_line is not None and end_line < start_line:
            raise UsageError("end_line must not be less than start_line")
        if "\0" in path:
            raise UsageError("path holds a NUL character; refused")
        index_dir = self._index(index)
        # The index stores resolved paths: resolving here also sees through `..` and links.
        real = Path(path).expanduser().resolve()
        with open_snapshot(index_dir) as snapshot:
            roots = snapshot.roots
            if not any(real.is_relative_to(root) for root in roots):
                raise UsageError(
                    f"{path} is outside the roots of index {index_dir} "
                    f"({', '.join(map(str, roots)) or 'none'}); refused"
                )
            # Under a root is not enough: secrets, ignored and binary files are never indexed
            # and must not be served either.
            if not snapshot.has_file(str(real)):
                raise UsageError(
                    f"{path} is not in index {index_dir} (ignored, secret, binary "
                    f"or not indexed yet: run `qrag index`); refused"
                )
        doc = read_document(real)
        # Read fresh from disk: a file that gained a key since it was indexed is checked by
        # the same rules indexing uses (secretscan), and refused whole.
        secret = find_secret(doc, (Path(path).name, real.name))
        if secret:
            raise UsageError(
                f"{path} now holds a secret ({secret}); refused (the next `qrag index` drops "
                "it from the index)"
            )
        total = last_line(doc)
        if start_line > total:
            raise UsageError(f"{path} has {total} lines; start_line {start_line} is past its end")
        last = min(end_line if end_line is not None else total, total)
        truncated = last - start_line + 1 > MAX_GET_LINES
        if truncated:
            last = start_line + MAX_GET_LINES - 1
        return {
            "path": str(real),
            "start_line": start_line,
            "end_line": last,
            "total_lines": total,
            "truncated": truncated,
            "text": line_span(doc, start_line, last),
        }

    def status(self, index: str | None) -> dict:
        folders = [resolve_index(index)] if index else list_indexes(qrag_home())
        if not index and self.default_index not in folders and index_exists(self.default_index):
            folders.append(self.default_index)  # a folder index given with --index
        rows = []
        for row in (index_status(folder, strict=bool(index)) for folder in folders):
            if row["broken"]:  # one damaged index does not hide the healthy ones
                rows.append(
                    {
                        "index": row["index"],
                        "files": 0,
                        "chunks": 0,
                        "tokens": 0,
                        "model": None,
                        "generation": 0,
                        "updated": None,
                        "bytes_on_disk": 0,
                        "roots": [],
                        "error": row["error"],
                    }
                )
                continue
            rows.append(
                {
                    key: row[key]
                    for key in (
                        "index",
                        "files",
                        "chunks",
                        "tokens",
                        "model",
                        "generation",
                        "updated",
                        "bytes_on_disk",
                        "roots",
                    )
                }
            )
        return {
            "model": self.model.cfg.name,
            "default_index": str(self.default_index),
            "indexes": rows,
        }

    def close(self) -> None:
        for index_dir in list(self.askers):
            self._drop(index_dir)


# --- the MCP face --------------------------------------------------------------------------
INSTRUCTIONS = (
    "qrag searches the user's own indexed files with multi-step retrieval: `ask` picks "
    "evidence chunks one at a time, each conditioned on the question and the chunks already "
    "picked, so facts that only connect through each other are found together. Cite "
    "evidence as path:start_line-end_line; use `get` to read more lines around it; "
    "`status` lists the indexes."
)


# Module level: the SDK reads the tools' (string) annotations in this module's namespace.
IndexArg = Annotated[
    str | None,
    Field(
        description="Index name (under qrag's home) or folder; default: the server's index.",
        strict=True,
    ),
]


class _Server(MCPServer):
    """The SDK's server, with arguments that fail the tool's schema reported in one line
    (`ask: steps: Input should be a valid integer`) instead of pydantic's multi-line
    text, and never echoing the rejected values (the caller's data)."""

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            if not isinstance(exc.__cause__, ValidationError):
                raise
            problems = "; ".join(
                f"{'.'.join(map(str, err['loc'])) or 'arguments'}: {err['msg']}"
                for err in exc.__cause__.errors()
            )
            raise ToolError(f"{name}: {problems}") from None


def build_server(service: Service, worker: ThreadPoolExecutor) -> MCPServer:
    """`worker`: the one thread that runs every tool body (see the module's docstring)."""
    server = _Server("qrag", instructions=INSTRUCTIONS, log_level="WARNING")
    read_only = ToolAnnotations(read_only_hint=True, open_world_hint=False)

    async def run(work: Callable[..., dict], *args: Any) -> CallToolResult:
        try:
            payload = await asyncio.get_running_loop().run_in_executor(worker, partial(work, *args))
        except QragError as exc:  # the CLI's one-line message, as a tool error for the agent
            log.info("%s", exc)
            return CallToolResult(content=[TextContent(type="text", text=str(exc))], is_error=True)
        text = json.dumps(payload, ensure_ascii=False)
        return CallToolResult(
            content=[TextContent(type="text", text=text)], structured_content=payload
        )

    @server.tool(annotations=read_only)
    async def ask(
        question: Annotated[
            str, Field(description="The question, in natural language.", strict=True)
        ],
        steps: Annotated[
            int,
            Field(
                description=f"Most evidence chunks to pick (1-{MAX_STEPS}); retrieval may stop "
                "sooner when the model judges the evidence complete.",
                strict=True,
            ),
        ] = AskOptions().steps,
        index: IndexArg = None,
        answer: Annotated[
            bool,
            Field(
                description="Also let the reader LLM answer from the evidence (slower: seconds).",
                strict=True,
            ),
        ] = False,
    ) -> Annotated[CallToolResult, AskOutput]:
        """Multi-step retrieval over the user's indexed files: the evidence chunks (path,
        line range, text, in the order picked) and why retrieval stopped; with `answer`,
        also an answer from the reader LLM that cites the evidence."""
        return await run(service.ask, question, steps, index, answer)

    @server.tool(annotations=read_only)
    async def get(
        path: Annotated[str, Field(description="File path, as `ask` returned it.", strict=True)],
        start_line: Annotated[int, Field(description="First line (1-based).", strict=True)] = 1,
        end_line: Annotated[
            int | None,
            Field(
                description=f"Last line, inclusive; default: the end of the file (at most "
                f"{MAX_GET_LINES} lines are returned).",
                strict=True,
            ),
        ] = None,
        index: IndexArg = None,
    ) -> Annotated[CallToolResult, GetOutput]:
        """Read lines of an indexed file, e.g. the context around an evidence chunk. Only
        files the index holds, under its roots, are read; any other path is refused."""
        return await run(service.get, path, start_line, end_line, index)

    @server.tool(annotations=read_only)
    async def status(index: IndexArg = None) -> Annotated[CallToolResult, StatusOutput]:
        """The indexes (files, chunks, tokens, model, roots, last update) and the
        retrieval model this server has loaded."""
        return await run(service.status, index)

    return server


def serve(index_dir: Path, model_spec: str | None, llm: str | None, debug: bool = False) -> None:
    """Load the model, then answer MCP requests on stdin/stdout until stdin closes."""
    # Before the SDK configures logging: plain lines on stderr, nothing on stdout.
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO if debug else logging.WARNING,
        format="qrag mcp: %(levelname)s: %(name)s: %(message)s",
    )
    if llm is not None:  # a bad GGUF or URL is refused now, not at the first answer
        from qrag_cli.reader import check_llm

        check_llm(llm)
    service = Service(index_dir, model_spec, llm)
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qrag-mcp")
    server = build_server(service, worker)
    missing = (
        ""
        if index_exists(index_dir)
        else f" (not built yet: run `qrag index PATH --index {index_dir}`)"
    )
    render.log(
        f"qrag mcp: model {service.model.cfg.name}, index {index_dir}{missing}; "
        "serving MCP on stdin/stdout"
    )
    try:
        server.run("stdio")
    finally:
        worker.submit(service.close).result()  # its SQLite connections belong to the worker
        worker.shutdown()
