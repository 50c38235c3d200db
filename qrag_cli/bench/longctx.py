"""Generated long-context tasks (seeded): RULER-style needles, variable tracking and
BabiLong-style bAbI stories, hidden in filler prose of any length.

A task question comes with a *story*: its sentences in the order they must appear
(later bAbI facts overwrite earlier ones) and which of them are gold. A haystack holds
the stories of many questions at once, scattered through filler; every story uses its
own keys and names, so the other stories are distractors of the same shape. Scoring is
by fact, not by chunk: a gold fact is found when a picked chunk contains its sentence
(chunk overlap can put one sentence in two chunks).
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from qrag_cli.chunk import count_tokens
from qrag_cli.datasets import Example, training_chunks
from qrag_cli.discover import discover
from qrag_cli.readers import read_document
from qrag_cli.types import ReadError, UsageError

TASKS = ("niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery", "vt",
         "qa1", "qa2", "qa3")


@dataclass(frozen=True)
class Story:
    question: str
    answer: str
    sentences: tuple[str, ...]  # in the order they appear in the haystack
    gold: tuple[int, ...]  # indices into `sentences` a complete retrieval must contain

    @property
    def gold_facts(self) -> list[str]:
        return [self.sentences[i] for i in self.gold]


# ---- entities: every story in one haystack draws unused ones -----------------------------
ADJECTIVES = ("amber brisk cobalt dusty eager frosty gilded hollow ivory jagged keen "
              "lunar mellow nimble opal pale quiet russet silent tawny umber velvet wistful "
              "young zesty crimson").split()
NOUNS = ("falcon harbor lantern meadow quarry ribbon saddle thistle willow anchor badger "
         "candle dagger ember fjord garnet heron island jasper kettle locket marble").split()
FIRST = ("Mary John Sandra Daniel Ada Bram Cleo Dag Edda Finn Greta Hugo Ines Jon Kaja Leif "
         "Mira Nils Olga Per Rut Sten Tova Ulf Vera Wim Yrsa Zeno Alva Bo Cora Dino Elin "
         "Frej Hans Ivo Jana Kurt Lina Nora Otto Pia").split()
LAST = ("Berg Dahl Falk Holm Lind Nord Ek Sand Strom Vik Wall Ahl Borg Krona Lund Ros").split()
THINGS = ("football apple milk key book ball box lamp coin map flute ring").split()
COLOURS = ("red blue green black white grey brown silver golden yellow orange purple").split()
PLACES = ("kitchen garden office bathroom hallway bedroom cellar attic garage library "
          "pantry balcony").split()


class Names:
    """Unused entities for one haystack (keys, people, objects, variables)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: set[str] = set()

    def _fresh(self, make: Callable[[], str]) -> str:
        for _ in range(10_000):
            value = make()
            if value not in self.used:
                self.used.add(value)
                return value
        raise RuntimeError("entity pool exhausted; ask for fewer questions per haystack")

    def key(self) -> str:
        r = self.rng
        return self._fresh(lambda: f"{r.choice(ADJECTIVES)}-{r.choice(NOUNS)}")

    def near_key(self, key: str) -> str:
        """A key sharing one word with `key` (RULER's hard multi-key distractors)."""
        adj, noun = key.split("-")
        r = self.rng
        return self._fresh(lambda: f"{adj}-{r.choice(NOUNS)}" if r.random() < 0.5
                           else f"{r.choice(ADJECTIVES)}-{noun}")

    def person(self) -> str:
        r = self.rng
        return self._fresh(lambda: f"{r.choice(FIRST)} {r.choice(LAST)}")

    def thing(self) -> str:
        r = self.rng
        return self._fresh(lambda: f"{r.choice(COLOURS)} {r.choice(THINGS)}")

    def variable(self) -> str:
        r = self.rng
        return self._fresh(lambda: "".join(r.choice("ABCDEFGHJKLMNPQRSTUVWXYZ")
                                           for _ in range(5)))

    def number(self, digits: int = 7) -> str:
        r = self.rng
        return self._fresh(lambda: str(r.randrange(10 ** (digits - 1), 10 ** digits)))


