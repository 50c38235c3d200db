"""Settings in one place: where things live, the environment variables, config.toml, and
the defaults of every command. Each setting is declared once, here; the command-line flags
take their defaults from these declarations, and `qrag config` shows what is in effect.

Standard library, platformdirs and tomli-w only: every command imports this module.
"""

from __future__ import annotations

import contextlib
import os
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import platformdirs
import tomli_w

from qrag_cli.files import atomic_write
from qrag_cli.types import ConfigError, UsageError

DEFAULT_INDEX = "default"
# The most chunks one question may pick, for `qrag ask --steps` and MCP `ask` alike: it
# bounds one answer's size (every step adds a whole chunk of text).
MAX_STEPS = 32
CONFIG_NAME = "config.toml"
DEFAULT_SOURCE = "default"
FILE_SOURCE = CONFIG_NAME


# --- environment variables -------------------------------------------------------------


@dataclass(frozen=True)
class EnvVar:
    name: str
    meaning: str
    parse: Callable[[str], Any]
    """Raw (non-empty) text -> value; ValueError says what is wrong with it."""
    default: Any = None
    """The value when the variable is unset or empty."""
    quoted: bool = True
    """Whether an error may repeat the value (not where it can hold a key or password)."""


def _path(text: str) -> Path:
    return Path(text).expanduser()


LLM_KEY_VAR = "QRAG_LLM_API_KEY"
"""The API key of a served reader comes from here only: never a flag (shell history, process
lists) and never a file qrag writes."""


def llm_source(text: str) -> str | Path:
    """What `--llm`, QRAG_LLM and `[reader] llm` name: the base URL of an OpenAI-compatible
    server (http or https, kept as written less a trailing slash), else a GGUF path.
    ValueError for a URL qrag would not send a question to."""
    from urllib.parse import urlsplit

    text = text.strip()
    if "://" not in text:
        return Path(text).expanduser()
    parts = urlsplit(text)
    if parts.scheme not in {"http", "https"}:
        raise ValueError(f"a reader URL must be http:// or https://, not {parts.scheme}://")
    if not parts.hostname:
        raise ValueError("the reader URL has no host")
    if parts.username is not None or parts.password is not None:
        # A key in a URL ends up in shell history, config.toml and process lists.
        raise ValueError(f"put the API key in {LLM_KEY_VAR}, not in the URL")
    try:
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        raise ValueError("the reader URL has a bad port") from None
    return text.rstrip("/")


