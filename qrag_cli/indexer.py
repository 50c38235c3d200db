"""`qrag index`: discover -> read -> chunk -> embed -> store, incremental and resumable."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from qrag_cli.chunk import chunk_document
from qrag_cli.config import DEFAULT_MAX_FILE_SIZE, ChunkConfig, env_value
from qrag_cli.discover import FoundFile, discover, file_hash, root_problem
from qrag_cli.documents import read_document
from qrag_cli.model_config import BASE_NAME, is_base_name
from qrag_cli.qtext import QNetwork
from qrag_cli.secretscan import RULES_VERSION, find_secret
from qrag_cli.store import IndexManifest, IndexWriter, stored_settings
from qrag_cli.types import (
    Chunk,
    OnProblem,
    Problem,
    QragError,
    ReadError,
    UsageError,
    contextual_text,
    ignore_problem,
)

# meta key: the secretscan rules every indexed file was checked under ("off": some files
# went in with --include-secrets).
SECRET_RULES_KEY = "secret_rules"
# Kinds whose text is extracted from markup or a binary format: finding none there is
# news (plain text files may well be empty, like a package's __init__.py).
_EXTRACTED = frozenset({"pdf", "html"})
NO_TEXT = "no text"


@dataclass(frozen=True)
class IndexSettings:
    """How an index is built. An existing index keeps its own: a setting not given on
    the command line (None) is the stored one, so `qrag index` with no options refreshes
    the index as it was built; a setting given and different rebuilds it."""

    model: str  # "default", "base" or a model folder (absolute)
    chunking: ChunkConfig
    max_file_size: int

    @property
    def model_spec(self) -> str | None:
        """What `load_model` takes."""
        return None if self.model == "default" else self.model


def model_spec_key(spec: str | None) -> str:
    """The stored form of `--model`: a folder becomes absolute (a refresh may run elsewhere)."""
    if spec is None or spec == "default":
        return "default"
    if is_base_name(spec):
        return "base"
    return str(Path(spec).expanduser().resolve())


def settings_for(
    index_dir: Path,
    model: str | None = None,
    chunk_tokens: int | None = None,
    overlap: int | None = None,
    max_file_size: int | None = None,
) -> IndexSettings:
    """Settings given (not None) win; the rest come from the index, else the defaults."""
    stored = stored_settings(index_dir)
    try:
        chunking = json.loads(stored.get("chunking", "{}"))
        stored_size = int(stored["max_file_size"]) if "max_file_size" in stored else None
    except (ValueError, TypeError):  # unreadable settings: the defaults
        chunking, stored_size = {}, None
    defaults = ChunkConfig()
    tokens = (
        chunk_tokens
        if chunk_tokens is not None
        else int(chunking.get("chunk_tokens", defaults.chunk_tokens))
    )
    shared = overlap if overlap is not None else int(chunking.get("overlap", defaults.overlap))
    if not 0 <= shared < tokens // 2:
        raise UsageError(
            f"--overlap ({shared}) must be >= 0 and less than half of --chunk-tokens ({tokens})"
        )
    stored_model = stored.get("model_spec")
    if stored_model is None and stored.get("model_name") == BASE_NAME:
        stored_model = "base"  # an index from before model_spec was stored
    return IndexSettings(
        model=model_spec_key(model) if model is not None else stored_model or "default",
        chunking=ChunkConfig(chunk_tokens=tokens, overlap=shared),
        max_file_size=(
            max_file_size if max_file_size is not None else stored_size or DEFAULT_MAX_FILE_SIZE
        ),
    )


FIRST_GROUP = 256  # chunks embedded before the first commit: it comes within seconds
LEAST_GROUP = 64  # a group never shrinks below this (batching stays efficient)


def next_group(chunks: int, seconds: float, interval: float, cap: int) -> int:
    """How many chunks to embed before the next commit chance: about `interval` seconds of
    embedding at the rate the last group ran, within [LEAST_GROUP, cap]. A kill loses at
    most one group, so on a slow machine (2,048 chunks took two minutes) commits still come
    every few seconds, while a fast one keeps groups of `cap` (QRAG_EMBED_GROUP), the size
    that keeps indexing close to the raw encoder's speed."""
    if chunks <= 0 or seconds <= 0:
        return cap
    return max(min(LEAST_GROUP, cap), min(cap, int(interval * chunks / seconds)))


@dataclass
class IndexSummary:
    index: str
    model: str
    new: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    failed: int = 0
    skipped: int = 0
    chunks_embedded: int = 0
    tokens_embedded: int = 0
    files_total: int = 0
    chunks_total: int = 0
    seconds: float = 0.0
    embed_seconds: float = 0.0
    rebuild: str | None = None
    repaired: list[str] = field(default_factory=list)
    problems: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class _Todo:
    found: FoundFile
    hash: str
    old_id: int | None  # file id of the indexed version, if any
    recheck: bool = False  # indexed and unchanged: only scan it for secrets


