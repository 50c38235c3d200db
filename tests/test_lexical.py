"""The lexical half of Q: BM25 through SQLite FTS5 in the index (kept in step with every
commit, added to old indexes without re-embedding) and in memory, the two lexical
features, and the second hop a dense-only Q misses."""

from __future__ import annotations

import itertools
import json
import shutil
import sqlite3
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import run_qrag

from qrag_cli import lexical, qfeatures, qspec, qstate, qvalue
from qrag_cli.chunk import chunk_document
from qrag_cli.config import ChunkConfig
from qrag_cli.documents import Document
from qrag_cli.episode import IndexCandidates, MemoryCandidates, StopRule, run_episodes
from qrag_cli.indexer import build_index
from qrag_cli.model import load_model, load_qrag_folder, save_model
from qrag_cli.model_dirs import default_model_dir
from qrag_cli.pqn import trainable
from qrag_cli.store import open_snapshot
from qrag_cli.types import ModelError

TOWNS = (
    "Arnholt Brevik Calder Dunmore Elvang Fennick Garroway Hesketh Ilmby Jorvale Kettering Lowmoor"
).split()
KEEPERS = (
    "Ines Varga|Tomas Brill|Oda Kessler|Pavel Noor|Runa Falk|Sami Orto|Vilja Strand|"
    "Aksel Dunn|Berit Holm|Casimir Lo|Dagny Rhee|Eskil Mar"
).split("|")
COMPASS_QUESTION = "In which town does the keeper of the copper compass number 7 live?"


def compass_corpus(root: Path) -> Path:
    """12 weavers in 12 towns, 12 compasses kept by them; compass 7's keeper is the only
    way to the answer, and every compass note looks alike."""
    root.mkdir(parents=True, exist_ok=True)
    for i, (keeper, town) in enumerate(zip(KEEPERS, TOWNS, strict=True)):
        (root / f"weaver-{i:02d}.txt").write_text(
            f"{keeper} is a weaver who lives in the town of {town}.\n"
        )
        (root / f"compass-{i + 1:02d}.txt").write_text(
            f"The copper compass number {i + 1} is kept by {KEEPERS[(i + 5) % 12]}.\n"
        )
    return root


def memory(texts: list[str]) -> MemoryCandidates:
    """Chunks in memory with blank vectors: only their lexical features are read."""
    return MemoryCandidates(texts, np.zeros((len(texts), 2), np.float32))


def reading(model, query: str):
    """`model` whose states read picks as `query` says (its registry's picked_bm25 query;
    the zero lexical weights are the registry's only: the model's Q stays dense)."""
    spec = qspec.QSpec(weights=(0.0, 0.0)).with_params("picked_bm25", query=query)
    model.cfg = replace(model.cfg, q=spec.to_json())
    return model


def names_model():
    """The base encoder reading the state as the default does (lexical_query "names")."""
    model = load_model("base")
    reading(model, "names")
    return model


def test_terms_drop_function_words_and_repeat_nothing() -> None:
    assert lexical.terms("Where is the ERR_4402 key? The key, the key!") == ["err", "4402", "key"]
    assert lexical.match_expression(['a"b', "c"]) == '"a""b" OR "c"'


def test_memory_bm25_ranks_the_exact_identifier_first() -> None:
    texts = [
        "The deploy failed with error E4402 on node seven.",
        "The deploy failed with error E4403 on node seven.",
        "Barley soup is made with onions.",
    ]
    ids, scores = lexical.MemoryLexicon(texts).bm25(lexical.terms("what caused E4402"))
    assert ids[np.argmax(scores)] == 0 and 2 not in ids and (scores > 0).all()


def test_searcher_answers_a_repeated_query_from_memory_unchanged() -> None:
    """An episode asks the question query at every step: the second answer is the first
    one, and it cannot be changed by whoever holds it."""
    lexicon = lexical.MemoryLexicon(["The deploy failed with error E4402.", "E4403 again."])
    first = lexicon.bm25(["e4402", "error"])
    lexicon.conn.execute(f"DELETE FROM {lexical.FTS_TABLE}")  # an answer asked anew would be ()
    again = lexicon.bm25(["e4402", "error"])
    assert again[0] is first[0] and list(first[0]) == [0]
    with pytest.raises(ValueError):
        first[1][0] = 9.0
    assert len(lexicon.bm25(["e4403"])[0]) == 0  # another query is asked


def test_terms_are_remembered_by_text_and_each_caller_gets_its_own_list() -> None:
    first = lexical.terms("Ines Varga keeps the copper compass")
    first.append("changed")  # a caller's list is its own: the remembered answer stays
    assert lexical.terms("Ines Varga keeps the copper compass") == [
        "ines",
        "varga",
        "keeps",
        "copper",
        "compass",
    ]


