"""Long-context tasks (seeded): RULER-style needles, variable tracking and bAbI stories
(BabiLong-style: the real bAbI tasks, and generated look-alikes), hidden in filler prose
of any length.

The real tasks qa1-qa3 take their questions from the bAbI test files in ../shared/data
(the `_gen` tasks generate stories of the same shape and need no data); training
examples take them from the train files.

A task question comes with a *story*: its sentences in the order they must appear
(later bAbI facts overwrite earlier ones) and which of them are gold. A haystack holds
the stories of many questions at once, scattered through filler; every story uses its
own keys and names, so the other stories are distractors of the same shape. Scoring is
by fact, not by chunk: a gold fact is found when a picked chunk contains its sentence
(chunk overlap can put one sentence in two chunks).
"""

from __future__ import annotations

import functools
import itertools
import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from qrag_cli.datasets import (
    BABI_FILES,
    BabiQuestion,
    Example,
    babi_path,
    read_babi,
    training_chunks,
)
from qrag_cli.haystack import Story, filler, gold_chunks, haystack
from qrag_cli.types import UsageError

TASKS = (
    "niah_single",
    "niah_multikey",
    "niah_multivalue",
    "niah_multiquery",
    "vt",
    "qa1",
    "qa2",
    "qa3",
    "qa1_gen",
    "qa2_gen",
    "qa3_gen",
)


# ---- entities: every story in one haystack draws unused ones -----------------------------
ADJECTIVES = (
    "amber brisk cobalt dusty eager frosty gilded hollow ivory jagged keen "
    "lunar mellow nimble opal pale quiet russet silent tawny umber velvet wistful "
    "young zesty crimson"
).split()
NOUNS = (
    "falcon harbor lantern meadow quarry ribbon saddle thistle willow anchor badger "
    "candle dagger ember fjord garnet heron island jasper kettle locket marble"
).split()
FIRST = (
    "Mary John Sandra Daniel Ada Bram Cleo Dag Edda Finn Greta Hugo Ines Jon Kaja Leif "
    "Mira Nils Olga Per Rut Sten Tova Ulf Vera Wim Yrsa Zeno Alva Bo Cora Dino Elin "
    "Frej Hans Ivo Jana Kurt Lina Nora Otto Pia"
).split()
LAST = ("Berg Dahl Falk Holm Lind Nord Ek Sand Strom Vik Wall Ahl Borg Krona Lund Ros").split()
THINGS = ("football apple milk key book ball box lamp coin map flute ring").split()
COLOURS = ("red blue green black white grey brown silver golden yellow orange purple").split()
PLACES = (
    "kitchen garden office bathroom hallway bedroom cellar attic garage library pantry balcony"
).split()
# Nouns for renamed real bAbI objects: more than THINGS (whose draws the generated tasks'
# seeds depend on, so it stays as it is), so 50 stories of 3 objects fit one haystack.
BABI_THINGS = (*THINGS, *"cup hat kite bell vase drum fork shoe comb jug".split())


