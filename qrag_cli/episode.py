"""THE retrieval loop. `ask`, training rollouts and evaluation all run `run_episodes`.

One step: encode the state with E_s; let `qvalue.best` propose and score candidates
exactly (dense and lexical); let the policy pick one; stop when the model's stop rule
judges the evidence complete, on the budget, or when nothing is left.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from qrag_cli import qstate, qvalue
from qrag_cli.chunk import structured
from qrag_cli.lexical import MemoryLexicon
from qrag_cli.qstate import Action, Candidates
from qrag_cli.qtext import QNetwork
from qrag_cli.stop import StepView, StopRule
from qrag_cli.store import ChunkRow, IndexSnapshot
from qrag_cli.types import Episode, Evidence, contextual_text

if TYPE_CHECKING:
    from qrag_cli.datasets import Example

__all__ = ["StopRule"]  # the stop rule lives in stop.py; callers may import it from here

ALTERNATIVES = 5  # top-k kept per step: --explain, the soft value and exploration use it
IN_MEMORY = "episode"  # the `path` of evidence picked from chunks held in memory


@dataclass(frozen=True)
class MemoryChunk:
    """A chunk held in memory (training, evaluation): no file behind it, and its id is
    its position in the episode's chunk list."""

    id: int
    ordinal: int
    text: str
    heading: tuple[str, ...] = ()


class MemoryCandidates:
    """Chunks held in memory (training episodes, evaluation): every chunk is a candidate.

    Each chunk is given as one string and read as an indexed file would be
    (`chunk.structured`): a title line on top becomes its heading path, the rest its text.
    `lexicon` (an in-memory FTS5 table of the texts) is built on first use, or shared."""

    def __init__(
        self, chunks: Sequence[str], vectors: np.ndarray, lexicon: MemoryLexicon | None = None
    ) -> None:
        parts = [structured(c) for c in chunks]
        self.headings = [h for h, _ in parts]
        self.texts = [t for _, t in parts]
        self._vectors = np.asarray(vectors, dtype=np.float32)
        self._lexicon = lexicon

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def total(self) -> int:
        return len(self.texts)

    @property
    def id_space(self) -> int:
        return len(self.texts)

    def ordinals(self, ids):
        return np.asarray(ids)

    def propose(self, state, k, exclude):
        ids = np.arange(len(self.texts))
        if exclude:
            ids = ids[~np.isin(ids, np.fromiter(exclude, np.int64))]
        return ids

    def vectors(self, ids):
        return self._vectors[ids]

    def bm25(self, words):
        if self._lexicon is None:
            self._lexicon = MemoryLexicon(self.texts, self.headings)
        return self._lexicon.bm25(words)

    def rows(self, ids) -> list[MemoryChunk]:
        return [
            MemoryChunk(id=int(i), ordinal=int(i), text=self.texts[i], heading=self.headings[i])
            for i in ids
        ]


def example_sources(
    model: QNetwork, examples: Sequence[Example], cache: dict[str, np.ndarray] | None = None
) -> list[MemoryCandidates]:
    """Each example's own chunks, embedded with E_a in one batch as `qrag index` would:
    heading path and text together (chunk.contextual_text).

    `cache` maps chunk string to its vector, for an E_a that does not change (filled here)."""
    texts = [c for ex in examples for c in ex.chunks]
    if cache is None:
        vectors = model.embed_chunks([_embedded(t) for t in texts])
    else:
        missing = list(dict.fromkeys(t for t in texts if t not in cache))
        if missing:
            embedded = model.embed_chunks([_embedded(t) for t in missing])
            cache.update(zip(missing, embedded, strict=True))
        vectors = np.stack([cache[t] for t in texts])
    sources, offset = [], 0
    for ex in examples:
        sources.append(MemoryCandidates(ex.chunks, vectors[offset : offset + len(ex.chunks)]))
        offset += len(ex.chunks)
    return sources


def _embedded(chunk: str) -> str:
    return contextual_text(*structured(chunk))


