"""THE retrieval loop. `ask`, training rollouts and evaluation all run `run_episodes`.

One step: encode the state (question + picked chunks in document order) with E_s; take
candidates (HNSW top-K then exact rescoring, or brute force); let the policy pick one;
stop on the budget, on the calibrated threshold, or when nothing is left.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from qrag_cli.model import QModel, relative_positions, rotate
from qrag_cli.store import ChunkRow, IndexReader
from qrag_cli.types import Episode, Evidence

Transform = Callable[[np.ndarray, np.ndarray], np.ndarray]
ALTERNATIVES = 5  # top-k kept per step: --explain, the soft value and exploration use it


class Candidates(Protocol):
    """Where an episode's actions come from; scores are exact Q values."""

    def search(self, state: np.ndarray, k: int, exclude: Collection[int],
               transform: Transform | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k chunk ids not in `exclude`, with their Q values, best first.

        `transform(ids, vectors)` adjusts candidate vectors before scoring (positions).
        """
        ...

    def ordinals(self, ids: np.ndarray) -> np.ndarray:
        """Document-order positions of chunk ids."""
        ...

    @property
    def total(self) -> int:
        """Number of ordinal slots (chunks in the document/corpus)."""
        ...

    def rows(self, ids: Sequence[int]) -> list[ChunkRow]:
        ...

    def __len__(self) -> int:
        ...


def _top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if len(scores) > k:
        part = np.argpartition(-scores, k - 1)[:k]
        scores, ids = scores[part], ids[part]
    order = np.argsort(-scores, kind="stable")
    return ids[order], scores[order]


class MemoryCandidates:
    """Chunks held in memory (training episodes, evaluation): brute-force exact scores."""

    def __init__(self, texts: Sequence[str], vectors: np.ndarray, path: str = "episode") -> None:
        self.texts = list(texts)
        self.vectors = np.asarray(vectors, dtype=np.float32)
        self.path = path

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def total(self) -> int:
        return len(self.texts)

    def ordinals(self, ids):
        return np.asarray(ids)

    def search(self, state, k, exclude, transform=None):
        ids = np.arange(len(self.vectors))
        vectors = transform(ids, self.vectors) if transform else self.vectors
        scores = vectors @ state
        if exclude:
            keep = np.ones(len(scores), dtype=bool)
            keep[list(exclude)] = False
            scores, ids = scores[keep], ids[keep]
        return _top_k(scores, ids, k)

    def rows(self, ids):
        return [ChunkRow(id=int(i), path=self.path, seq=int(i), ordinal=int(i), start_line=0,
                         end_line=0, n_tokens=0, text=self.texts[i]) for i in ids]


class IndexCandidates:
    """The on-disk index: HNSW proposes, stored exact vectors decide (or brute force)."""

    def __init__(self, reader: IndexReader, exact: bool = False, pool: int = 64,
                 ef: int = 256) -> None:
        self.reader = reader
        self.exact = exact
        self.pool = pool  # HNSW candidates rescored per step
        self.ef = ef
        self._live: np.ndarray | None = None
        self._ordinals: np.ndarray | None = None

    def __len__(self) -> int:
        return self.reader.n_chunks

    @property
    def total(self) -> int:
        return self.reader.n_chunks

    def ordinals(self, ids):
        if self._ordinals is None:
            self._ordinals = self.reader.ordinal_table()
        return self._ordinals[np.asarray(ids)]

    def _score(self, ids, state, transform):
        vecs = np.asarray(self.reader.vectors[ids], dtype=np.float32)
        if transform is not None:
            vecs = transform(ids, vecs)
        return vecs @ state

    def search(self, state, k, exclude, transform=None):
        if self.exact:
            if self._live is None:
                self._live = self.reader.live_ids()
            ids = self._live
            scores = self._score(ids, state, transform) if len(ids) else np.zeros(0, np.float32)
            if exclude:
                keep = ~np.isin(ids, np.fromiter(exclude, np.int64))
                ids, scores = ids[keep], scores[keep]
            return _top_k(scores, ids, k)
        want = min(max(k, self.pool) + len(exclude), self.reader.n_chunks)
        if want == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        hnsw = self.reader.hnsw
        hnsw.set_ef(max(self.ef, want))
        try:
            labels, _ = hnsw.knn_query(state[None, :], k=want)
        except RuntimeError:  # graph holes after many deletions: fall back to brute force
            self.exact = True
            return self.search(state, k, exclude, transform)
        ids = np.array([i for i in labels[0] if int(i) not in exclude], dtype=np.int64)
        return _top_k(self._score(ids, state, transform), ids, k)  # exact rescoring

    def rows(self, ids):
        return self.reader.chunks([int(i) for i in ids])


Policy = Callable[[np.ndarray], int]
"""Given the Q values of the top candidates (best first), the index of the one to take."""


def greedy(q: np.ndarray) -> int:
    return 0


def boltzmann(alpha: float, rng: np.random.Generator) -> Policy:
    """Sample among the top candidates with probability ~ exp((Q - max Q) / alpha)."""

    def pick(q: np.ndarray) -> int:
        logits = (q - q.max()) / max(alpha, 1e-8)
        probs = np.exp(logits)
        return int(rng.choice(len(q), p=probs / probs.sum()))

    return pick


@dataclass
class StopRule:
    max_steps: int = 4
    threshold: float | None = None
    """Stop before a pick whose Q is below this (never before the first pick)."""


def _position_transform(source: Candidates, picked_ordinals: list[int]) -> Transform:
    def transform(ids: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        pos = relative_positions(source.ordinals(ids), picked_ordinals, source.total)
        return rotate(torch.from_numpy(np.ascontiguousarray(vectors)),
                      torch.from_numpy(pos)).numpy()

    return transform


def run_episodes(
    model: QModel,
    questions: Sequence[str],
    sources: Sequence[Candidates],
    stop: StopRule,
    policy: Policy = greedy,
    alternatives: int = ALTERNATIVES,
    timings: dict[str, float] | None = None,
) -> list[Episode]:
    """Run one episode per question, batched: all live states are encoded together."""
    n = len(questions)
    question_ids = model.chunk_ids(questions, model.cfg.question_cap)
    picked: list[list[ChunkRow]] = [[] for _ in range(n)]
    evidence: list[list[Evidence]] = [[] for _ in range(n)]
    stops: list[str | None] = [None] * n
    token_cache: list[dict[int, list[int]]] = [{} for _ in range(n)]
    clock = timings if timings is not None else {}
    for step in range(stop.max_steps):
        live = [i for i in range(n) if stops[i] is None]
        if not live:
            break
        t0 = time.perf_counter()
        states = []
        for i in live:
            ordered = sorted(picked[i], key=lambda r: r.ordinal)  # document order
            states.append(model.state_ids(question_ids[i], [token_cache[i][r.id] for r in ordered]))
        state_vecs = model.embed_states(states)
        t1 = time.perf_counter()
        for row, i in enumerate(live):
            exclude = {r.id for r in picked[i]}
            transform = (_position_transform(sources[i], [r.ordinal for r in picked[i]])
                         if model.cfg.positions == "relative" else None)
            ids, q = sources[i].search(state_vecs[row], max(alternatives, 1), exclude, transform)
            if len(ids) == 0:
                stops[i] = "exhausted"
                continue
            choice = policy(q)
            if step > 0 and stop.threshold is not None and q[choice] < stop.threshold:
                stops[i] = "threshold"
                continue
            chosen = sources[i].rows([ids[choice]])[0]
            picked[i].append(chosen)
            token_cache[i][chosen.id] = model.chunk_ids([chosen.text], model.cfg.chunk_cap)[0]
            evidence[i].append(Evidence(
                step=step + 1, q=float(q[choice]), chunk_id=chosen.id, path=chosen.path,
                start_line=chosen.start_line, end_line=chosen.end_line, text=chosen.text,
                ordinal=chosen.ordinal,
                alternatives=tuple((int(a), float(b)) for a, b in zip(ids, q, strict=True)
                                   if int(a) != chosen.id)))
        t2 = time.perf_counter()
        clock["encode_ms"] = clock.get("encode_ms", 0.0) + (t1 - t0) * 1000
        clock["search_ms"] = clock.get("search_ms", 0.0) + (t2 - t1) * 1000
        clock["steps"] = clock.get("steps", 0) + 1
    return [Episode(question=questions[i], evidence=evidence[i], stop=stops[i] or "budget")
            for i in range(n)]