class Names:
    """Unused entities for one haystack (keys, people, objects, variables)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: set[str] = set()
        self.picked: dict[str, set[int]] = {}  # pool name -> indexes already taken

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
        return self._fresh(
            lambda: (
                f"{adj}-{r.choice(NOUNS)}" if r.random() < 0.5 else f"{r.choice(ADJECTIVES)}-{noun}"
            )
        )

    def person(self) -> str:
        r = self.rng
        return self._fresh(lambda: f"{r.choice(FIRST)} {r.choice(LAST)}")

    def thing(self, nouns: Sequence[str] = THINGS) -> str:
        r = self.rng
        return self._fresh(lambda: f"{r.choice(COLOURS)} {r.choice(nouns)}")

    def pick(self, pool: str, size: int) -> int | None:
        """An index into `pool` (of `size` items, e.g. a file's questions) not picked
        before for this haystack; None when every one has been."""
        taken = self.picked.setdefault(pool, set())
        free = [i for i in range(size) if i not in taken]
        if not free:
            return None
        index = self.rng.choice(free)
        taken.add(index)
        return index

    def variable(self) -> str:
        r = self.rng
        return self._fresh(lambda: "".join(r.choice("ABCDEFGHJKLMNPQRSTUVWXYZ") for _ in range(5)))

    def number(self, digits: int = 7) -> str:
        r = self.rng
        return self._fresh(lambda: str(r.randrange(10 ** (digits - 1), 10**digits)))


# ---- stories -------------------------------------------------------------------------------
def _needle(key: str, value: str) -> str:
    return f"The special magic number for {key} is {value}."


def _shuffled(
    rng: random.Random, gold: Sequence[str], other: Sequence[str]
) -> tuple[tuple[str, ...], tuple[int, ...]]:
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
    return Story(
        f"What are all the special magic numbers for {key}?", ", ".join(values), sentences, gold
    )


def niah_multiquery(rng: random.Random, names: Names) -> Story:
    keys = [names.key(), names.key()]
    values = [names.number() for _ in keys]
    other = [_needle(names.near_key(k), names.number()) for k in keys]
    sentences, gold = _shuffled(
        rng, [_needle(k, v) for k, v in zip(keys, values, strict=True)], other
    )
    return Story(
        f"What are the special magic numbers for {keys[0]} and {keys[1]}?",
        ", ".join(values),
        sentences,
        gold,
    )


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
    return Story(
        f"Which variables are assigned the value {value}?",
        ", ".join(variables),
        tuple(merged),
        tuple(merged.index(line) for line in gold),
    )


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
    return Story(f"Where was the {thing} before the {places[3]}?", places[2], sentences, (2, 3, 4))


# ---- real bAbI stories -------------------------------------------------------------------
# Every real bAbI story reuses these four people and three objects (qa1-qa3).
BABI_PEOPLE = ("Mary", "John", "Sandra", "Daniel")
BABI_OBJECTS = ("football", "apple", "milk")
_BABI_ENTITY = re.compile(r"\b(" + "|".join((*BABI_PEOPLE, *BABI_OBJECTS)) + r")\b")
# Longest story (sentences told before the question) a real task question may have.
# Twenty stories share one haystack and its length counts only the filler: at most 15
# (qa3 then averages 10 sentences) puts about 1.8K tokens of facts in a haystack, as vt
# and niah_multivalue do, where the median qa3 test story (42 sentences) would put 7K
# into a "4K" one. With the distinct-sentence rule it leaves 966 qa1, 448 qa2 and 72 qa3
# test questions (940, 420 and 97 train questions).
BABI_MAX_SENTENCES = 15


def babi_questions(task: str, split: str) -> tuple[BabiQuestion, ...]:
    """The questions of `task`'s bAbI `split` a haystack can take: a story of at most
    BABI_MAX_SENTENCES sentences, none of them told twice. The whole story before the
    question is kept (its other moves are the distractors); a repeated sentence would
    make a found fact ambiguous (scoring is by sentence text), so such stories are
    left out rather than half-scored. UsageError naming the file when it is missing."""
    path = babi_path(task, split)
    if not path.is_file():
        raise UsageError(
            f"task {task} needs the real bAbI file {path}, which is missing "
            f"(the generated {task}_gen needs no data)"
        )
    return _short_stories(path)


@functools.cache  # parsed once per file (3,000-16,000 lines), not once per story
def _short_stories(path: Path) -> tuple[BabiQuestion, ...]:
    return tuple(
        q
        for q in read_babi(path)
        if len(q.sentences) <= BABI_MAX_SENTENCES and len(set(q.sentences)) == len(q.sentences)
    )


def renamed(question: BabiQuestion, names: Names) -> Story:
    """`question`'s story with each person an unused full name and each object an unused
    "colour thing", so that it cannot be confused with the other stories of a haystack
    (bAbI tells every story with the same four people and three objects). Sentences,
    their order and the supporting facts are kept as they are."""
    new: dict[str, str] = {}

    def swap(m: re.Match[str]) -> str:
        word = m.group(1)
        if word not in new:  # in order of first mention, so a seed gives the same names
            new[word] = names.person() if word in BABI_PEOPLE else names.thing(BABI_THINGS)
        return new[word]

    sentences = tuple(_BABI_ENTITY.sub(swap, s) for s in question.sentences)
    return Story(
        _BABI_ENTITY.sub(swap, question.question),
        _BABI_ENTITY.sub(swap, question.answer),
        sentences,
        question.support,
        source=f"{Path(question.path).name}:{question.line}",
    )


def babi_story(task: str, split: str) -> Callable[[random.Random, Names], Story]:
    """A story maker for `task` drawing real bAbI questions of `split`, each question at
    most once per haystack."""

    def tell(rng: random.Random, names: Names) -> Story:
        pool = babi_questions(task, split)
        index = names.pick(f"babi/{task}/{split}", len(pool))
        if index is None:
            raise UsageError(
                f"task {task}: only {len(pool)} bAbI {split} questions have a "
                f"story of at most {BABI_MAX_SENTENCES} distinct sentences; "
                "ask for fewer questions"
            )
        return renamed(pool[index], names)

    return tell


STORIES: dict[str, Callable[[random.Random, Names], Story]] = {
    "niah_single": niah_single,
    "niah_multikey": niah_multikey,
    "niah_multivalue": niah_multivalue,
    "niah_multiquery": niah_multiquery,
    "vt": vt,
    # The bench evaluates the real tasks on bAbI's test files only ...
    "qa1": babi_story("qa1", "test"),
    "qa2": babi_story("qa2", "test"),
    "qa3": babi_story("qa3", "test"),
    "qa1_gen": qa1,
    "qa2_gen": qa2,
    "qa3_gen": qa3,
}
# ... and trains on their train files only, so no bench question is ever trained on.
TRAINING_STORIES = {**STORIES, **{task: babi_story(task, "train") for task in BABI_FILES}}


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


def make_eval(
    task: str, tokens: int, questions: int, seed: int, own: Sequence[str] | None = None
) -> tuple[list[str], list[Story]]:
    """One shared haystack of `tokens` holding `questions` stories of `task`. The real
    bAbI tasks (qa1-qa3) draw distinct questions of the bAbI test file with a seeded RNG
    (task/length/seed), among those whose whole story before the question has at most
    BABI_MAX_SENTENCES sentences, none repeated (see babi_questions), and rename each
    story's people and objects apart from the others'."""
    rng = random.Random(f"{task}/{tokens}/{seed}")
    names = Names(rng)
    stories = [STORIES[task](rng, names) for _ in range(questions)]
    return haystack(stories, tokens, filler(rng, own), rng), stories


def training_examples(
    task: str,
    n: int,
    seed: int,
    tokens: int = 4096,
    own: Sequence[str] | None = None,
    stories: int = 1,
) -> list[Example]:
    """`qrag train` examples: a `tokens`-long document, cut by the real chunker without
    overlap (so each gold sentence is in exactly one chunk), holding the asked story and
    `stories - 1` others of the same task, as a bench haystack holds many (same names
    and wording, different facts: the distractors the bench will show). The real bAbI
    tasks draw their questions from the bAbI train files (chosen and renamed as the
    bench does), never from the test files the bench evaluates on."""
    rng = random.Random(f"train/{task}/{seed}" + (f"/{stories}" if stories > 1 else ""))
    paragraphs = filler(rng, own)
    examples = []
    while len(examples) < n:
        names = Names(rng)
        told = [TRAINING_STORIES[task](rng, names) for _ in range(stories)]
        story = told[0]
        chunks = training_chunks("\n\n".join(haystack(told, tokens, paragraphs, rng)))
        try:
            support = gold_chunks(chunks, told)
        except LookupError:
            continue  # a fact cut by a chunk boundary: draw another example
        # A real story's id names its bAbI question (file:line), a train file's always.
        source = f"@{story.source}" if story.source else ""
        examples.append(
            Example(
                id=f"{task}-{seed}-{len(examples)}{source}",
                question=story.question,
                chunks=tuple(chunks),
                support=tuple(sorted(set(support))),
                answer=story.answer,
            )
        )
    return examples


def _found(fact: str, chunk: str) -> bool:
    """A chunk finds a fact when it holds the whole sentence or, for a paragraph longer
    than a chunk, a piece of it longer than the chunk overlap (about 70 characters)."""
    if fact in chunk:
        return True
    return len(fact) > 100 and any(
        len(p) >= 100 and p in fact for p in (x.strip() for x in chunk.split("\n\n"))
    )


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
