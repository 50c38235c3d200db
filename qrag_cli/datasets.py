"""Training data: the JSONL schema, validation with line numbers, converters, splits.

One line = one episode source::

    {"id": str, "question": str, "chunks": [str, ...], "support": [int, ...], "answer"?: str}

Chunk order is document order. `support` indexes the gold chunks (all must be picked).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from qrag_cli.types import DataError


@dataclass(frozen=True)
class Example:
    id: str
    question: str
    chunks: tuple[str, ...]
    support: tuple[int, ...]
    answer: str | None = None

    def to_json(self) -> str:
        obj = asdict(self)
        obj["chunks"], obj["support"] = list(self.chunks), list(self.support)
        if self.answer is None:
            del obj["answer"]
        return json.dumps(obj, ensure_ascii=False)


def parse_example(obj: object, where: str) -> Example:
    """Validate one decoded line; raise DataError naming `where` (file:line) and the field."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object")
    question = obj.get("question")
    chunks = obj.get("chunks")
    support = obj.get("support")
    if not isinstance(question, str) or not question.strip():
        raise DataError(f"{where}: 'question' must be a non-empty string")
    if not isinstance(chunks, list) or not chunks or not all(isinstance(c, str) for c in chunks):
        raise DataError(f"{where}: 'chunks' must be a non-empty list of strings")
    if not isinstance(support, list) or not support or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in support):
        raise DataError(f"{where}: 'support' must be a non-empty list of chunk indexes")
    bad = [i for i in support if not 0 <= i < len(chunks)]
    if bad:
        raise DataError(f"{where}: support index {bad[0]} is outside 0..{len(chunks) - 1}")
    if len(set(support)) != len(support):
        raise DataError(f"{where}: 'support' repeats an index")
    answer = obj.get("answer")
    if answer is not None and not isinstance(answer, str):
        raise DataError(f"{where}: 'answer' must be a string")
    return Example(id=str(obj.get("id", where)), question=question, chunks=tuple(chunks),
                   support=tuple(sorted(support)), answer=answer)


def _text_lines(path: Path) -> list[str]:
    """A UTF-8 text file's lines; DataError naming the file when it cannot be read."""
    try:
        return Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text: {exc.reason}") from exc


def load_examples(path: Path, skip_bad: bool = False,
                  on_bad: Callable[[str], None] = lambda msg: None) -> list[Example]:
    """Read a training JSONL. A bad line refuses the file unless `skip_bad` (then reported)."""
    lines = _text_lines(path)
    examples: list[Example] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            examples.append(parse_example(json.loads(line), where))
        except json.JSONDecodeError as exc:
            err = DataError(f"{where}: not JSON ({exc.msg})")
            if not skip_bad:
                raise err from None
            on_bad(str(err))
        except DataError as err:
            if not skip_bad:
                raise DataError(f"{err} (use --skip-bad to skip bad lines)") from None
            on_bad(str(err))
    if not examples:
        raise DataError(f"{path} has no usable examples")
    return examples


def write_examples(examples: Iterable[Example], path: Path) -> int:
    """Write JSONL atomically (temp file + rename); returns the count."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    count = 0
    with tmp.open("w", encoding="utf-8") as fh:
        for ex in examples:
            fh.write(ex.to_json() + "\n")
            count += 1
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return count


def data_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def split(examples: list[Example], fraction: float, seed: int
          ) -> tuple[list[Example], list[Example]]:
    """A seeded (train, eval) split; eval gets `fraction` of the examples (at least one)."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(len(examples) * fraction)) if len(examples) > 1 else 0
    held = set(order[:n_eval])
    return ([e for i, e in enumerate(examples) if i not in held],
            [e for i, e in enumerate(examples) if i in held])


# ---- converters: official formats -> training JSONL ------------------------------------
def _read_json_or_jsonl(path: Path) -> Iterator[tuple[str, object]]:
    text = Path(path).read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None
        for i, item in enumerate(items):
            yield f"{path}[{i}]", item
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                yield f"{path}:{number}", json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: not JSON ({exc.msg})") from None


def _ignore(message: str) -> None:
    pass


