"""Shared fixtures: a private QRAG_HOME per test, the real embedder loaded once, and
`run_qrag`: the real CLI, run in this process unless the process itself is under test."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

import qrag_cli  # noqa: F401  (before any test module imports torch: see qrag_cli/__init__.py)

REPO = Path(__file__).resolve().parent.parent
QRAG = [sys.executable, "-m", "qrag_cli"]
SHARED_DATA = REPO.parent / "shared" / "data"
SAMPLE = REPO / "qrag_cli" / "sample"

# Two-hop fixture: the river is only findable through the inventor's birthplace.
HOP_FILES = {
    "a.txt": "The Zephyr engine was invented by Ada Lindqvist, a locksmith turned engineer.\n",
    "b.txt": "Ada Lindqvist was born in Tarsholm, the daughter of a ferry captain.\n",
    "c.txt": "The river Sillen flows through Tarsholm before it reaches the sea.\n",
    "d1.txt": "The river Orva flows through Kestria and is famous for its salmon.\n",
    "d2.txt": "The Halvard pump was invented by Emil Strand for flooded mines.\n",
    "d3.txt": "Emil Strand was born in Velmar, a town on a high plateau.\n",
    "d4.txt": "The river Dalby flows through Velmar in spring when the snow melts.\n",
    "d5.txt": "Barley soup is made with onions, carrots and thyme.\n",
}
HOP_QUESTION = "Which river flows through the birthplace of the inventor of the Zephyr engine?"


@pytest.fixture(autouse=True)
def qrag_home(tmp_path_factory, monkeypatch) -> Path:
    home = tmp_path_factory.mktemp("qrag_home")
    monkeypatch.setenv("QRAG_HOME", str(home))
    monkeypatch.delenv("QRAG_MODEL", raising=False)
    monkeypatch.delenv("QRAG_LLM", raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    # Where the shared real data is comes from the environment, as for a user (`make` sets
    # the same folder); without it here, the tests that need it skip or fail (`shared_data`).
    if SHARED_DATA.is_dir():
        monkeypatch.setenv("QRAG_DATA", str(SHARED_DATA))
    else:
        monkeypatch.delenv("QRAG_DATA", raising=False)
    return home


@pytest.fixture(scope="session")
def base_model():
    from qrag_cli.model import load_model

    return load_model("base")


@pytest.fixture
def shared_data() -> Path:
    """../shared/data (HotpotQA, MuSiQue, bAbI samples). A developer without it gets a
    skip; CI (.ci/run sets QRAG_REQUIRE_SHARED_DATA=1) always has it, so there its
    absence fails the test instead of silently skipping it."""
    if SHARED_DATA.is_dir():
        return SHARED_DATA
    if os.environ.get("QRAG_REQUIRE_SHARED_DATA") == "1":
        pytest.fail(f"{SHARED_DATA} is missing and QRAG_REQUIRE_SHARED_DATA=1 requires it")
    pytest.skip(f"{SHARED_DATA} not present")


@pytest.fixture
def hop_corpus(tmp_path) -> Path:
    root = tmp_path / "hop"
    root.mkdir()
    for name, text in HOP_FILES.items():
        (root / name).write_text(text)
    return root


@pytest.fixture(scope="session")
def built_sample_index(tmp_path_factory) -> Path:
    """qrag_cli/sample indexed once per session by `qrag index` (default model): copy it with
    `sample_index`, never use it in place (a test may change what it is given)."""
    root = tmp_path_factory.mktemp("sample-index")
    index = root / "index"
    run_qrag(
        "index",
        str(SAMPLE),
        "--index",
        str(index),
        check=True,
        env={"QRAG_HOME": str(root / "home")},
    )
    return index


@pytest.fixture
def sample_index(built_sample_index: Path, qrag_home: Path) -> Path:
    """This test's own copy of the sample index, as the default index of its QRAG_HOME: the
    same files `qrag index qrag_cli/sample` writes there (the index keeps no path of its own
    folder), without embedding the sample again."""
    from qrag_cli.config import resolve_index

    index_dir = resolve_index(None)
    index_dir.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return Path(shutil.copytree(built_sample_index, index_dir))


def run_qrag(
    *args: str,
    env: dict | None = None,
    check: bool = False,
    timeout: float = 300,
    process: bool = False,
) -> subprocess.CompletedProcess:
    """The real CLI (`qrag_cli.cli.main`, stdout and stderr kept apart). In this process by
    default: a `qrag` subprocess costs ~3 s of importing torch and llama.cpp, the same for
    every call. `process=True` (or QRAG_TEST_SUBPROCESS=1 for the whole suite) starts a real
    `python -m qrag_cli`: for what only a process shows (signals, exit codes of a crash,
    two processes at once). `timeout` only bounds a subprocess: it guards a hang."""
    if process or os.environ.get("QRAG_TEST_SUBPROCESS") == "1":
        full_env = {**os.environ, **(env or {})}
        proc = subprocess.run(
            [*QRAG, *args], capture_output=True, text=True, env=full_env, timeout=timeout, cwd=REPO
        )
    else:
        proc = _run_in_process(list(args), env or {})
    if check and proc.returncode != 0:
        raise AssertionError(f"qrag {args} failed ({proc.returncode}): {proc.stderr}")
    return proc


@contextlib.contextmanager
def _fd_captured(fd: int) -> Iterator[IO[bytes]]:
    """Point file descriptor `fd` at a temp file: what native code (llama.cpp) writes
    there is captured too, as from a subprocess's pipe."""
    with tempfile.TemporaryFile() as file:
        saved = os.dup(fd)
        os.dup2(file.fileno(), fd)
        try:
            yield file
        finally:
            os.dup2(saved, fd)
            os.close(saved)


