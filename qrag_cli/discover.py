"""Find the files to index under the given roots.

Ignore rules (.gitignore, .qragignore, .git/info/exclude), always-skipped folders, files
named as secrets, binaries, size caps and symlinks are all handled here, so later stages
only ever see files that are meant to be read. Secrets inside a file's text are found by
the indexer, which reads the whole text anyway (secretscan.find_secret). Git itself is
never called: qrag must work on plain folders and without git installed.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pathspec

from qrag_cli.documents import SNIFF_BYTES, is_binary
from qrag_cli.secretscan import secret_name
from qrag_cli.types import Problem, QragError


@dataclass(frozen=True)
class FoundFile:
    path: Path  # absolute, resolved
    rel: str  # display path: relative to cwd when under it, else absolute; POSIX separators
    size: int
    mtime_ns: int


@dataclass
class Discovery:
    files: list[FoundFile]  # sorted by rel: this is corpus order
    skipped: list[Problem]  # only what a user wants to hear about, sorted by display path


# Folders that are never content: tool caches, dependency trees, build outputs.
_SKIP_DIRS = frozenset(
    {
        ".git",
        "node_modules",
        "__pycache__",
        "build",
        "dist",
        "target",
        ".tox",
        ".mypy_cache",
        ".pytest_cache",
        "site-packages",
    }
)
_VENV_NAMES = frozenset({"venv", ".venv", "env"})
# Later rule files win, so a .qragignore can `!`-include a file that .gitignore excludes.
_RULE_FILES = (".gitignore", ".qragignore")

_Specs = tuple[tuple[str, pathspec.PathSpec], ...]  # (folder rel to anchor, rules), deepest last


@dataclass
class _DirTask:
    path: str  # absolute path as walked (may run through a symlink)
    rel: str  # POSIX path relative to the anchor ("" for the anchor itself)
    real: str  # resolved path of the folder
    specs: _Specs
    is_root: bool = False


@dataclass
class _Walker:
    real_roots: list[str]
    max_file_size: int
    include_secrets: bool
    cwd_prefix: str = field(default_factory=lambda: os.getcwd().rstrip(os.sep) + os.sep)
    files: list[FoundFile] = field(default_factory=list)
    skipped: dict[str, Problem] = field(default_factory=dict)
    seen_files: set[str] = field(default_factory=set)
    seen_dirs: set[tuple[int, int]] = field(default_factory=set)
    stack: list[_DirTask] = field(default_factory=list)
    # Symlinks are followed only after the real tree is walked, so that a file reached both
    # directly and through a link is listed under its real path.
    link_dirs: list[_DirTask] = field(default_factory=list)
    link_files: list[tuple[str, str, os.stat_result]] = field(default_factory=list)

    def display(self, path: str) -> str:
        if path.startswith(self.cwd_prefix):
            path = path[len(self.cwd_prefix) :]
        return path.replace(os.sep, "/")

    def skip(self, path: str, reason: str) -> None:
        shown = self.display(path)
        self.skipped.setdefault(shown, Problem(shown, reason))

    def inside_roots(self, real: str) -> bool:
        return any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in self.real_roots)

    def run(self) -> None:
        while self.stack or self.link_dirs:
            if not self.stack:
                self.link_dirs.sort(key=lambda t: t.path, reverse=True)
                self.stack.append(self.link_dirs.pop())
                continue
            self.walk_dir(self.stack.pop())
        for path, real, st in sorted(self.link_files, key=lambda t: t[0]):
            self.consider_file(path, real, st)

    def walk_dir(self, task: _DirTask) -> None:
        try:
            st = os.stat(task.path)
            with os.scandir(task.path) as it:
                entries = list(it)
        except OSError as e:
            self.skip(task.path, _why(e))
            return
        key = (st.st_dev, st.st_ino)
        if key in self.seen_dirs:  # overlapping roots or a second link to the same folder
            return
        self.seen_dirs.add(key)
        names = {e.name for e in entries}
        if not task.is_root and _is_venv(task.path, names):
            return  # an explicitly given root is walked even if it is a virtualenv
        specs = task.specs
        if ".git" in names:  # repo root: info/exclude ranks below every .gitignore
            specs = _add_rules(specs, task.rel, os.path.join(task.path, ".git", "info", "exclude"))
        for name in _RULE_FILES:
            if name in names:
                specs = _add_rules(specs, task.rel, os.path.join(task.path, name))
        for entry in entries:
            self.walk_entry(task, specs, entry)

    def walk_entry(self, task: _DirTask, specs: _Specs, entry: os.DirEntry[str]) -> None:
        name = entry.name
        # Hidden names are skipped quietly, except secret files such as `.env`: those are
        # reported (the user should know one was seen) or kept with include_secrets.
        if name.startswith(".") and secret_name(name) is None:
            return
        try:
            is_link = entry.is_symlink()
            is_dir = entry.is_dir()  # follows links; False for a broken one
        except OSError as e:
            self.skip(entry.path, _why(e))
            return
        if is_dir and (name in _SKIP_DIRS or name.endswith(".egg-info") or name.startswith(".")):
            return
        rel = f"{task.rel}/{name}" if task.rel else name
        if _ignored(specs, rel, is_dir):
            return
        if is_link:
            self.found_link(task, specs, entry.path, rel)
        elif is_dir:
            real = os.path.join(task.real, name)
            self.stack.append(_DirTask(entry.path, rel, real, specs))
        else:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as e:
                self.skip(entry.path, _why(e))
                return
            self.consider_file(entry.path, os.path.join(task.real, name), st)

    def found_link(self, task: _DirTask, specs: _Specs, path: str, rel: str) -> None:
        try:
            real = os.path.realpath(path, strict=True)
            st = os.stat(real)
        except FileNotFoundError:
            self.skip(path, "broken symlink")
            return
        except OSError as e:
            self.skip(path, _why(e))
            return
        if not self.inside_roots(real):
            self.skip(path, "symlink leaves root")
        elif stat.S_ISDIR(st.st_mode):
            # A link to the folder holding it (or to any ancestor) would recurse forever.
            if task.real == real or task.real.startswith(real.rstrip(os.sep) + os.sep):
                self.skip(path, "symlink loop")
            else:
                self.link_dirs.append(_DirTask(path, rel, real, specs))
        else:
            self.link_files.append((path, real, st))

    def consider_file(self, path: str, real: str, st: os.stat_result) -> None:
        if real in self.seen_files:
            return
        self.seen_files.add(real)
        if not stat.S_ISREG(st.st_mode):
            # FIFOs, sockets and devices: opening one could block forever.
            self.skip(path, "unreadable: not a regular file")
            return
        # A file named on the command line is checked too: `qrag index *` in a folder of
        # keys must not index them. Only --include-secrets lets secrets in.
        # Both names count: a link called notes.txt may point at an id_rsa.
        kind = secret_name(os.path.basename(path)) or secret_name(os.path.basename(real))
        if kind and not self.include_secrets:
            self.skip(path, f"secret ({kind})")
            return
        if st.st_size > self.max_file_size:
            self.skip(path, f"too large ({_fmt_sizes(st.st_size, self.max_file_size)})")
            return
        # Binary files are skipped here, on their head; content secrets are the indexer's job.
        try:
            with open(real, "rb") as f:
                head = f.read(SNIFF_BYTES)
        except OSError as e:
            self.skip(path, _why(e))
            return
        if is_binary(Path(path), head):
            self.skip(path, "binary")
            return
        self.files.append(FoundFile(Path(real), self.display(path), st.st_size, st.st_mtime_ns))


def discover(
    roots: Sequence[Path],
    *,
    max_file_size: int = 10 * 1024 * 1024,
    include_secrets: bool = False,
) -> Discovery:
    """Walk `roots` (files or folders) and return the files to index plus notable skips."""
    paths: list[str] = []
    for root in roots:
        path = os.path.abspath(root)
        if not os.path.exists(path):  # also a broken or looping symlink
            raise QragError(f"no such file or directory: {root}")
        paths.append(path)
    walker = _Walker([os.path.realpath(p) for p in paths], max_file_size, include_secrets)
    # Explicit files first, so that a file named on the command line is listed under the
    # name the user gave even if a folder root also reaches it.
    for path in paths:
        if not os.path.isdir(path):
            try:
                st = os.stat(path)
            except OSError as e:
                walker.skip(path, _why(e))
                continue
            walker.consider_file(path, os.path.realpath(path), st)
    for path in reversed(paths):  # a stack: the first root is walked first
        if os.path.isdir(path):
            anchor, specs = _repo_context(path)
            rel = os.path.relpath(path, anchor).replace(os.sep, "/")
            rel = "" if rel == "." else rel
            walker.stack.append(_DirTask(path, rel, os.path.realpath(path), specs, is_root=True))
    walker.run()
    files = sorted(walker.files, key=lambda f: f.rel)
    skipped = sorted(walker.skipped.values(), key=lambda s: s.where)
    return Discovery(files, skipped)


def root_problem(root: Path) -> str | None:
    """Why a path named on the command line cannot be indexed (a skip reason), or None.

    Checked before anything else touches it: resolving a symlink loop raises, and a
    missing or unreadable root must not look like a folder whose files were all deleted."""
    path = os.path.abspath(os.path.expanduser(root))
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "broken symlink" if os.path.islink(path) else "no such file or directory"
    except OSError as e:
        return _why(e)
    if stat.S_ISDIR(st.st_mode):
        try:
            with os.scandir(path):
                pass
        except OSError as e:
            return _why(e)
    return None


def file_hash(path: Path) -> str:
    """sha256 hex digest of the file's content, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _why(e: OSError) -> str:
    # ELOOP shows up wherever a path runs through a link cycle (stat, scandir, realpath).
    return "symlink loop" if e.errno == errno.ELOOP else f"unreadable: {e.strerror}"


