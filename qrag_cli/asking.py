"""`qrag ask`: open the index, load the model once, run the episode, hand evidence to the LLM."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from qrag_cli import render
from qrag_cli.config import AskOptions
from qrag_cli.episode import IndexCandidates, StopRule, run_episodes
from qrag_cli.model import load_model
from qrag_cli.qnet import QModel
from qrag_cli.qvalue import without_lexical
from qrag_cli.store import IndexSnapshot, corrupt_database
from qrag_cli.types import Episode, IndexMismatchError, NoIndexError

LOAD_TIMINGS = ("open_index_ms", "load_model_ms", "load_llm_ms")
"""One-off start-up costs, repeated in every result's timings (the rest are per question)."""


@dataclass
class AskResult:
    question: str
    model: str
    index: str
    episode: Episode
    timings_ms: dict[str, float]
    answer: object | None = None  # reader.Answer
    alt_rows: dict[int, tuple[str, str]] = field(default_factory=dict)

    def to_json(self, explain: bool = False, absolute: bool = False) -> dict:
        """`absolute`: paths as stored, for a client whose working directory is not ours."""
        obj = {
            "question": self.question, "model": self.model, "index": self.index,
            "evidence": [render.evidence_json(ev, explain, absolute)
                         for ev in self.episode.evidence],
            "stop": self.episode.stop, "answer": None,
            "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
        }
        if self.answer is not None:
            ans = self.answer
            stored = {ev.chunk_id: ev.path for ev in self.episode.evidence}
            obj["answer"] = ans.text.strip()
            obj["citations"] = [
                {"n": n, "chunk_id": ans.used[n - 1].chunk_id,
                 # The LLM saw short paths (see ask); scripts get what the evidence shows.
                 "path": (stored[ans.used[n - 1].chunk_id] if absolute
                          else ans.used[n - 1].path),
                 "start_line": ans.used[n - 1].start_line,
                 "end_line": ans.used[n - 1].end_line} for n in ans.citations]
            obj["trimmed"] = [ev.chunk_id for ev in ans.trimmed]
        return obj

    def print(self, show_text: bool, explain: bool, streamed: bool) -> None:
        if self.answer is not None:
            ans = self.answer
            if not streamed:
                render.out.print(render.plain(ans.text.strip(), multiline=True))
            else:
                render.out.print()
            render.out.print()
            for n, ev in enumerate(ans.used, start=1):
                mark = "*" if n in ans.citations else " "
                render.out.print(render.plain(f"{mark}[{n}] {render.location(ev)}"))
            if ans.trimmed:
                render.log(f"note: {len(ans.trimmed)} evidence chunk(s) did not fit "
                           f"--n-ctx and were left out of the prompt")
            return
        render.out.print(render.episode_table(self.episode, show_text, explain, self.alt_rows))
        render.log(f"{render.stop_reason(self.episode)}; "
                   f"{self.timings_ms.get('retrieval_ms', 0):.0f} ms", style="dim")


def load_llm(opts: AskOptions):  # -> reader.Reader (imported late: llama.cpp is heavy)
    from qrag_cli.reader import Reader

    return Reader(opts.reader)


