"""What Q reads: the chunks it can pick (`Action`, read with their heading), where the
candidates of a step come from (`Candidates`), and the state (the question and the picks so
far, in the method's layout: `state_tokens`). Q itself is qvalue.py; its lexical features
are qfeatures.py."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from qrag_cli.qspec import QSpec
from qrag_cli.qtext import QNetwork
from qrag_cli.types import contextual_text


class Action(Protocol):
    """What Q reads of a chunk it can pick: a stored row of the index (store.ChunkRow) or
    a chunk held in memory for training and evaluation (episode.MemoryChunk)."""

    @property
    def id(self) -> int:
        """Chunk id: indexes `Candidates.vectors` and `bm25`."""
        ...

    @property
    def ordinal(self) -> int:
        """Position in document (corpus) order: orders the state, places candidates."""
        ...

    @property
    def text(self) -> str: ...

    @property
    def heading(self) -> tuple[str, ...]:
        """The heading path of the section the chunk was cut from (() for none)."""
        ...


def read(row: Action) -> str:
    """What Q reads of a picked chunk (E_s reads it in the state; the BM25 queries, the
    trail and the named term take their words from it): its own section's title, then its
    text. The enclosing headings (a notes file's title, a page's <h1>) are left out: every
    sibling section shares them, so as next-hop words they point back into the same file,
    not to the next fact; in the state they spend the pick's token cap. Chosen on
    validation (BENCHMARKS.md "Layouts"). E_a still embeds the whole path at index time
    (types.contextual_text)."""
    return contextual_text(row.heading[-1:], row.text)


class Candidates(Protocol):
    """Where an episode's actions come from. Chunk ids index `vectors` and `bm25`."""

    def propose(self, state: np.ndarray, k: int, exclude: Collection[int]) -> np.ndarray:
        """Up to `k` chunk ids not in `exclude` that the dense term ranks high (any order)."""
        ...

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """Exact E_a vectors of chunk ids, float32 [len(ids), dim]."""
        ...

    def bm25(self, words: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(chunk ids, BM25 scores) of every chunk matching any of `words`."""
        ...

    @property
    def id_space(self) -> int:
        """One more than the largest chunk id."""
        ...

    @property
    def total(self) -> int:
        """Number of ordinal slots (chunks in the document/corpus)."""
        ...

    def ordinals(self, ids: np.ndarray) -> np.ndarray:
        """Document-order positions of chunk ids."""
        ...

    def rows(self, ids: Sequence[int]) -> Sequence[Action]:
        """The chunks `ids`, in that order."""
        ...


# ---- the state ---------------------------------------------------------------------------
@dataclass(frozen=True)
class State:
    """Question plus picked chunks (in pick order), as text and as encoder token ids."""

    question: str
    question_ids: list[int]
    picked: tuple[Action, ...] = ()
    picked_ids: tuple[list[int], ...] = ()
    spec: QSpec = field(default_factory=QSpec)  # the model's Q registry: its constants

    def then(self, row: Action, ids: list[int]) -> State:
        return replace(self, picked=(*self.picked, row), picked_ids=(*self.picked_ids, ids))

    @property
    def exclude(self) -> set[int]:
        return {r.id for r in self.picked}


def start(model: QNetwork, questions: Sequence[str]) -> list[State]:
    ids = model.chunk_ids(questions, model.cfg.question_cap)
    spec = model.cfg.spec()
    return [State(q, i, spec=spec) for q, i in zip(questions, ids, strict=True)]


def pick(model: QNetwork, state: State, row: Action) -> State:
    """The state after taking `row`."""
    return state.then(row, model.chunk_ids([read(row)], model.cfg.chunk_cap)[0])


def state_tokens(model: QNetwork, state: State) -> list[int]:
    """E_s's input: [CLS] question [SEP] chunk [SEP] chunk ... [SEP], the picked chunks in
    document order (the method's state layout), each part capped, the whole cut to the
    encoder's length."""
    cls_id, sep_id = model.tokenizer.cls_token_id, model.tokenizer.sep_token_id
    ids = [cls_id, *state.question_ids[: model.cfg.question_cap], sep_id]
    for j in sorted(range(len(state.picked)), key=lambda j: state.picked[j].ordinal):
        ids.extend(state.picked_ids[j][: model.cfg.chunk_cap])
        ids.append(sep_id)
    if len(ids) > model.cfg.state_max_tokens:
        ids = [*ids[: model.cfg.state_max_tokens - 1], sep_id]
    return ids
