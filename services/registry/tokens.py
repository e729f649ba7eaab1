"""The token file (``--tokens FILE``) and what a token may do: pure data and rules, no
server. ``guard.py`` holds the current set, reloads it and answers requests with it.

The file is YAML (so JSON too): a list, one entry per token::

    # tokens.yaml: sha256 of each token, never the token itself
    - {subject: orchestrator, sha256: 9f86d0...0f00a08, scopes: ["register:orchestrator*"]}
    - subject: dashboard
      sha256: 2c26b4...e7ae
      scopes: [read]
      note: the ops dashboard          # optional, ignored (so is "created")

Scopes: ``read`` (every GET of data, the change stream), ``register:<glob>`` (register,
heartbeat and deregister instances whose *name* matches the glob: ``*`` and ``?``
over a name's characters), ``admin`` (everything). Scopes do not imply each other
except ``admin``: a service that registers and also discovers others gets both
``read`` and ``register:...``.

Why hashes, and why SHA-256 rather than a password hash: a stolen file must not be a
list of usable tokens, and the tokens minted here are 256 random bits, so a plain hash
cannot be reversed and can be looked up in a dict on every request (a password hash
would cost milliseconds per request). A subject may hold several tokens (rotation:
add the new one, move clients, delete the old entry).
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

READ = "read"
ADMIN = "admin"
REGISTER = "register:"
SCOPE_RULE = "read, admin, or register:<glob> (a glob of lowercase name characters, * and ?)"
GLOB_RE = re.compile(r"[a-z0-9._*?-]{1,63}")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
SUBJECT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:/-]{0,127}")
FIELDS = {"subject", "sha256", "scopes"}
OPTIONAL = {"note", "created"}
TOKEN_PREFIX = "chora_"  # recognisable in a leaked log or a secret scanner's report
MAX_TOKEN_BYTES = 1024
HEADER_CACHE = 4096


class TokenFileError(ValueError):
    """The file cannot be used; ``str()`` names the file and the entry. A ``ValueError``,
    so at start-up it is a configuration error (exit 2) like any other flag's."""


@dataclass(frozen=True)
class Identity:
    """Who a token belongs to and what it may do, compiled once per file load."""

    subject: str
    scopes: tuple[str, ...]
    sha256: str
    _patterns: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_patterns", tuple(
            re.compile(fnmatch.translate(s[len(REGISTER):]))
            for s in self.scopes if s.startswith(REGISTER)))

    @property
    def admin(self) -> bool:
        return ADMIN in self.scopes

    def may_read(self) -> bool:
        return self.admin or READ in self.scopes

    def may_write(self, name: str) -> bool:
        """Register, heartbeat or deregister an instance of ``name``."""
        return self.admin or any(p.match(name) for p in self._patterns)


@dataclass(frozen=True)
class TokenSet:
    """Every usable token, by the SHA-256 of the token (hex)."""

    by_hash: Mapping[str, Identity]

    def identify(self, token_hash: str) -> Identity | None:
        """The dict lookup is what keeps this cheap; its timing can tell at most
        something about a hash of a 256-bit secret, which does not help to guess one.
        The constant-time comparison confirms the match all the same."""
        found = self.by_hash.get(token_hash)
        if found is None or not hmac.compare_digest(found.sha256, token_hash):
            return None
        return found

    @property
    def subjects(self) -> list[str]:
        return sorted({i.subject for i in self.by_hash.values()})

    def __len__(self) -> int:
        return len(self.by_hash)


# -- the file ------------------------------------------------------------------------------


def check_scope(scope: object) -> str:
    """``scope`` if it is one this registry understands; else ``ValueError`` saying why."""
    if not isinstance(scope, str):
        raise ValueError(f"scope {scope!r} is not a string ({SCOPE_RULE})")
    if scope in (READ, ADMIN):
        return scope
    if scope.startswith(REGISTER):
        glob = scope[len(REGISTER):]
        if GLOB_RE.fullmatch(glob):
            return scope
        raise ValueError(f"scope {scope!r}: the glob after 'register:' must be 1 to 63 of "
                         "a-z 0-9 . _ - * ? (service names are lowercase)")
    raise ValueError(f"unknown scope {scope!r} ({SCOPE_RULE})")


