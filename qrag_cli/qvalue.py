"""Q(s, a), in one place: the state text, the lexical queries, chunk positions, the
candidate set and the scores. `qrag ask`, training rollouts, training targets and loss,
and evaluation all call this module; none computes Q on its own.

    Q(s, a) = <E_s(s), pos(E_a(a))>                                 the paper's dense term
            + w_question * bm25(question -> a) / best of all chunks     exact names, keys, codes
            + w_picked   * bm25(new words of picked -> a) / best left   the next hop's bridge
            + w_order    * order(a)                                     the latest fact wins
            + w_named    * named(a)                      the article the question or a pick names

Dividing by the best score keeps both lexical features in [0, 1] whatever the corpus
size. The question term divides by the best chunk of the whole corpus, picked ones
included: once the question's best match has been picked, a chunk that only shares a
word with it ("grey jug" once "black jug" is taken) keeps its modest score instead of
being scaled up to a full match and outranking the next hop. The picked-chunk term
divides by the best chunk still available: its words come from the picks, which
always hold them.

Once chunks are picked, the question term asks only for the question's words that no
pick holds yet, while a chunk left matches them (`not_held`): "Which has more species,
Angraecum or Aphelandra?" asks for "Angraecum" once the Aphelandra paragraph is picked,
instead of for the Aphelandra paragraph's look-alikes.

"New words" are the words of the picked chunks that the question does not already hold:
the entity a first hop reveals ("kept by Ines Berg") and the second hop must find.

Chunks overlap, so the chunk next to a pick repeats the pick's edge. Both BM25 features
are 0 for such a neighbour when the rest of its text matches none of their query
(`beside_picks`): the same needle is not evidence twice.

The order feature (`order_feature`) is 1 where a story's order points, read sentence by
sentence: the latest fact about what is asked (a sentence holding the question's key
words together), and, for the names in the picked facts (the trail), the latest sentence
about them and the nearest one before each pick on the trail ("Where is the football?":
the last time it changed hands, then where its holder went last before that). It counts
only where the question is answered from one running text: when its best matches sit
under different headings (articles, notes) their order means nothing.

The named feature (`named_feature`) is 1 for a chunk under a heading (its stored heading
path, whatever the file format wrote it as) that the question or a picked chunk names
whole: the article "Carlos Fuentes" rather than "Carlos Fuentes Lemus", which holds
the same words and more of them; after a first hop, the articles it names (0.5 for a
namesake whose qualifier, "(athlete)", they do not hold). BM25 cannot tell these apart;
the encoder often cannot either.

The weights, the dense one included, and every constant the terms read are the model's
(config.json's registry, qspec.py; learned by `qrag train`; a model with two lexical
weights has no order term, with three no named term); a model without them, or
`--lexical off`, is the pure dense Q.

Candidates at each step are the union of the dense top-`pool` (HNSW, or every chunk) and
each lexical feature's top-`pool`, all scored exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from qrag_cli.qfeatures import (
    NAMED,
    ORDER,
    distinct,
    lexical_features,
    pool_size,
    top_positions,
)
from qrag_cli.qspec import QSpec
from qrag_cli.qstate import Candidates, State
from qrag_cli.qtext import QNetwork

# ---- relative chunk positions (rotary), for order-sensitive tasks ------------------------
POSITION_DELTA = 10.0  # distance between intervals cut by picked chunks (paper: 10)
POSITION_SPAN = 9.0  # position range inside one interval (paper: 9)


def relative_positions(ordinals: np.ndarray, picked: Sequence[int], total: int) -> np.ndarray:
    """Position of each candidate relative to the picked chunks, not to the document.

    Picked chunks cut the document into intervals; a candidate sits at
    interval_index * DELTA + SPAN * (fraction of the way through its interval). Absolute
    length never enters, which is what lets 4K-token training carry to 1M tokens.
    """
    cuts = np.asarray(sorted(picked), dtype=np.float64)
    ords = np.asarray(ordinals, dtype=np.float64)
    interval = np.searchsorted(cuts, ords, side="right")
    bounds = np.concatenate([[-1.0], cuts, [float(max(total, 1))]])
    left, right = bounds[interval], bounds[interval + 1]
    fraction = (ords - left) / np.maximum(right - left, 1.0)
    return interval * POSITION_DELTA + POSITION_SPAN * fraction


def rotate(vectors: Any, positions: np.ndarray) -> Any:
    """Rotary encoding: rotate dimension pairs (2j, 2j+1) by position * base^(-2j/d).
    `vectors`: numpy (asking) or a torch tensor (training), [..., dim]; `positions` [...]."""
    dim = vectors.shape[-1]
    freqs = 1000.0 ** (-np.arange(0, dim, 2, dtype=np.float32) / dim)
    angles = np.asarray(positions, dtype=np.float32)[..., None] * freqs
    cos, sin = np.cos(angles), np.sin(angles)
    if isinstance(vectors, np.ndarray):
        out = np.empty_like(vectors)
    else:  # a torch tensor: torch is loaded already (only training passes one)
        import torch

        cos, sin = (torch.from_numpy(x).to(vectors.device) for x in (cos, sin))
        out = torch.empty_like(vectors)
    even, odd = vectors[..., 0::2], vectors[..., 1::2]
    out[..., 0::2] = even * cos - odd * sin
    out[..., 1::2] = even * sin + odd * cos
    return out


# ---- the head and the scores ----------------------------------------------------------------
def positioned(
    model: QNetwork,
    vectors: Any,
    ordinals: np.ndarray,
    picked_ordinals: Sequence[int],
    total: int,
) -> Any:
    """Chunk vectors (numpy or torch) with their position relative to the picked chunks
    (rotary), for models that use positions; unchanged otherwise."""
    if model.cfg.positions != "relative":
        return vectors
    return rotate(vectors, relative_positions(np.asarray(ordinals), list(picked_ordinals), total))


def q_halves(model: QNetwork, states: Any, chunks: Any, features: Any) -> tuple[Any, Any]:
    """Q1, Q2 (the twin critic: each half of the dot product, times the dense weight, plus
    half the lexical terms and half the head's bias); Q = Q1 + Q2. The one formula of Q's
    head, for numpy arrays (asking, rollouts) and torch tensors (training's losses, with
    gradients into the head's parameters). `states` broadcasts against `chunks` [..., dim];
    `features` [..., FEATURES] (a model with fewer lexical weights reads the first ones)."""
    half = chunks.shape[-1] // 2
    q1 = (states[..., :half] * chunks[..., :half]).sum(-1)
    q2 = (states[..., half:] * chunks[..., half:]).sum(-1)
    if features is None or model.lexical_weights is None or model.dense_weight is None:
        return q1, q2
    if isinstance(chunks, np.ndarray):
        weights, dense, bias = model.head_arrays()  # type: ignore[misc]
    else:
        weights, dense = model.lexical_weights.to(q1.device), model.dense_weight.to(q1.device)
        bias = 0.0 if model.head_bias is None else model.head_bias.to(q1.device)
        features = features.to(q1.device, weights.dtype)
    # The bias is the same for every candidate: Q's level, never a pick.
    extra = 0.5 * (features[..., : weights.shape[0]] @ weights) + 0.5 * bias
    return dense * q1 + extra, dense * q2 + extra


def uses_lexical(model: QNetwork) -> bool:
    return model.lexical_weights is not None


def uses_order(model: QNetwork) -> bool:
    """Whether Q has the order term (a third lexical weight)."""
    return model.lexical_weights is not None and model.lexical_weights.shape[0] > ORDER


def uses_named(model: QNetwork) -> bool:
    """Whether Q has the named-title term (a fourth lexical weight)."""
    return model.lexical_weights is not None and model.lexical_weights.shape[0] > NAMED


def without_lexical(model: QNetwork) -> QNetwork:
    """`--lexical off`: the model's encoders under the pure dense Q (an ablation), as a
    model of its own; `model` is left as it is."""
    return model.with_spec(QSpec())


def score_all(
    model: QNetwork,
    state_vec: np.ndarray,
    source: Candidates,
    state: State,
    ids: np.ndarray,
    features: np.ndarray | None,
) -> np.ndarray:
    """Exact Q of chunk ids under one state (numpy: no gradients, no torch)."""
    vecs = positioned(
        model,
        np.ascontiguousarray(source.vectors(ids), dtype=np.float32),
        source.ordinals(ids),
        [r.ordinal for r in state.picked],
        source.total,
    )
    feats = features[ids] if features is not None else None
    q1, q2 = q_halves(model, np.asarray(state_vec, dtype=np.float32), vecs, feats)
    return np.asarray(q1 + q2, dtype=np.float32)


class Ranked(NamedTuple):
    """The top actions of one state, best first, with their exact Q values."""

    ids: np.ndarray
    q: np.ndarray
    bm25_max: tuple[float, float] | None
    """The lexical features' raw maxima over the chunks left (LexicalFeatures.raw_max),
    which the stop rule reads; None for a dense Q."""


def best(
    model: QNetwork, state_vec: np.ndarray, source: Candidates, state: State, k: int
) -> Ranked:
    """The top-k actions under `state`, best first."""
    exclude = state.exclude
    ids = source.propose(state_vec, max(k, pool_size(state)), exclude)
    features, bm25_max = None, None
    if uses_lexical(model):
        lexical = lexical_features(source, state, uses_order(model), uses_named(model))
        features, bm25_max = lexical.values, lexical.raw_max
        ids = distinct(np.concatenate([ids, lexical.proposals]))
    if len(ids) == 0:
        return Ranked(ids.astype(np.int64), np.zeros(0, np.float32), bm25_max)
    q = score_all(model, state_vec, source, state, ids, features)
    return Ranked(*top_k(q, ids, k), bm25_max)


def top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The `k` best (ids, scores), best first; equal scores in `ids` order."""
    order = top_positions(scores, k)
    return ids[order], scores[order]
