"""The local reader: a GGUF file run in this process by llama.cpp (llama-cpp-python).

The only module that imports `llama_cpp`, and only when a reader is opened. Prompts,
citations and the Answer are shared with the served reader (prompt.py).
"""

from __future__ import annotations

import codecs
import ctypes
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from qrag_cli import render
from qrag_cli.config import ReaderSettings
from qrag_cli.gguf_file import GGUFFormatError, GGUFInfo, read_header
from qrag_cli.prompt import (
    Answer,
    chat_messages,
    completion_prompt,
    drop_last_picked,
    echoes,
    finished_answer,
    order_evidence,
)
from qrag_cli.types import Evidence, LLMError

# --- loading ---------------------------------------------------------------------------


def check_gguf(path: Path) -> GGUFInfo:
    """Refuse, in one line naming the file, anything that is not a whole GGUF model."""
    if not path.is_file():
        raise LLMError(f"no such LLM file: {path}; pass --llm PATH or set QRAG_LLM")
    try:
        return read_header(path)
    except OSError as e:
        raise LLMError(f"cannot read {path}: {e.strerror or e}") from e
    except GGUFFormatError as e:
        if str(e) == "no GGUF header":
            raise LLMError(f"{path} is not a GGUF file") from None
        raise LLMError(f"{path} is not a valid GGUF model: {e}") from None


# llama.cpp logs through one process-wide callback; we keep a reference so ctypes does not
# free it, and a flag so the latest Reader decides whether logs reach stderr. The logs quote
# the GGUF's own strings (name, chat template): they are cleaned like any text from a file,
# decoded incrementally because one UTF-8 character may come in two calls.
_LOG: dict[str, Any] = {
    "verbose": False,
    "callback": None,
    "decoder": codecs.getincrementaldecoder("utf-8")(errors="replace"),
}


def _route_logs(llama_cpp: Any, verbose: bool) -> None:
    _LOG["verbose"] = verbose
    if _LOG["callback"] is None:

        def on_log(level: int, text: bytes | None, user_data: Any) -> None:
            if _LOG["verbose"] and text:
                shown = render.clean(_LOG["decoder"].decode(text), multiline=True)
                with suppress(OSError):  # fd 2 directly: never stdout, not even sys.stdout
                    os.write(2, shown.encode())

        _LOG["callback"] = llama_cpp.llama_log_callback(on_log)
        llama_cpp.llama_log_set(_LOG["callback"], ctypes.c_void_p(0))


@contextmanager
def _native_output(verbose: bool) -> Iterator[None]:
    """Keep whatever native code prints (not all of it goes through the log callback) off
    stdout, which belongs to the answer: to stderr when verbose, else to /dev/null."""
    for stream in (sys.stdout, sys.stderr):
        with suppress(AttributeError, OSError, ValueError):
            stream.flush()
    try:
        saved = (os.dup(1), os.dup(2))
    except OSError:  # no fds 1/2 (daemonized): nothing to protect
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    python_streams = (sys.stdout, sys.stderr)
    try:
        if verbose:
            os.dup2(2, 1)
            # llama-cpp-python prints the GGUF's own strings (its chat template) raw.
            sys.stdout, sys.stderr = (render.TerminalStream(s) for s in python_streams)
        else:
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
        yield
    finally:
        if verbose:
            for stream in (sys.stdout, sys.stderr):
                with suppress(AttributeError, OSError, ValueError):
                    stream.close()  # what it held back; the real stream stays open
            sys.stdout, sys.stderr = python_streams
        for stream in (sys.stdout, sys.stderr):
            with suppress(AttributeError, OSError, ValueError):
                stream.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


# --- the reader ------------------------------------------------------------------------