class IndexCandidates:
    """The on-disk index: HNSW and FTS5 propose, stored exact vectors decide (or every
    chunk, `exact`).

    A failed HNSW search falls back to every chunk for as long as this object lives (one
    snapshot): `notify` (the CLI passes its stderr log) is told once, and `fallback` keeps
    why. Library code never prints, so without `notify` only `fallback` says so. The next
    snapshot (a new `qrag ask`, or `qrag mcp` after the index changed) tries the graph
    again."""

    ROWS_KEPT = 4096  # chunk rows remembered (a few episodes' candidates, ~3 MB)

    def __init__(
        self,
        snapshot: IndexSnapshot,
        exact: bool = False,
        pool: int = 0,
        ef: int = 256,
        notify: Callable[[str], None] | None = None,
    ) -> None:
        self.snapshot = snapshot
        self.exact = exact  # asked for (--exact): every chunk is a candidate
        self.fallback: str | None = None  # why the HNSW graph was given up, if it was
        self.pool = pool  # HNSW candidates rescored per step, beyond Q's own (qvalue.best)
        self.ef = ef
        self._notify = notify
        self._live: np.ndarray | None = None
        self._ordinals: np.ndarray | None = None
        self._rows: OrderedDict[int, ChunkRow] = OrderedDict()  # oldest first

    def __len__(self) -> int:
        return self.snapshot.n_chunks

    @property
    def total(self) -> int:
        return self.snapshot.n_chunks

    @property
    def id_space(self) -> int:
        return self.snapshot.n_vectors

    def ordinals(self, ids):
        if self._ordinals is None:
            self._ordinals = self.snapshot.ordinal_table()
        return self._ordinals[np.asarray(ids)]

    def vectors(self, ids):
        return np.asarray(self.snapshot.vectors[ids], dtype=np.float32)

    def bm25(self, words):
        return self.snapshot.bm25(words)

    def propose(self, state, k, exclude):
        if not self.exact and self.fallback is None:
            want = min(max(k, self.pool) + len(exclude), self.snapshot.n_chunks)
            if want == 0:
                return np.zeros(0, np.int64)
            hnsw = self.snapshot.hnsw
            hnsw.set_ef(max(self.ef, want))
            try:
                labels, _ = hnsw.knn_query(state[None, :], k=want)
                return np.array([i for i in labels[0] if int(i) not in exclude], dtype=np.int64)
            except RuntimeError as exc:
                # hnswlib reaches fewer than `want` live chunks: holes after many deletions,
                # or a damaged graph. Every chunk, scored exactly, gives the right answer
                # (slower); the graph is not asked again while this snapshot lives.
                self.fallback = str(exc)
                where = self.snapshot.index_dir
                if self._notify is not None:
                    self._notify(
                        f"note: HNSW search failed on index {where} ({exc}); searching "
                        "every chunk exactly instead (slower, same results) until "
                        "the index is opened again; if this repeats, `qrag index "
                        f"--index {where}` repairs a damaged graph"
                    )
        if self._live is None:
            self._live = self.snapshot.live_ids()
        ids = self._live
        if exclude:
            ids = ids[~np.isin(ids, np.fromiter(exclude, np.int64))]
        return ids

    def rows(self, ids) -> list[ChunkRow]:
        # Remembered: an episode reads the same candidates' rows at every step (features,
        # the order term, the overlap rule), and a snapshot's chunks cannot change.
        want = [int(i) for i in ids]
        missing = [i for i in dict.fromkeys(want) if i not in self._rows]
        fetched = {r.id: r for r in self.snapshot.chunks(missing)} if missing else {}
        out = [fetched.get(i) or self._rows[i] for i in want]
        self._rows.update(fetched)
        while len(self._rows) > self.ROWS_KEPT:
            self._rows.popitem(last=False)
        return out


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


def _location(row: Action) -> tuple[str, int, int]:
    """(path, start line, end line) of the evidence: a stored chunk's file and lines; a
    chunk held in memory has no file."""
    if isinstance(row, ChunkRow):
        return row.path, row.start_line, row.end_line
    return IN_MEMORY, 0, 0


