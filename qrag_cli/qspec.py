"""What a model's Q computes, as its config.json records it: a registry of named,
versioned parts, so editing code can never silently change what a trained model computes.

    "q": {
      "format": "qrag-q/1",
      "terms": [{"name": "dense", "version": 1, "weight": 1.0, "params": {"pool": 64}},
                {"name": "question_bm25", "version": 1, "weight": 0.3, "params": {...}},
                ...],
      "head": {"name": "linear", "version": 1, "bias": 0.0}
    }

Each term's `weight` multiplies its score in Q (qvalue.q_halves); `params` are every
constant its code reads (qvalue reads them from the model, never from module globals).
`version` names the code: whoever changes what a part computes bumps its version in
PARTS (tests/test_qspec.py pins each part's output on a fixture), and a model recorded
with another version, an unknown part or an unknown parameter is refused at load with
the fix. The head says how the terms combine: "linear", the weighted sum plus a constant
`bias`, whose weights (the dense one included) and bias `qrag train` learns. The bias moves
every candidate's Q alike, so it never changes a pick; it lets Q-learning, which regresses
Q onto returns, match their level without bending the term weights to do it. A small MLP
over the same scores was measured and not kept: on held-out training states it ranked the
right next pick as often as the learned linear head (BENCHMARKS.md "What each part of Q
adds").

Folders written before the registry (a `lexical` list and `lexical_query`) load as the
version-1 parts they computed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

FORMAT = "qrag-q/1"
# The lexical terms, in the order of qvalue's feature columns (and of `weights`).
LEXICAL = ("question_bm25", "picked_bm25", "order", "named")
# Every part the code computes: name -> (version, default parameters). The parameters
# are the constants each part's code reads (qfeatures.py, qvalue.py, lexical.py).
PARTS: dict[str, tuple[int, dict[str, object]]] = {
    # <E_s(s), E_a(a)>; `pool`: candidates each signal (HNSW, each BM25 feature) proposes.
    "dense": (1, {"pool": 64}),
    # BM25 of the question's words (and names whole) / best chunk of the corpus;
    # `open_words`: once some are held by picks, ask only the rest (qfeatures.not_held).
    # `max_terms`, `heading_weight`: the FTS5 query (lexical.py), shared by both BM25 terms.
    "question_bm25": (1, {"open_words": True, "max_terms": 48, "heading_weight": 1.0}),
    # BM25 of the picks' new words / best chunk left; `query`: "chunk" or "names"
    # (qfeatures.lexical_queries); `min_shared`: characters of overlap that make a chunk
    # beside a pick repeat it (qfeatures.beside_picks; 0 turns that rule off).
    "picked_bm25": (1, {"query": "names", "min_shared": 8}),
    # The latest fact in running text (qfeatures.order_feature).
    "order": (1, {"scan_share": 0.5, "key_pool": 8}),
    # A heading the question or a pick names whole; `namesake` for a qualifier not held.
    "named": (1, {"namesake": 0.5}),
}
HEADS = {"linear": 1}
# Parameters the code reads from its own constant, not from the model (the FTS5 query
# is shared with `qrag search`): recorded, and a model with another value is refused.
FIXED = {("question_bm25", "max_terms"), ("question_bm25", "heading_weight")}


@dataclass(frozen=True)
class QSpec:
    """The parsed registry. `weights`: the lexical terms' weights (a prefix of LEXICAL:
    two, three or four), None for the paper's pure dense Q."""

    weights: tuple[float, ...] | None = None
    dense_weight: float = 1.0
    params: dict[str, dict[str, object]] = field(default_factory=dict)
    head: str = "linear"
    bias: float = 0.0

    def param(self, part: str, name: str) -> object:
        return self.params.get(part, {}).get(name, PARTS[part][1][name])

    @property
    def query(self) -> str:
        return str(self.param("picked_bm25", "query"))

    def with_params(self, part: str, **values: object) -> QSpec:
        """The same registry with some of `part`'s parameters changed."""
        params = {**self.params, part: {**self.params.get(part, {}), **values}}
        return replace(self, params=params)

    def terms(self) -> list[str]:
        return ["dense", *LEXICAL[: len(self.weights or ())]]

    def to_json(self) -> dict:
        weights = [self.dense_weight, *(self.weights or ())]
        terms = [
            {
                "name": name,
                "version": PARTS[name][0],
                "weight": w,
                "params": {**PARTS[name][1], **self.params.get(name, {})},
            }
            for name, w in zip(self.terms(), weights, strict=True)
        ]
        head = {"name": self.head, "version": HEADS[self.head], "bias": self.bias}
        return {"format": FORMAT, "terms": terms, "head": head}


