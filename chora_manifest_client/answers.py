"""How an HTTP exchange with the registry turns into a result or an exception.

Pure (no I/O), shared by the sync and async calls so both fail the same way. Failover
rules live here too: which failures mean "try the next URL" and which mean "stop".
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from chora_manifest_client.errors import ManifestAuthError, ManifestError, NotFoundError

INDEX_HEADER = "X-Registry-Index"

# The request never reached a server: always safe to send it to the next URL.
# A write failure means the request was cut short, so the server cannot have acted on it.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout,
             httpx.UnsupportedProtocol, httpx.WriteError, httpx.WriteTimeout)


def may_fail_over(exc: httpx.TransportError, *, idempotent: bool) -> bool:
    """Whether a transport failure lets the call move to the next URL.

    An idempotent call (GET, heartbeat PUT, DELETE) can be repeated whatever happened.
    A registration (POST) that was sent but whose answer was lost (read timeout, dropped
    connection) may have been applied: sending it again elsewhere would register a second
    instance, so it stops there and lets the caller decide."""
    return idempotent or isinstance(exc, _NOT_SENT)


def is_server_failure(response: httpx.Response) -> bool:
    """5xx: this replica cannot answer now (no etcd quorum for a write, overload, a
    proxy without upstream); another replica may."""
    return response.status_code >= 500


def describe(exc: httpx.TransportError) -> str:
    text = str(exc) or type(exc).__name__
    if "CERTIFICATE_VERIFY_FAILED" in text:
        text += " (pass the registry's CA bundle: cacert= or MANIFEST_CACERT)"
    return f"{type(exc).__name__}: {text}"


def detail(response: httpx.Response) -> str:
    """The registry's ``{"detail": ...}`` as one line (FastAPI's 422 gives a list)."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return response.text.strip()[:200] or response.reason_phrase
    found = body.get("detail") if isinstance(body, dict) else None
    if found is None:
        return json.dumps(body)[:200]
    if isinstance(found, list):
        return "; ".join(_one_validation_error(e) for e in found)
    return str(found)


def _one_validation_error(err: Any) -> str:
    if isinstance(err, dict) and "msg" in err:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        return f"{where}: {err['msg']}" if where else str(err["msg"])
    return str(err)


def index_of(response: httpx.Response) -> int | None:
    """The etcd revision the answer reflects (``X-Registry-Index``), if given."""
    value = response.headers.get(INDEX_HEADER)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def check(response: httpx.Response, *, expect: tuple[int, ...], what: str,
          not_found: type[NotFoundError] | None = None) -> httpx.Response:
    """``response`` if its status is expected; else the exception that says why."""
    code = response.status_code
    if code in expect:
        return response
    if code == 404 and not_found is not None:
        # The registry's detail already names the thing ("service 'x' not found: ...").
        said = detail(response)
        raise not_found(said if "not found" in said else f"{what}: not found ({said})",
                        status_code=code)
    raise refusal(response, what)


def refusal(response: httpx.Response, what: str) -> ManifestError:
    """The error for an unexpected 4xx: ``ManifestAuthError`` for 401 and 403 (the
    registry's detail names the scope needed), ``ManifestError`` otherwise."""
    code = response.status_code
    kind = ManifestAuthError if code in (401, 403) else ManifestError
    return kind(f"{what}: HTTP {code}: {detail(response)}", status_code=code)


def json_body(response: httpx.Response, what: str) -> Any:
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{what}: the registry answered something that is not JSON: "
                            f"{response.text[:120]!r}", status_code=response.status_code) from exc
