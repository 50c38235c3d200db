"""Training data: the JSONL schema, validation with line numbers, converters, splits, and
where the shared real data sets (../shared/data) are found.

One line = one episode source::

    {"id": str, "question": str, "chunks": [str, ...], "support": [int, ...], "answer"?: str}

Chunk order is document order. `support` indexes the gold chunks (all must be picked).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from qrag_cli.config import env_value
from qrag_cli.files import atomic_output
from qrag_cli.types import (
    DataError,
    OnProblem,
    Problem,
    QragError,
    UsageError,
    ignore_problem,
)


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


class _Invalid(ValueError):
    """Why one decoded line is not an example (the caller knows where it is)."""


def parse_example(obj: object, where: str) -> Example:
    """Validate one decoded line; raise DataError naming `where` (file:line) and the field."""
    try:
        return _example(obj, where)
    except _Invalid as exc:
        raise DataError(f"{where}: {exc}") from None


def _example(obj: object, where: str) -> Example:
    if not isinstance(obj, dict):
        raise _Invalid("expected a JSON object")
    question = obj.get("question")
    chunks = obj.get("chunks")
    support = obj.get("support")
    if not isinstance(question, str) or not question.strip():
        raise _Invalid("'question' must be a non-empty string")
    if not isinstance(chunks, list) or not chunks or not all(isinstance(c, str) for c in chunks):
        raise _Invalid("'chunks' must be a non-empty list of strings")
    if (
        not isinstance(support, list)
        or not support
        or not all(isinstance(i, int) and not isinstance(i, bool) for i in support)
    ):
        raise _Invalid("'support' must be a non-empty list of chunk indexes")
    bad = [i for i in support if not 0 <= i < len(chunks)]
    if bad:
        raise _Invalid(f"support index {bad[0]} is outside 0..{len(chunks) - 1}")
    if len(set(support)) != len(support):
        raise _Invalid("'support' repeats an index")
    answer = obj.get("answer")
    if answer is not None and not isinstance(answer, str):
        raise _Invalid("'answer' must be a string")
    return Example(
        id=str(obj.get("id", where)),
        question=question,
        chunks=tuple(chunks),
        support=tuple(sorted(support)),
        answer=answer,
    )


def _read_text(path: Path, read_error: type[QragError] = DataError) -> str:
    """A UTF-8 text file's text; `read_error` (DataError unless told) naming the file when
    it cannot be read, DataError when it is not UTF-8."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise read_error(f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text: {exc.reason}") from exc


def _text_lines(path: Path) -> list[str]:
    return _read_text(path).splitlines()


def _records(text: str) -> list[str]:
    """JSONL records: split on newlines only. `str.splitlines` also splits on U+2028, U+0085
    and other characters that JSON carries raw inside strings (`write_examples` writes
    them so), which would cut a record in two."""
    return [line.removesuffix("\r") for line in text.split("\n")]


def _json_lines(
    path: Path, lines: Iterable[str], on_problem: OnProblem | None
) -> Iterator[tuple[str, object]]:
    """(where, value) for each non-blank line, where = "path:line". A line that is not JSON
    raises DataError naming it, or is reported to `on_problem` and skipped."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            why = f"not JSON ({exc.msg})"
        except RecursionError:  # json gives up on deep nesting: a bad line like any other
            why = "not JSON (nested too deeply)"
        else:
            yield where, value
            continue
        if on_problem is None:
            raise DataError(f"{where}: {why}")
        on_problem(Problem(where, why))


def read_jsonl(
    path: Path, on_problem: OnProblem | None = None, read_error: type[QragError] = DataError
) -> Iterator[tuple[str, object]]:
    """The one JSONL reader (training data, --questions, official JSONL files): see
    `_json_lines`; `read_error` as for `_read_text`."""
    return _json_lines(path, _records(_read_text(path, read_error)), on_problem)


def load_examples(
    path: Path, skip_bad: bool = False, on_problem: OnProblem = ignore_problem
) -> list[Example]:
    """Read a training JSONL. A bad line refuses the file unless `skip_bad` (then reported)."""
    examples: list[Example] = []
    for where, obj in read_jsonl(path, on_problem if skip_bad else None):
        try:
            examples.append(_example(obj, where))
        except _Invalid as exc:
            if not skip_bad:
                raise DataError(f"{where}: {exc} (use --skip-bad to skip bad lines)") from None
            on_problem(Problem(where, str(exc)))
    if not examples:
        raise DataError(f"{path} has no usable examples")
    return examples


def load_questions(path: Path) -> list[dict]:
    """`qrag ask --questions`: JSONL of {"id"?, "question"}; any bad line refuses the file."""
    items = []
    for where, item in read_jsonl(path, read_error=UsageError):
        question, ident = (
            (item.get("question"), item.get("id")) if isinstance(item, dict) else (None, None)
        )
        if not isinstance(question, str) or not question.strip():
            raise DataError(f'{where}: expected {{"question": "..."}} with a non-empty string')
        if (ident is not None and not isinstance(ident, (str, int))) or isinstance(ident, bool):
            raise DataError(f'{where}: "id" must be a string or an integer')
        items.append(item)
    if not items:
        raise DataError(f"{path} has no questions")
    return items


def write_examples(examples: Iterable[Example], path: Path) -> int:
    """Write JSONL atomically (see files.atomic_output); returns the count."""
    count = 0
    with atomic_output(Path(path)) as tmp, tmp.open("w", encoding="utf-8") as fh:
        for ex in examples:
            fh.write(ex.to_json() + "\n")
            count += 1
    return count


def data_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def split(
    examples: list[Example], fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """A seeded (train, eval) split; eval gets `fraction` of the examples (at least one)."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(len(examples) * fraction)) if len(examples) > 1 else 0
    held = set(order[:n_eval])
    return (
        [e for i, e in enumerate(examples) if i not in held],
        [e for i, e in enumerate(examples) if i in held],
    )


