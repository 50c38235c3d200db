"""Parity of the ONNX and torch encoders (issue 39): fp32 chunk and state cosines, the
same picks, and int8 E_s against fp32, on the first 100 shared HotpotQA/MuSiQue examples
(budget 4). Usage: python models/measure_onnx_parity.py"""
import os, numpy as np, sys
os.environ["QRAG_DTYPE"] = "fp32"
from qrag_cli.onnx_model import load_inference_model
from qrag_cli.model import load_model
from qrag_cli.datasets import real_examples
from qrag_cli.episode import example_sources, run_episodes, StopRule, _embedded
from qrag_cli import qvalue
fast, slow = load_inference_model(None), load_model("default")
ex = real_examples()[:100]
texts = [_embedded(c) for e in ex for c in e.chunks]
a, b = fast.embed_chunks(texts), slow.embed_chunks(texts)
cos = (a*b).sum(1)/np.linalg.norm(a,axis=1)/np.linalg.norm(b,axis=1)
print("chunks", len(texts), "cos min %.6f mean %.6f" % (cos.min(), cos.mean()))
res = {}
for name, m in (("onnx", fast), ("torch", slow)):
    src = example_sources(m, ex)
    eps = run_episodes(m, [e.question for e in ex], src, StopRule(4))
    res[name] = eps
states = []
for ep in res["onnx"]:
    st = qvalue.start(fast, [ep.question])[0]
    for ev in ep.evidence:
        states.append(qvalue.state_tokens(fast, st))
        st = qvalue.pick(fast, st, type("R", (), {"id": ev.chunk_id, "ordinal": ev.ordinal, "text": ev.text, "heading": ev.heading})())
sa, sb = fast.embed_states(states), slow.embed_states(states)
cs = (sa*sb).sum(1)/np.linalg.norm(sa,axis=1)/np.linalg.norm(sb,axis=1)
print("states", len(states), "cos min %.6f mean %.6f" % (cs.min(), cs.mean()))
same = sum([e.chunk_id for e in x.evidence] == [e.chunk_id for e in y.evidence] for x, y in zip(res["onnx"], res["torch"]))
print("episodes with the same picks:", same, "/", len(ex))
gaps = []
for x, y in zip(res["onnx"], res["torch"]):
    for ex_, ey in zip(x.evidence, y.evidence):
        gaps.append(abs(ex_.q - ey.q))
print("max |dQ| of picks %.2e" % max(gaps))
os.environ["QRAG_DTYPE"] = "int8"
small = load_inference_model(None)
eps8 = run_episodes(small, [e.question for e in ex], example_sources(small, ex), StopRule(4))
same8 = sum([e.chunk_id for e in x.evidence] == [e.chunk_id for e in y.evidence] for x, y in zip(eps8, res["onnx"]))
print("int8 vs fp32 onnx, same picks:", same8, "/", len(ex))
