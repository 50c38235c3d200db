"""Parity of the ONNX and torch encoders (issue 39): fp32 chunk and state cosines, the
same picks, and int8 E_s against fp32, on the first 100 shared HotpotQA/MuSiQue examples
(budget 4).

    python experiments/onnx_parity/measure_onnx_parity.py
"""

from __future__ import annotations

import os

import numpy as np

from qrag_cli import qstate
from qrag_cli.datasets import real_examples
from qrag_cli.episode import MemoryChunk, StopRule, _embedded, example_sources, run_episodes
from qrag_cli.model import load_model
from qrag_cli.onnx_model import load_inference_model
from qrag_cli.types import Episode


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def same_picks(first: list[Episode], second: list[Episode]) -> int:
    return sum(
        [e.chunk_id for e in x.evidence] == [e.chunk_id for e in y.evidence]
        for x, y in zip(first, second, strict=True)
    )


def main() -> None:
    os.environ["QRAG_DTYPE"] = "fp32"
    fast, slow = load_inference_model(None), load_model("default")
    examples = (real_examples() or [])[:100]
    questions = [e.question for e in examples]
    texts = [_embedded(c) for e in examples for c in e.chunks]
    cos = cosines(fast.embed_chunks(texts), slow.embed_chunks(texts))
    print(f"chunks {len(texts)} cos min {cos.min():.6f} mean {cos.mean():.6f}")
    episodes = {
        name: run_episodes(m, questions, example_sources(m, examples), StopRule(4))
        for name, m in (("onnx", fast), ("torch", slow))
    }
    states = []
    for episode in episodes["onnx"]:
        state = qstate.start(fast, [episode.question])[0]
        for ev in episode.evidence:
            states.append(qstate.state_tokens(fast, state))
            row = MemoryChunk(ev.chunk_id, ev.ordinal, ev.text, ev.heading)
            state = qstate.pick(fast, state, row)
    cos = cosines(fast.embed_states(states), slow.embed_states(states))
    print(f"states {len(states)} cos min {cos.min():.6f} mean {cos.mean():.6f}")
    print("episodes with the same picks:", same_picks(episodes["onnx"], episodes["torch"]))
    gaps = [
        abs(a.q - b.q)
        for x, y in zip(episodes["onnx"], episodes["torch"], strict=True)
        for a, b in zip(x.evidence, y.evidence, strict=False)
    ]
    print(f"max |dQ| of picks {max(gaps):.2e}")
    os.environ["QRAG_DTYPE"] = "int8"
    small = load_inference_model(None)
    int8 = run_episodes(small, questions, example_sources(small, examples), StopRule(4))
    print("int8 vs fp32 onnx, same picks:", same_picks(int8, episodes["onnx"]), "/", len(examples))


if __name__ == "__main__":
    main()
