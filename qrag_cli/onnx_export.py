"""E_s and E_a as ONNX graphs, for `qrag ask`, `qrag index` and `qrag mcp` to run without
torch (onnx_model.py). `save_model` writes them beside the safetensors, so `qrag train`,
`qrag train pack` and the recipe all ship them.

The graph is qrag's BERT (bert.py) written out directly from its weights, not traced:
tracing a model through torch.onnx costs seconds and an extra exporter dependency, and
BERT-family encoders are one fixed block repeated. It uses ONNX Runtime's fused CPU
operators (com.microsoft Attention, SkipLayerNormalization, BiasGelu: the ones its own
transformer optimiser writes), so each layer is five kernels. Weights are stored in fp16
(half the size; fp16 keeps 11 mantissa bits, the compact safetensors store the same) and
cast to fp32 once when a session starts: the encoders compute in fp32.

Inputs: input_ids, attention_mask (int64 [batch, tokens]); output: `pooled` (fp32
[batch, dim]), the mean of the last layer over unmasked tokens. Normalising and scaling are
the model's settings in config.json, applied by the caller, as in qnet.Encoder.

Beside E_s in fp32, an int8 E_s (dynamic quantisation of every linear layer after the
first, as the torch int8 states), which `qrag ask` uses unless QRAG_DTYPE asks for fp32.
All graphs map one weights file (`save_graphs`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from qrag_cli.model_config import fingerprint, weight_files

if TYPE_CHECKING:
    import onnx

    from qrag_cli.model_config import ModelConfig
    from qrag_cli.qnet import QModel

OPSET = 17
"""The ai.onnx opset (LayerNormalization is opset 17; the rest is older)."""
FORMAT = "qrag-onnx/1"
FOLDER = "onnx"
MANIFEST = "manifest.json"
DATA = "weights.data"


def bert_graph(
    config: Mapping, tensors: Mapping[str, np.ndarray], name: str, for_int8: bool = False
) -> onnx.ModelProto:
    """The ONNX model of a BERT encoder with mean pooling, from Hugging Face
    named weights (`Bert.hf_state()` as numpy). `for_int8` stores the linear weights of
    the layers after the first as plain fp32 initializers, for the int8 quantiser to find."""
    from onnx import TensorProto, helper, numpy_helper

    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    layers = int(config["num_hidden_layers"])
    eps = float(config.get("layer_norm_eps", 1e-12))
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def weight(key: str, value: np.ndarray | None = None, linear: bool = False) -> str:
        """An fp16 initializer cast to fp32 (ORT folds the cast at session start)."""
        array = np.asarray(tensors[key] if value is None else value, dtype=np.float32)
        if linear and for_int8:
            inits.append(numpy_helper.from_array(array, key))
            return key
        inits.append(numpy_helper.from_array(array.astype(np.float16), f"{key}.f16"))
        nodes.append(
            helper.make_node("Cast", [f"{key}.f16"], [key], name=key, to=TensorProto.FLOAT)
        )
        return key

    def node(op: str, inputs: list[str], out: str, domain: str = "", **attrs: object) -> str:
        nodes.append(helper.make_node(op, inputs, [out], name=out, domain=domain, **attrs))
        return out

    ms = "com.microsoft"
    # Embeddings + LayerNorm (token type 0, positions 0..T-1). The two large tables stay
    # fp16 in the session too: only the rows a batch reads are cast (folding a 30K-row
    # table to fp32 at every session start cost ~0.1 s of each cold `qrag ask`).
    emb = "embeddings."

    def table(key: str) -> str:
        inits.append(numpy_helper.from_array(np.asarray(tensors[key], np.float16), key))
        return key

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, name))
        return name

    mask32 = node("Cast", ["attention_mask"], "mask32", to=TensorProto.INT32)
    length = node(
        "Gather",
        [node("Shape", ["input_ids"], "ids_shape"), const("one_i", np.array(1))],
        "length",
        axis=0,
    )
    positions = node(
        "Range", [const("zero_i", np.array(0)), length, const("step_i", np.array(1))], "positions"
    )
    words = node("Gather", [table(emb + "word_embeddings.weight"), "input_ids"], "words16")
    places = node("Gather", [table(emb + "position_embeddings.weight"), positions], "places16")
    summed = node(
        "Add",
        [
            node("Cast", [words], "words", to=TensorProto.FLOAT),
            node("Cast", [places], "places", to=TensorProto.FLOAT),
        ],
        "words_places",
    )
    segment = const(
        "segment0", np.asarray(tensors[emb + "token_type_embeddings.weight"][0], np.float32)
    )
    x = node(
        "LayerNormalization",
        [
            node("Add", [summed, segment], "embedded"),
            weight(emb + "LayerNorm.weight"),
            weight(emb + "LayerNorm.bias"),
        ],
        "emb_out",
        axis=-1,
        epsilon=eps,
    )

    def add_and_norm(branch: str, residual: str, hf: str, name: str) -> str:
        """LayerNorm(residual + branch + the bias of `hf`'s dense layer), one fused kernel."""
        return node(
            "SkipLayerNormalization",
            [
                branch,
                residual,
                weight(hf + ".LayerNorm.weight"),
                weight(hf + ".LayerNorm.bias"),
                weight(hf + ".dense.bias"),
            ],
            name,
            domain=ms,
            epsilon=eps,
        )

    for i in range(layers):
        p = f"encoder.layer.{i}."
        qkv_w = np.concatenate(
            [tensors[p + f"attention.self.{k}.weight"].T for k in ("query", "key", "value")], 1
        )
        qkv_b = np.concatenate(
            [tensors[p + f"attention.self.{k}.bias"] for k in ("query", "key", "value")]
        )
        ctx = node(
            "Attention",
            [
                x,
                weight(p + "qkv.weight", qkv_w, linear=i > 0),
                weight(p + "qkv.bias", qkv_b),
                mask32,
            ],
            f"l{i}.ctx",
            domain=ms,
            num_heads=heads,
        )
        attn = node(
            "MatMul",
            [
                ctx,
                weight(
                    p + "attn_out.weight",
                    _t(tensors, p + "attention.output.dense.weight"),
                    linear=i > 0,
                ),
            ],
            f"l{i}.attn",
        )
        x = add_and_norm(attn, x, p + "attention.output", f"l{i}.norm1")
        inner = node(
            "MatMul",
            [
                x,
                weight(
                    p + "ffn_in.weight", _t(tensors, p + "intermediate.dense.weight"), linear=i > 0
                ),
            ],
            f"l{i}.ffn_mm",
        )
        inner = node(
            "BiasGelu", [inner, weight(p + "intermediate.dense.bias")], f"l{i}.gelu", domain=ms
        )
        out = node(
            "MatMul",
            [
                inner,
                weight(p + "ffn_out.weight", _t(tensors, p + "output.dense.weight"), linear=i > 0),
            ],
            f"l{i}.ffn_out",
        )
        x = add_and_norm(out, x, p + "output", f"l{i}.norm2")
    # Mean over the unmasked tokens (qnet.Encoder.pool).
    maskf = node("Cast", ["attention_mask"], "maskf", to=TensorProto.FLOAT)
    mask3 = node("Unsqueeze", [maskf, "axis2"], "mask3")
    inits.append(numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"))
    inits.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"))
    inits.append(numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"))
    summed = node("ReduceSum", [node("Mul", [x, mask3], "masked"), "axis1"], "summed", keepdims=0)
    count = node("ReduceSum", [maskf, "axis1"], "count", keepdims=1)
    count = node("Max", [count, "one"], "count1")
    node("Div", [summed, count], "pooled")
    graph = helper.make_graph(
        nodes,
        name,
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "tokens"]),
        ],
        [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", hidden])],
        inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(ms, 1)],
        producer_name="qrag",
    )
    model.ir_version = 8
    return model


