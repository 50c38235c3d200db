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

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from qrag_cli import lexical
from qrag_cli.qspec import QSpec
from qrag_cli.qtext import QNetwork
from qrag_cli.types import contextual_text

QUESTION, PICKED, ORDER, NAMED = 0, 1, 2, 3  # the lexical feature columns (and weights)
FEATURES = 4


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


def lexical_queries(state: State) -> tuple[list[str], list[str]]:
    """(question words, new words of the picked chunks, latest pick first; a query keeps
    its first lexical.MAX_TERMS words), the new words as the state's query says
    (lexical.PICKED_QUERIES):

    "chunk": every word of the picked chunks the question does not hold. In a long
    document a chunk is mostly other text, so this query is mostly filler, and the
    fact's names can fall behind the cut.
    "names": the question query also asks each of the question's names of several words and
    hyphenated compounds whole (an FTS5 phrase: "Olga Ros" outranks "Olga Ek",
    "brisk-quarry" outranks "brisk-island"); the picked-chunk query holds the names on
    the trail. The trail
    starts as the question's words. Each pick, in pick order, keeps every sentence that
    shares a word with the trail (two words of a name written as several, lexical.name_runs:
    "Alva Nord" is not on the trail of "Sandra Nord"), and its section's title and first
    sentence when it has a heading (`read`; a pick that shares none keeps them all); the names among
    the kept words join the trail, so the next pick follows the name this one revealed. The
    query is the new words of the kept sentences written with a capital, or with letters and
    digits (lexical.names: names, keys, codes; not prose, not bare numbers). Chosen on
    validation (BENCHMARKS.md, "Picked-chunk query"): filler, generic words ("went",
    "number"), the lower-case keys of look-alike facts, numbers repeated by the chunk
    overlap, the names in the opening sentence of a chunk cut from prose (another story's
    fact) and a sentence sharing only a surname with the asked person pulled the next pick
    astray.

    Keeping only the rarest new words (not a mode) measured worse on validation: a
    paragraph's title comes first and is the bridge, and rare words are often the
    picked chunk's own."""
    asked = lexical.terms(state.question)
    known = set(asked)
    if state.spec.query == "names":
        # A name of several words, or words joined by hyphens, is also asked whole (an
        # FTS5 phrase), so a chunk about "Olga Ros" outranks the chunks about "Olga Ek"
        # and "Olga Berg", and "brisk-quarry" outranks "mellow-quarry ... brisk-island".
        # Asking them once more in the heading column alone gained nothing on the layout
        # bench (the named term already favours the chunk under the name): not asked.
        runs = lexical.name_runs(state.question)
        bridge = [w for w in _bridge_words(state, known, runs) if w not in known]
        whole = [*runs, *lexical.compounds(state.question)]
        phrases = list(dict.fromkeys(" ".join(r) for r in whole))
        return [*phrases, *asked], bridge
    seen = lexical.terms(" ".join(read(r) for r in reversed(state.picked)))
    return asked, [w for w in seen if w not in known]


def not_held(state: State, entries: list[str]) -> list[str]:
    """The question query's entries (words and phrases) with a word no picked chunk
    holds yet, when some are held and some not; else []. The question term asks these
    while any chunk left matches them (`lexical_features`): "Angraecum" once the
    Aphelandra paragraph is picked. Chosen on validation: BENCHMARKS.md "Order"."""
    held = set(lexical.terms(" ".join(read(r) for r in state.picked)))
    left = [e for e in entries if not lexical.holds(held, e)]
    return left if len(left) < len(entries) else []