# ---- stories -------------------------------------------------------------------------------
def _needle(key: str, value: str) -> str:
    return f"The special magic number for {key} is {value}."


def _shuffled(rng: random.Random, gold: Sequence[str], other: Sequence[str]) -> tuple[
        tuple[str, ...], tuple[int, ...]]:
    sentences = list(gold) + list(other)
    order = list(range(len(sentences)))
    rng.shuffle(order)
    out = tuple(sentences[i] for i in order)
    return out, tuple(sorted(order.index(i) for i in range(len(gold))))


def niah_single(rng: random.Random, names: Names) -> Story:
    key, value = names.key(), names.number()
    other = [_needle(names.key(), names.number()) for _ in range(2)]
    sentences, gold = _shuffled(rng, [_needle(key, value)], other)
    return Story(f"What is the special magic number for {key}?", value, sentences, gold)


def niah_multikey(rng: random.Random, names: Names) -> Story:
    key, value = names.key(), names.number()
    other = [_needle(names.near_key(key), names.number()) for _ in range(4)]
    sentences, gold = _shuffled(rng, [_needle(key, value)], other)
    return Story(f"What is the special magic number for {key}?", value, sentences, gold)


def niah_multivalue(rng: random.Random, names: Names) -> Story:
    key = names.key()
    values = [names.number() for _ in range(4)]
    other = [_needle(names.near_key(key), names.number()) for _ in range(2)]
    sentences, gold = _shuffled(rng, [_needle(key, v) for v in values], other)
    return Story(f"What are all the special magic numbers for {key}?", ", ".join(values),
                 sentences, gold)


def niah_multiquery(rng: random.Random, names: Names) -> Story:
    keys = [names.key(), names.key()]
    values = [names.number() for _ in keys]
    other = [_needle(names.near_key(k), names.number()) for k in keys]
    sentences, gold = _shuffled(rng, [_needle(k, v) for k, v in zip(keys, values, strict=True)],
                                other)
    return Story(f"What are the special magic numbers for {keys[0]} and {keys[1]}?",
                 ", ".join(values), sentences, gold)


def _chain(names: Names, value: str, length: int) -> list[str]:
    variables = [names.variable() for _ in range(length)]
    lines = [f"VAR {variables[0]} = {value}."]
    lines += [f"VAR {b} = VAR {a}." for a, b in itertools.pairwise(variables)]
    return lines


def vt(rng: random.Random, names: Names) -> Story:
    """Variable tracking: only the first link names the value; the rest name a variable."""
    value, decoy = names.number(5), names.number(5)
    gold = _chain(names, value, 4)
    other = _chain(names, decoy, 4)
    merged, g, o = [], list(gold), list(other)
    while g or o:  # interleave, each chain in its own order
        src = g if (g and (not o or rng.random() < 0.5)) else o
        merged.append(src.pop(0))
    variables = [line.split()[1] for line in gold]
    return Story(f"Which variables are assigned the value {value}?", ", ".join(variables),
                 tuple(merged), tuple(merged.index(line) for line in gold))


def _moves(rng: random.Random, person: str, places: Sequence[str]) -> list[str]:
    verbs = ("went to", "moved to", "travelled to")
    return [f"{person} {rng.choice(verbs)} the {place}." for place in places]


def qa1(rng: random.Random, names: Names) -> Story:
    """One supporting fact: the person's last move (earlier moves are distractors)."""
    person, places = names.person(), rng.sample(PLACES, 4)
    return Story(f"Where is {person}?", places[-1], tuple(_moves(rng, person, places)), (3,))


def qa2(rng: random.Random, names: Names) -> Story:
    """Two: who took the object, and where that person went last."""
    person, thing, places = names.person(), names.thing(), rng.sample(PLACES, 4)
    moves = _moves(rng, person, places)
    sentences = (*moves[:2], f"{person} picked up the {thing}.", *moves[2:])
    return Story(f"Where is the {thing}?", places[-1], sentences, (2, 4))


def qa3(rng: random.Random, names: Names) -> Story:
    """Three, temporal: where the object was before its last place."""
    person, thing, places = names.person(), names.thing(), rng.sample(PLACES, 4)
    moves = _moves(rng, person, places)
    sentences = (*moves[:2], f"{person} picked up the {thing}.", *moves[2:])
    return Story(f"Where was the {thing} before the {places[3]}?", places[2], sentences,
                 (2, 3, 4))