def legacy(lexical: list[float] | None, query: str | None) -> QSpec:
    """A folder from before the registry: its `lexical` list and `lexical_query`."""
    params = {"picked_bm25": {"query": query or "chunk"}}
    return QSpec(tuple(lexical) if lexical is not None else None, params=params)


def parse(data: object) -> QSpec:
    """config.json's "q" -> QSpec; ValueError saying what is wrong and the fix."""
    fix = "retrain it with this qrag (`qrag train --base MODEL`) or use the qrag that wrote it"
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"q must be a {FORMAT} registry; {fix}")
    terms, head = data.get("terms"), data.get("head")
    if not isinstance(terms, list) or not terms or not isinstance(head, dict):
        raise ValueError("q needs a list of terms and a head")
    names, weights, params = [], [], {}
    for term in terms:
        if not isinstance(term, dict):
            raise ValueError("each q term must be an object")
        name, version = term.get("name"), term.get("version")
        if name not in PARTS:
            raise ValueError(f"q term {name!r} is unknown to this qrag; {fix}")
        if version != PARTS[name][0]:
            raise ValueError(
                f"q term {name} is version {version!r}, this qrag computes version "
                f"{PARTS[name][0]}; {fix}"
            )
        given = term.get("params", {})
        if not isinstance(given, dict) or (extra := set(given) - set(PARTS[name][1])):
            raise ValueError(f"q term {name} has unknown parameters {sorted(extra or given)}")
        for key, value in given.items():
            if type(value) is not type(PARTS[name][1][key]) and not (
                isinstance(value, int | float) and isinstance(PARTS[name][1][key], float)
            ):
                raise ValueError(
                    f"q term {name} parameter {key} must be like {PARTS[name][1][key]!r}"
                )
            if (name, key) in FIXED and value != PARTS[name][1][key]:
                raise ValueError(
                    f"q term {name} parameter {key} is {value!r}; this qrag computes "
                    f"{PARTS[name][1][key]!r}; {fix}"
                )
        weight = term.get("weight")
        if (
            not isinstance(weight, int | float)
            or isinstance(weight, bool)
            or not math.isfinite(weight)
        ):
            raise ValueError(f"q term {name} needs a finite weight")
        names.append(name)
        weights.append(float(weight))
        params[name] = dict(given)
    expected = ["dense", *LEXICAL][: len(names)]
    if names != expected or len(names) == 2:
        raise ValueError(
            f"q terms must be {', '.join(['dense', *LEXICAL])} in that order, "
            "with at least two lexical terms or none"
        )
    kind, version = head.get("name"), head.get("version")
    if HEADS.get(kind) != version:
        raise ValueError(f"q head {kind!r} version {version!r} is unknown to this qrag; {fix}")
    bias = head.get("bias", 0.0)
    if not isinstance(bias, int | float) or isinstance(bias, bool) or not math.isfinite(bias):
        raise ValueError("q head bias must be a finite number")
    spec = QSpec(tuple(weights[1:]) or None, weights[0], params, kind, float(bias))
    if spec.query not in ("chunk", "names"):
        raise ValueError('q term picked_bm25 query must be "chunk" or "names"')
    return spec
