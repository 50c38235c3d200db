"""discover() on real trees: ignore rules, skipped folders, secrets, binaries, symlinks."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from qrag_cli.discover import Discovery, discover, file_hash
from qrag_cli.types import QragError


def put(root: Path, rel: str, data: str | bytes = "text\n") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    return path


def found(d: Discovery) -> list[str]:
    return [f.rel for f in d.files]


def reasons(d: Discovery) -> dict[str, str]:
    return {s.where: s.why for s in d.skipped}


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run from tmp_path so display paths are short and relative."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_gitignore_levels_and_negation(in_tmp: Path) -> None:
    put(in_tmp, ".gitignore", "*.log\nignored_dir/\n")
    put(in_tmp, "sub/.gitignore", "!keep.log\n/anchored.txt\n")
    for rel in ("a.txt", "x.log", "sub/keep.log", "sub/other.log", "ignored_dir/f.txt"):
        put(in_tmp, rel)
    put(in_tmp, "sub/anchored.txt")
    put(in_tmp, "sub/deeper/anchored.txt")  # `/anchored.txt` only matches next to the rule file
    put(in_tmp, "other/keep.log")  # the negation lives in sub/ and does not apply here
    d = discover([Path(".")])
    assert found(d) == ["a.txt", "sub/deeper/anchored.txt", "sub/keep.log"]
    assert d.skipped == []  # ignored files are not worth a report


def test_qragignore_and_git_info_exclude(in_tmp: Path) -> None:
    (in_tmp / ".git" / "info").mkdir(parents=True)
    put(in_tmp, ".git/info/exclude", "excluded.txt\nimportant.log\n")
    put(in_tmp, ".git/HEAD", "ref: refs/heads/main\n")
    put(in_tmp, ".gitignore", "*.log\n")
    put(in_tmp, ".qragignore", "drafts/\n!important.log\n")  # .qragignore can re-include
    for rel in ("a.md", "excluded.txt", "drafts/d.md", "debug.log", "important.log"):
        put(in_tmp, rel)
    assert found(discover([in_tmp])) == ["a.md", "important.log"]


def test_rules_of_the_enclosing_repo_apply(in_tmp: Path) -> None:
    (in_tmp / "repo" / ".git").mkdir(parents=True)
    put(in_tmp, "repo/.gitignore", "*.tmp\n")
    put(in_tmp, "repo/docs/a.md")
    put(in_tmp, "repo/docs/scratch.tmp")
    assert found(discover([in_tmp / "repo" / "docs"])) == ["repo/docs/a.md"]
    # A folder the repo ignores is still indexed when named as a root.
    put(in_tmp, "repo/.gitignore", "*.tmp\ndata/\n")
    put(in_tmp, "repo/data/d.csv")
    assert found(discover([in_tmp / "repo" / "data"])) == ["repo/data/d.csv"]
    assert found(discover([in_tmp / "repo"])) == ["repo/docs/a.md"]


def test_hidden_and_always_skipped_folders(in_tmp: Path) -> None:
    put(in_tmp, "keep.py")
    put(in_tmp, ".hidden/f.txt")
    put(in_tmp, ".dotfile")
    put(in_tmp, "myenv/pyvenv.cfg", "home = /usr\n")
    put(in_tmp, "myenv/lib/mod.py")
    put(in_tmp, "env/bin/activate")  # an old-style virtualenv, no pyvenv.cfg
    put(in_tmp, "env/lib/mod.py")
    for rel in (
        "node_modules/pkg/index.js",
        "__pycache__/m.pyc",
        "build/out.txt",
        "dist/x.txt",
        "target/t.txt",
        "site-packages/s.py",
        "proj.egg-info/PKG-INFO",
        ".tox/t.txt",
        "src/node_modules/deep.js",
    ):
        put(in_tmp, rel)
    put(in_tmp, "environment/notes.txt")  # only real virtualenvs are skipped
    d = discover([in_tmp])
    assert found(d) == ["environment/notes.txt", "keep.py"]
    assert d.skipped == []


def test_secret_names_skipped_and_reported(in_tmp: Path) -> None:
    """Names only: secrets inside a file's text are the indexer's check (test_secrets.py)."""
    put(in_tmp, "readme.md")
    put(in_tmp, ".env", "API_KEY=x\n")
    put(in_tmp, ".env.local", "API_KEY=y\n")
    put(in_tmp, "ssh/id_rsa", "whatever\n")
    put(in_tmp, "certs/server.pem", "cert\n")
    d = discover([in_tmp])
    assert found(d) == ["readme.md"]
    assert reasons(d) == {
        ".env": "secret (environment file)",
        ".env.local": "secret (environment file)",
        "certs/server.pem": "secret (key file)",
        "ssh/id_rsa": "secret (SSH key file)",
    }
    d = discover([in_tmp], include_secrets=True)
    assert found(d) == [".env", ".env.local", "certs/server.pem", "readme.md", "ssh/id_rsa"]
    assert d.skipped == []


def test_explicit_file_roots_beat_defaults(in_tmp: Path) -> None:
    put(in_tmp, ".gitignore", "ignored.txt\n")
    put(in_tmp, "ignored.txt")
    put(in_tmp, ".hidden.md")
    put(in_tmp, ".env", "X=1\n")
    put(in_tmp, "blob.bin", b"\x00\x01")
    d = discover([Path("ignored.txt"), Path(".hidden.md"), Path(".env"), Path("blob.bin"), in_tmp])
    assert found(d) == [".hidden.md", "ignored.txt"]
    # ... but not the secret check, nor the binary check.
    assert reasons(d) == {".env": "secret (environment file)", "blob.bin": "binary"}


def test_binary_pdf_and_utf16(in_tmp: Path) -> None:
    put(in_tmp, "img.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    put(in_tmp, "doc.pdf", b"%PDF-1.4\n\x00\x01binary body")
    put(in_tmp, "nopdfext", b"%PDF-1.4\n\x00 pdf without extension")
    put(in_tmp, "wide.txt", "utf-16 text".encode("utf-16"))
    d = discover([in_tmp])
    assert found(d) == ["doc.pdf", "nopdfext", "wide.txt"]
    assert reasons(d) == {"img.png": "binary"}


def test_size_cap(in_tmp: Path) -> None:
    put(in_tmp, "small.txt", "x" * 100)
    put(in_tmp, "large.txt", "x" * 200)
    put(in_tmp, "huge.txt", "x" * (3 * 1024 * 1024 + 200 * 1024))
    d = discover([in_tmp], max_file_size=100)
    assert found(d) == ["small.txt"]
    assert reasons(d)["large.txt"] == "too large (200 B > 100 B)"
    assert reasons(d)["huge.txt"] == "too large (3.2 MB > 100 B)"
    d = discover([in_tmp], max_file_size=3 * 1024 * 1024)
    assert reasons(d) == {"huge.txt": "too large (3.2 MB > 3 MB)"}


def test_symlinks(in_tmp: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    outside = tmp_path_factory.mktemp("outside")
    put(outside, "o.txt")
    root = in_tmp / "root"
    put(root, "a.txt")
    put(root, "sub/b.txt")
    (root / "sub" / "loop").symlink_to("..")  # dir symlink to its parent
    (root / "self").symlink_to("self")  # a link that resolves to itself
    (root / "out_dir").symlink_to(outside)
    (root / "out_file.txt").symlink_to(outside / "o.txt")
    (root / "broken.txt").symlink_to(root / "nowhere.txt")
    (root / "alias.txt").symlink_to("a.txt")  # same file as a.txt: listed once
    (root / "docs").symlink_to(".hidden_docs")  # a link into a hidden folder is followed
    put(root, ".hidden_docs/h.md")
    d = discover([root])
    assert found(d) == ["root/a.txt", "root/docs/h.md", "root/sub/b.txt"]
    assert d.files[0].path == (root / "a.txt").resolve()
    assert reasons(d) == {
        "root/broken.txt": "broken symlink",
        "root/out_dir": "symlink leaves root",
        "root/out_file.txt": "symlink leaves root",
        "root/self": "symlink loop",
        "root/sub/loop": "symlink loop",
    }
    # A link to a file that is itself a root is inside the roots.
    d = discover([root, outside / "o.txt"])
    assert "root/out_file.txt" not in reasons(d)
    assert [f.path for f in d.files].count((outside / "o.txt").resolve()) == 1


def test_symlink_cycle_between_folders_terminates(in_tmp: Path) -> None:
    put(in_tmp, "a/x.txt")
    put(in_tmp, "b/y.txt")
    (in_tmp / "a" / "to_b").symlink_to("../b")
    (in_tmp / "b" / "to_a").symlink_to("../a")
    d = discover([in_tmp])
    assert found(d) == ["a/x.txt", "b/y.txt"]


def test_dedup_across_roots(in_tmp: Path) -> None:
    put(in_tmp, "a.txt")
    put(in_tmp, "sub/b.txt")
    d = discover([in_tmp / "sub", in_tmp, in_tmp, in_tmp / "sub" / "b.txt"])
    assert found(d) == ["a.txt", "sub/b.txt"]


def test_unreadable_entries_are_reported(in_tmp: Path) -> None:
    put(in_tmp, "ok.txt")
    os.mkfifo(in_tmp / "pipe.txt")  # opening it would block; fails the same way for root
    d = discover([in_tmp])
    assert found(d) == ["ok.txt"]
    assert reasons(d) == {"pipe.txt": "unreadable: not a regular file"}


def test_permission_denied_is_reported(in_tmp: Path) -> None:
    put(in_tmp, "ok.txt")
    put(in_tmp, "locked/inner.txt")
    put(in_tmp, "secret.txt").chmod(0)
    (in_tmp / "locked").chmod(0)
    try:
        if _can_list(in_tmp / "locked"):
            pytest.skip("running as root: file permissions are not enforced")
        d = discover([in_tmp])
        assert found(d) == ["ok.txt"]
        assert reasons(d) == {
            "locked": "unreadable: Permission denied",
            "secret.txt": "unreadable: Permission denied",
        }
    finally:
        (in_tmp / "locked").chmod(0o755)  # let pytest clean up


def _can_list(path: Path) -> bool:
    try:
        os.listdir(path)
    except PermissionError:
        return False
    return True


def test_paths_outside_cwd_are_absolute(tmp_path: Path) -> None:
    put(tmp_path, "a.txt", "hello")
    [f] = discover([tmp_path]).files
    assert f.rel == (tmp_path / "a.txt").as_posix()
    assert f.path == (tmp_path / "a.txt").resolve()
    assert (f.size, f.mtime_ns) == (5, (tmp_path / "a.txt").stat().st_mtime_ns)


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(QragError, match=r"no such file or directory: .*nope"):
        discover([tmp_path / "nope"])


def test_sorted_corpus_order(in_tmp: Path) -> None:
    for rel in ("z.txt", "b/a.txt", "a.txt", "b/c/d.txt", "B.txt"):
        put(in_tmp, rel)
    assert found(discover([in_tmp])) == ["B.txt", "a.txt", "b/a.txt", "b/c/d.txt", "z.txt"]


def test_file_hash(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    path = put(tmp_path, "blob", data)
    assert file_hash(path) == hashlib.sha256(data).hexdigest()


def test_many_files_walk_fast(tmp_path: Path) -> None:
    import time

    for i in range(50):
        folder = tmp_path / f"d{i:03d}"
        folder.mkdir()
        for j in range(100):
            (folder / f"f{j:03d}.txt").write_bytes(b"some text\n")
    start = time.perf_counter()
    d = discover([tmp_path])
    assert len(d.files) == 5_000
    # ~0.1 s here (100k files: ~2.3 s); the bound only catches pathological slowness.
    assert time.perf_counter() - start < 5


def test_link_to_secret_is_a_secret(in_tmp: Path) -> None:
    put(in_tmp, "keys/id_ed25519", "k\n")
    (in_tmp / "notes.txt").symlink_to("keys/id_ed25519")
    assert reasons(discover([in_tmp])) == {"keys/id_ed25519": "secret (SSH key file)"}
