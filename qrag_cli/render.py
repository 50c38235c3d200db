"""Output: rich tables for people, JSON for scripts. stdout = results, stderr = the rest.

The user's text (paths, chunk text, questions, answers, names, messages that quote them)
is data: `clean()` is the one door from such text to a terminal. Both consoles treat every
str as plain text (no markup, no emoji codes); styles come only from Text/style arguments.
"""

from __future__ import annotations

import json
import re
import sys
from typing import TYPE_CHECKING, Any, TextIO

from rich.console import Console, ConsoleOptions, RenderableType, RenderHook, RenderResult
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

from qrag_cli.config import env_value
from qrag_cli.files import display_path
from qrag_cli.types import HEADING_JOIN, Episode, Evidence, Problem, contextual_text, stop_name

if TYPE_CHECKING:
    from qrag_cli.asking import AskResult
    from qrag_cli.prompt import Answer

# C0 controls (but TAB and LF, decided by the layout), DEL and C1 (0x9b is a one-byte CSI
# on some terminals), bidi embeddings/overrides/isolates (text that reads other than it
# is: "Trojan Source"), line/paragraph separators, and lone surrogates (undecodable bytes
# of a filename after os.fsdecode; they cannot even be encoded for output).
_BEYOND_C0 = r"\x7f-\x9f\u202a-\u202e\u2066-\u2069\u2028\u2029\ud800-\udfff"
_UNSAFE = re.compile(rf"[\x00-\x08\x0a-\x1f{_BEYOND_C0}]")
_UNSAFE_MULTILINE = re.compile(rf"\r\n|[\x00-\x08\x0b-\x1f{_BEYOND_C0}]")
_NAMED = {"\n": "\\n", "\r": "\\r"}
# The same code points as JSON escapes: json.dumps(ensure_ascii=False) leaves them raw
# (it escapes C0 itself).
_JSON_UNSAFE = re.compile(f"[{_BEYOND_C0}]")


def _visible(match: re.Match[str]) -> str:
    char = match.group()
    if char == "\r\n":
        return "\n"
    code = ord(char)
    if char in _NAMED:
        return _NAMED[char]
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: show the original byte
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def clean(text: str, multiline: bool = False) -> str:
    """User text -> text safe to show on a terminal: every control character and bidi
    override becomes a visible Python-style escape (ESC -> `\\x1b`, U+202E -> `\\u202e`,
    CR -> `\\r`). TAB is kept; LF is kept only where the layout has lines (`multiline`, which
    also reads CR LF as LF), else shown as `\\n` so a message stays one line."""
    return (_UNSAFE_MULTILINE if multiline else _UNSAFE).sub(_visible, text)


def plain(text: str, style: str = "", multiline: bool = False) -> Text:
    """User text as a rich Text: cleaned, never parsed as markup."""
    return Text(clean(text, multiline), style=style)


class _Cleaned:
    """Renders its renderable, then cleans every text segment: a last line of defence for
    text that reached a console without clean() (the layout was measured without it)."""

    def __init__(self, renderable: RenderableType) -> None:
        self.renderable = renderable

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for segment in console.render(self.renderable, options):
            if segment.control or not _UNSAFE_MULTILINE.search(segment.text):
                yield segment
            else:
                yield Segment(clean(segment.text, multiline=True), segment.style)


class _CleanHook(RenderHook):
    def process_renderables(self, renderables: list[RenderableType]) -> list[RenderableType]:
        return [_Cleaned(r) for r in renderables]


def _console(**kwargs: Any) -> Console:
    console = Console(
        markup=False, emoji=False, highlight=False, no_color=env_value("NO_COLOR"), **kwargs
    )
    console.push_render_hook(_CleanHook())
    return console


# Piped output is not cut to 80 columns: paths must survive intact for scripts.
out = _console(soft_wrap=False, width=None if sys.stdout.isatty() else 160)
err = _console(stderr=True, soft_wrap=True)