def test_index_rows_are_remembered_in_order_within_their_bound(tmp_path: Path, base_model) -> None:
    """An episode reads the same candidates' rows at every step: later reads come from
    memory, in the order asked, repeats included, and no more rows are kept than the bound."""
    root = compass_corpus(tmp_path / "docs")
    build_index([root], tmp_path / "idx", base_model, ChunkConfig())
    with open_snapshot(tmp_path / "idx") as snapshot:
        source = IndexCandidates(snapshot)
        source.ROWS_KEPT = 5
        ids = snapshot.live_ids().tolist()
        asked = [ids[3], ids[0], ids[3], ids[7]]
        assert source.rows(asked) == snapshot.chunks(asked)
        first = source.rows([ids[0]])[0]
        assert source.rows([ids[0]])[0] is first  # remembered, not read again
        source.rows(ids[:9])
        assert len(source._rows) == 5
        assert [r.id for r in source.rows(ids[::-1])] == ids[::-1]


def test_top_positions_is_a_stable_sort_cut_short() -> None:
    rng = np.random.default_rng(0)
    for _ in range(500):
        scores = rng.integers(0, 5, int(rng.integers(0, 120))).astype(np.float32)
        k = int(rng.integers(1, 70))
        want = np.argsort(-scores, kind="stable")[:k]
        assert np.array_equal(qfeatures.top_positions(scores, k), want)


def test_lexical_features_use_the_new_words_of_picked_chunks() -> None:
    texts = [
        "The copper compass number 7 is kept by Ines Varga.",
        "The copper compass number 8 is kept by Tomas Brill.",
        "Ines Varga is a weaver who lives in the town of Arnholt.",
        "Tomas Brill is a weaver who lives in the town of Brevik.",
    ]
    source = MemoryCandidates(texts, np.zeros((4, 2), np.float32))
    model = load_model("base")
    state = qstate.start(model, [COMPASS_QUESTION])[0]
    asked, new = qfeatures.lexical_queries(state)
    assert "compass" in asked and new == []
    before, _, _ = qfeatures.lexical_features(source, state)
    assert before[:, 1].max() == 0 and before[0, 0] == 1.0  # the best match is scaled to 1
    state = qstate.pick(model, state, source.rows([0])[0])
    asked, new = qfeatures.lexical_queries(state)
    assert new == ["kept", "ines", "varga"]  # the question's words are not news
    after, proposals, _ = qfeatures.lexical_features(source, state)
    assert not after[0].any()  # picked: no longer an action
    assert after[2, 1] == 1.0 and after[3, 1] == 0.0 and 2 in proposals
    assert ((after >= 0) & (after <= 1)).all()


def test_a_neighbour_matching_only_through_the_overlap_it_repeats_scores_nothing() -> None:
    """Chunks overlap: a needle at the edge of a pick is whole in its neighbour too, which
    would match the question as well as the pick did and take the step the next needle
    needs: only what it holds beyond the shared edge counts."""
    needle = "The special magic number for amber-ridge is 8048426."
    texts = [
        f"The ferry left the harbour at dawn. {needle}",
        f"{needle} The mill owner praised the eastern pass.",  # starts with the pick's end
        "A herd of reindeer sold a map of the islands.",
        "The special magic number for amber-ridge is 1369099. The river rose.",
    ]
    source = MemoryCandidates(texts, np.zeros((4, 2), np.float32))
    model = load_model("base")
    start = qstate.start(model, ["What are all the special magic numbers for amber-ridge?"])[0]
    before, _, _ = qfeatures.lexical_features(source, start)
    assert before[1, 0] > 0 and before[3, 0] > 0
    state = qstate.pick(model, start, source.rows([0])[0])
    assert qfeatures.beside_picks(source, state, before) == {
        1: " The mill owner praised the eastern pass."
    }
    after, _, _ = qfeatures.lexical_features(source, state)
    assert after[1, 0] == 0.0 and after[3, 0] > 0  # the next needle, not the same one again
    # The chunk before a pick ends with what the pick starts with.
    state = qstate.pick(model, start, source.rows([1])[0])
    after, _, _ = qfeatures.lexical_features(source, state)
    assert after[0, 0] == 0.0 and after[3, 0] > 0
    # A neighbour with something new of its own keeps its match: the pick's next sentence.
    texts[1] = f"{needle} The special magic number for amber-ridge is 5853994."
    source = MemoryCandidates(texts, np.zeros((4, 2), np.float32))
    state = qstate.pick(model, start, source.rows([0])[0])
    after, _, _ = qfeatures.lexical_features(source, state)
    assert after[1, 0] > 0
    # The overlap is cut by tokens: a pick that opens inside the needle ("special magic
    # ...", its "The" left behind) does not hold it whole, and its neighbour that does
    # keeps the match.
    texts[1] = f"{needle[4:]} The mill owner praised the eastern pass."
    source = MemoryCandidates(texts, np.zeros((4, 2), np.float32))
    state = qstate.pick(model, start, source.rows([1])[0])
    assert qfeatures.beside_picks(source, state, before)[0] == texts[0]
    after, _, _ = qfeatures.lexical_features(source, state)
    assert after[0, 0] > 0