def _is_venv(path: str, names: set[str]) -> bool:
    if "pyvenv.cfg" in names:
        return True
    name = os.path.basename(path)
    # Older virtualenvs have no pyvenv.cfg; recognise them by their activate script.
    return name in _VENV_NAMES and any(
        os.path.isfile(os.path.join(path, d, "activate")) for d in ("bin", "Scripts")
    )


def _add_rules(specs: _Specs, rel: str, rule_file: str) -> _Specs:
    try:
        with open(rule_file, encoding="utf-8", errors="replace") as f:
            spec = pathspec.GitIgnoreSpec.from_lines(f.read().splitlines())
    except OSError:
        return specs  # an unreadable rule file is treated as absent, like git does
    return (*specs, (rel, spec)) if len(spec) else specs


def _ignored(specs: _Specs, rel: str, is_dir: bool) -> bool:
    """gitignore semantics: the deepest rule file with a matching pattern decides, and
    within one file the last matching pattern (possibly a `!` negation) wins."""
    for base, spec in reversed(specs):
        sub = rel[len(base) + 1 :] if base else rel
        result = spec.check_file(sub + "/" if is_dir else sub)
        if result.include is not None:
            return bool(result.include)
    return False


def _repo_context(root: str) -> tuple[str, _Specs]:
    """If `root` lies inside a git work tree, the repo's rules above `root` apply too.

    Returns the anchor folder that rule-relative paths are measured from, and the rules
    collected from the repo top down to the parent of `root`.
    """
    if os.path.exists(os.path.join(root, ".git")):
        return root, ()  # the root is a repo top: its own rules are read during the walk
    parents: list[str] = []
    cur = os.path.dirname(root)
    while True:
        parents.append(cur)
        if os.path.exists(os.path.join(cur, ".git")):
            break
        nxt = os.path.dirname(cur)
        if nxt == cur:
            return root, ()  # not in a repo: rules come only from inside the root
        cur = nxt
    top = parents[-1]
    specs: _Specs = _add_rules((), "", os.path.join(top, ".git", "info", "exclude"))
    for folder in [*reversed(parents), root]:
        rel = os.path.relpath(folder, top).replace(os.sep, "/")
        rel = "" if rel == "." else rel
        # A folder named on the command line is indexed even if the repo ignores it (or a
        # folder above it): explicit beats default. Then only the root's own rules apply.
        if rel and _ignored(specs, rel, is_dir=True):
            return root, ()
        if folder != root:
            for name in _RULE_FILES:
                specs = _add_rules(specs, rel, os.path.join(folder, name))
    return top, specs


def _fmt_sizes(size: int, limit: int) -> str:
    a, b = _fmt_size(size), _fmt_size(limit)
    return f"{a} > {b}" if a != b else f"{size} B > {limit} B"


def _fmt_size(n: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{n} B"
