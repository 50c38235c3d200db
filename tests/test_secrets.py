"""Secrets are never indexed (named, walked or refreshed), and index files are private.

The families: private keys anywhere in a file, key/keystore/credential file names, tokens
with a fixed format anywhere, passwords and keys assigned in configuration files.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import stat
import string
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run_qrag
from gguf_tiny import write_tiny_gguf

from qrag_cli.config import ChunkConfig, resolve_index
from qrag_cli.documents import read_document
from qrag_cli.haystack import own_paragraphs
from qrag_cli.indexer import build_index
from qrag_cli.secretscan import RULES_VERSION, find_secret, secret_name
from qrag_cli.store import open_snapshot

ALNUM = string.ascii_letters + string.digits


def fake(prefix: str, n: int, alphabet: str = ALNUM) -> str:
    """A made-up token of the right shape (varied characters, like a real one)."""
    rng = random.Random(f"{prefix}{n}")
    return prefix + "".join(rng.choice(alphabet) for _ in range(n))


FILLER = "".join(f"Line {i} of an ordinary note about the harbour.\n" for i in range(120))
assert len(FILLER) > 4096  # a key after it is beyond what was sniffed before
AWS_ID = fake("AKIA", 16, string.ascii_uppercase + string.digits)
AWS_SECRET = fake("", 40, ALNUM + "/+")
GITHUB = fake("ghp_", 36)
JWT = f"{fake('eyJ', 30)}.{fake('eyJ', 40)}.{fake('', 43, ALNUM + '-_')}"

# (file name, text, what the refusal says)
IN_TEXT = [
    (
        "late.txt",
        FILLER + "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n",
        "private key block, line 121",
    ),
    ("pgp.asc", "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nlQOYBF\n", "private key block"),
    ("ssh.txt", "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n", "private key block"),
    ("ec.txt", "-----BEGIN EC PRIVATE KEY-----\nMHcCAQ\n", "private key block"),
    ("dsa.txt", "-----BEGIN DSA PRIVATE KEY-----\nMIIBuw\n", "private key block"),
    ("pkcs8.txt", "-----BEGIN PRIVATE KEY-----\nMIIEvQ\n", "private key block"),
    ("enc.txt", "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIFHz\n", "private key block"),
    ("ssh2.txt", "---- BEGIN SSH2 ENCRYPTED PRIVATE KEY ----\nP2/56w\n", "private key block"),
    (
        "sa.json",
        '{"type": "service_account", "private_key_id": "1a2b",\n "private_key": '
        '"-----BEGIN PRIVATE KEY-----\\nMIIEvg\\n"}',
        "private key block, line 2",
    ),
    ("putty.txt", "PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\n", "PuTTY private key"),
    ("aws.md", f"Our key is {AWS_ID} for now.\n", "AWS access key"),
    (
        "config",
        f"[default]\nregion = eu-west-1\naws_secret_access_key = {AWS_SECRET}\n",
        "AWS secret key, line 3",
    ),
    ("notes.md", f"token: {GITHUB}\n", "GitHub token"),
    ("gho.md", f"{fake('gho_', 36)}\n", "GitHub token"),
    ("pat.md", f"{fake('github_pat_', 82, ALNUM + '_')}\n", "GitHub token"),
    ("gitlab.md", f"{fake('glpat-', 20)}\n", "GitLab token"),
    ("slack.md", f"bot: {fake('xoxb-', 40, ALNUM + '-')}\n", "Slack token"),
    ("stripe.md", f"{fake('sk_live_', 24)}\n", "Stripe live key"),
    ("google.md", f"key={fake('AIza', 35, ALNUM + '_-')}\n", "Google API key"),
    ("openai.md", f"OPENAI {fake('sk-proj-', 60, ALNUM + '_-')}\n", "OpenAI API key"),
    ("anthropic.md", f"{fake('sk-ant-api03-', 80, ALNUM + '_-')}\n", "Anthropic API key"),
    ("hf.md", f"{fake('hf_', 34)}\n", "Hugging Face token"),
    ("jwt.md", f"Authorization: Bearer {JWT}\n", "JSON web token"),
    (
        "adc.json",
        '{"client_id": "764086051850.apps.googleusercontent.com",\n'
        f' "client_secret": "{fake("", 24)}",\n "type": "authorized_user"}}\n',
        "password or key, line 2",
    ),
    (
        "app.config",
        "DefaultEndpointsProtocol=https;AccountName=acme;AccountKey="
        f"{fake('', 86, ALNUM + '+/')}==;\n",
        "Azure storage key",
    ),
    (".npmrc", f"//registry.npmjs.org/:_authToken={fake('', 36)}\n", "password or key"),
    (
        ".pypirc",
        "[pypi]\nusername = __token__\npassword = "
        f"{fake('pypi-AgEIcHlwaS5vcmc', 60, ALNUM + '-_')}\n",
        "PyPI token, line 3",
    ),
    (".pypirc", "[internal]\nusername = me\npassword = Tr0ub4dor&3x\n", "password or key"),
    (
        "settings.yaml",
        "db:\n  host: db.internal\n  password: 'Xk9vQ2mLp7'\n",
        "password or key, line 3",
    ),
    ("config.json", '{"service": {"api_key": "' + fake("", 32) + '"}}\n', "password or key"),
    ("app.ini", "[db]\nurl = postgres://app:Xk9vQ2mL@db/prod\n", "password in URL, line 2"),
    # Round 2 (issue 41): decided by content where the name says nothing.
    (
        "config.json",
        '{"auths": {"registry.example.com": {"auth": "' + fake("", 28, ALNUM + "+/") + '="}}}\n',
        "registry credentials",
    ),
    (
        "kubeconfig",
        "apiVersion: v1\nkind: Config\nusers:\n- name: admin\n  user:\n"
        f"    token: {fake('', 40)}\n",
        "password or key, line 6",
    ),
    ("cluster-admin", f"apiVersion: v1\nkind: Config\ntoken: {fake('', 40)}\n", "password or key"),
    ("npmrc", f"//registry.npmjs.org/:_authToken={fake('', 36)}\n", "password or key"),
    (
        "tls-secret.yaml",
        "apiVersion: v1\ndata:\n  tls.crt: LS0tLS1CRUdJTiBDRVJU\n"
        f"  tls.key: {fake('LS0t', 60)}\nkind: Secret\nmetadata:\n  name: web-tls\n",
        "Kubernetes Secret, line 5",
    ),
    ("manifest", "kind: Secret\nstringData:\n  password: Xk9vQ2mLp7zz\n", "Kubernetes Secret"),
    (
        "setup.md",
        "Connect with https://deploy:Xk9vQ2mLp7@git.internal/repo.git\n",
        "password in URL",
    ),
    ("settings.py", 'DEBUG = False\nDB_PASSWORD = "Xk9vQ2mLp7zz"\n', "password or key, line 2"),
    ("Client.java", 'String apiKey = "' + fake("", 32) + '";\n', "password or key"),
    (
        "config.xml",
        "<config>\n  <user>app</user>\n  <password>Xk9vQ2mLp7</password>\n</config>\n",
        "password or key, line 3",
    ),
]

# Text that mentions secrets without holding one: indexed.
NOT_SECRETS = [
    (
        "prose.md",
        "Use a password manager. The password must have 12 characters; the API key "
        "is in the vault.\n",
    ),
    ("login.py", 'password = getpass.getpass()\napi_key = os.environ["API_KEY"]\n'),
    (
        "settings.yaml",
        "password: ${DB_PASSWORD}\napi_key: <your-api-key>\ntoken: changeme\n"
        "secret: true\npassword_file: /run/secrets/db\nclient_secret: ''\n",
    ),
    ("aws-docs.md", "An access key looks like AKIAIOSFODNN7EXAMPLE.\n"),
    ("gh-docs.md", "Tokens look like ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx.\n"),
    ("public.pem.txt", "-----BEGIN PUBLIC KEY-----\nMIIBIj\n-----BEGIN CERTIFICATE-----\n"),
    ("authorized_keys.txt", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG8v user@host\n"),
    ("ids.md", f"task-{fake('', 48)} and desk_live_{fake('', 24)}\n"),
    ("k8s.md", "A Secret is written `kind: Secret` with a `data:` map of base64 values.\n"),
    ("deploy.yaml", "apiVersion: apps/v1\nkind: Deployment\nspec:\n  replicas: 3\n"),
    ("urls.md", "Use postgres://user:password@localhost/db or https://host/path.\n"),
    ("client.py", 'API_KEY = os.environ["API_KEY"]\npassword = "short"\n'),
    ("auth.json", '{"auth": "none", "mode": "oauth"}\n'),
    ("rules.py", 'SECRET_RULES_KEY = "secret_rules"\nTOKEN_KIND = "access_token"\n'),
]

SECRET_NAMES = [
    ("id_rsa", "SSH key file"),
    ("id_ed25519.pub", "SSH key file"),
    ("key.ppk", "SSH key file"),
    ("ssh_host_ecdsa_key", "SSH key file"),
    ("server.pem", "key file"),
    ("tls.KEY", "key file"),
    ("secring.gpg", "key file"),
    ("store.jks", "keystore"),
    ("app.keystore", "keystore"),
    ("cert.p12", "keystore"),
    ("cert.pfx", "keystore"),
    ("vault.kdbx", "keystore"),
    (".env", "environment file"),
    (".env.production", "environment file"),
    ("prod.env", "environment file"),
    (".envrc", "environment file"),
    ("credentials", "credentials file"),
    ("credentials.json", "credentials file"),
    ("application_default_credentials.json", "credentials file"),
    ("accessTokens.json", "credentials file"),
    ("msal_token_cache.json", "credentials file"),
    ("terraform.tfstate", "credentials file"),
    (".netrc", "password file"),
    ("_netrc", "password file"),
    (".pgpass", "password file"),
    (".git-credentials", "password file"),
    ("env", "environment file"),
    ("dotenv", "environment file"),
    ("env.production", "environment file"),
    ("app.env.example", "environment file"),
]
PLAIN_NAMES = [
    "notes.txt",
    "environment.yml",
    "keys.md",
    "credentials.md",
    "keynote.txt",
    "README",
    "config.toml",
    "settings.json",
]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def scan(tmp_path: Path, name: str, text: str) -> str | None:
    path = write(tmp_path / name, text)
    return find_secret(read_document(path), (name,))


# -- the rules --------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "text", "why"), IN_TEXT, ids=[c[0] + ":" + c[2] for c in IN_TEXT])
def test_secret_in_text_is_found(tmp_path: Path, name: str, text: str, why: str) -> None:
    found = scan(tmp_path, name, text)
    assert found is not None and found.startswith(why), found


@pytest.mark.parametrize(("name", "text"), NOT_SECRETS, ids=[c[0] for c in NOT_SECRETS])
def test_text_about_secrets_is_not_refused(tmp_path: Path, name: str, text: str) -> None:
    assert scan(tmp_path, name, text) is None


def test_config_rules_apply_to_config_files_only(tmp_path: Path) -> None:
    line = "password = 'Xk9vQ2mLp7'\n"
    assert scan(tmp_path, "app.cfg", line) == "password or key, line 1"
    assert scan(tmp_path, "story.md", line) is None  # prose and code may say anything
    # A link's name counts too (a notes.txt link to a .env-like config).
    doc = read_document(write(tmp_path / "notes.txt", line))
    assert find_secret(doc, ("notes.txt", "app.ini")) == "password or key, line 1"


def test_whole_text_is_scanned_fast(tmp_path: Path) -> None:
    """A key at the very end of a 10 MB file is found (no prefix sniffing)."""
    text = FILLER * 2200 + "-----BEGIN PRIVATE KEY-----\n"
    assert len(text) > 10_000_000
    found = scan(tmp_path, "big.yaml", text)
    assert found == f"private key block, line {120 * 2200 + 1}"


@pytest.mark.parametrize(("name", "kind"), SECRET_NAMES, ids=[c[0] for c in SECRET_NAMES])
def test_secret_names(name: str, kind: str) -> None:
    assert secret_name(name) == kind


@pytest.mark.parametrize("name", PLAIN_NAMES)
def test_plain_names(name: str) -> None:
    assert secret_name(name) is None


# -- through the real CLI ---------------------------------------------------------------
def indexed(index: str) -> dict[str, str]:
    """File name -> all its indexed text."""
    with open_snapshot(resolve_index(index)) as snapshot:
        out: dict[str, str] = {}
        for row in snapshot.chunks(snapshot.live_ids().tolist()):
            out[Path(row.path).name] = out.get(Path(row.path).name, "") + row.text
        names = {Path(p).name for (p,) in snapshot.conn.execute("SELECT path FROM files")}
    assert set(out) <= names
    return {name: out.get(name, "") for name in names}


def refusals(stderr: str) -> dict[str, str]:
    """{path: reason} of the `skip PATH: secret (...)` lines, one line per path."""
    lines = [line for line in stderr.splitlines() if ": secret (" in line]
    out = {
        line.split(": secret (")[0].removeprefix("skip "): line.split(": ", 1)[1] for line in lines
    }
    assert len(out) == len(lines), stderr
    return out


def test_files_named_on_the_command_line_are_checked(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    files = {
        "id_rsa": "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n",
        "deploy.ppk": "PuTTY-User-Key-File-2: ssh-rsa\n",
        ".env": "API_KEY=abc\n",
        "github.txt": f"my token {GITHUB}\n",
        "late.md": FILLER + "-----BEGIN EC PRIVATE KEY-----\nMHcCAQ\n",
        "notes.txt": "The ferry leaves at nine from the north pier.\n",
    }
    paths = [str(write(keys / name, text)) for name, text in files.items()]  # `qrag index *`
    proc = run_qrag("index", *paths, "--index", "named", "--json")
    assert proc.returncode == 0, proc.stderr
    assert set(indexed("named")) == {"notes.txt"}
    refused = refusals(proc.stderr)
    assert {Path(p).name for p in refused} == set(files) - {"notes.txt"}
    assert all(str(keys) in p for p in refused)  # the path as given
    assert refused[str(keys / "github.txt")] == "secret (GitHub token, line 1)"
    assert refused[str(keys / "late.md")] == "secret (private key block, line 121)"
    assert refused[str(keys / "id_rsa")] == "secret (SSH key file)"
    assert GITHUB not in proc.stderr  # the reason names the kind, never the secret
    assert json.loads(proc.stdout)["skipped"] == 5

    proc = run_qrag("index", *paths, "--index", "included", "--include-secrets", "--json")
    assert proc.returncode == 0, proc.stderr
    assert set(indexed("included")) == set(files) and refusals(proc.stderr) == {}


def test_walk_refuses_every_family(tmp_path: Path) -> None:
    root = tmp_path / "home"
    secrets = {
        "pgp.asc": "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nlQOYBF\n",
        "work.ppk": "PuTTY-User-Key-File-3: ssh-ed25519\n",
        "aws/credentials": f"[default]\naws_access_key_id = {AWS_ID}\n",
        "late-key.txt": FILLER + "-----BEGIN PRIVATE KEY-----\nMIIEvQ\n",
        "deploy/settings.yaml": "db:\n  password: 'Xk9vQ2mLp7'\n",
        "chat.md": f"The bot token is {fake('xoxb-', 40, ALNUM + '-')} (do not share).\n",
        "store.jks": "\xfe\xed\xfe\xed keystore",
        "gcloud/application_default_credentials.json": '{"refresh_token": "1//0gx"}\n',
    }
    for rel, text in secrets.items():
        write(root / rel, text)
    write(root / "clean.md", "Tide tables for the north pier, updated weekly.\n")
    proc = run_qrag("index", str(root), "--index", "walk", "--json")
    assert proc.returncode == 0, proc.stderr
    texts = indexed("walk")
    assert set(texts) == {"clean.md"}
    refused = {Path(p).relative_to(root).as_posix() for p in refusals(proc.stderr)}
    assert refused == set(secrets)


def test_refresh_applies_the_rules_to_stored_roots(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    write(docs / "a.md", "The lighthouse keeper counts ships.\n")
    write(docs / "b.md", "Ferries leave at nine.\n")
    extra = write(tmp_path / "extra.txt", "An explicit root, refreshed too.\n")
    run_qrag("index", str(docs), str(extra), check=True)
    assert set(indexed("default")) == {"a.md", "b.md", "extra.txt"}

    # Files that became secrets since: refused and dropped from the index.
    write(docs / "b.md", f"Ferries leave at nine.\nDeploy token: {GITHUB}\n")
    write(extra, "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n")
    write(docs / "new.env", "KEY=1\n")
    proc = run_qrag("index", "--json")  # no path: refresh the stored roots
    assert proc.returncode == 0, proc.stderr
    assert set(indexed("default")) == {"a.md"}
    assert {Path(p).name for p in refusals(proc.stderr)} == {"b.md", "extra.txt", "new.env"}
    assert json.loads(proc.stdout)["removed"] == 2

    # Let in with --include-secrets, they go again on a plain refresh even though they have
    # not changed (a refresh applies today's rules, not the last run's flag).
    run_qrag("index", str(docs), str(extra), "--include-secrets", check=True)
    assert set(indexed("default")) == {"a.md", "b.md", "new.env", "extra.txt"}
    proc = run_qrag("index", "--json")
    assert proc.returncode == 0, proc.stderr
    assert set(indexed("default")) == {"a.md"}
    summary = json.loads(proc.stdout)
    assert summary["removed"] == 3 and summary["chunks_embedded"] == 0


def test_index_built_under_older_rules_is_rechecked(tmp_path: Path, base_model) -> None:
    """A kept file that today's rules refuse (an index from before they were added) goes."""
    docs = tmp_path / "docs"
    write(docs / "a.md", "The lighthouse keeper counts ships.\n")
    write(docs / "pgp.txt", "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nlQOYBF\n")
    index_dir = resolve_index(None)
    build_index([docs], index_dir, base_model, ChunkConfig(), include_secrets=True)
    with open_snapshot(index_dir) as snapshot:
        db = snapshot.folder / "index.sqlite"
    conn = sqlite3.connect(db)  # what an index written by an older qrag looks like
    with conn:
        conn.execute("DELETE FROM meta WHERE key = 'secret_rules'")
    conn.close()
    problems: list[tuple[str, str]] = []
    summary = build_index(
        [],
        index_dir,
        base_model,
        ChunkConfig(),
        on_problem=lambda p: problems.append((p.where, p.why)),
    )
    assert (summary.removed, summary.unchanged, summary.chunks_embedded) == (1, 1, 0)
    assert [Path(p).name for p, _ in problems] == ["pgp.txt"]
    assert set(indexed("default")) == {"a.md"}
    # Kept files are re-read once, not on every run (the secret is new each time: refused).
    again = build_index([], index_dir, base_model, ChunkConfig())
    assert (again.unchanged, again.removed, again.skipped) == (1, 0, 1)
    with open_snapshot(index_dir) as snapshot:
        assert snapshot.meta["secret_rules"] == str(RULES_VERSION)