def test_overlapping_chunks_share_their_edges() -> None:
    """What `beside_picks` takes off is the overlap the chunker really writes."""
    words = "ferry harbour mill river lantern quarry meadow bridge".split()
    text = " ".join(f"The {words[i % 8]} keeper counted {i} stones." for i in range(400))
    chunks = [c.text for c in chunk_document(Document(text, "text", ((0, 1),)), ChunkConfig())]
    assert len(chunks) > 5
    for first, second in itertools.pairwise(chunks):
        shared = qfeatures._shared_edge(first, second, 8)
        assert shared >= 8 and first.endswith(second[:shared])


def test_question_term_keeps_its_scale_once_its_best_match_is_picked() -> None:
    """After the question's best match is taken, a chunk sharing one of its words ("grey
    jug") keeps its partial score: scaled against what is left it became a full match and
    outranked the holder's next fact (real bAbI qa2, validation seed 7)."""
    texts = [
        "Daniel Ek grabbed the black jug there.",
        "Cora Berg picked up the grey jug there.",
        "Daniel Ek journeyed to the office.",
        *["Bo ate.", "Ada sang.", "Kim ran.", "Eva slept.", "Ulf swam.", "Mia read."],
    ]
    source, model = memory(texts), names_model()
    state = qstate.start(model, ["Where is the black jug?"])[0]
    before, _, _ = qfeatures.lexical_features(source, state)
    assert before[0, 0] == 1.0 and 0.2 < before[1, 0] < 0.8
    state = qstate.pick(model, state, source.rows([0])[0])
    after, _, _ = qfeatures.lexical_features(source, state)
    assert after[1, 0] == pytest.approx(before[1, 0])  # not scaled up to 1
    assert after[2, :2].tolist() == [0.0, 1.0]  # the holder's fact: the bridge's best match
    weights = np.array([0.3, 0.3])  # the two BM25 terms weighted alike, as training starts
    assert after[2, :2] @ weights > after[1, :2] @ weights


def test_question_term_asks_what_the_picks_do_not_hold_yet() -> None:
    """A comparison question names two things. Once the first one's paragraph is picked,
    the question term asks for the other one, not for look-alikes of the first (a species
    of the first genus, which shares its name)."""
    texts = [
        "Aphelandra\nAphelandra is a genus of about 170 species of flowering plants.",
        "Aphelandra sinclairiana\nAphelandra sinclairiana is a plant species of Aphelandra, "
        "one of its species.",
        "Angraecum\nThe genus Angraecum, abbreviated as Angcm in the horticultural trade, is "
        "a genus of orchids found in Africa, Madagascar, the Comoros and Sri Lanka.",
        *["Bo ate.", "Ada sang.", "Kim ran.", "Eva slept."],
    ]
    source = MemoryCandidates(texts, np.zeros((len(texts), 2), np.float32))
    model = load_model("base")
    for query in lexical.PICKED_QUERIES:
        reading(model, query)
        state = qstate.start(model, ["Which has more species, Angraecum or Aphelandra?"])[0]
        before, _, _ = qfeatures.lexical_features(source, state)
        assert before[1, 0] > before[2, 0]  # the question alone: the look-alike first
        state = qstate.pick(model, state, source.rows([0])[0])
        assert qfeatures.not_held(state, qfeatures.lexical_queries(state)[0]) == ["angraecum"]
        after, _, _ = qfeatures.lexical_features(source, state)
        assert after[2, 0] == 1.0 and after[1, 0] == 0.0
    # Every word held (a key asked for all its values), or the words not held match no
    # chunk left ("numbers" where needles say "number"): the whole question is asked.
    needles = [
        "The special magic number for pale-saddle is 2796122.",
        "The special magic number for pale-heron is 1208507.",
        "The special magic number for pale-saddle is 9669891.",
        *["Bo ate.", "Ada sang.", "Kim ran.", "Eva slept."],
    ]
    source = memory(needles)
    for question in (
        "What is the magic number for pale-saddle?",
        "What are the numbers for pale-saddle?",
    ):
        state = qstate.start(model, [question])[0]
        before, _, _ = qfeatures.lexical_features(source, state)
        state = qstate.pick(model, state, source.rows([0])[0])
        after, _, _ = qfeatures.lexical_features(source, state)
        assert after[2, 0] == before[2, 0] > after[1, 0] > 0


