"""Small things a user notices: --version, help, flags, subcommands, empty states, Ctrl-C,
and model folders whose weights are a pickle. All through the real CLI."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from importlib.metadata import version
from pathlib import Path

import pytest
from conftest import QRAG, REPO, run_qrag
from test_index import check_consistent, make_corpus

from qrag_cli.config import resolve_index
from qrag_cli.store import open_snapshot
from qrag_cli.types import NoIndexError

TYPE_PLACEHOLDER = re.compile(r"<(bool|str|int|float|path)>")


def _one_line(text: str) -> bool:
    return text.strip() != "" and text.strip().count("\n") == 0


def test_version_comes_from_the_package_metadata() -> None:
    proc = run_qrag("--version", check=True)
    assert proc.stdout.strip() == f"qrag {version('qrag')}"


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["index"],
        ["status"],
        ["config"],
        ["ask"],
        ["train"],
        ["train", "eval"],
        ["train", "convert"],
        ["train", "pack"],
        ["bench"],
        ["bench", "data"],
        ["mcp"],
    ],
)
def test_help_names_types_and_shows_flags_as_flags(command: list[str]) -> None:
    proc = run_qrag(*command, "--help", check=True)
    assert not TYPE_PLACEHOLDER.search(proc.stdout), proc.stdout
    assert " PARSE " not in proc.stdout, proc.stdout  # a range-checked flag shows its type
    assert proc.stdout.count("Usage: qrag " + " ".join(command)) == 1, proc.stdout
    help_line = next(line for line in proc.stdout.splitlines() if "│ --help" in line)
    assert re.search(r"--help\s+Show this message", help_line), help_line  # no type column
    # main() reads --debug itself; every command declares it so that typer accepts it.
    assert ("--debug" in proc.stdout) == bool(command), proc.stdout
    if command == ["ask"]:
        assert "INTEGER" in proc.stdout and "TEXT" in proc.stdout
        json_line = next(line for line in proc.stdout.splitlines() if "--json" in line)
        assert re.search(r"--json\s+Print JSON", json_line), json_line


@pytest.mark.parametrize(
    "args",
    [
        ["ask", "--json", "true"],
        ["ask", "why?", "--exact", "no"],
        ["index", "--include-secrets", "yes"],
        ["train", "data.jsonl", "--bf16", "false"],
        ["train", "eval", "data.jsonl", "--json", "1"],
    ],
)
def test_a_flag_given_a_value_is_refused(args: list[str]) -> None:
    proc = run_qrag(*args)
    flag = next(a for a in args if a.startswith("--"))
    assert proc.returncode == 2, proc.stderr
    assert _one_line(proc.stderr) and f"{flag} is a flag and takes no value" in proc.stderr


def test_train_and_bench_list_their_subcommands() -> None:
    top = run_qrag("--help", check=True).stdout
    assert re.search(r"^│ train\s+RL-fine-tune", top, re.M) and re.search(r"^│ bench\s", top, re.M)
    assert "train-" not in top and "bench-data" not in top
    train = run_qrag("train", "--help", check=True).stdout
    for sub in ("eval", "convert", "pack"):
        assert re.search(rf"^│ {sub}\s", train, re.M), train
    assert "--updates" in train  # the training options stay on `qrag train --help`
    assert re.search(r"^│ data\s", run_qrag("bench", "--help", check=True).stdout, re.M)
    assert (
        "Usage: qrag train convert [OPTIONS] SRC DEST"
        in run_qrag("train", "convert", "--help", check=True).stdout
    )
    # `qrag train DATA` keeps working, options before or after DATA (checked before any
    # model loads), and a stray word is an error, not a subcommand.
    for args in (["train", "d.jsonl", "--updates", "0"], ["train", "--updates", "0", "d.jsonl"]):
        proc = run_qrag(*args)
        assert proc.returncode == 2 and "--updates" in proc.stderr and _one_line(proc.stderr)
    proc = run_qrag("train", "d.jsonl", "extra")
    assert proc.returncode == 2 and "extra" in proc.stderr and _one_line(proc.stderr)
    proc = run_qrag("train")
    assert proc.returncode == 2 and "give a training JSONL" in proc.stderr


def test_status_json_without_indexes_is_an_empty_list() -> None:
    proc = run_qrag("status", "--json", check=True)
    assert json.loads(proc.stdout) == []


def test_ask_on_an_empty_index_says_so(tmp_path: Path) -> None:
    folder = tmp_path / "nothing-to-read"
    folder.mkdir()
    (folder / "blob.bin").write_bytes(bytes(range(256)) * 4)  # skipped: binary
    run_qrag("index", str(folder), "--index", "empty", check=True)
    for extra in ([], ["--json"]):
        proc = run_qrag("ask", "what is in there?", "--index", "empty", *extra)
        assert proc.returncode != 0 and proc.stdout == ""
        assert _one_line(proc.stderr) and "is empty" in proc.stderr, proc.stderr


def _generation(index_dir: Path) -> int:
    try:
        with open_snapshot(index_dir) as snapshot:
            return snapshot.generation
    except NoIndexError:
        return -1


def test_ctrl_c_says_interrupted_exits_130_and_keeps_the_index(
    tmp_path: Path, qrag_home: Path
) -> None:
    corpus = make_corpus(tmp_path / "corpus", 60)
    index_dir = resolve_index("interrupted")
    # Small groups committed at once: the run is still going after its first commit.
    env = {
        **os.environ,
        "QRAG_HOME": str(qrag_home),
        "QRAG_COMMIT_INTERVAL": "0",
        "QRAG_EMBED_GROUP": "8",
    }
    proc = subprocess.Popen(
        [*QRAG, "index", str(corpus), "--index", "interrupted"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while _generation(index_dir) < 1 and proc.poll() is None:
        assert time.time() < deadline, "no commit within 300 s"
        time.sleep(0.02)
    assert proc.poll() is None, "indexing finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "interrupted" and "Traceback" not in stderr
    assert stdout == ""
    assert check_consistent(index_dir) > 0  # the last commit, whole
    asked = run_qrag(
        "ask", "code for item 3-1", "--index", "interrupted", "--json", "--steps", "2", check=True
    )
    assert json.loads(asked.stdout)["evidence"]
    rerun = json.loads(run_qrag("index", "--index", "interrupted", "--json", check=True).stdout)
    assert rerun["files_total"] == 60 and rerun["unchanged"] > 0
    assert check_consistent(index_dir) == rerun["chunks_total"]


def _tiny_roberta(folder: Path, safetensors: bool) -> Path:
    """A real non-BERT encoder (RoBERTa, 1 small layer) with the base's tokenizer files."""
    import torch
    from transformers import RobertaConfig, RobertaModel

    from qrag_cli.model import base_model_dir

    torch.manual_seed(0)
    config = RobertaConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=514,
        pad_token_id=0,
    )
    model = RobertaModel(config)
    if safetensors:
        model.save_pretrained(folder)
    else:  # what older checkpoints ship: config.json + a pickled state dict
        folder.mkdir(parents=True)
        config.save_pretrained(folder)
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    for name in ("tokenizer.json", "special_tokens_map.json", "tokenizer_config.json", "vocab.txt"):
        if (base_model_dir() / name).is_file():
            shutil.copyfile(base_model_dir() / name, folder / name)
    return folder


def test_non_bert_model_folder_loads_safetensors_only(hop_corpus: Path, tmp_path: Path) -> None:
    pickled = _tiny_roberta(tmp_path / "pickled", safetensors=False)
    assert not list(pickled.glob("*.safetensors"))
    proc = run_qrag("index", str(hop_corpus), "--index", "p", "--model", str(pickled))
    assert proc.returncode != 0 and _one_line(proc.stderr), proc.stderr
    assert "safetensors" in proc.stderr and "pytorch_model.bin" in proc.stderr
    # The same encoder in safetensors goes through transformers and indexes.
    safe = _tiny_roberta(tmp_path / "safe", safetensors=True)
    assert (safe / "model.safetensors").is_file() and not list(safe.glob("*.bin"))
    summary = json.loads(
        run_qrag(
            "index", str(hop_corpus), "--index", "s", "--model", str(safe), "--json", check=True
        ).stdout
    )
    assert summary["files_total"] == len(list(hop_corpus.iterdir()))