def _bridge_words(state: State, asked: set[str], asked_runs: list[tuple[str, ...]]) -> list[str]:
    """The "names" query before the question's words are taken out."""
    named = lexical.names(" ".join(read(r) for r in state.picked))
    # The trail: the question's words and the names found on it. A name of several words
    # ("Sandra Nord") is followed as a whole: a sentence about "Alva Nord" is not on
    # the trail of "Sandra Nord", and its names would pull the next pick astray.
    runs = set(asked_runs)
    single = asked - {w for r in runs for w in r}
    kept_per_pick = []
    for row in state.picked:
        said = lexical.sentences(read(row))
        words = [lexical.terms(s) for s in said]
        shared = [_on_trail(set(w), single, runs) for w in words]
        # The sentences on the trail, and, under a heading, its section's title and the
        # first sentence after it (`read` puts the title first; they name what the chunk
        # is about); with nothing on the
        # trail, the whole chunk, as "chunk" reads it. A chunk cut from running prose
        # opens with somebody else's sentence, whose names would pull the next pick astray.
        about = 2 if row.heading else 0
        everything = not any(shared)
        kept = []
        for j, ws in enumerate(words):
            if not (everything or shared[j] or j < about):
                continue
            kept.extend(ws)
            long = lexical.name_runs(said[j])
            runs.update(long)
            in_runs = {w for r in long for w in r}
            single.update(w for w in ws if w in named and w not in in_runs)
        kept_per_pick.append(kept)
    ordered = dict.fromkeys(w for kept in reversed(kept_per_pick) for w in kept)
    return [w for w in ordered if w in named]


def _on_trail(words: set[str], single: set[str], runs: set[tuple[str, ...]]) -> bool:
    """A sentence is on the trail when it holds one of its single words, or two words of
    one of its names of several words."""
    return not single.isdisjoint(words) or any(sum(w in words for w in r) >= 2 for r in runs)


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