def _whole(least: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            number = int(text.strip())
        except ValueError:
            raise ValueError("not a whole number") from None
        if number < least:
            raise ValueError(f"must be at least {least}")
        return number

    return parse


def _seconds(text: str) -> float:
    try:
        number = float(text.strip())
    except ValueError:
        raise ValueError("not a number of seconds") from None
    if not number >= 0 or number == float("inf"):  # `not >=`: nan is refused too
        raise ValueError("must be a finite number of seconds, 0 or more")
    return number


def _dtype(text: str) -> str:
    value = text.strip().lower()
    if value not in {"fp32", "bf16", "int8"}:
        raise ValueError("use fp32, bf16 or int8")
    return value


def _engine(text: str) -> str:
    value = text.strip().lower()
    if value not in {"onnx", "torch"}:
        raise ValueError("use onnx or torch")
    return value


def _zero_one(text: str) -> bool:
    if text.strip() not in {"0", "1"}:
        raise ValueError("use 1 (on) or 0 (off)")
    return text.strip() == "1"


ENV_VARS: dict[str, EnvVar] = {
    var.name: var
    for var in (
        EnvVar(
            "QRAG_HOME",
            "folder of indexes and config.toml (unset: the platform's user "
            "data and config folders)",
            _path,
        ),
        EnvVar("QRAG_MODEL", "model folder used when --model is not given", _path),
        EnvVar(
            "QRAG_LLM",
            "reader used when --llm is not given: a GGUF file or an OpenAI-compatible base URL",
            llm_source,
            quoted=False,  # a URL with user:password in it must not be echoed
        ),
        EnvVar(
            "QRAG_LLM_MODEL",
            "model name asked of a served reader when --llm-model is not given",
            str.strip,
        ),
        EnvVar(
            LLM_KEY_VAR,
            "API key sent to a served reader (never read from a flag or config.toml)",
            str,
            quoted=False,
        ),
        EnvVar(
            "QRAG_DTYPE",
            "inference dtype fp32|bf16|int8 (int8: the state encoder's, chunks in fp32; "
            "unset: bf16 where the CPU computes it natively, else int8 on x86, else fp32)",
            _dtype,
        ),
        EnvVar(
            "QRAG_ENGINE",
            "what runs the encoders for ask, index and mcp: onnx|torch (unset: onnx where "
            "the model folder has ONNX graphs, else torch)",
            _engine,
        ),
        EnvVar(
            "QRAG_DATA",
            "folder of the shared real data the benches and the training recipe read "
            "(HotpotQA, MuSiQue and bAbI samples; `make` sets ../shared/data)",
            _path,
        ),
        EnvVar("QRAG_DEBUG", "1: tracebacks on errors, like --debug", _zero_one, False),
        # Tests shrink these two to exercise many commits on a small corpus.
        EnvVar(
            "QRAG_EMBED_GROUP",
            "chunks embedded together while indexing (enough to length-sort into tight batches)",
            _whole(1),
            # 2048, not 512: indexing kept closer to the raw encoder's speed at 1M tokens
            # (BENCHMARKS.md "int8 states"), and a group is still under a minute of work.
            2048,
        ),
        EnvVar("QRAG_COMMIT_INTERVAL", "least seconds between index commits", _seconds, 10.0),
        # no-color.org: any non-empty value means no colour.
        EnvVar("NO_COLOR", "set: no colour in output", lambda text: True, False),
        EnvVar("TERM", "dumb: no progress bars", str),
    )
}


def env_source(name: str) -> str:
    return f"environment variable {name}"


def env_setting(name: str) -> tuple[Any, str]:
    """The value of a declared environment variable and its source; ConfigError, naming
    the variable, when its value is bad."""
    var = ENV_VARS[name]
    text = os.environ.get(name, "")
    if not text:
        return var.default, DEFAULT_SOURCE
    try:
        return var.parse(text), env_source(name)
    except ValueError as exc:
        shown = f"{name}={text!r}" if var.quoted else name
        raise ConfigError(f"bad environment variable {shown}: {exc}") from None


def env_value(name: str) -> Any:
    """The value of a declared environment variable (its default when unset or empty)."""
    return env_setting(name)[0]


def check_environment() -> None:
    """Refuse a bad value of any qrag environment variable before a command starts."""
    for name in ENV_VARS:
        env_setting(name)


# --- where things live -----------------------------------------------------------------


def qrag_home() -> Path:
    """Root of qrag's data: $QRAG_HOME if set, else the platform's user data dir."""
    return env_value("QRAG_HOME") or Path(platformdirs.user_data_dir("qrag"))


def config_dir() -> Path:
    """Folder of `config.toml`: $QRAG_HOME if set (tests), else the user config dir."""
    return env_value("QRAG_HOME") or Path(platformdirs.user_config_dir("qrag"))


def config_path() -> Path:
    return config_dir() / CONFIG_NAME


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """Files created meanwhile are 0600 and folders 0700, whatever the user's umask: an index
    holds the text of the files it indexed, and those may have been private (0600)."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def resolve_index(name_or_dir: str | None) -> Path:
    """`--index` takes a name (kept under qrag_home()/indexes) or a folder path."""
    value = name_or_dir or DEFAULT_INDEX
    if os.sep in value or value.startswith(".") or (os.altsep and os.altsep in value):
        folder = Path(value).expanduser().resolve()
        here = Path.cwd().resolve()
        # `--index .` or `..` would scatter index files among the user's own (the folder
        # being indexed, often); a folder that already holds an index is fine.
        if (folder == here or folder in here.parents) and not (folder / "CURRENT").exists():
            raise UsageError(
                f"--index {value}: that is the current folder or one above it; give an "
                "index name or a folder of its own"
            )
        return folder
    if not value.replace("-", "").replace("_", "").isalnum():
        raise UsageError(f"bad index name {value!r}: use letters, digits, '-' and '_', or a path")
    return qrag_home() / "indexes" / value


# --- config.toml -----------------------------------------------------------------------


def read_config(path: Path | None = None) -> dict[str, Any]:
    """config.toml as a dict ({} when there is none)."""
    path = path or config_path()
    if not path.is_file():
        return {}
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except (tomllib.TOMLDecodeError, OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {path} ({e}); fix or delete it") from e


def set_config(table: str, key: str, value: Any) -> Path:
    """Set `key` under `[table]` in config.toml, keeping every other key and table the user
    wrote (their comments are not kept: the file is rewritten); returns its path."""
    path = config_path()
    data = read_config(path)
    section = data.get(table)
    if not isinstance(section, dict):
        section = data[table] = {}
    section[key] = value
    text = tomli_w.dumps(data)
    with private_umask():  # the folders qrag creates are its own: 0700
        path.parent.mkdir(parents=True, exist_ok=True)
    # files.atomic_write: a crash never leaves a half-written config; 0600 as mkstemp gave.
    atomic_write(path, text, mode=0o600)
    return path


# --- defaults of the commands ----------------------------------------------------------


@dataclass(frozen=True)
class ChunkConfig:
    """How files are cut into chunks; a change means a full re-index."""

    chunk_tokens: int = 128
    """Target chunk size in cl100k_base tokens."""
    overlap: int = 16
    """Tokens repeated from the end of one chunk at the start of the next."""
    version: int = 2
    """Chunker algorithm version, bumped whenever its output changes."""

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


DEFAULT_MAX_FILE_SIZE = 10 * 1024 * 1024
"""`qrag index` skips larger files (a new index; an existing one keeps its own)."""


@dataclass
class ReaderSettings:
    """The reader LLM (`qrag ask --answer`, `qrag mcp`)."""

    llm: str | None = None  # a GGUF path or a server's base URL; None -> reader.default_llm()
    llm_model: str | None = None  # a served reader's model; None -> reader.find_default_llm_model()
    timeout: float = 120.0  # seconds a served reader may stay silent (connect: at most 10)
    n_ctx: int = 4096
    max_tokens: int = 256
    temperature: float = 0.0
    seed: int = 0
    threads: int | None = None  # None -> os.cpu_count()
    gpu_layers: int = 0
    order: str = "document"  # "document" (by Evidence.ordinal) | "retrieval" (by Evidence.step)
    verbose: bool = False  # llama.cpp logs to stderr only when True


@dataclass
class AskOptions:
    """`qrag ask` (and the `ask` tool of `qrag mcp`)."""

    steps: int = 4
    threshold: float | None = None  # None: the model's own
    no_stop: bool = False
    exact: bool = False
    lexical: bool = True
    explain: bool = False
    answer: bool = False
    reader: ReaderSettings = field(default_factory=ReaderSettings)


@dataclass
class TrainConfig:
    """`qrag train`: its flags take their defaults from here. Saved with every run."""

    data: str = ""
    """Training JSONL (see datasets.py)."""
    out: str = "qrag-model"
    """Model folder to write (best-on-eval weights, config, card, log)."""
    eval: list[str] | None = None
    """Held-out JSONL files; if None, `eval_split` of the data is held out. With several
    (one per domain), best-on-eval keeps the update with the best mean of their fact EMs,
    so a large domain cannot hide a loss in a small one."""
    eval_split: float = 0.1
    """Fraction of the data held out for eval when no --eval file is given."""
    base: str | None = None
    """Model to start from (a name or folder); None = the base all-MiniLM-L6-v2."""
    layers: int | None = None
    """Keep only the first N encoder layers of the base (small, fast runs)."""
    budget: int = 3
    """Episode length T (picks per episode) in rollouts and eval."""
    updates: int = 300
    """Gradient updates."""
    batch: int = 16
    """Parallel episodes per update (transitions = batch * budget)."""
    lr: float = 3e-4
    """Peak AdamW learning rate (the paper's 1.5e-5 is for e5-large on GPU)."""
    warmup: int = 20
    """Linear learning-rate warm-up, in updates; then cosine decay to 10%."""
    weight_decay: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    grad_clip: float = 2.0
    gamma: float = 0.99
    """Discount."""
    lam: float = 0.6
    """Lambda of the lambda-returns (paper: 0.5-0.65)."""
    tau: float = 0.05
    """Polyak rate of the target networks (paper: 0.02-0.1)."""
    alpha: float = 0.01
    """Initial temperature of the soft value and of Boltzmann exploration."""
    alpha_final: float = 0.001
    """Temperature at the end; annealed along with the learning rate. `qrag train` sets
    alpha / 10."""
    top_k: int = 5
    """Candidates in the soft value and in exploration (reference: 5)."""
    random_updates: int = 10
    """Initial updates whose rollouts use a uniform random policy."""
    scale: float = 0.1
    """Embedding output scale (reference divides by 10)."""
    normalize: bool = False
    """L2-normalise embeddings (Q = scale^2 * cosine); the paper uses raw dot products."""
    positions: str = "none"
    """"relative" for order-sensitive tasks (rotary chunk positions)."""
    step_penalty: bool = False
    """Reward 0.5 + 0.5*|gold|/|picked| instead of 1, discouraging extra steps."""
    soft_value: bool = True
    """Ablation switch: False = hard max in the bootstrap."""
    target_network: bool = True
    """Ablation switch: False = bootstrap from the online networks."""
    twin: bool = True
    """Ablation switch: False = one critic over the whole vector."""
    eval_every: int = 50
    """Updates between evaluations (and checkpoints)."""
    seed: int = 0
    device: str = "cpu"
    skip_bad: bool = False
    """Skip (and report) bad data lines instead of refusing the file."""
    bf16: bool = False
    """Run the gradient pass under bf16 autocast (weights and Adam stay fp32). On a CPU
    with native bf16 it took a 6-layer update from ~14 s to ~10 s (batch 8, 4K-token
    episodes); off by default so the learning test keeps its measured fp32 curve."""
    frozen_chunks: bool = False
    """Train E_s only; E_a stays the base encoder (cosine, as shipped). The trained model
    starts from the base ranking, indexes built with the base stay valid, and an update
    costs about half (no E_a gradients, no E_a target network, chunk vectors cached)."""
    lexical: list[float] | None = None
    """Start the lexical terms of Q ([question BM25, picked-chunk BM25, order, named],
    qspec.py) at these weights and learn them with the dense weight; None = the starting
    model's (pure dense for the base); [] = none (a pure dense Q)."""
    lexical_query: str | None = None
    """How the two BM25 terms read the state ("chunk" or "names", see
    qfeatures.lexical_queries: under "names" the question term also asks its names and keys
    whole); None = the starting model's ("chunk" for the base and for folders written
    before the choice existed)."""
    lexical_lr: float = 1e-2
    """Peak learning rate of the two lexical weights (scalars move slowly at an encoder's
    rate); follows the same schedule."""
    bias_lr_scale: float = 10.0
    """How much faster than the head's weights its bias learns (Q-learning regresses Q
    onto returns; the bias takes up their level so the weights keep the ranking)."""
    state_chunk_cap: int | None = None
    """Max encoder tokens of each picked chunk inside the state text (the model's
    `chunk_cap`); None = the starting model's. Shorter states encode faster at every
    step (BENCHMARKS.md "State chunk cap")."""
    train_encoder: bool = True
    """False: E_s (and E_a) stay as they are and only the lexical weights learn (a cheap
    second stage on top of a trained encoder)."""
    warm_start: int = 0
    """First updates that imitate the oracle instead of Q-learning: over *every* chunk of
    each visited state, cross-entropy of softmax(Q / warm_temperature) against the gold
    chunks not yet picked. One state teaches its whole ranking, not one scored action."""
    warm_temperature: float = 0.05
    """Temperature of the warm-start softmax, in Q units."""
    apply_stop: bool = True
    """Ship the calibrated stop threshold as the model's default stop. False records it
    (metrics.calibrated_threshold) and ships a fixed budget: for a threshold that costs
    fact EM on validation."""
    freeze_embeddings: bool = True
    """Keep the token-embedding tables fixed. They are 11.7M of the 15M weights of a
    2-layer MiniLM encoder; updating them doubled the cost of Adam and backward without
    improving held-out retrieval in short runs."""