@dataclass
class _Pending:
    found: FoundFile
    hash: str
    kind: str
    chunks: list[Chunk]
    replaces: int | None  # file id of the old version


def _under(path: str, roots: Sequence[Path]) -> bool:
    p = Path(path)
    return any(p == r or r in p.parents for r in roots)


def build_index(
    roots: Sequence[Path],
    index_dir: Path,
    model: QNetwork,
    chunk_cfg: ChunkConfig,
    *,
    max_file_size: int = DEFAULT_MAX_FILE_SIZE,
    model_spec: str | None = None,
    include_secrets: bool = False,
    on_problem: OnProblem = ignore_problem,
    on_progress: Callable[[int, int], None] = lambda done, total: None,
) -> IndexSummary:
    """Bring the index at `index_dir` up to date with `roots`.

    Empty `roots` means "refresh the roots this index was built from". Changes are
    committed every few seconds, so a killed run loses little and the next one resumes.
    Damaged index files are repaired first (`IndexSummary.repaired` says what was done).
    `model_spec` (how `model` was named, see `model_spec_key`) and `max_file_size` are
    stored, so a refresh builds the same way.
    """
    started = time.perf_counter()
    # Paths named on the command line that cannot be read are reported and left out, and
    # the rest is indexed; only when none is left is it an error (one line naming them).
    bad_roots = [(str(r), why) for r in roots if (why := root_problem(Path(r)))]
    if roots and len(bad_roots) == len(roots):
        raise QragError("nothing to index: " + "; ".join(f"{p}: {why}" for p, why in bad_roots))
    unusable = {path for path, _ in bad_roots}
    roots = [r for r in roots if str(r) not in unusable]
    manifest = IndexManifest(
        model_name=model.cfg.name,
        model_fingerprint=model.cfg.fingerprint,
        dim=model.cfg.dim,
        chunking=chunk_cfg.to_dict(),
    )
    writer = IndexWriter(index_dir, manifest)
    try:
        summary = IndexSummary(
            index=str(index_dir), model=model.cfg.name, rebuild=writer.rebuild_reason
        )

        def report(path: str, why: str, failed: bool = False, shown: str | None = None) -> None:
            """A file left out: counted, listed in the summary and shown to the user."""
            if failed:
                summary.failed += 1
            else:
                summary.skipped += 1
            summary.problems.append({"path": path, "reason": why})
            on_problem(Problem(path, why if shown is None else shown))

        for path, why in bad_roots:
            report(path, why)
        if len(writer.damaged_rows):  # no intact copy left: embed their stored text again
            texts = writer.chunk_texts(writer.damaged_rows)
            t0 = time.perf_counter()
            writer.restore_vectors(writer.damaged_rows, model.embed_chunks(texts))
            summary.embed_seconds += time.perf_counter() - t0
            summary.chunks_embedded += len(texts)
        summary.repaired = list(writer.repairs)
        known_roots = [Path(p) for p in json.loads(writer.meta_get("roots") or "[]")]
        if writer.rebuild_reason:  # a rebuild must cover everything the old index held
            known_roots = [Path(p) for p in json.loads(writer.old_roots or "[]")]
        roots = [Path(r).expanduser().resolve() for r in roots] or known_roots
        if not roots and writer.rebuild_reason:
            raise QragError(
                f"index {index_dir} must be rebuilt ({writer.rebuild_reason}) and "
                f"its folders are unknown; rebuild it with "
                f"`qrag index PATH --index {index_dir}`"
            )
        if not roots:
            raise QragError("nothing to index: give a path, e.g. `qrag index ./docs`")
        all_roots = sorted({*known_roots, *roots}, key=str)
        if writer.rebuild_reason:
            roots = all_roots
        found = discover(roots, max_file_size=max_file_size, include_secrets=include_secrets)
        for skip in found.skipped:
            report(skip.where, skip.why)

        scan_secrets = not include_secrets
        # Kept files were checked under the rules of the run that indexed them. When those
        # were older rules, or off, every kept file is read and checked again (nothing is
        # re-embedded), so that a refresh drops what today's rules refuse.
        recheck = scan_secrets and writer.meta_get(SECRET_RULES_KEY) != str(RULES_VERSION)
        if include_secrets:  # committed with the first secret this run lets in
            writer.meta_set(SECRET_RULES_KEY, "off")

        existing = writer.files()
        seen: set[str] = set()
        todo: list[_Todo] = []
        for item in found.files:
            key = str(item.path)
            seen.add(key)
            old = existing.get(key)
            if old and old.size == item.size and old.mtime_ns == item.mtime_ns:
                if recheck:
                    todo.append(_Todo(item, old.hash, old.id, recheck=True))
                else:
                    summary.unchanged += 1
                continue
            try:
                digest = file_hash(item.path)
            except OSError as exc:
                report(item.rel, f"unreadable: {exc.strerror or exc}", failed=True)
                continue
            if old and old.hash == digest:
                writer.touch_file(old.id, item.size, item.mtime_ns)
                if recheck:
                    todo.append(_Todo(item, digest, old.id, recheck=True))
                else:
                    summary.unchanged += 1
                continue
            todo.append(_Todo(item, digest, old.id if old else None))
        for path, old in existing.items():
            if path not in seen and _under(path, roots):
                writer.remove_file(old.id)
                summary.removed += 1
        writer.meta_set("roots", json.dumps([str(r) for r in all_roots]))
        if model_spec is not None:
            writer.meta_set("model_spec", model_spec_key(model_spec))
        writer.meta_set("max_file_size", str(max_file_size))

        embed_group = env_value("QRAG_EMBED_GROUP")
        min_interval = env_value("QRAG_COMMIT_INTERVAL")
        group_limit = min(embed_group, FIRST_GROUP)
        total = len(todo)
        last_commit = time.perf_counter()
        commit_cost = 0.0
        group: list[_Pending] = []

        def flush() -> float:
            """Embed and stage the group; returns the seconds embedding took."""
            # E_a reads a chunk with its heading path (a contextual header): a chunk cut
            # from the middle of a section still says which article or section it is.
            texts = [contextual_text(c.heading, c.text) for p in group for c in p.chunks]
            t0 = time.perf_counter()
            vectors = model.embed_chunks(texts)
            took = time.perf_counter() - t0
            summary.embed_seconds += took
            offset = 0
            for p in group:
                n = len(p.chunks)
                if p.replaces is not None:
                    writer.remove_file(p.replaces)
                    summary.changed += 1
                else:
                    summary.new += 1
                writer.add_file(
                    str(p.found.path),
                    p.hash,
                    p.found.size,
                    p.found.mtime_ns,
                    p.kind,
                    p.chunks,
                    vectors[offset : offset + n],
                )
                offset += n
                summary.chunks_embedded += n
                summary.tokens_embedded += sum(c.n_tokens for c in p.chunks)
            group.clear()
            return took

        for done, job in enumerate(todo):
            on_progress(done, total)  # here, not at the end: skipped files count too
            item = job.found
            try:
                doc = read_document(item.path)
            except ReadError as exc:
                if job.recheck:  # indexed when it was readable; it has not changed since
                    summary.unchanged += 1
                    continue
                report(
                    item.rel, str(exc), failed=True, shown=str(exc).removeprefix(f"{item.path}: ")
                )
                continue
            secret = (
                find_secret(doc, (Path(item.rel).name, item.path.name)) if scan_secrets else None
            )
            # A secret is refused whole. A scanned (image-only) PDF or a script-only page has
            # nothing to search, and indexing it with 0 chunks would hide that from the user.
            refused = (
                f"secret ({secret})"
                if secret
                else (NO_TEXT if doc.kind in _EXTRACTED and not doc.text.strip() else None)
            )
            if refused:
                if job.old_id is not None:  # an indexed version (older or kept) goes too
                    writer.remove_file(job.old_id)
                    summary.removed += 1
                report(item.rel, refused)
                continue
            if job.recheck:
                summary.unchanged += 1
                continue
            chunks = chunk_document(doc, chunk_cfg, fits=model.fits)
            group.append(_Pending(item, job.hash, doc.kind, chunks, job.old_id))
            if (staged := sum(len(p.chunks) for p in group)) >= group_limit:
                group_limit = next_group(staged, flush(), min_interval, embed_group)
                # Commit often enough that a kill loses little, rarely enough that saving
                # the graph stays a small share of the run.
                now = time.perf_counter()
                if now - last_commit >= max(min_interval, 10 * commit_cost):
                    writer.commit()
                    commit_cost = time.perf_counter() - now
                    last_commit = time.perf_counter()
        on_progress(total, total)
        if group:
            flush()
        if scan_secrets:
            writer.meta_set(SECRET_RULES_KEY, str(RULES_VERSION))
        writer.finish()
        stats = writer.totals
        summary.files_total, summary.chunks_total = stats
    except BaseException:
        writer.abort()
        raise
    summary.seconds = round(time.perf_counter() - started, 3)
    summary.embed_seconds = round(summary.embed_seconds, 3)
    return summary