def _fresh_interpreter_warnings() -> None:
    """The warning filters of a fresh `python` (pytest records warnings instead of printing
    them): a warning the CLI lets through reaches its stderr, each time, as in a process."""
    warnings.resetwarnings()
    warnings.simplefilter("default")
    for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
        warnings.simplefilter("ignore", category)
    warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")


def _as_subprocess_text(file: IO[bytes]) -> str:
    """Decoded as subprocess.run(text=True) decodes a pipe (strict UTF-8, universal newlines),
    so a test reads the same text whichever way the CLI ran."""
    file.seek(0)
    return io.TextIOWrapper(io.BytesIO(file.read()), encoding="utf-8").read()


def _run_in_process(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """`qrag ARGS` as `python -m qrag_cli` runs it: sys.argv, cwd = the repo, `env` over the
    environment, fds 1 and 2 (and sys.stdout/sys.stderr over them) captured; exit code
    from SystemExit; an escaped exception is a traceback on stderr and exit code 1."""
    from qrag_cli import cli

    saved_env, saved_argv, saved_cwd = dict(os.environ), sys.argv, os.getcwd()
    saved_streams = sys.stdout, sys.stderr
    for stream in saved_streams:
        stream.flush()
    code: int | str | None = 0
    with _fd_captured(1) as out_file, _fd_captured(2) as err_file, warnings.catch_warnings():
        # Line-buffered over the fds, never closed (a library may keep a reference).
        sys.stdout = open(1, "w", buffering=1, encoding="utf-8", closefd=False)  # noqa: SIM115
        sys.stderr = open(  # noqa: SIM115
            2, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False
        )
        _fresh_interpreter_warnings()
        os.environ.update(env)
        sys.argv = ["qrag", *args]
        os.chdir(REPO)
        try:
            cli.main()
        except SystemExit as exc:
            code = exc.code
        except BaseException:  # --debug re-raises: a process would print it and exit 1
            traceback.print_exc(file=sys.stderr)
            code = 1
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(ValueError, OSError):  # main() may close stderr
                    stream.flush()
            sys.stdout, sys.stderr = saved_streams
            os.chdir(saved_cwd)
            sys.argv = saved_argv
            os.environ.clear()
            os.environ.update(saved_env)
        if isinstance(code, str):  # sys.exit("message"): printed, exit code 1
            err_file.write(code.encode() + b"\n")
            code = 1
        stdout, stderr = (_as_subprocess_text(f) for f in (out_file, err_file))
    return subprocess.CompletedProcess(["qrag", *args], code or 0, stdout, stderr)