# ---- converters: official formats -> training JSONL ------------------------------------
def _read_json_or_jsonl(path: Path) -> Iterator[tuple[str, object]]:
    text = _read_text(path)
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None
        for i, item in enumerate(items):
            yield f"{path}[{i}]", item
        return
    yield from _json_lines(path, _records(text), None)


def paragraph(chunk: str) -> tuple[str, str]:
    """(title, sentences) of a chunk as `from_hotpotqa` and `from_musique` write it
    ("Title\nsentences"); ("", chunk) for a chunk without a title line."""
    title, newline, text = chunk.partition("\n")
    return (title, text) if newline else ("", chunk)


def from_hotpotqa(path: Path, on_problem: OnProblem = ignore_problem) -> Iterator[Example]:
    """HotpotQA / 2WikiMultihopQA: one chunk per paragraph, its title on the first line
    ("Title\nsentences", as a plain-text note of it would be written; chunk.structured)."""
    for where, item in _read_json_or_jsonl(path):
        try:
            titles = [c[0] for c in item["context"]]
            chunks = [f"{title}\n{''.join(sents).strip()}" for title, sents in item["context"]]
            gold = {t for t, _ in item["supporting_facts"]}
            support = sorted(i for i, t in enumerate(titles) if t in gold)
            lengths = {title: len(sents) for title, sents in item["context"]}
            for title, sent in item["supporting_facts"]:  # as in the official train file
                if title in lengths and not 0 <= sent < lengths[title]:
                    on_problem(
                        Problem(
                            where,
                            f"supporting sentence {sent} of {title!r} is past "
                            f"the end of its {lengths[title]} sentences; its "
                            "paragraph stays gold",
                        )
                    )
            yield parse_example(
                {
                    "id": item.get("_id", where),
                    "question": item["question"],
                    "chunks": chunks,
                    "support": support,
                    "answer": item.get("answer"),
                },
                where,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{where}: not a HotpotQA record ({exc})") from None


def from_musique(path: Path, on_problem: OnProblem = ignore_problem) -> Iterator[Example]:
    """MuSiQue: one chunk per paragraph; unanswerable questions are left out (reported)."""
    for where, item in _read_json_or_jsonl(path):
        try:
            if item.get("answerable") is False:
                on_problem(Problem(where, "unanswerable question left out"))
                continue
            paras = sorted(item["paragraphs"], key=lambda p: p["idx"])
            chunks = [f"{p['title']}\n{p['paragraph_text'].strip()}" for p in paras]
            support = [i for i, p in enumerate(paras) if p["is_supporting"]]
            yield parse_example(
                {
                    "id": item["id"],
                    "question": item["question"],
                    "chunks": chunks,
                    "support": support,
                    "answer": item.get("answer"),
                },
                where,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{where}: not a MuSiQue record ({exc})") from None


def from_hotpotqa_evidence(
    path: Path, on_problem: OnProblem = ignore_problem, distractors: int = 8
) -> Iterator[Example]:
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
            on_problem(Problem(where, f"{len(gold)} evidence sentences (1 to 4 fit), left out"))
            continue
        rng = random.Random(item["question"])
        others = [
            s for s in rng.sample(pool, min(len(pool), distractors + len(gold))) if s not in gold
        ][:distractors]
        chunks = gold + others
        rng.shuffle(chunks)
        yield parse_example(
            {
                "id": item.get("_id", f"{Path(path).name}:{number}"),
                "question": item["question"],
                "chunks": chunks,
                "support": sorted(chunks.index(g) for g in gold),
                "answer": item.get("answer"),
            },
            where,
        )


def training_chunks(text: str) -> list[str]:
    """A long text cut by the real chunker without overlap, so that every sentence of it
    is in exactly one chunk (a gold fact must be one chunk index)."""
    from qrag_cli.chunk import chunk_document
    from qrag_cli.config import ChunkConfig
    from qrag_cli.types import Document

    doc = Document(text, "text", ((0, 1),))
    return [c.text for c in chunk_document(doc, ChunkConfig(overlap=0))]


def from_ruler(path: Path, on_problem: OnProblem = ignore_problem) -> Iterator[Example]:
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
            yield parse_example(
                {
                    "id": str(item.get("index", where)),
                    "question": question,
                    "chunks": chunks,
                    "support": support,
                    "answer": ", ".join(outputs),
                },
                where,
            )
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
            raise DataError(
                f"{where}: line number {n} follows {last} (expected {last + 1} "
                "or 1 for a new story)"
            )
        last = n
        if "\t" not in rest:
            index_of[n] = len(sentences)
            sentences.append(rest.strip())
            continue
        fields = rest.split("\t")
        if len(fields) != 3 or not fields[0].strip() or not fields[1].strip():
            raise DataError(
                f"{where}: a question line needs 'question<TAB>answer<TAB>supporting line numbers'"
            )
        numbers = fields[2].split()
        if not numbers or not all(x.isascii() and x.isdigit() for x in numbers):
            raise DataError(f"{where}: supporting line numbers {fields[2]!r} are not numbers")
        missing = [x for x in numbers if int(x) not in index_of]
        if missing:
            raise DataError(
                f"{where}: supporting line {missing[0]} is not a story line before this question"
            )
        out.append(
            BabiQuestion(
                question=fields[0].strip(),
                answer=fields[1].strip(),
                sentences=tuple(sentences),
                support=tuple(index_of[int(x)] for x in numbers),
                path=str(path),
                line=number,
            )
        )
    return out


def from_babi(
    path: Path, on_problem: OnProblem = ignore_problem, filler_tokens: int = 1024
) -> Iterator[Example]:
    """bAbI (BabiLong-style): each question's story, one sentence per fact, spread in
    story order through about `filler_tokens` of generated prose (seeded by the question's
    file name and line, so a rerun writes the same file), cut by the real chunker without
    overlap; the gold chunks are those holding the supporting facts. A story that tells
    the same sentence twice is resolved by occurrence (the chunks keep story order); a
    fact that cannot be pinned to one chunk is reported and its question left out."""
    from qrag_cli.haystack import Story, filler, gold_chunks, haystack

    for q in read_babi(path):
        rng = random.Random(f"babi/{Path(path).name}:{q.line}")
        story = Story(q.question, q.answer, q.sentences, q.support)
        chunks = training_chunks("\n\n".join(haystack([story], filler_tokens, filler(rng), rng)))
        try:
            support = gold_chunks(chunks, [story])
        except LookupError as exc:
            on_problem(Problem(q.where, f"{exc}; question left out"))
            continue
        yield parse_example(
            {
                "id": f"{Path(path).name}:{q.line}",
                "question": q.question,
                "chunks": chunks,
                "support": sorted(set(support)),
                "answer": q.answer,
            },
            q.where,
        )


CONVERTERS: dict[str, Callable[..., Iterator[Example]]] = {  # (path, on_problem=...)
    "ruler": from_ruler,
    "hotpotqa": from_hotpotqa,
    "2wiki": from_hotpotqa,  # 2WikiMultihopQA shares HotpotQA's context/supporting_facts
    "musique": from_musique,
    "hotpotqa-evidence": from_hotpotqa_evidence,
    "babi": from_babi,
}


# ---- the shared real data (QRAG_DATA) ----------------------------------------------------
# Where it is comes from the environment (config.py; `make` points it at ../shared/data
# beside a checkout), never from where this file is: an installed qrag has no such folder.


def shared_data() -> Path:
    """The shared data folder ($QRAG_DATA); UsageError, with the fix, when it is not set."""
    folder = env_value("QRAG_DATA")
    if folder is None:
        raise UsageError(
            "this needs the shared real data (HotpotQA, MuSiQue, bAbI samples): set "
            "QRAG_DATA to its folder (../shared/data beside a checkout)"
        )
    return folder


BABI_FILES = {
    "qa1": "qa1_single-supporting-fact",
    "qa2": "qa2_two-supporting-facts",
    "qa3": "qa3_three-supporting-facts",
}


def babi_path(task: str, split: str) -> Path:
    """The real bAbI file of `task` ("qa1".."qa3"), split "train" or "test"."""
    return shared_data() / "babi" / f"{BABI_FILES[task]}_{split}.txt"


def real_examples() -> list[Example] | None:
    """The shared HotpotQA + MuSiQue samples (None when QRAG_DATA is unset or lacks them).
    The bench holds out `split(real_examples(), 0.5, seed)[1]`; training may use the rest."""
    folder = env_value("QRAG_DATA")
    if folder is None:
        return None
    hot, mus = folder / "hotpotqa_train_200.json", folder / "musique_train_100.jsonl"
    if not (hot.is_file() and mus.is_file()):
        return None
    return list(from_hotpotqa(hot)) + list(from_musique(mus))