def _t(tensors: Mapping[str, np.ndarray], key: str) -> np.ndarray:
    """A linear layer's weight as MatMul reads it: [in, out]."""
    return np.ascontiguousarray(np.asarray(tensors[key], dtype=np.float32).T)


def save_graphs(graphs: Mapping[str, onnx.ModelProto], folder: Path) -> None:
    """Each graph in folder/NAME, and every weight of them all once, in folder/weights.data.

    External weights are mapped by ONNX Runtime instead of parsed and copied, which starts
    a session in a fraction of the time, and every cold `qrag ask` starts one. Stored
    once: the graphs share most of their bytes (the fp16 token table is in all three; a
    frozen E_a's first layer is E_s's). Offsets are 4 KiB aligned, as mapping wants."""
    from onnx.external_data_helper import set_external_data

    data = folder / DATA
    placed: dict[bytes, tuple[int, int]] = {}
    with data.open("wb") as fh:
        for graph in graphs.values():
            for tensor in graph.graph.initializer:
                raw = tensor.raw_data
                if len(raw) < 4096:
                    continue  # small tensors stay in the graph
                key = hashlib.sha256(raw).digest()
                if key not in placed:
                    offset = -fh.tell() % 4096
                    fh.write(b"\0" * offset)
                    placed[key] = (fh.tell(), len(raw))
                    fh.write(raw)
                offset, length = placed[key]
                set_external_data(tensor, DATA, offset, length)
                tensor.ClearField("raw_data")
                tensor.data_location = tensor.EXTERNAL
    for name, graph in graphs.items():
        (folder / name).write_bytes(graph.SerializeToString())


