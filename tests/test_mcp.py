"""`qrag mcp`: the SDK's own stdio client drives the real server process (real model, index,
SQLite, llama.cpp), as a coding agent would."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from conftest import HOP_FILES, HOP_QUESTION, REPO, run_qrag
from gguf_tiny import write_tiny_gguf
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from qrag_cli.config import ChunkConfig, resolve_index
from qrag_cli.indexer import build_index
from qrag_cli.store import open_snapshot

EVIDENCE_KEYS = {"step", "q", "chunk_id", "path", "start_line", "end_line", "text"}
NEW_FILE = (
    "Harbour log, spring.\n"
    "The lighthouse of Norrvik was designed by Greta Holm in 1911.\n"
    "Its lamp first burned seal oil.\n"
)
NEW_QUESTION = "Who designed the lighthouse of Norrvik?"


@pytest.fixture
def hop_index(hop_corpus: Path, base_model) -> Path:
    index_dir = resolve_index(None)
    build_index([hop_corpus], index_dir, base_model, ChunkConfig())
    return index_dir


class Server:
    """A connected client session, plus what the server process wrote that is not protocol."""

    def __init__(self, session: ClientSession, stray: list[object]) -> None:
        self.session = session
        self.stray = stray

    async def call(self, tool: str, **arguments: object) -> dict:
        result = await self.session.call_tool(tool, arguments)
        assert not result.is_error, result.content
        # Clients that read only `content` get the same JSON as the structured result.
        assert json.loads(result.content[0].text) == result.structured_content
        return result.structured_content

    async def error(self, tool: str, **arguments: object) -> str:
        result = await self.session.call_tool(tool, arguments)
        assert result.is_error and len(result.content) == 1
        return result.content[0].text


@asynccontextmanager
async def qrag_mcp(stderr_path: Path, *args: str, env: dict | None = None) -> AsyncIterator[Server]:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "qrag_cli", "mcp", *args],
        env={**os.environ, "NO_COLOR": "1", **(env or {})},
        cwd=str(REPO),
    )
    stray: list[object] = []

    async def on_message(message: object) -> None:
        if isinstance(message, Exception):  # a stdout line that is not a JSON-RPC message
            stray.append(message)

    with stderr_path.open("w") as errlog:
        async with (
            stdio_client(params, errlog=errlog) as (read, write),
            ClientSession(read, write, message_handler=on_message) as session,
        ):
            await session.initialize()
            yield Server(session, stray)


def test_tools_over_stdio(hop_index: Path, hop_corpus: Path, tmp_path: Path) -> None:
    tiny = write_tiny_gguf(tmp_path / "tiny.gguf")
    outside = tmp_path / "outside.txt"
    outside.write_text("sentinel-7f3a outside every root\n")
    (hop_corpus / "escape.txt").symlink_to(outside)  # inside the root, pointing out of it
    (hop_corpus / ".env").write_text("API_KEY=hunter2\n")  # under the root, never indexed
    cold = json.loads(run_qrag("ask", HOP_QUESTION, "--json", "--steps", "4", check=True).stdout)
    cli_error = run_qrag("ask", "x", "--index", "nothere").stderr.strip()

    async def scenario() -> None:
        async with qrag_mcp(tmp_path / "stderr.txt", env={"QRAG_LLM": str(tiny)}) as server:
            listed = (await server.session.list_tools()).tools
            assert {tool.name for tool in listed} == {"ask", "get", "status"}
            for tool in listed:  # usable by an agent without the README
                assert tool.description and tool.output_schema
                for name, prop in tool.input_schema["properties"].items():
                    assert prop.get("description"), (tool.name, name)
            ask_tool = next(tool for tool in listed if tool.name == "ask")
            assert ask_tool.input_schema["required"] == ["question"]
            assert {"evidence", "stop", "more_expected", "answer"} <= set(
                ask_tool.output_schema["properties"]
            )

            out = await server.call("ask", question=HOP_QUESTION, steps=4)
            names = [Path(ev["path"]).name for ev in out["evidence"]]
            assert names[:3] == ["a.txt", "b.txt", "c.txt"]  # the two hops, then the river
            for ev in out["evidence"]:
                assert set(ev) >= EVIDENCE_KEYS and Path(ev["path"]).is_absolute()
                assert ev["text"] == HOP_FILES[Path(ev["path"]).name].strip()
            assert [ev["step"] for ev in out["evidence"]] == list(range(1, len(names) + 1))
            assert out["stop"] in {"complete", "budget"} and out["stop_reason"]
            assert "more_expected" in out
            assert out["answer"] is None and out["index"] == str(hop_index)
            # The same pipeline as the cold CLI: the same picks and Q values.
            assert [ev["chunk_id"] for ev in out["evidence"]] == [
                ev["chunk_id"] for ev in cold["evidence"]
            ]
            assert [ev["q"] for ev in out["evidence"]] == pytest.approx(
                [ev["q"] for ev in cold["evidence"]], abs=1e-4
            )
            assert out["stop"] == cold["stop"]
            assert "load_model_ms" not in out["timings_ms"] and out["timings_ms"]["encode_ms"] > 0

            answered = await server.call("ask", question=HOP_QUESTION, steps=2, answer=True)
            assert isinstance(answered["answer"], str) and len(answered["evidence"]) == 2
            assert {c["path"] for c in answered["citations"]} <= {
                ev["path"] for ev in answered["evidence"]
            }

            river = out["evidence"][2]["path"]
            got = await server.call("get", path=river, start_line=1, end_line=1)
            assert got["text"] == HOP_FILES["c.txt"] and got["total_lines"] == 1
            assert got["path"] == river and not got["truncated"]

            for path, needle in (
                (str(outside), "outside the roots"),
                (str(hop_corpus / "escape.txt"), "outside the roots"),
                (f"{hop_corpus}/../outside.txt", "outside the roots"),
                ("/etc/passwd", "outside the roots"),
                (str(hop_corpus / ".env"), "not in index"),
            ):
                message = await server.error("get", path=path)
                assert needle in message and "\n" not in message, message
                assert "hunter2" not in message and "sentinel-7f3a" not in message

            # Read fresh from disk: a file that gained a key after indexing is not served.
            Path(river).write_text(
                HOP_FILES["c.txt"] + "-----BEGIN OPENSSH PRIVATE KEY-----\n"
                "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZWQy\n"
                "-----END OPENSSH PRIVATE KEY-----\n"
            )
            message = await server.error("get", path=river, start_line=1, end_line=1)
            assert "now holds a secret (private key block" in message and "b3Bl" not in message
            Path(river).write_text(HOP_FILES["c.txt"])
            assert "NUL" in await server.error("get", path=river + "\0.txt")

            message = await server.error("ask", question="x", index="nothere")
            assert cli_error == f"error: {message}"  # the CLI's one line, word for word
            assert "empty" in await server.error("ask", question="   ")
            assert "steps" in await server.error("ask", question="x", steps=0)
            for tool, wrong, field in (
                ("ask", {"question": "x", "steps": "4"}, "steps"),
                ("ask", {"question": "x", "steps": True}, "steps"),
                ("ask", {"question": "x", "answer": "yes"}, "answer"),
                ("ask", {"question": 5}, "question"),
                ("get", {"path": river, "start_line": "1"}, "start_line"),
            ):
                message = await server.error(tool, **wrong)
                assert message.startswith(f"{tool}: {field}: ") and "\n" not in message
            assert "past its end" in await server.error("get", path=river, start_line=9)

            status = await server.call("status")
            assert status["default_index"] == str(hop_index)
            [row] = status["indexes"]
            assert (row["index"], row["files"], row["chunks"]) == (str(hop_index), 8, 8)
            assert row["roots"] == [str(hop_corpus.resolve())]
            assert status["model"] == cold["model"]
            assert server.stray == []

    asyncio.run(scenario())
    stderr = (tmp_path / "stderr.txt").read_text()
    assert "serving MCP" in stderr and "Traceback" not in stderr


def test_warm_server_sees_a_reindex_from_another_process(
    hop_index: Path, hop_corpus: Path, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with qrag_mcp(tmp_path / "stderr.txt") as server:
            before = await server.call("ask", question=NEW_QUESTION, steps=2)
            assert all("Greta Holm" not in ev["text"] for ev in before["evidence"])
            generation = (await server.call("status"))["indexes"][0]["generation"]

            (hop_corpus / "lighthouse.txt").write_text(NEW_FILE)
            # Another process, as in another terminal; the server stays up and warm.
            proc = await asyncio.to_thread(run_qrag, "index", "--json")
            assert proc.returncode == 0, proc.stderr
            assert json.loads(proc.stdout)["new"] == 1
            with open_snapshot(hop_index) as snapshot:
                wal = snapshot.folder / "index.sqlite-wal"
            # The writer's final checkpoint emptied the WAL: an idle server holds no snapshot.
            assert not wal.exists() or wal.stat().st_size == 0

            after = await server.call("ask", question=NEW_QUESTION, steps=2)
            first = after["evidence"][0]
            assert Path(first["path"]).name == "lighthouse.txt"
            assert "Greta Holm" in first["text"]
            status = await server.call("status")
            assert status["indexes"][0]["files"] == 9
            assert status["indexes"][0]["generation"] > generation

            got = await server.call("get", path=first["path"], start_line=2, end_line=3)
            assert got["text"] == "".join(NEW_FILE.splitlines(keepends=True)[1:3])
            assert (got["end_line"], got["total_lines"]) == (3, 3)
            assert server.stray == []

    asyncio.run(scenario())
