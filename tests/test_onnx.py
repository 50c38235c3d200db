"""The encoders on ONNX Runtime (issue 39): ask, index, status and mcp never import torch;
the ONNX graphs compute what the torch encoders compute; a folder without them (or with
stale ones) still works, through torch, with one note."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import HOP_QUESTION, REPO, SAMPLE, run_qrag

from qrag_cli import qstate
from qrag_cli.episode import MemoryCandidates, StopRule, run_episodes
from qrag_cli.model_dirs import default_model_dir
from qrag_cli.onnx_model import OnnxQModel, load_inference_model

SAMPLE_QUESTION = (
    "Which river flows through the city where the inventor of the Zephyr engine was born?"
)


def _torch_default(monkeypatch):
    from qrag_cli.model import load_model

    monkeypatch.setenv("QRAG_DTYPE", "fp32")  # the parity the issue asks: fp32 against fp32
    model = load_model("default")
    monkeypatch.delenv("QRAG_DTYPE")
    return model


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _sample_texts() -> list[str]:
    from qrag_cli.chunk import chunk_document
    from qrag_cli.config import ChunkConfig
    from qrag_cli.documents import read_document
    from qrag_cli.types import contextual_text

    texts = []
    for path in sorted(p for p in SAMPLE.rglob("*") if p.is_file()):
        doc = read_document(path)
        texts += [contextual_text(c.heading, c.text) for c in chunk_document(doc, ChunkConfig())]
    return texts


def test_the_default_model_runs_on_onnx_and_matches_torch(monkeypatch) -> None:
    """Cosine >= 0.999 per chunk and per state (fp32 both), and the same picks."""
    monkeypatch.setenv("QRAG_DTYPE", "fp32")
    fast = load_inference_model(None)
    assert isinstance(fast, OnnxQModel)
    slow = _torch_default(monkeypatch)
    texts = _sample_texts()
    assert len(texts) >= 8
    chunk_cos = _cosines(fast.embed_chunks(texts), slow.embed_chunks(texts))
    assert chunk_cos.min() >= 0.999, chunk_cos.min()
    states = [qstate.state_tokens(fast, s) for s in qstate.start(fast, [SAMPLE_QUESTION] * 2)]
    state_cos = _cosines(fast.embed_states(states), slow.embed_states(states))
    assert state_cos.min() >= 0.999, state_cos.min()

    picks = []
    for model in (fast, slow):
        source = MemoryCandidates(texts, model.embed_chunks(texts))
        episode = run_episodes(model, [SAMPLE_QUESTION], [source], StopRule(4))[0]
        picks.append([ev.chunk_id for ev in episode.evidence])
    assert picks[0] == picks[1]


def test_onnx_picks_what_torch_picks_on_real_multi_hop_questions(monkeypatch, shared_data) -> None:
    """fp32 against fp32 on 40 HotpotQA/MuSiQue questions, budget 4: the same evidence,
    step by step, in every episode."""
    from qrag_cli.datasets import real_examples
    from qrag_cli.episode import example_sources

    monkeypatch.setenv("QRAG_DTYPE", "fp32")
    examples = (real_examples() or [])[:40]
    assert len(examples) == 40
    fast, slow = load_inference_model(None), _torch_default(monkeypatch)
    monkeypatch.setenv("QRAG_DTYPE", "fp32")
    picks = []
    for model in (fast, slow):
        sources = example_sources(model, examples)
        episodes = run_episodes(model, [ex.question for ex in examples], sources, StopRule(4))
        picks.append([[ev.chunk_id for ev in ep.evidence] for ep in episodes])
    assert picks[0] == picks[1]


def test_cold_ask_index_and_status_never_import_torch(tmp_path: Path) -> None:
    script = tmp_path / "probe.py"
    script.write_text(
        "import sys\n"
        "from qrag_cli.cli import main\n"
        "sys.argv = ['qrag', *sys.argv[1:]]\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "training = [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')\n"
        "            or m in ('qrag_cli.pqn', 'qrag_cli.datasets', 'qrag_cli.model')\n"
        "            or m.startswith('qrag_cli.bench')]\n"
        "sys.stderr.write(f'TORCH_LOADED={\"torch\" in sys.modules} TRAINING={training} '\n"
        "                 f'CODE={code}\\n')\n"
    )
    corpus = tmp_path / "hop"
    shutil.copytree(SAMPLE, corpus)
    env = {"QRAG_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin", "NO_COLOR": "1"}

    def probe(*args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [sys.executable, str(script), *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            timeout=600,
        )
        # Neither torch nor the training and bench code: the product's layers stand alone.
        assert "TORCH_LOADED=False TRAINING=[] CODE=0" in proc.stderr, proc.stderr
        return proc

    probe("index", str(corpus), "--index", "onnx")
    out = probe("ask", SAMPLE_QUESTION, "--index", "onnx", "--steps", "4", "--json").stdout
    result = json.loads(out)
    assert result["engine"] == "onnx"
    assert len(result["evidence"]) == 4
    probe("status", "--index", "onnx", "--json")
    # The same question on torch (QRAG_ENGINE=torch) picks the same evidence.
    torch_run = run_qrag(
        "ask",
        SAMPLE_QUESTION,
        "--index",
        "onnx",
        "--steps",
        "4",
        "--json",
        env={"QRAG_HOME": str(tmp_path / "home"), "QRAG_ENGINE": "torch"},
        check=True,
    )
    torch_result = json.loads(torch_run.stdout)
    assert torch_result["engine"] == "torch"
    assert [e["chunk_id"] for e in torch_result["evidence"]] == [
        e["chunk_id"] for e in result["evidence"]
    ]


def _copy_default(tmp_path: Path) -> Path:
    copy = tmp_path / "copied-model"
    shutil.copytree(default_model_dir(), copy)
    return copy


def test_a_folder_without_onnx_runs_on_torch_with_one_note(tmp_path: Path, hop_corpus) -> None:
    model = _copy_default(tmp_path)
    shutil.rmtree(model / "onnx")
    run_qrag("index", str(hop_corpus), "--model", str(model), check=True)
    proc = run_qrag("ask", HOP_QUESTION, "--json", check=True)
    notes = [line for line in proc.stderr.splitlines() if "ONNX" in line]
    assert len(notes) == 1 and "qrag train pack" in notes[0], proc.stderr
    assert json.loads(proc.stdout)["engine"] == "torch"
    refused = run_qrag("ask", HOP_QUESTION, env={"QRAG_ENGINE": "onnx"})
    assert refused.returncode != 0
    assert "QRAG_ENGINE=onnx" in refused.stderr and "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_graphs_of_other_weights_are_not_used(tmp_path: Path) -> None:
    model = _copy_default(tmp_path)
    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of E_s's last weight: the graphs no longer match
    weights.write_bytes(bytes(data))
    from qrag_cli.onnx_model import onnx_files

    cfg_raw = json.loads((model / "config.json").read_text())
    from qrag_cli.model_config import ModelConfig

    files, why = onnx_files(
        model,
        ModelConfig.from_dict(cfg_raw),
        json.loads((model / "encoder_config.json").read_text()),
    )
    assert files is None and "other weights" in why


def test_pack_writes_graphs_that_load_without_torch(tmp_path: Path) -> None:
    source = _copy_default(tmp_path)
    shutil.rmtree(source / "onnx")
    packed = tmp_path / "packed"
    run_qrag("train", "pack", str(source), str(packed), check=True)
    manifest = json.loads((packed / "onnx" / "manifest.json").read_text())
    assert set(manifest["files"]) >= {"state", "chunk"}
    model = load_inference_model(str(packed))
    assert isinstance(model, OnnxQModel)
    assert model.cfg.fingerprint == json.loads((source / "config.json").read_text())["fingerprint"]


@pytest.mark.parametrize("value", ["gpu", "1"])
def test_a_bad_engine_is_refused(value: str) -> None:
    proc = run_qrag("status", env={"QRAG_ENGINE": value})
    assert proc.returncode != 0 and "QRAG_ENGINE" in proc.stderr


def test_the_mcp_server_asks_without_torch(tmp_path: Path, hop_corpus: Path) -> None:
    """The server process maps ONNX Runtime and never torch's library."""
    import asyncio

    import psutil
    from test_mcp import qrag_mcp

    run_qrag("index", str(hop_corpus), check=True)

    async def scenario() -> None:
        async with qrag_mcp(tmp_path / "stderr.txt") as server:
            out = await server.call("ask", question=HOP_QUESTION, steps=2)
            assert out["engine"] == "onnx" and len(out["evidence"]) == 2
            servers = [p for p in psutil.Process().children(recursive=True) if "mcp" in p.cmdline()]
            assert servers
            for proc in servers:
                mapped = {m.path for m in proc.memory_maps()}
                assert any("onnxruntime" in path for path in mapped)
                assert not any("libtorch" in path for path in mapped)

    asyncio.run(scenario())