def test_order_feature_points_to_the_latest_fact_of_running_text(tmp_path: Path) -> None:
    """bAbI's "Where is X?": the last fact about X wins, and the holder's last move
    before the drop places the thing. Chunks that open with a title (articles, notes)
    never count: their order means nothing."""
    story = [
        "Daniel Ek went to the office.",
        "Daniel Ek went to the garden.",
        "Daniel Ek dropped the football.",
        "Daniel Ek went to the kitchen.",
        *["Bo ate.", "Ada sang.", "Kim ran.", "Eva slept."],
    ]
    source, model = memory(story), names_model()
    state = qstate.start(model, ["Where is Daniel Ek?"])[0]
    features, _, _ = qfeatures.lexical_features(source, state, order=True)
    assert features[:, qfeatures.ORDER].tolist() == [0, 0, 0, 1, 0, 0, 0, 0]  # the latest
    assert not qfeatures.lexical_features(source, state).values[:, qfeatures.ORDER].any()  # off
    state = qstate.pick(
        model, qstate.start(model, ["Where is the football?"])[0], source.rows([2])[0]
    )
    order = qfeatures.lexical_features(source, state, order=True).values[:, qfeatures.ORDER]
    # The trail's latest match, and its nearest one before the pick (where he dropped it).
    assert order.tolist() == [0, 1, 0, 1, 0, 0, 0, 0]
    # Read sentence by sentence: a fact about the green ball holds both words in one
    # sentence (not "grey ball ... green map"), and the holder's move is a sentence about
    # him that is not itself about the ball ("took the green ball there" is not a move).
    crowded = memory(
        [
            "Per Nord travelled to the office.",
            "Per Nord took the green ball there.",
            "Per Nord left the green ball.",
            "Tova Ek left the grey ball. Sandra Nord left the green map.",
            "Per Nord went to the kitchen.",
            *["Bo ate.", "Ada sang.", "Kim ran."],
        ]
    )
    state = qstate.start(model, ["Where is the green ball?"])[0]
    order = qfeatures.lexical_features(crowded, state, order=True).values[:, qfeatures.ORDER]
    assert np.flatnonzero(order).tolist() == [2]
    state = qstate.pick(model, state, crowded.rows([2])[0])
    order = qfeatures.lexical_features(crowded, state, order=True).values[:, qfeatures.ORDER]
    # Where he went last before dropping it, and where he went last; once a fact about the
    # ball is picked, the older facts about it are not pointed to.
    assert np.flatnonzero(order).tolist() == [0, 4]
    # Chunks overlap: a picked fact repeated by its neighbour is no new fact.
    overlapping = memory(
        [
            "Per Nord went to the hall.",
            "Per Nord travelled to the office.",
            "Per Nord travelled to the office. Per Nord left the green ball.",
            *["Bo ate.", "Ada sang.", "Kim ran."],
        ]
    )
    state = qstate.start(model, ["Where is the green ball?"])[0]
    state = qstate.pick(model, state, overlapping.rows([2])[0])
    order = qfeatures.lexical_features(overlapping, state, order=True).values[:, qfeatures.ORDER]
    assert np.flatnonzero(order).tolist() == [0]
    # What it points to is a candidate even below the BM25 top POOL (ties rank by id).
    moves = [f"Daniel Ek went to room {i}." for i in range(qspec.PARTS["dense"][1]["pool"] + 6)]
    many = memory(moves)
    state = qstate.start(model, ["Where is Daniel Ek?"])[0]
    features, proposals, _ = qfeatures.lexical_features(many, state, order=True)
    assert np.flatnonzero(features[:, qfeatures.ORDER]).tolist() == [len(moves) - 1]
    assert len(moves) - 1 in proposals
    # Notes under headings of their own: their order means nothing. The same story kept
    # under one heading is still one running text.
    state = qstate.start(model, ["Where is Daniel Ek?"])[0]
    notes = memory([f"Note {i}\n{text}" for i, text in enumerate(story)])
    assert not qfeatures.lexical_features(notes, state, order=True).values[:, qfeatures.ORDER].any()
    kept = memory([f"Diary\n{text}" for text in story])
    assert notes.rows([0])[0].heading == ("Note 0",) and kept.rows([0])[0].heading == ("Diary",)
    untitled = qfeatures.lexical_features(memory(story), state, order=True)[0][:, qfeatures.ORDER]
    under_one = qfeatures.lexical_features(kept, state, order=True).values[:, qfeatures.ORDER]
    assert untitled.any() and under_one.tolist() == untitled.tolist()
    # A model with a third lexical weight has the order term, a fourth the named-title
    # term; two to four numbers only.
    three = trainable(model, frozen_chunks=True, lexical=[0.3, 0.3, 0.1])
    assert qvalue.uses_order(three) and not qvalue.uses_order(
        trainable(model, frozen_chunks=True, lexical=[0.3, 0.3])
    )
    assert not qvalue.uses_named(three)
    assert qvalue.uses_named(trainable(model, frozen_chunks=True, lexical=[0.3, 0.3, 0.1, 0.2]))
    save_model(three, tmp_path / "three")
    assert load_model(str(tmp_path / "three")).cfg.spec().weights == (0.3, 0.3, 0.1)
    config = json.loads((tmp_path / "three" / "config.json").read_text())
    config["q"]["terms"] += [dict(config["q"]["terms"][-1])] * 2  # five lexical terms
    (tmp_path / "three" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="q terms must be dense, question_bm25"):
        load_qrag_folder(tmp_path / "three")