class Asker:
    """Holds the index snapshot, the model and the LLM across many questions.

    `model`: an already loaded model to share (`qrag mcp` serves several indexes with one);
    it is used as given, `opts.lexical` is then the caller's business.
    """

    def __init__(self, index_dir: Path, model_spec: str | None, opts: AskOptions,
                 model: QModel | None = None) -> None:
        t0 = time.perf_counter()
        self.opts = opts
        self.index_dir = index_dir
        self.model_spec = model_spec
        self.snapshot = IndexSnapshot(index_dir)  # first: "no index" fails fast
        if self.snapshot.n_chunks == 0:
            self.snapshot.close()
            raise NoIndexError(f"index {index_dir} is empty (no text was found to index); "
                               f"index files with text: `qrag index PATH --index {index_dir}`")
        t1 = time.perf_counter()
        try:
            if model is None:
                # No --model: the model the index was built with.
                model = load_model(model_spec if model_spec is not None
                                   else self.snapshot.manifest.model_spec)
                if not opts.lexical:
                    without_lexical(model)
            self.model: QModel = model
            self._check_model(self.snapshot)
        except BaseException:
            self.snapshot.close()
            raise
        t2 = time.perf_counter()
        self.candidates = IndexCandidates(self.snapshot, exact=opts.exact)
        self.llm = None
        self.load_ms = {"open_index_ms": (t1 - t0) * 1000, "load_model_ms": (t2 - t1) * 1000}
        if opts.answer:
            t3 = time.perf_counter()
            self.llm = load_llm(opts)
            self.load_ms["load_llm_ms"] = (time.perf_counter() - t3) * 1000

    def _check_model(self, snapshot: IndexSnapshot) -> None:
        manifest = snapshot.manifest
        if manifest.model_fingerprint != self.model.cfg.fingerprint:
            raise IndexMismatchError(
                f"index {self.index_dir} was built with model {manifest.model_name!r} but "
                f"{self.model.cfg.name!r} was asked for; re-index with "
                f"`qrag index --index {self.index_dir} --model {self.model_spec or 'default'}` "
                f"or pass the index's model with --model")

    def refresh(self) -> None:
        """Move to the latest committed index state (a long-lived Asker calls this before
        each question). The model stays loaded; the index is reopened only when another
        state was committed, and a half-written one is never seen (see IndexSnapshot)."""
        if self.snapshot.renew():
            return
        fresh = IndexSnapshot(self.index_dir)
        try:
            self._check_model(fresh)  # a rebuild may have switched models
        except BaseException:
            fresh.close()
            raise
        self.snapshot.close()
        self.snapshot = fresh
        self.candidates = IndexCandidates(fresh, exact=self.opts.exact)

    def release(self) -> None:
        """Let go of the index snapshot until the next `refresh` (idle between questions)."""
        self.snapshot.release()

    def __enter__(self) -> Asker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.snapshot.close()

    def note_long_question(self, question: str, label: str = "the question") -> None:
        """Say on stderr when the retriever cannot see all of a question: its encoder reads
        the first `question_cap` tokens only (the reader LLM, with --answer, sees it all)."""
        cap = self.model.cfg.question_cap
        n_tokens = len(self.model.tokenizer.ids([question])[0])
        if n_tokens > cap:
            render.log(f"note: {label} is {n_tokens} tokens long; retrieval reads only "
                       f"its first {cap} (put the key words first)")

    def ask(self, question: str, on_token=None, llm=None, steps: int | None = None) -> AskResult:
        """`llm`: a loaded reader to answer with, instead of the one `opts.answer` loaded;
        `steps`: this question's budget, instead of `opts.steps`."""
        llm = llm if llm is not None else self.llm
        threshold = None if self.opts.no_stop else (
            self.opts.threshold if self.opts.threshold is not None else self.model.cfg.threshold)
        clock: dict[str, float] = {}
        t0 = time.perf_counter()
        try:
            episode = run_episodes(self.model, [question], [self.candidates],
                                   StopRule(steps or self.opts.steps, threshold), timings=clock)[0]
        except sqlite3.DatabaseError as exc:  # pages damaged beyond what opening it read
            raise corrupt_database(self.snapshot.index_dir, exc) from exc
        timings = {**self.load_ms, "encode_ms": clock.get("encode_ms", 0.0),
                   "search_ms": clock.get("search_ms", 0.0),
                   "retrieval_ms": (time.perf_counter() - t0) * 1000}
        result = AskResult(question, self.model.cfg.name, str(self.snapshot.index_dir),
                           episode, timings)
        if self.opts.explain:
            alt_ids = sorted({c for ev in episode.evidence for c, _ in ev.alternatives})
            result.alt_rows = {r.id: (f"{render.display_path(r.path)}:{r.start_line}-"
                                      f"{r.end_line}", r.text)
                               for r in self.candidates.rows(alt_ids)}
        if llm is not None:
            t1 = time.perf_counter()
            # Short display paths: absolute ones would spend the LLM's context on prefixes.
            shown = [replace(ev, path=render.display_path(ev.path)) for ev in episode.evidence]
            result.answer = llm.answer(question, shown, on_token=on_token)
            timings["answer_ms"] = (time.perf_counter() - t1) * 1000
            timings.update({f"llm_{k}": v for k, v in result.answer.timings.items()})
        return result