class LocalReader:
    """A GGUF model loaded in this process; load once, then answer() many questions."""

    def __init__(self, settings: ReaderSettings, path: Path) -> None:
        self.settings = settings
        self.path = path
        self.source = str(path)
        header = check_gguf(self.path)
        try:
            import llama_cpp
        except ImportError as e:
            raise LLMError("llama-cpp-python is not installed; pip install llama-cpp-python") from e

        _route_logs(llama_cpp, settings.verbose)
        threads = settings.threads or os.cpu_count() or 1
        start = time.perf_counter()
        try:
            with _native_output(settings.verbose):
                self._llm = llama_cpp.Llama(
                    model_path=str(self.path),
                    n_ctx=settings.n_ctx,
                    n_threads=threads,
                    n_threads_batch=threads,
                    n_gpu_layers=settings.gpu_layers,
                    seed=settings.seed,
                    verbose=settings.verbose,
                )
        except Exception as e:  # llama-cpp-python reports load failures in several types
            if "load model" in str(e):
                arch = header.architecture
                why = f"unsupported architecture {arch!r}" if arch else "unsupported architecture"
                raise LLMError(f"llama.cpp cannot load {self.path} ({why} or corrupt file)") from e
            raise LLMError(f"llama.cpp cannot start {self.path}: {e}") from e
        self.load_ms = (time.perf_counter() - start) * 1000
        self._formatter = self._chat_formatter()

    def _chat_formatter(self) -> Any:
        """The GGUF's own chat template, rendered exactly as create_chat_completion would,
        or None to fall back to a plain completion prompt."""
        template = self._llm.metadata.get("tokenizer.chat_template")
        if not template:
            return None
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        model = self._llm._model  # token texts, as Llama.__init__ passes them to the formatter
        eos, bos = self._llm.token_eos(), self._llm.token_bos()
        try:
            formatter = Jinja2ChatFormatter(
                template=template,
                eos_token=model.token_get_text(eos) if eos != -1 else "",
                bos_token=model.token_get_text(bos) if bos != -1 else "",
                stop_token_ids=[eos],
            )
            formatter(messages=[{"role": "user", "content": "test"}])
        except Exception:  # a template our Jinja cannot render: plain prompt still works
            return None
        return formatter

    def close(self) -> None:
        self._llm.close()

    # -- prompt -------------------------------------------------------------------------

    def prompt(self, question: str, evidence: Sequence[Evidence]) -> tuple[str, list[str]]:
        """The full prompt text for this evidence (already ordered), and its stop strings."""
        if self._formatter is None:  # a base model: see COMPLETION_INSTRUCTION
            return completion_prompt(question, evidence), ["\nQuestion:", "\nEvidence:"]
        result = self._formatter(messages=chat_messages(question, evidence))
        stop = result.stop if isinstance(result.stop, list) else [result.stop]
        return result.prompt, [s for s in stop if s]

    def _tokens(self, text: str) -> list[int]:
        if self._formatter is None:
            # Plain prompt: BOS as the model asks, and evidence text is never control tokens.
            return self._llm.tokenize(text.encode(), add_bos=True, special=False)
        # Chat templates write their own special tokens (create_chat_completion does the same).
        return self._llm.tokenize(text.encode(), add_bos=False, special=True)

    def fit(
        self, question: str, evidence: Sequence[Evidence]
    ) -> tuple[list[Evidence], list[Evidence], list[int], list[str]]:
        """Drop last-picked evidence until prompt + max_tokens fits the context.

        Returns (used, trimmed, prompt tokens, stop strings)."""
        n_ctx = min(self.settings.n_ctx, self._llm.n_ctx())
        max_tokens = self.settings.max_tokens
        used = order_evidence(evidence, self.settings.order)
        trimmed: list[Evidence] = []
        while True:
            text, stop = self.prompt(question, used)
            tokens = self._tokens(text)
            if len(tokens) + max_tokens <= n_ctx:
                return used, trimmed, tokens, stop
            if len(used) <= 1:
                break
            drop_last_picked(used, trimmed)
        what = "question and one evidence chunk need" if used else "question needs"
        raise LLMError(
            f"context too small: {what} {len(tokens)} tokens plus --max-tokens {max_tokens}, "
            f"but --n-ctx is {self.settings.n_ctx}; raise --n-ctx or lower --max-tokens"
        )

    # -- answering ----------------------------------------------------------------------

    def answer(
        self,
        question: str,
        evidence: Sequence[Evidence],
        on_token: Callable[[str], None] | None = None,
    ) -> Answer:
        import llama_cpp

        start = time.perf_counter()
        _LOG["verbose"] = self.settings.verbose  # the log callback is process-wide
        used, trimmed, tokens, stop = self.fit(question, evidence)
        sampled = 0

        def count(input_ids: Any, logits: Any) -> bool:
            nonlocal sampled
            sampled += 1
            return False

        s = self.settings
        pieces: list[str] = []
        first: float | None = None
        stream = self._llm.create_completion(
            prompt=tokens,
            max_tokens=s.max_tokens,
            temperature=s.temperature,
            top_k=1 if s.temperature <= 0 else 40,  # temperature 0 means greedy, always
            seed=s.seed,
            stop=stop,
            stream=True,
            stopping_criteria=llama_cpp.StoppingCriteriaList([count]),
        )
        finish = None
        cut = False
        # A base model's answer is its first line that says something: a line that only
        # repeats the prompt (the question, an evidence label, the worked example's
        # answer, "Answer:") is passed over, and the line is shown once it is whole.
        one_line = self._formatter is None
        line = ""

        def says_something(text: str) -> bool:
            return bool(text.strip()) and not echoes(text, question, used)

        for chunk in stream:
            choice = chunk["choices"][0]
            finish = choice.get("finish_reason") or finish
            piece = choice["text"]
            if not one_line:
                if piece:
                    if first is None:
                        first = time.perf_counter()
                    pieces.append(piece)
                    if on_token is not None:
                        on_token(piece)
                continue
            line += piece
            while "\n" in line and not cut:
                head, line = line.split("\n", 1)
                if says_something(head):
                    line, cut = head.strip(), True
            if cut:
                stream.close()  # stop generating: the rest would be the model's own questions
                break
        if one_line and says_something(line):
            first = time.perf_counter()
            pieces.append(line.strip())
            if on_token is not None:
                on_token(line.strip())
        end = time.perf_counter()
        # The criterion runs once per sampled token and once more after the loop; on "stop"
        # the last sampled token (end of turn, or the one completing a stop string) is not
        # part of the answer. Cut at a line end, it has not run again, and the token that
        # ended the line is counted though not shown (it may hold the line's last letters).
        generated = sampled if cut else max(sampled - 1 - (finish == "stop"), 0)
        return finished_answer(
            "".join(pieces),
            used,
            trimmed,
            load_ms=self.load_ms,
            prompt_tokens=len(tokens),
            generated=generated,
            start=start,
            first=first,
            end=end,
            # A whole line is shown at once: no per-token decode time to measure.
            decoding_from=None if one_line else first,
        )