def write_manifest(folder: Path, manifest: dict) -> None:
    (folder / MANIFEST).write_text(json.dumps({"format": FORMAT, **manifest}, indent=2))


def source_fingerprint(folder: Path, cfg: ModelConfig, encoder_config: dict) -> str:
    """What the ONNX graphs were written from: the folder's weights, the encoder's shape
    and E_a's fingerprint (a frozen E_a is the base's). A retrained or hand-edited folder
    no longer matches, and its graphs are not used."""
    salt = json.dumps([encoder_config, cfg.fingerprint], sort_keys=True)
    return fingerprint(weight_files(folder), "onnx:" + salt)


def write_onnx(model: QModel, folder: Path, cfg: ModelConfig) -> None:
    """Write onnx/ into a model folder being saved (its model.safetensors and config are
    final): E_s, E_a unless it is E_s, an int8 E_s, and the manifest. A model whose
    encoders are not qrag's BERT gets none and runs on torch (onnx_model.py says so)."""
    from qrag_cli.bert import Bert

    encoders = [("state", model.state_encoder)]
    if cfg.chunk_source() != "shared":
        encoders.append(("chunk", model.chunk_encoder))
    if not all(isinstance(encoder.backbone, Bert) for _, encoder in encoders):
        return
    out = folder / FOLDER
    out.mkdir()
    graphs = {}
    for role, encoder in encoders:
        tensors = {
            k: v.detach().float().cpu().numpy() for k, v in encoder.backbone.hf_state().items()
        }
        graphs[f"{role}.onnx"] = bert_graph(model.encoder_config, tensors, f"qrag-{role}")
        if role == "state":
            graphs["state.int8.onnx"] = _int8(model.encoder_config, tensors, out)
    save_graphs(graphs, out)
    files = {"state": "state.onnx", "state_int8": "state.int8.onnx"}
    if "chunk.onnx" in graphs:
        files["chunk"] = "chunk.onnx"
    write_manifest(
        out,
        {
            "source": source_fingerprint(folder, cfg, model.encoder_config),
            "opset": OPSET,
            "files": files,
            "data": DATA,
        },
    )


def _int8(config: Mapping, tensors: Mapping[str, np.ndarray], work: Path) -> onnx.ModelProto:
    """E_s with int8 linear layers after the first (dynamic quantisation, one scale per
    output channel), as the torch int8 states: faster per state on a CPU (BENCHMARKS.md
    "ONNX"). The first layer stays float: quantising it moved the state most."""
    import tempfile

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(dir=work) as tmp:
        plain, quantized = Path(tmp) / "plain.onnx", Path(tmp) / "int8.onnx"
        graph = bert_graph(config, tensors, "qrag-state-int8", for_int8=True)
        onnx.save_model(graph, plain)
        root = logging.getLogger()
        level, root.level = root.level, logging.ERROR  # its advice to pre-process: not ours
        try:
            quantize_dynamic(
                plain,
                quantized,
                weight_type=QuantType.QInt8,
                per_channel=True,
                op_types_to_quantize=["MatMul", "Attention"],
                nodes_to_exclude=[n.name for n in graph.graph.node if n.name.startswith("l0.")],
                # The fused operators are com.microsoft's: shape inference cannot type
                # their outputs, which are all fp32.
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
        finally:
            root.setLevel(level)
        return onnx.load(str(quantized))