def log(message: str, label: str = "", label_style: str = "", style: str = "") -> None:
    """One line on stderr, e.g. `log(f"{path}: {why}", label="skip", label_style="yellow")`.
    The message may quote user text: it is cleaned, and a newline in it stays visible."""
    line = Text()
    if label:
        line.append(label, style=label_style)
        line.append(" ")
    line.append(clean(message), style=style)
    err.print(line)


def problem(found: Problem | str) -> None:
    """Something left out and carried on past (a file, a data line): one `skip` line."""
    log(str(found), label="skip", label_style="yellow")


class TerminalStream:
    """Writes streamed text (LLM tokens, a library's prints) cleaned piece by piece. Pieces
    are str, so a multi-byte character is never split; a CR is held back until the next
    piece shows whether it starts a CR LF line break."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.pending = ""

    def write(self, piece: str) -> int:
        text = self.pending + piece
        self.pending = "\r" if text.endswith("\r") else ""
        text = text.removesuffix(self.pending)
        if text:
            self.stream.write(clean(text, multiline=True))
            self.stream.flush()
        return len(piece)

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        """Write what is held back; the underlying stream stays open."""
        if self.pending:
            self.stream.write(clean(self.pending, multiline=True))
            self.pending = ""
        self.stream.flush()

    def __getattr__(self, name: str) -> Any:  # fileno, isatty, encoding: the real stream's
        return getattr(self.stream, name)


def location(ev: Evidence) -> str:
    return f"{display_path(ev.path)}:{ev.start_line}-{ev.end_line}"


def json_line(obj: Any) -> str:
    """`obj` as one line of JSON that keeps the exact text: readable non-ASCII, but the
    code points clean() would escape are JSON escapes (json.dumps escapes only C0), so the
    JSON can be shown on a terminal as safely as it parses back."""
    text = json.dumps(obj, ensure_ascii=False)
    # Outside strings json.dumps writes only ASCII, so every match is inside a string.
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def print_json(obj: Any) -> None:
    sys.stdout.write(json_line(obj) + "\n")
    sys.stdout.flush()


def evidence_json(ev: Evidence, explain: bool = False, absolute: bool = False) -> dict:
    item = {
        "step": ev.step,
        "q": round(ev.q, 6),
        "chunk_id": ev.chunk_id,
        "path": ev.path if absolute else display_path(ev.path),
        "start_line": ev.start_line,
        "end_line": ev.end_line,
        "heading": list(ev.heading),
        "text": ev.text,
    }
    if explain:
        item["alternatives"] = [{"chunk_id": c, "q": round(q, 6)} for c, q in ev.alternatives]
    return item


def snippet(text: str, width: int = 90) -> str:
    """One clean line of at most `width` characters (whitespace runs become one space)."""
    flat = clean(" ".join(text.split()))
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def episode_table(
    episode: Episode,
    show_text: bool,
    explain: bool,
    alt_rows: dict[int, tuple[str, str]] | None = None,
) -> Table:
    table = Table(show_header=True, header_style="bold", expand=False)
    table.add_column("step", justify="right")
    table.add_column("Q", justify="right")
    table.add_column("where", no_wrap=True)
    table.add_column("text", overflow="fold")
    for ev in episode.evidence:
        table.add_row(
            str(ev.step),
            f"{ev.q:.3f}",
            plain(location(ev)),
            plain(contextual_text(ev.heading, ev.text), multiline=True)
            if show_text
            else snippet(HEADING_JOIN.join((*ev.heading, "")) + ev.text),
        )
        if explain:
            for chunk_id, q in ev.alternatives:
                where, text = (alt_rows or {}).get(chunk_id, (f"chunk {chunk_id}", ""))
                table.add_row(
                    "",
                    Text(f"{q:.3f}", style="dim"),
                    plain(where, style="dim"),
                    Text(snippet(text, 60), style="dim"),
                )
    return table


def stop_reason(episode: Episode) -> str:
    reason = {
        "complete": "stopped: evidence complete (the model's stop rule fired)",
        "budget": "stopped: step budget reached",
        "exhausted": "stopped: no chunks left",
    }[stop_name(episode.stop)]
    if episode.more_expected:
        reason += ", more evidence expected"
    return reason


def more_steps_note(episode: Episode, label: str = "") -> str | None:
    """The stderr note for a budget that ran out while the model expected more evidence."""
    if not episode.more_expected:
        return None
    return (
        f"note: {label}the step budget ran out ({len(episode.evidence)} steps) while the "
        "model still expected more evidence; a larger --steps may complete it"
    )


def stop_summary(m: dict) -> str:
    """evaluate.stop_metrics in one line, for `qrag train eval` and the bench."""
    return (
        f"stop (ceiling {m['budget']}): right step {m['exact_share']:.0%}, over "
        f"{m['over_share']:.0%} (+{m['over_steps']:.2f} steps), under {m['under_share']:.0%}, "
        f"never complete {m['never_share']:.0%}; mean steps {m['mean_steps']:.2f}; fact EM "
        f"{m['fact_em_stop']:.3f} with the stop vs {m['fact_em_fixed']:.3f} fixed"
    )


# ---- `qrag ask` / the mcp `ask` tool ------------------------------------------------------
def ask_json(result: AskResult, explain: bool = False, absolute: bool = False) -> dict:
    """`absolute`: paths as stored, for a client whose working directory is not ours."""
    obj = {
        "question": result.question,
        "model": result.model,
        "engine": result.engine,
        "index": result.index,
        "evidence": [evidence_json(ev, explain, absolute) for ev in result.episode.evidence],
        "stop": stop_name(result.episode.stop),
        "more_expected": result.episode.more_expected,
        "answer": None,
        "timings_ms": {k: round(v, 2) for k, v in result.timings_ms.items()},
    }
    if result.answer is not None:
        ans = result.answer
        stored = {ev.chunk_id: ev.path for ev in result.episode.evidence}
        obj["answer"] = ans.text.strip()
        obj["citations"] = [
            {
                "n": n,
                "chunk_id": ans.used[n - 1].chunk_id,
                # The LLM saw short paths (see Asker.ask); scripts get what the evidence shows.
                "path": (stored[ans.used[n - 1].chunk_id] if absolute else ans.used[n - 1].path),
                "start_line": ans.used[n - 1].start_line,
                "end_line": ans.used[n - 1].end_line,
            }
            for n in ans.citations
        ]
        obj["trimmed"] = [ev.chunk_id for ev in ans.trimmed]
    return obj


def uncited_note(ans: Answer, label: str = "") -> str | None:
    """What to tell the user about an answer that cites none of the evidence: it may come
    from the reader's own memory rather than from the user's files."""
    if not ans.text.strip():
        return f"note: {label}the reader gave no answer"
    if not ans.citations:
        return f"note: {label}the answer cites none of the evidence; check it against the sources"
    return None


def print_ask(result: AskResult, show_text: bool, explain: bool, streamed: bool) -> None:
    """For people: the answer and its sources (the answer itself already `streamed` to
    stdout, or not), else the evidence table; notes on stderr."""
    if result.answer is not None:
        ans = result.answer
        if not streamed:
            out.print(plain(ans.text.strip(), multiline=True))
        else:
            out.print()
        out.print()
        for n, ev in enumerate(ans.used, start=1):
            mark = "*" if n in ans.citations else " "
            out.print(plain(f"{mark}[{n}] {location(ev)}"))
        if ans.trimmed:
            log(
                f"note: {len(ans.trimmed)} evidence chunk(s) did not fit the reader's "
                "context and were left out of the prompt"
            )
        return
    alt_rows = {
        i: (f"{display_path(r.path)}:{r.start_line}-{r.end_line}", r.text)
        for i, r in result.alternatives.items()
    }
    out.print(episode_table(result.episode, show_text, explain, alt_rows))
    log(
        f"{stop_reason(result.episode)}; {result.timings_ms.get('retrieval_ms', 0):.0f} ms",
        style="dim",
    )
