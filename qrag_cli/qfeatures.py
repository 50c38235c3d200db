"""Q's lexical features (what each BM25 term, the order term and the named-title term
says of every chunk under a state) and the queries they ask. qvalue.py's docstring gives
the formula they enter and why each term is there; the model's registry (qspec.py) holds
every constant they read."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from qrag_cli import lexical
from qrag_cli.qstate import Action, Candidates, State, read

QUESTION, PICKED, ORDER, NAMED = 0, 1, 2, 3  # the lexical feature columns (and weights)
FEATURES = 4


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
    digits (lexical.name_words: names, keys, codes; not prose, not bare numbers). Chosen on
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
    named = lexical.name_words(" ".join(read(r) for r in state.picked))
    # The trail: the question's words and the names found on it. A name of several words
    # ("Sandra Nord") is followed as a whole: a sentence about "Alva Nord" is not on
    # the trail of "Sandra Nord", and its names would pull the next pick astray.
    runs = set(asked_runs)
    single = asked - {w for r in runs for w in r}
    kept_per_pick = []
    for row in state.picked:
        sentences = lexical.sentences(read(row))
        words = [lexical.terms(s) for s in sentences]
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
            long = lexical.name_runs(sentences[j])
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


class LexicalFeatures(NamedTuple):
    """What the lexical terms say of every chunk under one state."""

    values: np.ndarray
    """[id_space, FEATURES] in [0, 1], picked chunks 0: question, picked-chunk, order and
    named (0 where the model has no such term)."""
    proposals: np.ndarray
    """The ids the features rank highest: candidates whatever their dense rank."""
    raw_max: tuple[float, float]
    """Each BM25 feature's maximum over the chunks left, before normalisation (0 when
    nothing matches): how strongly anything left still matches, for the stop rule."""


def lexical_features(
    source: Candidates, state: State, order: bool = False, named: bool = False
) -> LexicalFeatures:
    """The lexical features of every chunk id under `state`: question, picked-chunk, with
    `order` the order feature and with `named` the named feature (read for the lexical
    proposals only: a chunk whose title the question or a pick names matches their
    words)."""
    features = np.zeros((source.id_space, FEATURES), np.float32)
    raw_max = [0.0, 0.0]
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
        raw_max[column] = float(left)
        proposals.append(ids[top_positions(scores, pool_size(state))])
    for chunk_id, rest in beside_picks(source, state, features).items():
        rest_terms = set(lexical.terms(rest))
        for column, words in enumerate(queries):
            if not any(lexical.holds(rest_terms, e) for e in words):
                features[chunk_id, column] = 0.0
    if order and question_hits is not None:
        features[:, ORDER] = order_feature(source, state, *question_hits)
        # The chunks it points to are candidates whatever their BM25 rank: in a large corpus
        # the latest match can sit below the top pool.
        proposals.append(np.flatnonzero(features[:, ORDER]))
    if named and proposals:
        ids = distinct(np.concatenate(proposals))
        features[ids, NAMED] = named_feature(source, state, ids)
    return LexicalFeatures(
        features,
        np.concatenate(proposals) if proposals else np.zeros(0, np.int64),
        (raw_max[0], raw_max[1]),
    )


def beside_picks(source: Candidates, state: State, features: np.ndarray) -> dict[int, str]:
    """The chunks next to a pick (ordinal one before or after) that a BM25 feature
    matches, each with its text less the whole sentences it shares with the pick: chunks
    overlap, and a neighbour that matches only through picked text it repeats holds
    nothing new. A needle at the edge of a chunk is whole in both chunks; without this,
    the neighbour outranks the next needle, and a question asking for every value of a key
    gets the same value twice. The registry's
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
    namings = lexical.Namings([state.question, *(read(r) for r in state.picked)])
    out = np.zeros(len(ids), np.float32)
    for j, row in enumerate(source.rows(ids.tolist())):
        for title in row.heading:
            if namings.has_name(title):
                held = namings.vocabulary.issuperset(lexical.qualifier(title))
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
            names.update(lexical.name_words(sentence) - in_runs - asked)
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
            sentences = lexical.sentences(row.text)
            cache[row.id] = [set(lexical.terms(s)) for s in sentences if s.strip() not in seen]
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


def pool_size(state: State) -> int:
    return int(state.spec.param("dense", "pool"))  # type: ignore[call-overload]


def distinct(ids: np.ndarray) -> np.ndarray:
    """np.unique of 1-d ids (sorted, each once), without np.unique's first-call import of
    numpy.ma, a measurable share of every cold `qrag ask`."""
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