def test_named_feature_marks_the_articles_the_question_or_a_pick_names() -> None:
    """A title named whole by the question or a picked chunk marks its chunk: "Carlos
    Fuentes" and not "Carlos Fuentes Lemus" that holds both words too; a qualifier in
    parentheses is not part of the name; after a pick, the article it names."""
    articles = memory(
        [
            "Carlos Fuentes Lemus\nCarlos Fuentes Lemus was the son of Carlos Fuentes.",
            "Carlos Fuentes\nCarlos Fuentes was a Mexican novelist.",
            "Christa Wolf (writer)\nChrista Wolf was a German novelist, born in Landsberg.",
            "Landsberg an der Warthe\nLandsberg an der Warthe is a town now called Gorzow.",
            "Gorzow\nA city in Poland.",
            "Carlos Fuentes went to the market. Christa Wolf stayed home.",
            "Carlos Fuentes: a Mexican novelist, written as a label and not as a heading.",
        ]
    )
    state = qstate.State("Who was born later, Carlos Fuentes or Christa Wolf?", [])
    features = qfeatures.lexical_features(articles, state, named=True).values
    # Only a heading counts: no text pattern ("Title: ...") is read as one.
    assert np.flatnonzero(features[:, qfeatures.NAMED]).tolist() == [1, 2]
    assert not qfeatures.lexical_features(articles, state).values[:, qfeatures.NAMED].any()  # off
    state = state.then(articles.rows([2])[0], [])
    features = qfeatures.lexical_features(articles, state, named=True).values
    # The picked chunk names "Landsberg", not "Landsberg an der Warthe"; picked chunks are 0.
    assert np.flatnonzero(features[:, qfeatures.NAMED]).tolist() == [1]
    state = state.then(articles.rows([3])[0], [])
    features = qfeatures.lexical_features(articles, state, named=True).values
    assert np.flatnonzero(features[:, qfeatures.NAMED]).tolist() == [1, 4]
    # A namesake whose qualifier the question does not hold counts half.
    people = memory(
        [
            "Bob Clark (athlete)\nA runner.",
            "Bob Clark\nA director.",
            "Robert Butler (director)\nA director.",
        ]
    )
    state = qstate.State("Which director worked more, Robert Butler or Bob Clark?", [])
    features = qfeatures.lexical_features(people, state, named=True).values
    assert features[:, qfeatures.NAMED].tolist() == [0.5, 1.0, 1.0]
    # Named means written as a name: "the astronomical clock" names no "Astronomical clock".
    clocks = memory(["Astronomical clock\nA clock.", "Prague astronomical clock\nA clock."])
    state = qstate.State("When was the astronomical clock in Prague built?", [])
    assert (
        not qfeatures.lexical_features(clocks, state, named=True).values[:, qfeatures.NAMED].any()
    )
    state = qstate.State("When was the Prague astronomical clock built?", [])
    features = qfeatures.lexical_features(clocks, state, named=True).values
    assert np.flatnonzero(features[:, qfeatures.NAMED]).tolist() == [1]
    # A title holding a colon: the film "Diary of a Wimpy Kid: The Long Haul" is not an
    # article titled "Diary of a Wimpy Kid" (a partial match is no name match).
    sequel = "Diary of a Wimpy Kid: The Long Haul\nDiary of a Wimpy Kid: The Long Haul is a film."
    films = memory([sequel, "Diary of a Wimpy Kid\nDiary of a Wimpy Kid is a novel."])
    state = qstate.State("Which film of Diary of a Wimpy Kid came first?", [])
    features = qfeatures.lexical_features(films, state, named=True).values
    assert features[:, qfeatures.NAMED].tolist() == [0.0, 1.0]