def test_bench_haystack_leaves_out_files_with_secrets(tmp_path: Path) -> None:
    write(tmp_path / "story.md", "A long paragraph about the harbour and its many boats.\n")
    write(tmp_path / "ops.md", f"The deploy runbook for the harbour, token {GITHUB} inside.\n")
    paras = own_paragraphs(tmp_path)
    assert paras == ["A long paragraph about the harbour and its many boats."]


# -- permissions ------------------------------------------------------------------------
@pytest.fixture
def umask_022() -> Iterator[None]:
    """The common default umask, under which a plain open() makes world-readable files."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def modes(root: Path) -> dict[str, str]:
    """Every path under (and including) `root` whose mode is not 0700 (dir) / 0600 (file)."""
    bad = {}
    for path in [root, *root.rglob("*")]:
        try:
            st = path.lstat()
        except FileNotFoundError:  # a -wal/-shm removed as we looked
            continue
        want = 0o700 if stat.S_ISDIR(st.st_mode) else 0o600
        if stat.S_IMODE(st.st_mode) != want:
            bad[str(path.relative_to(root))] = oct(stat.S_IMODE(st.st_mode))
    return bad


def test_index_files_are_private_while_writing(
    hop_corpus: Path, base_model, qrag_home: Path, monkeypatch: pytest.MonkeyPatch, umask_022: None
) -> None:
    """Checked mid-run, when the SQLite journals, the lock and fresh graphs all exist."""
    monkeypatch.setenv("QRAG_COMMIT_INTERVAL", "0")
    monkeypatch.setenv("QRAG_EMBED_GROUP", "2")  # commit (vectors + graph) every 2 files
    home = qrag_home / "new-home"  # QRAG_HOME itself does not exist yet
    monkeypatch.setenv("QRAG_HOME", str(home))
    index_dir = resolve_index(None)
    seen: set[str] = set()
    bad: dict[str, str] = {}

    def look(done: int, total: int) -> None:
        seen.update(p.name for p in index_dir.rglob("*"))
        bad.update(modes(home))

    build_index([hop_corpus], index_dir, base_model, ChunkConfig(), on_progress=look)
    assert {
        "index.sqlite",
        "index.sqlite-wal",
        "index.sqlite-shm",
        "vectors.f32",
        "index.lock",
        "CURRENT",
    } <= seen
    assert any(name.startswith("hnsw-") for name in seen)
    assert bad == {}
    assert modes(home) == {}
    assert os.umask(0o022) == 0o022  # the writer gave the user's umask back


def test_cli_keeps_index_and_config_private(tmp_path: Path, umask_022: None) -> None:
    home = tmp_path / "qrag" / "home"  # created by qrag, parents and all
    env = {"QRAG_HOME": str(home)}
    write(tmp_path / "docs" / "secret-ish.txt", "My private diary, chmod 600 on disk.\n")
    (tmp_path / "docs" / "secret-ish.txt").chmod(0o600)
    run_qrag("index", str(tmp_path / "docs"), env=env, check=True)
    gguf = write_tiny_gguf(tmp_path / "tiny.gguf")
    run_qrag("config", "--llm", str(gguf), env=env, check=True)
    assert (home / "config.toml").is_file()
    assert (tmp_path / "qrag").stat().st_mode & 0o777 == 0o700
    assert modes(home) == {}

    # An index written before this rule (world-readable files) is made private on its next
    # `qrag index`.
    for path in [home / "indexes", *(home / "indexes").rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    run_qrag("index", env=env, check=True)
    assert modes(home / "indexes" / "default") == {}


def test_a_token_in_a_file_name_is_refused(tmp_path: Path) -> None:
    """The name is stored and shown (evidence, status): a token in it is a secret too."""
    name = f"{GITHUB}.txt"
    doc = read_document(write(tmp_path / name, "An ordinary note.\n"))
    assert find_secret(doc, (name,)) == "GitHub token in the file name"
    assert find_secret(doc, ("notes.txt",)) is None