# ---- features and scores -----------------------------------------------------------------
def lexical_features(
    source: Candidates,
    state: State,
    raw_max: list[float] | None = None,
    order: bool = False,
    named: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """The lexical features of every chunk id under `state` ([id_space, FEATURES], in
    [0, 1]; picked chunks 0): question, picked-chunk, with `order` the order feature and
    with `named` the named feature (else 0; read for the lexical proposals only: a chunk
    whose title the question or a pick names matches their words), and the ids the
    features rank highest (the lexical proposals). `raw_max`,
    when given, receives each BM25 feature's maximum before normalisation (0 when nothing
    matches): how strongly anything left still matches, for the stop rule."""
    features = np.zeros((source.id_space, FEATURES), np.float32)
    if raw_max is not None:
        raw_max[:] = [0.0, 0.0]
    proposals = []
    exclude = np.fromiter(state.exclude, np.int64)
    question_hits: tuple[np.ndarray, np.ndarray] | None = None  # the whole question's
    queries: list[list[str]] = []  # each BM25 feature's query, as asked
    for column, words in enumerate(lexical_queries(state)):
        open_words = column == QUESTION and state.spec.param("question_bm25", "open_words")
        narrow = not_held(state, words) if open_words else []
        ids, scores = source.bm25(narrow or words)
        if narrow and np.isin(ids, exclude).all():
            # The open words match no chunk left ("numbers" asked of needles that say
            # "number"): the whole question stays. One query when they do.
            narrow = []
            ids, scores = source.bm25(words)
        queries.append(narrow or words)
        if column == QUESTION and order:
            question_hits = source.bm25(words) if narrow else (ids, scores)
        whole = scores.max(initial=0.0)  # picked chunks included
        keep = ~np.isin(ids, exclude)
        ids, scores = ids[keep], scores[keep]
        if len(ids) == 0:
            continue
        left = scores.max()
        # The question term against the whole corpus, the picked-chunk term against what is
        # left (module docstring): chosen on validation, BENCHMARKS.md "Question term".
        features[ids, column] = scores / (whole if column == QUESTION else left)
        if raw_max is not None:
            raw_max[column] = float(left)
        proposals.append(ids[top_positions(scores, _pool(state))])
    for chunk_id, rest in beside_picks(source, state, features).items():
        said = set(lexical.terms(rest))
        for column, words in enumerate(queries):
            if not any(lexical.holds(said, e) for e in words):
                features[chunk_id, column] = 0.0
    if order and question_hits is not None:
        features[:, ORDER] = order_feature(source, state, *question_hits)
        # The chunks it points to are candidates whatever their BM25 rank: in a large corpus
        # the latest match can sit below the top pool.
        proposals.append(np.flatnonzero(features[:, ORDER]))
    if named and proposals:
        ids = distinct(np.concatenate(proposals))
        features[ids, NAMED] = named_feature(source, state, ids)
    return features, (np.concatenate(proposals) if proposals else np.zeros(0, np.int64))


def beside_picks(source: Candidates, state: State, features: np.ndarray) -> dict[int, str]:
    """The chunks next to a pick (ordinal one before or after) that a BM25 feature
    matches, each with its text less the whole sentences it shares with the pick: chunks
    overlap, and a neighbour that matches only through picked text it repeats holds
    nothing new. A needle at the edge of a chunk is whole in both chunks; without this,
    the neighbour outranks the next needle ("What are all the special magic numbers for
    cobalt-meadow?" took the same number twice at 1M tokens). The registry's
    picked_bm25 `min_shared` is the shortest shared edge that counts (0: rule off)."""
    least = int(state.spec.param("picked_bm25", "min_shared"))  # type: ignore[call-overload]
    if not state.picked or least == 0:
        return {}
    matched = np.flatnonzero(features[:, : PICKED + 1].any(axis=1))
    if len(matched) == 0:
        return {}
    ords = source.ordinals(matched)
    picked = {r.ordinal: r.text for r in state.picked}
    near = np.fromiter((o + d for o in picked for d in (-1, 1)), np.int64)
    beside = matched[np.isin(ords, near)]
    out = {}
    for row in source.rows(beside.tolist()):
        # The shared edge is cut by tokens, so it can start or end inside a sentence: that
        # sentence is whole only in the neighbour, and stays in its rest.
        rest = row.text
        if (after := picked.get(row.ordinal - 1)) is not None:
            rest = rest[lexical.sentence_start(rest, _shared_edge(after, rest, least)) :]
        if (before := picked.get(row.ordinal + 1)) is not None:
            edge = _shared_edge(rest, before, least)
            rest = rest[: lexical.sentence_end(rest, len(rest) - edge)]
        out[row.id] = rest
    return out


def _shared_edge(first: str, second: str, least: int) -> int:
    """The length of the longest end of `first` that `second` starts with (the text two
    overlapping chunks share), 0 when none or shorter than `least` characters (shorter
    shared edges, "5" or ". ", are chance, not overlap)."""
    if not second:
        return 0
    start = max(0, len(first) - len(second))
    while (i := first.find(second[0], start)) >= 0 and len(first) - i >= least:
        if second.startswith(first[i:]):
            return len(first) - i
        start = i + 1
    return 0


def order_feature(
    source: Candidates, state: State, ids: np.ndarray, scores: np.ndarray
) -> np.ndarray:
    """1 for the chunks a story's order points to, else 0 ([id_space]), read sentence by
    sentence from the question's BM25 matches (`ids`, `scores`, picked chunks included):

    - until one is picked, the latest chunk with a *fact about what is asked*: a sentence
      holding the question's key words (`key_words`: "green ball" together, not "green
      map ... grey ball"); once one is picked, the older ones are not pointed to;
    - the *trail* (`order_trail`): the names in the picked facts about what is asked, and in
      the picked sentences that hold those names, in turn. The latest chunk with a sentence on
      the trail that is not itself a fact about what is asked, and the nearest such chunk
      before each pick on the trail.

    "Where is the green ball?" over a story: the last fact about the green ball says who
    dropped it or holds it ("Per Nord left the green ball."); where Per Nord went last
    before that ("Per Nord travelled to the office.", not "Per Nord took the green ball
    there.") is where it is; if he still holds it, where he went last. Only for a question
    answered from one running text: when its best matches sit under more than one heading
    (articles, notes, whatever their format) their order means nothing, and counting it
    cost real HotpotQA/MuSiQue questions on validation (BENCHMARKS.md "Order").

    The registry's order parameters: `key_pool`, how many of the question's best matches
    the key words are read from (and whose headings gate the term); `scan_share`, the
    share of the best score a match needs for its sentences to be read (a fact holding
    the key words together scores near the best; the share bounds how many texts a step
    reads in a large corpus)."""
    out = np.zeros(source.id_space, np.float32)
    if len(ids) == 0:
        return out
    key_pool = int(state.spec.param("order", "key_pool"))  # type: ignore[call-overload]
    scan_share = float(state.spec.param("order", "scan_share"))  # type: ignore[arg-type]
    top = source.rows(ids[top_positions(scores, key_pool)].tolist())
    if len({r.heading for r in top}) > 1:
        # The question is answered from articles or notes (its best matches sit under
        # different headings): their order means nothing. A story kept under one heading
        # still counts. Chosen on validation: BENCHMARKS.md "Order, sentence by sentence".
        return out
    best = [r.text for r in top]
    asked = set(lexical.terms(state.question))
    key = key_words(asked, best)
    if not key:
        return out
    exclude = np.fromiter(state.exclude, np.int64)

    def about_asked(words: set[str]) -> bool:
        return key <= words

    names, runs, on_trail_picks, answered = order_trail(state, asked, key)
    left = ~np.isin(ids, exclude)
    near = ids[left & (scores >= scan_share * scores.max())]
    sentences_of = _sentence_reader(source, state.picked)
    if not answered:
        found = _latest_running(source, near, about_asked, None, sentences_of)
        if found is not None:
            out[found] = 1.0
    if not (names or runs):
        return out
    trail_ids, _ = source.bm25([*(" ".join(r) for r in runs), *names])
    trail_ids = trail_ids[~np.isin(trail_ids, exclude)]

    def on_trail(words: set[str]) -> bool:
        return _on_trail(words, names, runs) and not about_asked(words)

    for before in [None, *(r.ordinal for r in on_trail_picks)]:
        found = _latest_running(source, trail_ids, on_trail, before, sentences_of)
        if found is not None:
            out[found] = 1.0
    return out


def named_feature(source: Candidates, state: State, ids: np.ndarray) -> np.ndarray:
    """1 for each chunk of `ids` under a heading (any element of its stored heading path)
    that the question or a picked chunk names whole, else 0: the
    article a question or a first hop names ("Who was born later, Carlos Fuentes or
    Christa Wolf?": the article "Carlos Fuentes", not "Carlos Fuentes Lemus" that also
    holds both words). 0.5 when the title's qualifier in parentheses says what they do
    not ("Bob Clark (athlete)" for "Which director worked in more countries, Robert
    Butler or Bob Clark?", where "Robert Butler (director)" gets 1): another namesake.
    Chosen on validation: BENCHMARKS.md "Named titles". The half is the registry's named
    `namesake`."""
    namesake = float(state.spec.param("named", "namesake"))  # type: ignore[arg-type]
    said = lexical.Namings([state.question, *(read(r) for r in state.picked)])
    out = np.zeros(len(ids), np.float32)
    for j, row in enumerate(source.rows(ids.tolist())):
        for title in row.heading:
            if said.names(title):
                held = said.vocabulary.issuperset(lexical.qualifier(title))
                out[j] = max(out[j], 1.0 if held else namesake)
    return out


def key_words(asked: set[str], best: Sequence[str]) -> set[str]:
    """The question's words (`asked`) that one sentence of its best BM25 matches (`best`)
    holds together, the most of them: what a fact about what is asked must hold. "Where
    is the green ball?" -> {green, ball}; "Where was the football before the kitchen?" ->
    {football} when no sentence holds both (the best match is about the rarer word)."""
    key: set[str] = set()
    for text in best:
        for sentence in lexical.sentences(text):
            held = asked & set(lexical.terms(sentence))
            if len(held) > len(key):
                key = held
    return key


def order_trail(
    state: State, asked: set[str], key: set[str]
) -> tuple[set[str], set[tuple[str, ...]], list[Action], bool]:
    """(single names, names of several words, the picks on the trail, whether a fact about
    what is asked is picked). The trail: the names in the picked sentences that hold the
    `key` words, then in the picked sentences that hold one of those names, in pick order;
    the question's own words (`asked`) are not names to follow. "Where was the football
    before the kitchen?": the football's holder, then where the holder went before the
    kitchen."""
    names: set[str] = set()
    runs: set[tuple[str, ...]] = set()
    on_trail_picks, answered = [], False
    for row in state.picked:
        on_trail = False
        for sentence in lexical.sentences(row.text):
            words = set(lexical.terms(sentence))
            about = key <= words
            if not (about or _on_trail(words, names, runs)):
                continue
            on_trail, answered = True, answered or about
            long = [r for r in lexical.name_runs(sentence) if not asked.issuperset(r)]
            runs.update(long)
            in_runs = {w for r in long for w in r}
            names.update(lexical.names(sentence) - in_runs - asked)
        if on_trail:
            on_trail_picks.append(row)
    return names, runs, on_trail_picks, answered


def _sentence_reader(
    source: Candidates, picked: Sequence[Action]
) -> Callable[[list[int]], list[list[set[str]]]]:
    """Chunk ids -> the word sets of their sentences that count for the order term, each
    chunk read once per step however many pointers scan it, never a `picked` sentence
    (chunks overlap: the next chunk repeats a picked fact, and it is no new fact)."""
    seen = {s.strip() for r in picked for s in lexical.sentences(r.text)}
    cache: dict[int, list[set[str]]] = {}

    def sentences_of(ids: list[int]) -> list[list[set[str]]]:
        missing = [i for i in ids if i not in cache]
        for row in source.rows(missing) if missing else ():
            said = lexical.sentences(row.text)
            cache[row.id] = [set(lexical.terms(s)) for s in said if s.strip() not in seen]
        return [cache[i] for i in ids]

    return sentences_of


def _latest_running(
    source: Candidates,
    ids: np.ndarray,
    holds: Callable[[set[str]], bool],
    before: int | None,
    sentences_of: Callable[[list[int]], list[list[set[str]]]],
) -> int | None:
    """The latest of `ids` (only those before ordinal `before`, if given) with a sentence
    whose words `holds` accepts, as `sentences_of` gives them (`_sentence_reader`), or None. Chunks
    are read latest first, a few at a time: in a large corpus thousands of chunks can
    match, and the latest usually qualifies."""
    ords = source.ordinals(ids)
    order = np.argsort(-ords, kind="stable")
    if before is not None:
        order = order[ords[order] < before]
    for start in range(0, len(order), 16):
        batch = ids[order[start : start + 16]].tolist()
        for chunk_id, sentences in zip(batch, sentences_of(batch), strict=True):
            if any(holds(words) for words in sentences):
                return chunk_id
    return None


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
    """`--lexical off`: the same model with the pure dense Q (an ablation)."""
    model.set_spec(QSpec())
    return model


def _pool(state: State) -> int:
    return int(state.spec.param("dense", "pool"))  # type: ignore[call-overload]


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


def best(
    model: QNetwork,
    state_vec: np.ndarray,
    source: Candidates,
    state: State,
    k: int,
    bm25_max: list[float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The top-k actions under `state` with their exact Q values, best first. `bm25_max`
    receives the lexical features' raw maxima (see lexical_features), for a lexical Q."""
    exclude = state.exclude
    ids = source.propose(state_vec, max(k, _pool(state)), exclude)
    features = None
    if uses_lexical(model):
        features, lexical_ids = lexical_features(
            source, state, bm25_max, uses_order(model), uses_named(model)
        )
        ids = distinct(np.concatenate([ids, lexical_ids]))
    if len(ids) == 0:
        return ids.astype(np.int64), np.zeros(0, np.float32)
    q = score_all(model, state_vec, source, state, ids, features)
    return top_k(q, ids, k)


def distinct(ids: np.ndarray) -> np.ndarray:
    """np.unique of 1-d ids (sorted, each once), without np.unique's first-call import of
    numpy.ma (~40 ms of every cold `qrag ask`)."""
    ids = np.sort(ids)
    return ids[np.concatenate(([True], ids[1:] != ids[:-1]))] if len(ids) else ids


def top_positions(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the `k` highest scores, best first, ties in position order: what
    np.argsort(-scores, kind="stable")[:k] gives, without sorting every BM25 match (a
    query over 1M tokens can match ten thousand chunks, at every step)."""
    n = len(scores)
    if n <= k:
        return np.argsort(-scores, kind="stable")
    kth = np.partition(scores, n - k)[n - k]  # the k-th highest
    above = np.flatnonzero(scores > kth)
    ties = np.flatnonzero(scores == kth)[: k - len(above)]
    chosen = np.sort(np.concatenate([above, ties]))
    return chosen[np.argsort(-scores[chosen], kind="stable")]


def top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The `k` best (ids, scores), best first; equal scores in `ids` order."""
    order = top_positions(scores, k)
    return ids[order], scores[order]