# 60 made-up lower-case words: prose that shares no word with any question below.
FILLER = [
    a + b + c for a in ("bra", "clo", "dre", "flu") for b in "aeiou" for c in ("m", "n", "st")
]


def test_names_query_follows_the_fact_behind_the_filler(tmp_path: Path) -> None:
    """In a long document a chunk is mostly filler around one fact. Today's query ("chunk")
    keeps the first MAX_TERMS new words: all filler, so the next hop's names are cut off
    and the picked-chunk term points at the chunk that shares the filler. "names" keeps
    the names of the sentence the question led to, and so finds the next hop."""
    assert len(FILLER) > lexical.MAX_TERMS
    texts = [
        " ".join(FILLER) + ". Kurt Lind put down the golden lamp.",
        "Kurt Lind went to the garden.",
        " ".join(FILLER[: lexical.MAX_TERMS]) + ".",
        "Ada Borg went to the kitchen.",
    ]
    source = MemoryCandidates(texts, np.zeros((4, 2), np.float32))
    model = load_model("base")
    question = "Where is the golden lamp?"
    features = {}
    for query in lexical.PICKED_QUERIES:
        reading(model, query)
        state = qstate.pick(model, qstate.start(model, [question])[0], source.rows([0])[0])
        features[query] = qfeatures.lexical_features(source, state).values[:, 1]
        if query == "names":
            assert qfeatures.lexical_queries(state)[1] == ["kurt", "lind"]
            # The chain: the next pick keeps the sentence naming Kurt Lind (not "went").
            state = qstate.pick(model, state, source.rows([1])[0])
            assert qfeatures.lexical_queries(state)[1] == ["kurt", "lind"]
    # Names, keys and codes, not prose and not bare numbers (overlap repeats those).
    assert lexical.name_words("Kurt put the x86 key 4406058 in The Box, ERR_4402") == {
        "kurt",
        "x86",
        "box",
        "err",
    }
    # The first sentence of a chunk cut from running prose is somebody else's fact, not a
    # title: its names (Ada Borg) do not join the query; a title does (wiki paragraphs
    # open with "Title: ", notes with a heading line).
    reading(model, "names")
    prose = MemoryCandidates(["Ada Borg went to the office. Kurt met Bo Dahl."], np.zeros((1, 2)))
    state = qstate.pick(model, qstate.start(model, ["Where is Kurt?"])[0], prose.rows([0])[0])
    assert qfeatures.lexical_queries(state)[1] == ["bo", "dahl"]
    # A name of several words is followed whole: Alva Nord shares only a surname with the
    # asked Sandra Nord, so her sentence is not on the trail and "alva" is not news.
    chunk = "Sandra Nord moved to the hallway. Alva Nord moved to the library. Bo met Sandra Nord."
    near = MemoryCandidates([chunk], np.zeros((1, 2)))
    state = qstate.start(model, ["Where is Sandra Nord?"])[0]
    state = qstate.pick(model, state, near.rows([0])[0])
    assert qfeatures.lexical_queries(state)[1] == ["bo"]
    # The question's name of several words is asked whole too (an FTS5 phrase): chunks
    # holding only part of "Olga Ros" fall well behind the one holding all of it.
    olgas = ["Olga Ek met Olga Berg.", "Olga Ros went to the office.", "Ada Ros sang.", "Bo ate."]
    source = MemoryCandidates(olgas, np.zeros((4, 2)))
    question = {}
    for query in lexical.PICKED_QUERIES:
        reading(model, query)
        question[query] = qstate.start(model, ["Where is Olga Ros?"])[0]
    assert qfeatures.lexical_queries(question["names"])[0] == ["olga ros", "olga", "ros"]
    parts = {q: qfeatures.lexical_features(source, s).values[:, 0] for q, s in question.items()}
    assert parts["chunk"][1] == parts["names"][1] == 1.0
    assert parts["chunk"][0] > 0.6 and parts["chunk"][2] > 0.6  # words asked one by one
    assert parts["names"][0] < 0.45 and parts["names"][2] < 0.45  # the whole name asked
    # Words joined by hyphens are one key, in any case: the chunk holding "brisk-quarry"
    # outranks the one holding "brisk" and "quarry" apart (RULER's look-alike keys).
    keys = [
        "The number for mellow-quarry is 25. The number for brisk-island is 71.",
        "The number for brisk-quarry is 54.",
        *["Bo ate.", "Ada sang.", "Kim ran.", "Eva slept."],
    ]
    source = MemoryCandidates(keys, np.zeros((len(keys), 2)))
    asked = {}
    for query in lexical.PICKED_QUERIES:
        reading(model, query)
        asked[query] = qstate.start(model, ["What is the number for brisk-quarry?"])[0]
    assert qfeatures.lexical_queries(asked["names"])[0][:2] == ["brisk quarry", "number"]
    ranked = {q: qfeatures.lexical_features(source, s).values[:, 0] for q, s in asked.items()}
    assert ranked["chunk"][1] == ranked["names"][1] == 1.0
    assert ranked["chunk"][0] > 0.75  # its words asked one by one: nearly as good
    assert ranked["names"][0] < 0.5  # the key asked whole
    # The chunk under the asked name must beat a shorter one that only mentions it: a
    # comparison question needs each entity's own paragraph.
    titled = [
        "Essential Ballads\nEssential Ballads is an album by Jeff Scott Soto.",
        "Jeff Scott Soto\nJeff Scott Soto (born November 4, 1965) is an American rock "
        "singer of Puerto Rican descent, best known as the vocalist of Talisman.",
        *["Bo ate.", "Ada sang.", "Kim ran.", "Eva slept."],
    ]
    source = MemoryCandidates(titled, np.zeros((len(titled), 2)))
    singer = qstate.start(model, ["Who is older, John Waite or Jeff Scott Soto?"])[0]
    assert lexical.match_expression(qfeatures.lexical_queries(singer)[0]).startswith(
        '"john waite" OR "jeff scott soto" OR "older" OR'
    )
    # BM25 alone ranks the shorter album first (its heading counts, but so does length);
    # the named term marks the chunk under the name whole, and only it.
    scored = qfeatures.lexical_features(source, singer, named=True).values
    assert scored[0, 0] >= scored[1, 0] > 0.85
    assert scored[:2, qfeatures.NAMED].tolist() == [0.0, 1.0]
    assert lexical.compounds("Is brisk-quarry x86-64 or Jean-Paul - a-b?") == [
        ("brisk", "quarry"),
        ("x86", "64"),
        ("jean", "paul"),
        ("a", "b"),
    ]
    reading(model, "names")
    assert lexical.name_runs("Is Jean-Paul O'Brien in New York? He set VAR X1.") == [
        ("jean", "paul", "o", "brien"),
        ("new", "york"),
        ("var", "x1"),
    ]
    assert features["chunk"][1] == 0.0 and features["chunk"][2] == 1.0  # drawn to filler
    assert features["names"][1] == 1.0 and features["names"][2] == 0.0  # the next hop

    # A model folder names its query (training sets it, the recipe to "names"; folders
    # written before the choice existed keep "chunk"); an unknown one is refused.
    trained = trainable(model, frozen_chunks=True, lexical=[0.3, 0.3], lexical_query="names")
    save_model(trained, tmp_path / "names")
    assert load_model(str(tmp_path / "names")).cfg.spec().query == "names"
    older = tmp_path / "older"
    shutil.copytree(default_model_dir(), older)
    config = json.loads((older / "config.json").read_text())
    # A folder from before the registry: a lexical list and no lexical_query.
    config.pop("q", None)
    config.pop("lexical_query", None)
    config["lexical"] = [0.3, 0.3]
    (older / "config.json").write_text(json.dumps(config))
    assert load_model(str(older)).cfg.spec().query == "chunk"
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"lexical_query": "rarest"}))
    (folder / "encoder_config.json").write_text("{}")
    with pytest.raises(ModelError, match="lexical_query must be one of chunk, names"):
        load_qrag_folder(folder)
    proc = run_qrag("train", str(tmp_path / "none.jsonl"), "--lexical-query", "rarest")
    assert proc.returncode != 0 and "--lexical-query must be one of" in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_index_keeps_bm25_in_step_and_an_old_index_is_rebuilt_once(
    tmp_path: Path, base_model
) -> None:
    root = compass_corpus(tmp_path / "docs")
    index = tmp_path / "idx"
    build_index([root], index, base_model, ChunkConfig())
    with open_snapshot(index) as snapshot:
        ids, _ = snapshot.bm25(["varga"])
        paths = {r.path.rsplit("/", 1)[-1] for r in snapshot.chunks(ids.tolist())}
    assert paths == {"weaver-00.txt", "compass-08.txt"}
    (root / "weaver-00.txt").write_text("Ines Varga moved away and sells rope in Calder.\n")
    (root / "compass-08.txt").unlink()
    build_index([root], index, base_model, ChunkConfig())
    with open_snapshot(index) as snapshot:
        ids, _ = snapshot.bm25(["varga", "weaver"])
        texts = [r.text for r in snapshot.chunks(ids.tolist())]
        assert any("sells rope" in t for t in texts)
        assert not any("Ines Varga is a weaver" in t or "number 8 " in t for t in texts)
        assert len(snapshot.bm25(["weaver"])[0]) == 11  # one weaver note changed its words

    # An index of the format before sections (chunks without headings): `qrag ask`
    # refuses it in one line saying why and how; the next `qrag index` rebuilds it once,
    # saying why in one line, and then it answers.
    with open_snapshot(index) as snapshot:
        db = snapshot.folder / "index.sqlite"
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'format_version'")
    conn.close()
    proc = run_qrag("ask", COMPASS_QUESTION, "--index", str(index))
    assert proc.returncode != 0 and proc.stderr.count("\n") == 1, proc.stderr
    assert "has format 1, this qrag reads 2 (chunks now keep their section headings)" in (
        proc.stderr
    )
    assert "rebuild it with `qrag index PATH" in proc.stderr and "Traceback" not in proc.stderr
    rebuilt = run_qrag("index", str(root), "--index", str(index))
    assert rebuilt.returncode == 0, rebuilt.stderr
    why = [line for line in rebuilt.stderr.splitlines() if "rebuild" in line]
    assert why == [
        "full rebuild: the index format changed (1 -> 2: chunks now keep their section headings)"
    ]
    again = run_qrag("index", str(root), "--index", str(index))
    assert "rebuild" not in again.stderr  # once
    answered = run_qrag("ask", COMPASS_QUESTION, "--index", str(index), "--json")
    assert answered.returncode == 0, answered.stderr
    with open_snapshot(index) as snapshot:
        assert len(snapshot.bm25(["weaver"])[0]) == 11