STORIES: dict[str, Callable[[random.Random, Names], Story]] = {
    "niah_single": niah_single, "niah_multikey": niah_multikey,
    "niah_multivalue": niah_multivalue, "niah_multiquery": niah_multiquery, "vt": vt,
    "qa1": qa1, "qa2": qa2, "qa3": qa3,
}


# ---- filler ---------------------------------------------------------------------------------
_SUBJECTS = ("the old ferryman|a travelling scholar|the village council|the northern "
             "valley|a quiet fisherman|the mill owner|the river|an early winter|the "
             "harbour master|a group of farmers|the cathedral choir|the coastal road|"
             "a young engraver|the weaver's guild|the summer market|the lighthouse keeper|"
             "a herd of reindeer|the railway company|the forest|an old chronicle").split("|")
_VERBS = ("described|remembered|crossed|repaired|admired|measured|carried|painted|"
          "questioned|praised|ignored|followed|mapped|sold|copied|guarded|planted|"
          "surveyed|visited|forgot").split("|")
_OBJECTS = ("the stone bridge|a ledger of tides|the frozen lake|three barrels of salt|"
            "the copper bells|a map of the islands|the narrow stairs|a box of letters|"
            "the wheat fields|the broken sundial|a song about the sea|the eastern pass|"
            "the granary roof|a pair of brass scales|the old quarry|the willow grove|"
            "a faded tapestry|the weather vane|the spring flood|a wagon of timber").split("|")
_TAILS = ("before the first snow|after a long dispute|with great care|for reasons nobody "
          "wrote down|during the autumn fair|while the bells rang|as the tide turned|"
          "in the spring of that year|without telling anyone|at the request of the abbot|"
          "despite the rain|on a bright morning|by lamplight|in exchange for bread|"
          "long before the war").split("|")


def generated_filler(rng: random.Random) -> Iterator[str]:
    """Endless varied prose paragraphs (none mention needles, variables or moves)."""
    while True:
        sentences = []
        for _ in range(rng.randint(3, 7)):
            s = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}"
            if rng.random() < 0.7:
                s += f" {rng.choice(_TAILS)}"
            if rng.random() < 0.3:
                s += f", and {rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}"
            sentences.append(s[0].upper() + s[1:] + ".")
        yield " ".join(sentences)


def own_paragraphs(folder: Path) -> list[str]:
    """Paragraphs of the user's own files for `--haystack`, found and read once by the
    same code as `qrag index` (ignore rules, secrets, PDF/HTML text)."""
    paras = []
    for found in discover([folder]).files:
        try:
            text = read_document(found.path).text
        except ReadError:
            continue  # `qrag index` would report it; filler just needs enough text
        paras += [re.sub(r"\s+", " ", p).strip() for p in re.split(r"\n\s*\n", text)]
    paras = [p for p in paras if len(p) > 40]
    if not paras:
        raise UsageError(f"--haystack {folder}: no readable text paragraphs found")
    return paras


def filler(rng: random.Random, own: Sequence[str] | None = None) -> Iterator[str]:
    """Generated prose, or the user's paragraphs cycled in a seeded order."""
    if own is None:
        yield from generated_filler(rng)
    paras = list(own or ())
    while True:
        rng.shuffle(paras)
        yield from paras


# ---- haystacks -------------------------------------------------------------------------------
def haystack(stories: Sequence[Story], tokens: int, source: Iterator[str],
             rng: random.Random) -> list[str]:
    """Paragraphs of about `tokens` cl100k tokens with every story sentence inserted at a
    random place, each story's sentences in their order."""
    paras: list[str] = []
    total = 0
    while total < tokens:
        para = next(source)
        n = count_tokens(para)
        if total + n > tokens and paras:
            break
        paras.append(para)
        total += n
    # Each sentence goes into a paragraph (after a random sentence of it), stories in order.
    placed: dict[int, list[tuple[float, str]]] = {}
    for story in stories:
        where = sorted(rng.random() for _ in story.sentences)
        for j, pos in enumerate(where):
            at = min(int(pos * len(paras)), len(paras) - 1)
            placed.setdefault(at, []).append((pos, story.sentences[j]))
    out = []
    for i, para in enumerate(paras):
        parts = re.split(r"(?<=\.) ", para)
        inserts = sorted(placed.get(i, []))
        slots = sorted(rng.randint(0, len(parts)) for _ in inserts)
        for (_, sentence), slot in reversed(list(zip(inserts, slots, strict=True))):
            parts.insert(slot, sentence)  # from the back, so earlier slots stay valid
        out.append(" ".join(parts))
    return out


