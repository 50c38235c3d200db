"""The trained model shipped in models/qrag-default: compact, used by default, and written
by the recipe. How well it retrieves is the bench's to say (`qrag bench`, `qrag bench
--layouts`: beside the untrained base, BM25 and dense top-k), not a unit test's."""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path

from conftest import REPO, run_qrag

from qrag_cli.model import BASE_NAME, ModelConfig, base_model_dir, load_model, write_model_card
from qrag_cli.pqn import TrainConfig
from qrag_cli.qnet import QModel

DEFAULT = REPO / "models" / "qrag-default"


def test_shipped_default_is_compact_and_used_unless_another_is_asked_for(
    hop_corpus: Path, tmp_path: Path
) -> None:
    assert (DEFAULT / "config.json").is_file() and (DEFAULT / "MODEL_CARD.md").is_file()
    size = sum(f.stat().st_size for f in DEFAULT.rglob("*") if f.is_file())
    onnx = sum(f.stat().st_size for f in (DEFAULT / "onnx").iterdir())
    # The weights: only what training changed, fp16; the ONNX graphs (E_s fp32 and int8,
    # E_a) share one weights file, each tensor stored once.
    assert size - onnx < 25e6 and onnx < 80e6
    model = load_model(None)
    assert model.folder == DEFAULT and model.cfg.name == "qrag-default"
    assert model.cfg.frozen_chunks and model.cfg.delta_base
    assert_written_by_the_recipe(model, tmp_path)
    # E_a is the base: an index built with either serves both.
    assert model.cfg.fingerprint == load_model("base").cfg.fingerprint
    assert base_model_dir().is_dir()

    index = str(tmp_path / "idx")
    run_qrag("index", str(hop_corpus), "--index", index, check=True)
    question = "Which river flows through the city where the inventor was born?"
    asked = json.loads(run_qrag("ask", question, "--index", index, "--json", check=True).stdout)
    assert asked["model"] == "qrag-default"
    base = json.loads(
        run_qrag("ask", question, "--index", index, "--model", "base", "--json", check=True).stdout
    )
    assert base["model"] == BASE_NAME
    proc = run_qrag("ask", question, "--index", index, "--model", str(tmp_path / "nope"))
    assert proc.returncode != 0 and "no such model" in proc.stderr


def assert_written_by_the_recipe(model: QModel, tmp_path: Path) -> None:
    """config.json and the card are what `make train-default` (stage 2, then `train
    pack`) writes, not edited by hand: only keys the code writes, the Makefile's settings,
    the kept update the curve's best, and the card made from the config alone."""
    config = json.loads((DEFAULT / "config.json").read_text())
    # Fields newer than the shipped model: a folder written before them loads with their
    # defaults (no stop head).
    newer = {"stop_head"}
    assert set(config) <= {"format", *(f.name for f in fields(ModelConfig))}
    assert {f.name for f in fields(ModelConfig)} - set(config) <= newer
    train_keys = {*(f.name for f in fields(TrainConfig))}
    assert set(config["train"]) <= train_keys | {
        "data_hash",
        "train_examples",
        "eval_examples",
        "seconds",
    }
    assert train_keys - set(config["train"]) <= newer
    assert {"data_hash", "train_examples", "eval_examples", "seconds"} <= set(config["train"])
    metrics = config["metrics"]
    written = {
        "before",
        "after",
        "threshold",
        "calibrated_threshold",
        "stop_right_share",
        "curve",
        "kept_update",
    }
    # Newer training runs add `stop` (evaluate.stop_metrics); `qrag train stop`, `stop_fit`;
    # `qrag train pack --layouts` (the recipe), `layouts`: the layout bench's validation
    # split, never its test split.
    assert written <= set(metrics) <= written | {"stop", "stop_fit", "layouts"}
    assert metrics["layouts"]["questions"] == 150 and "splits" not in metrics["layouts"]
    assert set(metrics["layouts"]["layouts"]) == {
        "plain", "markdown", "notes", "html", "onefile", "rst"
    }  # fmt: skip
    recipe = (REPO / "Makefile").read_text().replace("\\\n", " ")
    words = next(
        line
        for line in recipe.splitlines()
        if "--only-lexical" in line and not line.startswith("#")
    ).split()
    flag = {w: words[i + 1] for i, w in enumerate(words[:-1]) if w.startswith("--")}
    train = config["train"]
    assert not train["train_encoder"]  # --only-lexical
    assert train["lexical"] == [float(w) for w in flag["--lexical"].split(",")]
    assert train["lexical_query"] == model.cfg.spec().query == flag["--lexical-query"]
    assert train["apply_stop"] is (flag["--stop"] == "apply")
    assert train["state_chunk_cap"] == config["chunk_cap"] == int(flag["--state-chunk-cap"])
    for name in ("warm_start", "updates", "eval_every", "budget", "batch", "seed"):
        assert train[name] == int(flag["--" + name.replace("_", "-")]), name
    assert train["lr"] == float(flag["--lr"]) and train["alpha"] == float(flag["--alpha"])
    curve = metrics["curve"]
    assert [row["update"] for row in curve] == list(
        range(0, train["updates"] + 1, train["eval_every"])
    )
    best = max(row["select"] for row in curve)  # a tie keeps the earlier weights
    assert metrics["kept_update"] == next(r["update"] for r in curve if r["select"] == best)
    # A hybrid Q with the learned BM25 weights; the calibrated stop recorded, not applied.
    assert config["q"]["head"]["name"] == "linear"
    assert len(model.cfg.spec().weights) == 4  # order, named
    assert config["threshold"] is None and metrics["calibrated_threshold"] > 0
    write_model_card(tmp_path, {"config": asdict(model.cfg)})
    assert (tmp_path / "MODEL_CARD.md").read_text() == (DEFAULT / "MODEL_CARD.md").read_text()
