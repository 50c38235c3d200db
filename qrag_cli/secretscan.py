"""What counts as a secret: file names, and text that holds keys, tokens or passwords.

A file with a secret anywhere in it is refused whole (never indexed, reported with a
reason): cutting the secret out would still leave its neighbours (user names, hosts) in
the index, and a partial file is worse evidence than none.

The tables below are our own. detect-secrets (Yelp), the maintained list on PyPI, was
tried and not used: its line-by-line plugin scan took 26 s for a 4.7 MB file here (this
module: 0.3 s for 9.4 MB), and its 1.5.0 patterns miss current formats (github_pat_,
sk-proj-, sk-ant-, AIza, ENCRYPTED PRIVATE KEY, PuTTY v3 keys).

Bump RULES_VERSION whenever a rule is added or widened: an index built under older rules
then re-checks the files it already holds (indexer.py) and drops the ones now refused.
"""

from __future__ import annotations

import bisect
import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass

from qrag_cli.types import Document

RULES_VERSION = 2  # 2: Docker auths, Kubernetes Secrets, code literals, XML, names, URLs

# -- names ------------------------------------------------------------------------------
# (what the user is told, globs matched case-insensitively against the file's name)
_NAME_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "environment file",
        (".env", ".env.*", "*.env", ".envrc", "env", "dotenv", "env.*", "*.env.*"),
    ),
    ("SSH key file", ("id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*", "ssh_host_*key", "*.ppk")),
    ("key file", ("*.pem", "*.key", "*.p8", "*.pkcs8", "*.gpg", "secring.*")),
    (
        "keystore",
        (
            "*.jks",
            "*.keystore",
            "*.bks",
            "*.p12",
            "*.pfx",
            "*.pkcs12",
            "*.kdbx",
            "*.kdb",
            "*.keychain",
            "*.keychain-db",
        ),
    ),
    (
        "credentials file",
        (
            "credentials",
            "credentials.json",
            "credentials.db",
            "access_tokens.db",
            "application_default_credentials.json",
            "accesstokens.json",
            "msal_token_cache.*",
            "service_principal_entries.*",
            "*.publishsettings",
            "*.tfstate",
            "*.tfstate.backup",
            "secrets.yml",
            "secrets.yaml",
            "secrets.json",
            "secrets.toml",
        ),
    ),
    ("password file", (".netrc", "_netrc", ".pgpass", ".git-credentials", ".htpasswd")),
)
_NAME_PATTERNS = tuple(
    (kind, re.compile("|".join(fnmatch.translate(g) for g in globs), re.IGNORECASE))
    for kind, globs in _NAME_RULES
)


def secret_name(name: str) -> str | None:
    """What kind of secret a file called `name` holds by its name alone, else None."""
    for kind, pattern in _NAME_PATTERNS:
        if pattern.match(name):
            return kind
    return None


# -- text ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Rule:
    kind: str  # what the user is told: never the secret itself
    pattern: re.Pattern[str]
    # The match must not continue a word ("ghp_..." but not "xghp_..."). Checked after the
    # match instead of with a leading \b, which would cost re its fast literal-prefix search.
    word_start: bool = False


def _token(kind: str, pattern: str) -> _Rule:
    return _Rule(kind, re.compile(pattern), word_start=True)


def _rule(kind: str, pattern: str) -> _Rule:
    return _Rule(kind, re.compile(pattern))