def test_lexical_off_is_the_pure_dense_q(tmp_path: Path, base_model) -> None:
    root = compass_corpus(tmp_path / "docs")
    build_index([root], tmp_path / "idx", base_model, ChunkConfig())
    hybrid = trainable(load_model("base"), frozen_chunks=True, lexical=[0.5, 0.5])
    with_terms = trainable(load_model("base"), frozen_chunks=True, lexical=[0.5, 0.5])
    dense = qvalue.without_lexical(with_terms)
    # A model of its own: the one it was made from keeps its terms.
    assert dense.lexical_weights is None and dense.cfg.q is None
    assert with_terms.lexical_weights is not None and with_terms.cfg.q is not None
    with open_snapshot(tmp_path / "idx") as snapshot:
        source = IndexCandidates(snapshot, exact=True)
        ep_dense = run_episodes(dense, [COMPASS_QUESTION], [source], StopRule(2))[0]
        ep_hybrid = run_episodes(hybrid, [COMPASS_QUESTION], [source], StopRule(2))[0]
        state = qstate.start(dense, [COMPASS_QUESTION])[0]
        for ev in ep_dense.evidence:  # Q is exactly <E_s(s), E_a(a)>
            vec = dense.embed_states([qstate.state_tokens(dense, state)])[0]
            assert ev.q == pytest.approx(float(snapshot.vectors[ev.chunk_id] @ vec), abs=1e-5)
            state = qstate.pick(dense, state, snapshot.chunks([ev.chunk_id])[0])
    # The hybrid's first pick scores its full lexical weight on top of the dense term.
    first = ep_hybrid.evidence[0]
    assert "number 7 " in first.text and first.q > ep_dense.evidence[0].q + 0.4