def from_hotpotqa(path: Path, on_skip: Callable[[str], None] = _ignore) -> Iterator[Example]:
    """HotpotQA / 2WikiMultihopQA: one chunk per paragraph ("Title: sentences")."""
    for where, item in _read_json_or_jsonl(path):
        try:
            titles = [c[0] for c in item["context"]]
            chunks = [f"{title}: {''.join(sents).strip()}" for title, sents in item["context"]]
            gold = {t for t, _ in item["supporting_facts"]}
            support = sorted(i for i, t in enumerate(titles) if t in gold)
            lengths = {title: len(sents) for title, sents in item["context"]}
            for title, sent in item["supporting_facts"]:  # as in the official train file
                if title in lengths and not 0 <= sent < lengths[title]:
                    on_skip(f"{where}: supporting sentence {sent} of {title!r} is past the "
                            f"end of its {lengths[title]} sentences; its paragraph stays gold")
            yield parse_example({"id": item.get("_id", where), "question": item["question"],
                                 "chunks": chunks, "support": support,
                                 "answer": item.get("answer")}, where)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{where}: not a HotpotQA record ({exc})") from None


def from_musique(path: Path, on_skip: Callable[[str], None] = _ignore) -> Iterator[Example]:
    """MuSiQue: one chunk per paragraph; unanswerable questions are left out (reported)."""
    for where, item in _read_json_or_jsonl(path):
        try:
            if item.get("answerable") is False:
                on_skip(f"{where}: unanswerable question left out")
                continue
            paras = sorted(item["paragraphs"], key=lambda p: p["idx"])
            chunks = [f"{p['title']}: {p['paragraph_text'].strip()}" for p in paras]
            support = [i for i, p in enumerate(paras) if p["is_supporting"]]
            yield parse_example({"id": item["id"], "question": item["question"],
                                 "chunks": chunks, "support": support,
                                 "answer": item.get("answer")}, where)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{where}: not a MuSiQue record ({exc})") from None


def from_hotpotqa_evidence(path: Path, on_skip: Callable[[str], None] = _ignore,
                           distractors: int = 8) -> Iterator[Example]:
    """HotpotQA gold-evidence records (`question`, `answer`, `evidence`: the supporting
    sentences only): each evidence sentence is a gold chunk, and `distractors` evidence
    sentences of other questions (seeded by the question) fill the episode. Records with
    more than 4 evidence sentences are left out and reported (a budget of 5 could not
    hold them with a wrong pick)."""
    items = list(_read_json_or_jsonl(path))
    pool: list[str] = []
    for where, item in items:
        try:
            pool.extend(str(e).strip() for e in item["evidence"])
        except (KeyError, TypeError) as exc:
            raise DataError(f"{where}: not a HotpotQA evidence record ({exc})") from None
    for number, (where, item) in enumerate(items, start=1):
        gold = list(dict.fromkeys(str(e).strip() for e in item["evidence"]))
        if not gold or len(gold) > 4:
            on_skip(f"{where}: {len(gold)} evidence sentences (1 to 4 fit), left out")
            continue
        rng = random.Random(item["question"])
        others = [s for s in rng.sample(pool, min(len(pool), distractors + len(gold)))
                  if s not in gold][:distractors]
        chunks = gold + others
        rng.shuffle(chunks)
        yield parse_example({"id": item.get("_id", f"{Path(path).name}:{number}"),
                             "question": item["question"],
                             "chunks": chunks, "support": sorted(chunks.index(g) for g in gold),
                             "answer": item.get("answer")}, where)


def training_chunks(text: str) -> list[str]:
    """A long text cut by the real chunker without overlap, so that every sentence of it
    is in exactly one chunk (a gold fact must be one chunk index)."""
    from qrag_cli.chunk import chunk_document
    from qrag_cli.config import ChunkConfig
    from qrag_cli.types import Document

    doc = Document(text, "text", ((0, 1),))
    return [c.text for c in chunk_document(doc, ChunkConfig(overlap=0))]


def from_ruler(path: Path, on_skip: Callable[[str], None] = _ignore) -> Iterator[Example]:
    """RULER's prepared JSONL (`index`, `input`, `outputs`, ...): the last line of `input`
    is the question, the text above it is cut by the real chunker (no overlap), and the
    gold chunks are those holding an expected output (a needle's value, a tracked
    variable's name)."""
    for where, item in _read_json_or_jsonl(path):
        try:
            text, outputs = item["input"].rstrip(), [str(o) for o in item["outputs"]]
            context, _, question = text.rpartition("\n")
            chunks = training_chunks(context)
            support = [i for i, c in enumerate(chunks) if any(o in c for o in outputs)]
            if not support:
                raise DataError(f"{where}: no chunk holds any of the outputs {outputs[:3]}")
            yield parse_example({"id": str(item.get("index", where)), "question": question,
                                 "chunks": chunks, "support": support,
                                 "answer": ", ".join(outputs)}, where)
        except (KeyError, TypeError, AttributeError) as exc:
            raise DataError(f"{where}: not a RULER record ({exc})") from None