# Formats with a fixed marker, rare in prose: checked in every file, on the text as is.
# Every pattern starts with a literal, so that a scan of a 10 MB file takes well under a
# second (the same patterns with a leading \b or a case-insensitive flag were 20x slower).
_TOKEN_RULES = (
    # PEM/OpenSSH/PKCS#8/EC/DSA/ENCRYPTED/PGP ("PGP PRIVATE KEY BLOCK") and SSH2's
    # "---- BEGIN SSH2 ENCRYPTED PRIVATE KEY ----": the header alone is enough.
    _rule("private key block", r"----[- ]BEGIN [A-Z0-9 ]*(?:PRIVATE|SECRET) KEY"),
    _rule("PuTTY private key", r"PuTTY-User-Key-File-\d+:"),
    _token("AWS access key", r"(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z0-9]{16}\b"),
    _token("GitHub token", r"gh[pousr]_[A-Za-z0-9]{36}"),
    _token("GitHub token", r"github_pat_[A-Za-z0-9_]{22,}"),
    _token("GitLab token", r"glpat-[A-Za-z0-9_-]{20}"),
    _token("Slack token", r"xox[abposre]-[A-Za-z0-9-]{10,}"),
    _rule("Slack webhook", r"hooks\.slack\.com/services/T[A-Z0-9]+/B[A-Z0-9]+/[A-Za-z0-9]{16}"),
    _token("Stripe live key", r"[rs]k_live_[A-Za-z0-9]{16,}"),
    _token("Google API key", r"AIza[0-9A-Za-z_-]{35}"),
    _token("Google OAuth secret", r"GOCSPX-[A-Za-z0-9_-]{24,}"),
    _rule("service account key", r'"private_key"\s*:\s*"[^"]{16,}'),
    _token("Anthropic API key", r"sk-ant-[A-Za-z0-9_-]{20,}"),
    _token("OpenAI API key", r"sk-(?:proj|svcacct|admin)-[A-Za-z0-9_-]{20,}"),
    _token("OpenAI API key", r"sk-[A-Za-z0-9_-]{20,}T3BlbkFJ[A-Za-z0-9_-]{20,}"),
    _token("OpenAI API key", r"sk-[A-Za-z0-9]{48}\b"),
    _token("Hugging Face token", r"hf_[A-Za-z0-9]{34,}"),
    _token("npm token", r"npm_[A-Za-z0-9]{36}\b"),
    _token("PyPI token", r"pypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{50,}"),
    _token("SendGrid key", r"SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}"),
    _rule("Azure storage key", r"AccountKey=[A-Za-z0-9+/]{80,}"),
    _token("JSON web token", r"eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"),
    # Docker's config.json: "auths": {"registry": {"auth": "<base64 user:password>"}}.
    _rule("registry credentials", r'"auth"\s*:\s*"[A-Za-z0-9+/]{12,}=*"'),
)
# Matched against the lower-cased text: AWS_SECRET_ACCESS_KEY, aws_secret_access_key and
# awsSecretAccessKey are all common. Also checked in every file.
_LOWER_RULES = (
    _rule("AWS secret key", r"aws_?secret_?access_?key\W{0,5}[a-z0-9/+=]{40}"),
    _rule("AWS session token", r"aws_?session_?token\W{0,5}[a-z0-9/+=]{40}"),
    # A password inside a URL works wherever it is written, notes included ("postgres://
    # app:password@db" and other stand-ins are placeholders).
    _rule("password in URL", r"://[^\s/:@]+:(?P<value>[^\s/:@]{3,})@"),
)
# The names a password or key goes by, as the end of a setting's or variable's name
# (`DB_PASSWORD`, `api_key`, `secretKey`, lower-cased).
_KEY_NAMES = (
    r"(?:password|passwd|passphrase|secret|api[_-]?key|apikey|access[_-]?key|secret[_-]?key"
    r"|private[_-]?key|token)"
)
# In code, a password or key written as a string literal (`DB_PASSWORD = "..."` in a
# settings.py): a value read from elsewhere (`getpass()`, `os.environ[...]`) is not one,
# nor a name (`SECRET_RULES_KEY = "secret_rules"`): the literal holds letters and digits.
_CODE_RULES = (
    _rule(
        "password or key",
        _KEY_NAMES + r"\w*[\"']?[ \t]*[:=][ \t]*[\"']"
        r"(?P<value>(?=[^\s\"']*[0-9])(?=[^\s\"']*[a-z])[^\s\"']{8,})[\"']",
    ),
)
# Assignments of a password or key: common and harmless in prose and code ("password =
# prompt()"), so only checked in configuration files (lower-cased).
# The key ends with one of the words (`DB_PASSWORD=`, `"api_key": "`, `_authToken=`); the
# value has 8+ characters and no spaces.
_CONFIG_RULES = (
    _rule(
        "password or key",
        r"(?:" + _KEY_NAMES + r"|_auth)[\"']?[ \t]*[:=]"
        r"[ \t]*[\"']?(?P<value>[^\s\"'`,;]{8,})",
    ),
    # XML settings: <password>...</password>, <apiKey>...</apiKey> (lower-cased).
    _rule(
        "password or key",
        r"<" + _KEY_NAMES + r">(?P<value>[^<\s]{8,})</",
    ),
)

