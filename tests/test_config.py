"""Settings in one place: `qrag config` shows each setting's value and source, environment
variables are checked up front, config.toml is rewritten without losing what the user wrote,
and the flags' defaults are the config dataclasses' own. All through the real CLI."""

from __future__ import annotations

import datetime
import functools
import json
import re
import tomllib
from pathlib import Path

import pytest
from conftest import run_qrag
from gguf_tiny import write_tiny_gguf

from qrag_cli.config import (
    DEFAULT_MAX_FILE_SIZE,
    AskOptions,
    ChunkConfig,
    TrainConfig,
    env_value,
)
from qrag_cli.types import ConfigError

ENV = "environment variable"


def config_json(**env: str) -> dict:
    proc = run_qrag("config", "--json", env=env, check=True)
    return json.loads(proc.stdout)


def test_json_parses_and_names_a_source_for_every_setting(qrag_home: Path) -> None:
    shown = config_json()
    sources = shown.pop("sources")
    assert set(sources) == set(shown)
    assert shown["home"] == str(qrag_home) and sources["home"] == f"{ENV} QRAG_HOME"
    assert shown["config_file"] == str(qrag_home / "config.toml")
    # Defaults the user sees are the dataclasses' own.
    chunking, ask = ChunkConfig(), AskOptions()
    expected = {
        "index.chunk_tokens": chunking.chunk_tokens,
        "index.overlap": chunking.overlap,
        "index.max_file_size": DEFAULT_MAX_FILE_SIZE,
        "ask.steps": ask.steps,
        "reader.n_ctx": ask.reader.n_ctx,
        "reader.max_tokens": ask.reader.max_tokens,
        "reader.temperature": ask.reader.temperature,
        "reader.order": ask.reader.order,
        "embed_group": 2048,
        "commit_interval": 10.0,
        "dtype": "auto",
        "debug": False,
    }
    for name, value in expected.items():
        assert shown[name] == value, name
        assert sources[name] == "default", name
    assert (shown["index.chunk_tokens"], shown["ask.steps"], shown["reader.n_ctx"]) == (
        128,
        4,
        4096,
    )  # what users saw before the defaults moved


def test_environment_overrides_are_shown_with_their_variable(tmp_path: Path) -> None:
    llm = tmp_path / "env.gguf"
    shown = config_json(
        QRAG_EMBED_GROUP="8",
        QRAG_COMMIT_INTERVAL="0",
        QRAG_DTYPE="FP32",
        QRAG_DEBUG="1",
        QRAG_LLM=str(llm),
        QRAG_MODEL=str(tmp_path / "m"),
    )
    sources = shown["sources"]
    assert (shown["embed_group"], sources["embed_group"]) == (8, f"{ENV} QRAG_EMBED_GROUP")
    assert (shown["commit_interval"], sources["commit_interval"]) == (
        0.0,
        f"{ENV} QRAG_COMMIT_INTERVAL",
    )
    assert (shown["dtype"], sources["dtype"]) == ("fp32", f"{ENV} QRAG_DTYPE")
    assert (shown["debug"], sources["debug"]) == (True, f"{ENV} QRAG_DEBUG")
    assert (shown["llm"], sources["llm"]) == (str(llm), f"{ENV} QRAG_LLM")
    assert (shown["model"], sources["model"]) == (str(tmp_path / "m"), f"{ENV} QRAG_MODEL")
    # The table says the same to a person.
    table = run_qrag("config", env={"QRAG_EMBED_GROUP": "8", "COLUMNS": "200"}, check=True).stdout
    assert re.search(rf"embed_group\s+│\s+8\s+│\s+{ENV} QRAG_EMBED_GROUP", table), table


def test_config_toml_value_is_shown_with_its_source(qrag_home: Path) -> None:
    (qrag_home / "config.toml").write_text('[reader]\nllm = "models/x.gguf"\n')
    shown = config_json()
    assert shown["llm"] == str(qrag_home / "models" / "x.gguf")
    assert shown["sources"]["llm"] == "config.toml"
    table = run_qrag("config", env={"COLUMNS": "200"}, check=True).stdout
    assert re.search(r"llm\s+│\s+\S+x\.gguf\s+│\s+config\.toml", table), table
    # The environment wins over the file, and says so.
    shown = config_json(QRAG_LLM="/elsewhere/y.gguf")
    assert (shown["llm"], shown["sources"]["llm"]) == ("/elsewhere/y.gguf", f"{ENV} QRAG_LLM")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("QRAG_EMBED_GROUP", "abc"),
        ("QRAG_EMBED_GROUP", "0"),
        ("QRAG_COMMIT_INTERVAL", "soon"),
        ("QRAG_COMMIT_INTERVAL", "nan"),
        ("QRAG_DTYPE", "fp16"),
        ("QRAG_DEBUG", "yes"),
    ],
)
def test_bad_environment_value_is_a_one_line_error(name: str, value: str) -> None:
    for command in (["config", "--json"], ["status", "--json"]):
        proc = run_qrag(*command, env={name: value})
        assert proc.returncode == 1 and proc.stdout == "", proc.stdout
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
        assert f"{name}={value!r}" in lines[0] and "Traceback" not in proc.stderr