def test_int8_states_on_onnx_rank_chunks_as_fp32_does(monkeypatch) -> None:
    """ONNX's int8 E_s (the default for asking) against its fp32 E_s, as for torch's
    int8 states (test_int8_states.py): the chunks are the same fp32 vectors either way."""
    from test_int8_states import CHUNKS, _states

    monkeypatch.setenv("QRAG_DTYPE", "fp32")
    exact = load_inference_model(None)
    monkeypatch.setenv("QRAG_DTYPE", "int8")
    small = load_inference_model(None)
    assert isinstance(small, OnnxQModel) and isinstance(exact, OnnxQModel)
    assert (small.state_precision, exact.state_precision) == ("int8", "fp32")
    chunks = exact.embed_chunks(CHUNKS)
    assert np.array_equal(chunks, small.embed_chunks(CHUNKS))
    states = _states(exact)
    a, b = exact.embed_states(states), small.embed_states(states)
    assert not np.allclose(a, b, atol=1e-4)  # the int8 graph really ran
    assert _cosines(a, b).min() > 0.98
    top_a, top_b = (a @ chunks.T).argsort(1)[:, ::-1], (b @ chunks.T).argsort(1)[:, ::-1]
    assert (top_a[:, :2] == top_b[:, :2]).all()
    assert all(set(x[:3]) <= set(y[:4]) for x, y in zip(top_a, top_b, strict=True))