@dataclass(frozen=True)
class BabiQuestion:
    """One bAbI question with the story told before it."""

    question: str
    answer: str
    sentences: tuple[str, ...]  # the story's lines before the question, questions excluded
    support: tuple[int, ...]  # indexes into `sentences`, in the file's order
    path: str
    line: int  # of the question line, counted from 1

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def read_babi(path: Path) -> list[BabiQuestion]:
    """Parse a bAbI v1.2 text file: numbered lines, numbering back at 1 starts a new story,
    and a question line is `N question<TAB>answer<TAB>supporting line numbers`. A
    malformed line raises DataError naming file:line."""
    lines = _text_lines(path)
    out: list[BabiQuestion] = []
    sentences: list[str] = []
    index_of: dict[int, int] = {}  # story line number -> index into `sentences`
    last = 0
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        where = f"{path}:{number}"
        head, _, rest = raw.partition(" ")
        if not (head.isascii() and head.isdigit()) or not rest.strip():
            raise DataError(f"{where}: expected 'N text' (a line number, a space, the text)")
        n = int(head)
        if n == 1:
            sentences, index_of = [], {}
        elif n != last + 1:
            raise DataError(f"{where}: line number {n} follows {last} (expected {last + 1} "
                            "or 1 for a new story)")
        last = n
        if "\t" not in rest:
            index_of[n] = len(sentences)
            sentences.append(rest.strip())
            continue
        fields = rest.split("\t")
        if len(fields) != 3 or not fields[0].strip() or not fields[1].strip():
            raise DataError(f"{where}: a question line needs 'question<TAB>answer<TAB>"
                            "supporting line numbers'")
        numbers = fields[2].split()
        if not numbers or not all(x.isascii() and x.isdigit() for x in numbers):
            raise DataError(f"{where}: supporting line numbers {fields[2]!r} are not numbers")
        missing = [x for x in numbers if int(x) not in index_of]
        if missing:
            raise DataError(f"{where}: supporting line {missing[0]} is not a story line "
                            "before this question")
        out.append(BabiQuestion(question=fields[0].strip(), answer=fields[1].strip(),
                                sentences=tuple(sentences),
                                support=tuple(index_of[int(x)] for x in numbers),
                                path=str(path), line=number))
    return out


def from_babi(path: Path, on_skip: Callable[[str], None] = _ignore,
              filler_tokens: int = 1024) -> Iterator[Example]:
    """bAbI (BabiLong-style): each question's story, one sentence per fact, spread in
    story order through about `filler_tokens` of generated prose (seeded by the question's
    file name and line, so a rerun writes the same file), cut by the real chunker without
    overlap; the gold chunks are those holding the supporting facts. A story that tells
    the same sentence twice is resolved by occurrence (the chunks keep story order); a
    fact that cannot be pinned to one chunk is reported and its question left out."""
    from qrag_cli.bench.longctx import Story, filler, gold_chunks, haystack

    for q in read_babi(path):
        rng = random.Random(f"babi/{Path(path).name}:{q.line}")
        story = Story(q.question, q.answer, q.sentences, q.support)
        chunks = training_chunks("\n\n".join(haystack([story], filler_tokens, filler(rng),
                                                       rng)))
        try:
            support = gold_chunks(chunks, [story])
        except LookupError as exc:
            on_skip(f"{q.where}: {exc}; question left out")
            continue
        yield parse_example({"id": f"{Path(path).name}:{q.line}", "question": q.question,
                             "chunks": chunks, "support": sorted(set(support)),
                             "answer": q.answer}, q.where)


CONVERTERS: dict[str, Callable[..., Iterator[Example]]] = {  # (path, on_skip=...)
    "ruler": from_ruler,
    "hotpotqa": from_hotpotqa,
    "2wiki": from_hotpotqa,  # 2WikiMultihopQA shares HotpotQA's context/supporting_facts
    "musique": from_musique,
    "hotpotqa-evidence": from_hotpotqa_evidence,
    "babi": from_babi,
}
