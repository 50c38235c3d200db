"""Stories hidden in filler text: the haystack that the long-context tasks (bench/longctx.py)
and the bAbI training data (datasets.from_babi) both hide their facts in, and where each
fact lands once the haystack is cut into chunks."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from qrag_cli.chunk import count_tokens
from qrag_cli.discover import discover
from qrag_cli.documents import read_document
from qrag_cli.secretscan import find_secret
from qrag_cli.types import ReadError, UsageError


@dataclass(frozen=True)
class Story:
    question: str
    answer: str
    sentences: tuple[str, ...]  # in the order they appear in the haystack
    gold: tuple[int, ...]  # indices into `sentences` a complete retrieval must contain
    source: str = ""  # a real bAbI question's file:line ("" for generated stories)

    @property
    def gold_facts(self) -> list[str]:
        return [self.sentences[i] for i in self.gold]


# ---- filler ---------------------------------------------------------------------------------
_SUBJECTS = (
    "the old ferryman|a travelling scholar|the village council|the northern "
    "valley|a quiet fisherman|the mill owner|the river|an early winter|the "
    "harbour master|a group of farmers|the cathedral choir|the coastal road|"
    "a young engraver|the weaver's guild|the summer market|the lighthouse keeper|"
    "a herd of reindeer|the railway company|the forest|an old chronicle"
).split("|")
_VERBS = (
    "described|remembered|crossed|repaired|admired|measured|carried|painted|"
    "questioned|praised|ignored|followed|mapped|sold|copied|guarded|planted|"
    "surveyed|visited|forgot"
).split("|")
_OBJECTS = (
    "the stone bridge|a ledger of tides|the frozen lake|three barrels of salt|"
    "the copper bells|a map of the islands|the narrow stairs|a box of letters|"
    "the wheat fields|the broken sundial|a song about the sea|the eastern pass|"
    "the granary roof|a pair of brass scales|the old quarry|the willow grove|"
    "a faded tapestry|the weather vane|the spring flood|a wagon of timber"
).split("|")
_TAILS = (
    "before the first snow|after a long dispute|with great care|for reasons nobody "
    "wrote down|during the autumn fair|while the bells rang|as the tide turned|"
    "in the spring of that year|without telling anyone|at the request of the abbot|"
    "despite the rain|on a bright morning|by lamplight|in exchange for bread|"
    "long before the war"
).split("|")


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
            doc = read_document(found.path)
        except ReadError:
            continue  # `qrag index` would report it; filler just needs enough text
        if find_secret(doc, (Path(found.rel).name, found.path.name)):
            continue
        text = doc.text
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
def haystack(
    stories: Sequence[Story], tokens: int, source: Iterator[str], rng: random.Random
) -> list[str]:
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


def gold_chunks(chunks: Sequence[str], told: Sequence[Story], asked: int = 0) -> list[int]:
    """The chunk holding each gold fact of `told[asked]`, for chunks cut without overlap
    from a haystack of the `told` stories. A sentence the story tells k times is found
    by occurrence: the haystack keeps each story's order, so its i-th telling is the
    i-th occurrence in the chunks. LookupError (naming the fact) when a fact cannot be
    pinned to one chunk: cut by a chunk boundary, or also told by another story."""
    story = told[asked]
    out = []
    for g in story.gold:
        fact = story.sentences[g]
        if any(fact in other.sentences for i, other in enumerate(told) if i != asked):
            raise LookupError(f"supporting fact {fact!r} is also told by another story")
        hits = [i for i, chunk in enumerate(chunks) for _ in range(chunk.count(fact))]
        if len(hits) != story.sentences.count(fact):
            raise LookupError(
                f"supporting fact {fact!r} is in {len(hits)} places of the "
                f"chunks, the story tells it {story.sentences.count(fact)}"
            )
        out.append(hits[story.sentences[:g].count(fact)])
    return out