# Values that stand for a secret rather than being one: references, paths, examples.
_PLACEHOLDER_START = ("$", "%", "{", "<", "(", "[", "/", "~", ".", "*")
_PLACEHOLDER_WORDS = (
    "example",
    "changeme",
    "change_me",
    "placeholder",
    "your",
    "xxxx",
    "redacted",
    "...",
)
_PLACEHOLDER_VALUES = frozenset({"password", "required", "optional", "undefined", "disabled"})
_RUN = re.compile(r"(.)\1{7}")  # "xxxxxxxx", "00000000", "********"
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _placeholder(match: re.Match[str]) -> bool:
    value = match.groupdict().get("value")
    if value is None:  # a fixed-format token: only an obvious stand-in is let through
        low = match.group(0).lower()
        return "example" in low or _RUN.search(low) is not None
    low = value.lower()
    return (
        low.startswith(_PLACEHOLDER_START)
        or low in _PLACEHOLDER_VALUES
        or any(w in low for w in _PLACEHOLDER_WORDS)
        or len(set(low)) < 4
    )


def _first(rules: Iterable[_Rule], text: str, end: int) -> tuple[int, str] | None:
    """The earliest real (not placeholder) match of any rule that starts before `end`."""
    first: tuple[int, str] | None = None
    for rule in rules:
        for match in rule.pattern.finditer(text, 0, first[0] if first else end):
            start = match.start()
            if rule.word_start and start and (text[start - 1].isalnum() or text[start - 1] == "_"):
                continue
            if not _placeholder(match):
                first = (start, rule.kind)
                break
    return first


_CONFIG_SUFFIXES = frozenset(
    "env ini cfg conf cnf config toml yaml yml json jsonc json5 properties props xml tfvars "
    "hcl plist npmrc pypirc netrc".split()
)
_CONFIG_NAMES = frozenset(
    ".npmrc .pypirc .yarnrc .netrc _netrc .pgpass .git-credentials .gitconfig .my.cnf .boto "
    ".s3cfg .dockercfg .htpasswd config credentials npmrc pypirc yarnrc kubeconfig".split()
)
# Kubernetes manifests and kubeconfigs hold settings whatever their file is called.
_CONFIG_TEXT = re.compile(r"(?m)^(?:apiVersion|kind):\s*\S")
_KUBERNETES_SECRET = re.compile(r"(?m)^kind:\s*Secret\s*$")
# Its `data:`/`stringData:` block holding a value (base64 `tls.key: LS0t...`).
_SECRET_DATA = re.compile(
    r"(?m)^(?:data|stringData):\s*\n(?:[ \t]+\S[^\n]*\n)*?[ \t]+[\w.-]+:\s*\S{8,}"
)


def config_like(name: str) -> bool:
    """Files whose lines are settings (`key = value`), where a password assignment is real."""
    low = name.lower()
    if low in _CONFIG_NAMES or low.startswith(".env"):
        return True
    return "." in low.lstrip(".") and low.rsplit(".", 1)[1] in _CONFIG_SUFFIXES


def find_secret(doc: Document, names: Iterable[str]) -> str | None:
    """Why `doc` must not be indexed ("GitHub token, line 12"), or None.

    `names`: the file's names (a link's and its target's); the configuration rules apply
    when any of them is a configuration file. The whole text is scanned, however long.
    """
    names = list(names)
    for name in names:  # a token in a file name is stored and shown like its text
        if in_name := _first(_TOKEN_RULES, name, len(name)):
            return f"{in_name[1]} in the file name"
    text = doc.text
    found = _first(_TOKEN_RULES, text, len(text))
    kube = _KUBERNETES_SECRET.search(text)
    if kube and _SECRET_DATA.search(text) and (found is None or kube.start() < found[0]):
        found = (kube.start(), "Kubernetes Secret")
    low = text.lower()
    if len(low) != len(text):  # "İ" lowers to two characters: keep offsets aligned
        low = text.translate(_ASCII_LOWER)
    config = any(config_like(n) for n in names) or _CONFIG_TEXT.search(text) is not None
    rules = _LOWER_RULES + (_CONFIG_RULES if config else ())
    rules += _CODE_RULES if doc.kind == "code" and not config else ()
    found = _first(rules, low, found[0] if found else len(text)) or found
    if found is None:
        return None
    return f"{found[1]}, {_where(doc, found[0])}"


def _where(doc: Document, offset: int) -> str:
    """'line N' (or 'page N' for PDFs) of the character at `offset`."""
    unit = "page" if doc.kind == "pdf" else "line"
    if not doc.line_map:
        return f"{unit} 1"
    i = bisect.bisect_right([o for o, _ in doc.line_map], offset) - 1
    return f"{unit} {doc.line_map[max(i, 0)][1]}"