def write_corpus(folder: Path, paragraphs: Sequence[str], per_file_tokens: int = 8000) -> int:
    """Paragraphs into numbered text files of about `per_file_tokens` (document order =
    file order); returns the number of files. Parts of an earlier corpus written to the
    same folder are removed (unchanged files keep their hash, so re-indexing is cheap)."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("part-*.txt"):
        old.unlink()
    files, current, size = 0, [], 0
    for para in paragraphs:
        current.append(para)
        size += len(para) // 4
        if size >= per_file_tokens:
            (folder / f"part-{files:05d}.txt").write_text("\n\n".join(current) + "\n")
            files, current, size = files + 1, [], 0
    if current:
        (folder / f"part-{files:05d}.txt").write_text("\n\n".join(current) + "\n")
        files += 1
    return files


def make_eval(task: str, tokens: int, questions: int, seed: int,
              own: Sequence[str] | None = None) -> tuple[list[str], list[Story]]:
    """One shared haystack of `tokens` holding `questions` stories of `task`."""
    rng = random.Random(f"{task}/{tokens}/{seed}")
    names = Names(rng)
    stories = [STORIES[task](rng, names) for _ in range(questions)]
    return haystack(stories, tokens, filler(rng, own), rng), stories


def training_examples(task: str, n: int, seed: int, tokens: int = 4096,
                      own: Sequence[str] | None = None, stories: int = 1) -> list[Example]:
    """`qrag train` examples: a `tokens`-long document, cut by the real chunker without
    overlap (so each gold sentence is in exactly one chunk), holding the asked story and
    `stories - 1` others of the same task, as a bench haystack holds many (same names
    and wording, different facts: the distractors the bench will show)."""
    rng = random.Random(f"train/{task}/{seed}" + (f"/{stories}" if stories > 1 else ""))
    paragraphs = filler(rng, own)
    examples = []
    while len(examples) < n:
        names = Names(rng)
        told = [STORIES[task](rng, names) for _ in range(stories)]
        story = told[0]
        chunks = training_chunks("\n\n".join(haystack(told, tokens, paragraphs, rng)))
        support = []
        for fact in story.gold_facts:
            hits = [i for i, c in enumerate(chunks) if fact in c]
            if len(hits) != 1:
                break  # a fact cut by a chunk boundary: draw another example
            support.append(hits[0])
        else:
            examples.append(Example(id=f"{task}-{seed}-{len(examples)}",
                                    question=story.question, chunks=tuple(chunks),
                                    support=tuple(sorted(set(support))),
                                    answer=story.answer))
    return examples


def _found(fact: str, chunk: str) -> bool:
    """A chunk finds a fact when it holds the whole sentence or, for a paragraph longer
    than a chunk, a piece of it longer than the chunk overlap (about 70 characters)."""
    if fact in chunk:
        return True
    return len(fact) > 100 and any(len(p) >= 100 and p in fact
                                   for p in (x.strip() for x in chunk.split("\n\n")))


def fact_hits(picked_texts: Sequence[str], story: Story) -> tuple[float, float]:
    """(fact EM, fact F1) of picked chunk texts against a story's gold sentences."""
    gold = story.gold_facts
    found = [any(_found(g, t) for t in picked_texts) for g in gold]
    useful = [any(_found(g, t) for g in gold) for t in picked_texts]
    em = float(all(found))
    if not any(found) or not picked_texts:
        return em, 0.0
    recall, precision = sum(found) / len(gold), sum(useful) / len(picked_texts)
    return em, 2 * precision * recall / (precision + recall)
