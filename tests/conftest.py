"""Shared fixtures: a private QRAG_HOME per test, the real embedder loaded once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
QRAG = [sys.executable, "-m", "qrag_cli"]
SHARED_DATA = REPO.parent / "shared" / "data"

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


def run_qrag(*args: str, env: dict | None = None, check: bool = False,
             timeout: float = 300) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess (stdout and stderr kept apart)."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([*QRAG, *args], capture_output=True, text=True, env=full_env,
                          timeout=timeout, cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"qrag {args} failed ({proc.returncode}): {proc.stderr}")
    return proc