def test_shipped_default_finds_both_hops_of_the_compass_question(tmp_path: Path) -> None:
    """The second hop needs the keeper's name, which only the first pick reveals; every
    other compass note shares the question's words. Dense Q alone (issue #13) picks the
    compass note, then more compass notes."""
    root = compass_corpus(tmp_path / "docs")
    index = str(tmp_path / "idx")
    run_qrag("index", str(root), "--index", index, check=True)
    out = json.loads(
        run_qrag(
            "ask",
            COMPASS_QUESTION,
            "--index",
            index,
            "--steps",
            "4",
            "--no-stop",
            "--json",
            check=True,
        ).stdout
    )
    paths = [Path(ev["path"]).name for ev in out["evidence"]]
    keeper = KEEPERS[(6 + 5) % 12]  # compass 7 is note i = 6
    weaver = f"weaver-{KEEPERS.index(keeper):02d}.txt"
    assert paths[:2] == ["compass-07.txt", weaver], paths  # hop 1, then hop 2
    base = json.loads(
        run_qrag(
            "ask",
            COMPASS_QUESTION,
            "--index",
            index,
            "--steps",
            "4",
            "--no-stop",
            "--json",
            "--model",
            "base",
            check=True,
        ).stdout
    )
    assert weaver not in [Path(ev["path"]).name for ev in base["evidence"]]  # the hard part