def run_episodes(
    model: QNetwork,
    questions: Sequence[str],
    sources: Sequence[Candidates],
    stop: StopRule,
    policy: Policy = greedy,
    alternatives: int = ALTERNATIVES,
    timings: dict[str, float] | None = None,
) -> list[Episode]:
    """Run one episode per question, batched: all live states are encoded together."""
    n = len(questions)
    states = qstate.start(model, questions)
    evidence: list[list[Evidence]] = [[] for _ in range(n)]
    stops: list[str | None] = [None] * n
    question_vecs: list[np.ndarray | None] = [None] * n  # the first step's state vectors
    count_probs: list[np.ndarray | None] = [None] * n
    clock = timings if timings is not None else {}
    for step in range(stop.max_steps):
        live = [i for i in range(n) if stops[i] is None]
        if not live:
            break
        t0 = time.perf_counter()
        state_vecs = model.embed_states([qstate.state_tokens(model, states[i]) for i in live])
        t1 = time.perf_counter()
        for row, i in enumerate(live):
            if step == 0:
                question_vecs[i] = state_vecs[row]
                count_probs[i] = stop.count_probs(state_vecs[row])
            ids, q, lexical = qvalue.best(
                model, state_vecs[row], sources[i], states[i], max(alternatives, 1)
            )
            if len(ids) == 0:
                stops[i] = "exhausted"
                continue
            choice = policy(q)
            first_q = evidence[i][0].q if evidence[i] else None
            if stop.fires(StepView(step, q, first_q, lexical, count_probs[i]), choice):
                stops[i] = "complete"
                continue
            chosen = sources[i].rows([ids[choice]])[0]
            states[i] = qstate.pick(model, states[i], chosen)
            path, start_line, end_line = _location(chosen)
            evidence[i].append(
                Evidence(
                    step=step + 1,
                    q=float(q[choice]),
                    chunk_id=chosen.id,
                    path=path,
                    start_line=start_line,
                    end_line=end_line,
                    text=chosen.text,
                    heading=chosen.heading,
                    ordinal=chosen.ordinal,
                    alternatives=tuple(
                        (int(a), float(b))
                        for a, b in zip(ids, q, strict=True)
                        if int(a) != chosen.id
                    ),
                    bm25_max=lexical,
                )
            )
        t2 = time.perf_counter()
        clock["encode_ms"] = clock.get("encode_ms", 0.0) + (t1 - t0) * 1000
        clock["search_ms"] = clock.get("search_ms", 0.0) + (t2 - t1) * 1000
        clock["steps"] = clock.get("steps", 0) + 1
    more = _more_expected(
        model, states, evidence, sources, stops, stop, max(alternatives, 1), clock, count_probs
    )
    return [
        Episode(
            question=questions[i],
            evidence=evidence[i],
            stop=stops[i] or "budget",
            more_expected=more[i],
            question_vec=question_vecs[i],
        )
        for i in range(n)
    ]


def _more_expected(
    model: QNetwork,
    states: Sequence[qstate.State],
    evidence: Sequence[Sequence[Evidence]],
    sources: Sequence[Candidates],
    stops: Sequence[str | None],
    stop: StopRule,
    k: int,
    clock: dict[str, float],
    count_probs: Sequence[np.ndarray | None],
) -> list[bool | None]:
    """For a rule that can stop: would the best next action still have been taken at
    step `max_steps` + 1? One more state encoding and scoring for the episodes the budget
    ended; it only reads the final states, so the evidence stays as it is."""
    if not stop.active:
        return [None] * len(stops)
    more: list[bool | None] = [False] * len(stops)
    ended = [i for i, why in enumerate(stops) if why is None]
    if not ended:
        return more
    t0 = time.perf_counter()
    state_vecs = model.embed_states([qstate.state_tokens(model, states[i]) for i in ended])
    t1 = time.perf_counter()
    for row, i in enumerate(ended):
        ids, q, lexical = qvalue.best(model, state_vecs[row], sources[i], states[i], k)
        first_q = evidence[i][0].q if evidence[i] else None
        view = StepView(stop.max_steps, q, first_q, lexical, count_probs[i])
        more[i] = len(ids) > 0 and not stop.fires(view)
    clock["encode_ms"] = clock.get("encode_ms", 0.0) + (t1 - t0) * 1000
    clock["search_ms"] = clock.get("search_ms", 0.0) + (time.perf_counter() - t1) * 1000
    return more
