"""The served reader: an OpenAI-compatible chat endpoint answers from the evidence.

`--llm http://127.0.0.1:8080/v1` points qrag at a model someone already serves (llama.cpp's
server, Ollama, vLLM, LM Studio, a hosted API). The maintained `openai` client speaks the
protocol (streaming over SSE, timeouts, retries, error types); this module maps its errors
to one line each and shares the prompt and citations with the local reader (reader.py).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from typing import Any

from qrag_cli import render
from qrag_cli.config import LLM_KEY_VAR, ReaderSettings, env_value
from qrag_cli.prompt import (
    Answer,
    chat_messages,
    drop_last_picked,
    finished_answer,
    order_evidence,
)
from qrag_cli.types import Evidence, LLMError

CONNECT_TIMEOUT = 10.0  # seconds: a server that is up accepts at once; longer means it is not
# One more try after a dropped connection, a 429 or a 5xx (Ollama answers 503 while loading).
RETRIES = 1

# How servers say a prompt is too long: llama.cpp ("exceed context window"), OpenAI and
# vLLM ("maximum context length"), LM Studio ("context length"), others ("too many tokens").
_CONTEXT_FULL = re.compile(r"context (window|length)|too many tokens|too long", re.IGNORECASE)


class ServedReader:
    """A model behind an OpenAI-compatible base URL; connect once, answer() many questions."""

    def __init__(self, settings: ReaderSettings, url: str) -> None:
        try:
            import openai
        except ImportError as e:
            raise LLMError("the openai package is not installed; pip install openai") from e
        self.settings = settings
        self.source = url
        self._openai = openai
        # What a request can raise: the client's errors, and the value, type and attribute
        # errors of a body that parses as JSON but is not the shape the protocol promises.
        self._unusable = (openai.OpenAIError, ValueError, TypeError, AttributeError)
        start = time.perf_counter()
        connect = min(CONNECT_TIMEOUT, settings.timeout)
        # The key is QRAG_LLM_API_KEY's only: OPENAI_API_KEY belongs to OpenAI and must not
        # go to whatever URL was configured. Local servers take any key; "none" says so.
        self._client = openai.OpenAI(
            base_url=url,
            api_key=env_value(LLM_KEY_VAR) or "none",
            timeout=openai.Timeout(settings.timeout, connect=connect),
            max_retries=RETRIES,
        )
        # open_reader has put the configured name in settings.llm_model; none: ask the server.
        self.model = settings.llm_model or self._only_model()
        self.load_ms = (time.perf_counter() - start) * 1000

    def close(self) -> None:
        self._client.close()

    # -- errors -----------------------------------------------------------------------------

    def _failure(self, e: Exception) -> LLMError:
        """One line that says what went wrong with the server and what to do."""
        o, url = self._openai, self.source
        if isinstance(e, o.APITimeoutError):
            return LLMError(
                f"the reader server at {url} did not answer within "
                f"{self.settings.timeout:g} s (raise --llm-timeout for a slow model)"
            )
        if isinstance(e, o.APIConnectionError):
            return LLMError(f"cannot reach the reader server at {url}: is it running?")
        if isinstance(e, o.AuthenticationError | o.PermissionDeniedError):
            return LLMError(
                f"the reader server at {url} refused the API key (HTTP {e.status_code}); "
                f"set it in {LLM_KEY_VAR}"
            )
        if isinstance(e, o.NotFoundError):
            return LLMError(
                f"the reader server at {url} answered 404 ({_said(e)}): give the base URL "
                "that ends before /chat/completions (often .../v1), and a model it serves "
                "(--llm-model)"
            )
        if isinstance(e, o.APIStatusError):
            return LLMError(f"the reader server at {url} answered HTTP {e.status_code}: {_said(e)}")
        return LLMError(
            f"the reader server at {url} did not answer as an OpenAI-compatible server does "
            f"({render.clean(type(e).__name__)}: {_said(e)})"
        )

    def _only_model(self) -> str:
        """The model to ask for when none is named: the server's only one."""
        try:
            names = sorted(str(m.id) for m in self._client.models.list())
        except self._unusable as e:
            raise self._failure(e) from e
        if len(names) == 1:
            return names[0]
        if not names:
            raise LLMError(f"the reader server at {self.source} lists no models")
        shown = ", ".join(render.clean(n) for n in names[:6]) + (", ..." if len(names) > 6 else "")
        raise LLMError(
            f"the reader server at {self.source} serves {len(names)} models ({shown}); "
            "name one with --llm-model or QRAG_LLM_MODEL"
        )

    # -- answering --------------------------------------------------------------------------

    def answer(
        self,
        question: str,
        evidence: Sequence[Evidence],
        on_token: Callable[[str], None] | None = None,
    ) -> Answer:
        start = time.perf_counter()
        used = order_evidence(evidence, self.settings.order)
        trimmed: list[Evidence] = []
        while True:
            try:
                pieces, usage, first = self._stream(question, used, on_token)
                break
            except self._openai.BadRequestError as e:
                # Only the server knows its context size and tokenizer: when it says the
                # prompt is too long, drop the last-picked chunk and ask again.
                if not _CONTEXT_FULL.search(_said(e)):
                    raise self._failure(e) from e
                if len(used) <= 1:
                    raise LLMError(
                        f"context too small: the reader server at {self.source} cannot hold "
                        f"the question and one evidence chunk ({_said(e)})"
                    ) from e
                drop_last_picked(used, trimmed)
            except self._unusable as e:
                raise self._failure(e) from e
        return finished_answer(
            "".join(pieces),
            used,
            trimmed,
            load_ms=self.load_ms,
            prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
            generated=getattr(usage, "completion_tokens", None) or len(pieces),
            start=start,
            first=first,
            end=time.perf_counter(),
            decoding_from=first,
        )

    def _stream(
        self,
        question: str,
        used: Sequence[Evidence],
        on_token: Callable[[str], None] | None,
    ) -> tuple[list[str], Any, float | None]:
        """One streamed answer: its pieces, the usage the server reported (or None) and
        when the first piece came."""
        pieces: list[str] = []
        first: float | None = None
        usage: Any = None
        events = 0
        stream = self._create(question, used, stream=True)
        try:
            for chunk in stream:
                events += 1
                usage = getattr(chunk, "usage", None) or usage
                if not chunk.choices:  # a usage-only chunk at the end
                    continue
                piece = chunk.choices[0].delta.content
                if not piece:
                    continue
                if first is None:
                    first = time.perf_counter()
                pieces.append(piece)
                if on_token is not None:
                    on_token(piece)
        finally:
            stream.close()
        if events:
            return pieces, usage, first
        # A stream that ended before its first event: some servers (llama-cpp-python's)
        # fail a streamed request after its 200 header, so the error never arrives. The
        # same request unstreamed carries it (a BadRequestError for a full context), or,
        # from a server that only streams badly, the answer.
        completion = self._create(question, used, stream=False)
        text = completion.choices[0].message.content or ""
        if text and on_token is not None:
            on_token(text)
        return ([text] if text else []), completion.usage, time.perf_counter()

    def _create(self, question: str, used: Sequence[Evidence], stream: bool) -> Any:
        s = self.settings
        return self._client.chat.completions.create(
            model=self.model,
            messages=chat_messages(question, used),  # type: ignore[arg-type]
            max_tokens=s.max_tokens,
            temperature=s.temperature,
            seed=s.seed,
            stream=stream,
        )


def _said(e: Exception) -> str:
    """What the server (or the client) said, cleaned and cut to one short line."""
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, dict) else inner
        text = str(message if message is not None else body)
    else:
        text = getattr(e, "message", None) or str(e)
    text = " ".join(render.clean(text).split())
    return text if len(text) <= 200 else text[:197] + "..."
