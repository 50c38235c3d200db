"""`qrag ask`: open the index, load the model once, run the episode, hand evidence to the LLM.

Returns data (`AskResult`); the callers (cli, mcp_server) show it, through `render`.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from qrag_cli.config import AskOptions
from qrag_cli.episode import IndexCandidates, run_episodes
from qrag_cli.files import display_path
from qrag_cli.onnx_model import load_inference_model
from qrag_cli.qtext import QNetwork
from qrag_cli.qvalue import without_lexical
from qrag_cli.stop import rule_for
from qrag_cli.store import ChunkRow, IndexSnapshot, corrupt_database
from qrag_cli.types import Episode, IndexMismatchError, NoIndexError

if TYPE_CHECKING:  # reader.py is imported only when an answer is asked for
    from qrag_cli.prompt import Answer, Reader


LOAD_TIMINGS = ("open_index_ms", "load_model_ms", "load_llm_ms")
"""One-off start-up costs, repeated in every result's timings (the rest are per question)."""


@dataclass
class AskResult:
    question: str
    model: str
    index: str
    episode: Episode
    timings_ms: dict[str, float]
    engine: str = "onnx"  # what ran the encoders: "onnx" or "torch" (qtext.QNetwork.engine)
    answer: Answer | None = None  # with --answer: the reader LLM's answer
    # --explain: the stored chunk of every alternative shown, by chunk id
    alternatives: dict[int, ChunkRow] = field(default_factory=dict)


def load_llm(opts: AskOptions) -> Reader:  # imported here: llama.cpp and openai are heavy
    from qrag_cli.reader import open_reader

    return open_reader(opts.reader)


class Asker:
    """Holds the index snapshot, the model and the LLM across many questions.

    `model`: an already loaded model to share (`qrag mcp` serves several indexes with one);
    it is used as given, `opts.lexical` is then the caller's business.
    """

    def __init__(
        self,
        index_dir: Path,
        model_spec: str | None,
        opts: AskOptions,
        model: QNetwork | None = None,
        notify: Callable[[str], None] | None = None,
    ) -> None:
        """`notify`: told of what the user should know but that is not a result (a search
        that fell back to exact); the CLI passes its stderr log."""
        t0 = time.perf_counter()
        self.opts = opts
        self.notify = notify
        self.index_dir = index_dir
        self.model_spec = model_spec
        self.snapshot = IndexSnapshot(index_dir)  # first: "no index" fails fast
        if self.snapshot.n_chunks == 0:
            self.snapshot.close()
            raise NoIndexError(
                f"index {index_dir} is empty (no text was found to index); "
                f"index files with text: `qrag index PATH --index {index_dir}`"
            )
        t1 = time.perf_counter()
        try:
            if model is None:
                # No --model: the model the index was built with.
                model = load_inference_model(
                    model_spec if model_spec is not None else self.snapshot.manifest.model_spec
                )
                if not opts.lexical:
                    model = without_lexical(model)
            self.model: QNetwork = model
            self._check_model(self.snapshot)
        except BaseException:
            self.snapshot.close()
            raise
        t2 = time.perf_counter()
        self.candidates = IndexCandidates(self.snapshot, exact=opts.exact, notify=notify)
        self.llm: Reader | None = None
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
                f"or pass the index's model with --model"
            )

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
        self.candidates = IndexCandidates(fresh, exact=self.opts.exact, notify=self.notify)

    def release(self) -> None:
        """Let go of the index snapshot until the next `refresh` (idle between questions)."""
        self.snapshot.release()

    def __enter__(self) -> Asker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.snapshot.close()

    def question_tokens(self, question: str) -> int:
        """The question's length in the retriever's tokens: its encoder reads only the first
        `model.cfg.question_cap` of them (the reader LLM, with --answer, sees it all)."""
        return len(self.model.tokenizer.ids([question])[0])

    def ask(
        self,
        question: str,
        on_token: Callable[[str], None] | None = None,
        llm: Reader | None = None,
        steps: int | None = None,
    ) -> AskResult:
        """`on_token`: called with each piece of the answer as the LLM writes it;
        `llm`: a loaded reader to answer with, instead of the one `opts.answer` loaded;
        `steps`: this question's budget, instead of `opts.steps`."""
        llm = llm if llm is not None else self.llm
        rule = rule_for(
            self.model.cfg, steps or self.opts.steps, self.opts.threshold, self.opts.no_stop
        )
        clock: dict[str, float] = {}
        t0 = time.perf_counter()
        try:
            episode = run_episodes(
                self.model,
                [question],
                [self.candidates],
                rule,
                timings=clock,
            )[0]
        except sqlite3.DatabaseError as exc:  # pages damaged beyond what opening it read
            raise corrupt_database(self.snapshot.index_dir, exc) from exc
        timings = {
            **self.load_ms,
            "encode_ms": clock.get("encode_ms", 0.0),
            "search_ms": clock.get("search_ms", 0.0),
            "retrieval_ms": (time.perf_counter() - t0) * 1000,
        }
        result = AskResult(
            question,
            self.model.cfg.name,
            str(self.snapshot.index_dir),
            episode,
            timings,
            engine=self.model.engine,
        )
        if self.opts.explain:
            alt_ids = sorted({c for ev in episode.evidence for c, _ in ev.alternatives})
            result.alternatives = {r.id: r for r in self.candidates.rows(alt_ids)}
        if llm is not None:
            t1 = time.perf_counter()
            # Short display paths: absolute ones would spend the LLM's context on prefixes.
            shown = [replace(ev, path=display_path(ev.path)) for ev in episode.evidence]
            result.answer = llm.answer(question, shown, on_token=on_token)
            timings["answer_ms"] = (time.perf_counter() - t1) * 1000
            timings.update({f"llm_{k}": v for k, v in result.answer.timings.items()})
        return result