def test_environment_values_are_parsed_once_with_defaults(monkeypatch) -> None:
    monkeypatch.setenv("QRAG_EMBED_GROUP", "")  # empty is unset
    assert env_value("QRAG_EMBED_GROUP") == 2048
    monkeypatch.setenv("QRAG_EMBED_GROUP", " 8 ")
    assert env_value("QRAG_EMBED_GROUP") == 8
    monkeypatch.setenv("QRAG_EMBED_GROUP", "8.5")
    with pytest.raises(ConfigError, match=r"QRAG_EMBED_GROUP='8\.5'"):
        env_value("QRAG_EMBED_GROUP")


def test_setting_the_llm_keeps_every_kind_of_toml_the_user_wrote(
    tmp_path: Path, qrag_home: Path
) -> None:
    tiny_gguf = write_tiny_gguf(tmp_path / "tiny.gguf")
    cfg = qrag_home / "config.toml"
    # Tables in arrays and dates: a maintained TOML writer keeps what a hand-written one
    # could not write back.
    cfg.write_text(
        'since = 2024-01-02\n[[profile]]\nname = "a"\n[[profile]]\nname = "b"\n'
        "[reader]\nn_ctx = 2048\n"
    )
    run_qrag("config", "--llm", str(tiny_gguf), check=True)
    data = tomllib.loads(cfg.read_text())
    assert data["since"] == datetime.date(2024, 1, 2)
    assert data["profile"] == [{"name": "a"}, {"name": "b"}]
    assert data["reader"] == {"n_ctx": 2048, "llm": str(tiny_gguf.resolve())}
    assert cfg.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in qrag_home.iterdir()] == ["config.toml"]  # no temp file left


@functools.cache
def _help(command: str) -> str:
    return run_qrag(command, "--help", env={"COLUMNS": "250"}, check=True).stdout


def _help_default(command: str, flag: str) -> str:
    text = _help(command)
    line = next(line for line in text.splitlines() if re.search(rf"{flag}\b", line))
    found = re.search(r"\[default: ([^\]]+)\]", line)
    assert found, line
    return found.group(1)


def test_train_flags_default_to_train_config() -> None:
    """`qrag train` shows TrainConfig's defaults, and TrainConfig's are what users saw."""
    cfg = TrainConfig()
    assert (cfg.lr, cfg.alpha, cfg.alpha_final) == (3e-4, 0.01, 0.001)
    for flag, value in (
        ("--lr", cfg.lr),
        ("--alpha", cfg.alpha),
        ("--budget", cfg.budget),
        ("--updates", cfg.updates),
        ("--batch", cfg.batch),
        ("--eval-split", cfg.eval_split),
        ("--eval-every", cfg.eval_every),
        ("--warm-start", cfg.warm_start),
        ("--out", cfg.out),
    ):
        assert _help_default("train", flag) == str(value), flag


def test_ask_flags_default_to_ask_options() -> None:
    ask = AskOptions()
    for flag, value in (
        ("--steps", ask.steps),
        ("--n-ctx", ask.reader.n_ctx),
        ("--max-tokens", ask.reader.max_tokens),
        ("--temperature", ask.reader.temperature),
        ("--order", ask.reader.order),
    ):
        assert _help_default("ask", flag) == str(value), flag


def test_openmp_threads_wait_asleep_unless_the_user_chose() -> None:
    """libgomp's spinning barriers made torch ~80x slower on a busy machine: importing
    qrag sets OMP_WAIT_POLICY=PASSIVE before torch loads, and keeps a value the user set."""
    import os
    import subprocess
    import sys

    code = "import os, qrag_cli, torch; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "PASSIVE", out.stderr
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "ACTIVE", out.stderr