def _entry(raw: object, number: int) -> Identity:
    if not isinstance(raw, dict):
        raise ValueError(f"entry {number} is not a mapping of subject, sha256 and scopes")
    subject = raw.get("subject")
    where = f"entry {number}" + (f" (subject {subject!r})" if isinstance(subject, str) else "")
    missing = sorted(FIELDS - set(raw))
    if missing:
        raise ValueError(f"{where}: missing {', '.join(missing)}")
    unknown = sorted(str(k) for k in set(raw) - FIELDS - OPTIONAL)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)} "
                         f"(known: {', '.join(sorted(FIELDS | OPTIONAL))})")
    if not isinstance(subject, str) or not SUBJECT_RE.fullmatch(subject):
        raise ValueError(f"{where}: subject must be 1 to 128 of A-Z a-z 0-9 . _ @ : / - "
                         "(it names the token's holder in logs)")
    digest = raw["sha256"]
    if not isinstance(digest, str) or not SHA256_RE.fullmatch(digest):
        raise ValueError(f"{where}: sha256 must be 64 lowercase hex digits, the SHA-256 of "
                         "the token (never the token itself)")
    scopes = raw["scopes"]
    if isinstance(scopes, str):
        scopes = [scopes]
    if not isinstance(scopes, list) or not scopes:
        raise ValueError(f"{where}: scopes must be a non-empty list ({SCOPE_RULE})")
    try:
        checked = tuple(dict.fromkeys(check_scope(s) for s in scopes))
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    return Identity(subject, checked, digest)


def parse(text: str, source: str) -> TokenSet:
    """The token set of a file's text; ``TokenFileError`` names ``source`` and the
    entry (1-based) that is wrong. An empty file is an empty set: nothing is allowed."""
    try:
        loaded = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError) as exc:
        raise TokenFileError(f"--tokens {source}: not YAML: {' '.join(str(exc).split())}"
                             ) from None
    if loaded is None:
        loaded = []
    if not isinstance(loaded, list):
        raise TokenFileError(f"--tokens {source}: expected a list of entries "
                             "({subject, sha256, scopes}), got a "
                             f"{type(loaded).__name__}")
    by_hash: dict[str, Identity] = {}
    for number, raw in enumerate(loaded, start=1):
        try:
            identity = _entry(raw, number)
        except ValueError as exc:
            raise TokenFileError(f"--tokens {source}: {exc}") from None
        if identity.sha256 in by_hash:
            raise TokenFileError(f"--tokens {source}: entry {number} (subject "
                                 f"{identity.subject!r}) repeats the sha256 of subject "
                                 f"{by_hash[identity.sha256].subject!r}")
        by_hash[identity.sha256] = identity
    return TokenSet(by_hash)


def read_file(path: Path) -> TokenSet:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise TokenFileError(f"--tokens {path}: cannot read it: {reason}") from None
    return parse(text, str(path))


# -- tokens on the wire ----------------------------------------------------------------------


def digest(token: str) -> str:
    """What the file stores for ``token``: ``printf %s "$TOKEN" | sha256sum``."""
    return hashlib.sha256(token.encode()).hexdigest()


@functools.lru_cache(maxsize=HEADER_CACHE)
def header_hash(authorization: bytes) -> str | None:
    """The SHA-256 (hex) of the token in an ``Authorization: Bearer <token>`` value, or
    None when the value is not that. Cached per header value, so a client that sends the
    same token on every request costs a dict lookup, not a hash."""
    scheme, _, token = authorization.strip().partition(b" ")
    token = token.strip()
    if scheme.lower() != b"bearer" or not token or len(token) > MAX_TOKEN_BYTES \
            or b" " in token:
        return None
    return hashlib.sha256(token).hexdigest()


# -- minting -------------------------------------------------------------------------------


def mint() -> str:
    """A new token: 256 random bits, URL-safe, with a recognisable prefix."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def entry_line(subject: str, token: str, scopes: Iterable[str],
               now: datetime | None = None) -> str:
    """The file's line for ``token`` (flow style, one line, so it can be appended)."""
    fields: dict[str, Any] = {
        "subject": subject, "sha256": digest(token), "scopes": list(scopes),
        "created": (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")}
    return "- {" + ", ".join(f"{k}: {json.dumps(v)}" for k, v in fields.items()) + "}"


def append(path: Path, line: str) -> None:
    """Add ``line`` to the token file (created 0600 if absent). The result is parsed
    before it replaces the file, atomically, so a running registry never reads half a
    file and a file that is not a block list is refused, not broken."""
    old = path.read_text(encoding="utf-8") if path.exists() else (
        "# chora registry tokens: python -m services.registry token --help\n")
    before = len(parse(old, str(path)))
    new = old + ("" if old.endswith("\n") or not old else "\n") + line + "\n"
    try:
        appended = len(parse(new, str(path))) == before + 1
    except TokenFileError:
        appended = False
    if not appended:
        raise TokenFileError(f"--tokens {path}: not a YAML block list ('- ...' lines); "
                             f"add this entry by hand: {line}")
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o600
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(new)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
