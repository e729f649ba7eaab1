"""What a client may send and what the registry stores for it: the name rules, the
registration body, the instance record (contract section 3), and bad input turned into
one ``{"detail": ...}`` that names the field. Pure: no I/O, tested without a server.

Everything here runs before anything reaches etcd, so a rejected request leaves the
store untouched (its revision does not move).
"""

from __future__ import annotations

import json
import math
import re
import secrets
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from chora_manifests import check_namespace

NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
NAME_RULE = "lowercase [a-z0-9][a-z0-9._-]{0,62} (1 to 63 characters) without '..'"
REFERENCE_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,252}")  # a name or a namespace
ID_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}-[0-9a-f]{8}")
STATUSES = ("up", "unhealthy", "unknown", "down")
MAX_BODY_BYTES = 64 * 1024
MAX_DEPTH = 16  # custom metadata values nest at most this deep


class BadInput(ValueError):
    """A 4xx answer: ``field`` names what was wrong, ``message`` says why."""

    def __init__(self, field: str, message: str, status: int = 422) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message, self.status = field, message, status

    def body(self) -> dict[str, object]:
        return {"detail": str(self), "errors": [{"field": self.field, "message": self.message}]}

    def json(self) -> bytes:
        return encode(self.body())


def is_name(value: str) -> bool:
    return NAME_RE.fullmatch(value) is not None and ".." not in value


def check_name(value: str, field: str = "name") -> str:
    if not is_name(value):
        raise BadInput(field, f"{value[:80]!r} is not a service name: {NAME_RULE}")
    return value


def check_instance_id(name: str, value: str, field: str = "id") -> str:
    """Ids are ``{name}-{8 lowercase hex}``: anything else was never issued here."""
    if not (ID_RE.fullmatch(value) and value[:-9] == name):
        raise BadInput(field, f"{value[:80]!r} is not an instance id of {name!r} "
                              f"({name}-{{8 lowercase hex}})")
    return value


def check_reference(value: str | None, field: str) -> str | None:
    """A filter value naming a service or a capability namespace (None: no filter)."""
    if value is not None and (REFERENCE_RE.fullmatch(value) is None or ".." in value):
        raise BadInput(field, f"{value[:80]!r} is not a service name or capability namespace")
    return value


def check_capability(value: str, field: str = "namespace") -> str:
    try:
        return check_namespace(value)
    except ValueError as exc:
        raise BadInput(field, str(exc)) from None


def new_id(name: str) -> str:
    return f"{name}-{secrets.token_hex(4)}"


def iso(moment: datetime | None = None) -> str:
    """UTC, milliseconds, ``Z``: ``2026-11-23T10:00:00.000Z`` (the contract's format)."""
    moment = moment or datetime.now(UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + \
        f"{moment.microsecond // 1000:03d}Z"


# -- the registration body ---------------------------------------------------------------


def _name(value: str) -> str:
    if not is_name(value):
        raise PydanticCustomError("name", "{value} is not a name: " + NAME_RULE,
                                  {"value": repr(value[:80])})
    return value


def _printable(value: str) -> str:
    if not value.isprintable():
        raise PydanticCustomError("printable", "must not contain control characters")
    return value


Name = Annotated[str, AfterValidator(_name)]
Text = Annotated[str, Field(min_length=1, max_length=256), AfterValidator(_printable)]
Version = Annotated[str, Field(min_length=1, max_length=64,
                               pattern=r"^[0-9A-Za-z][0-9A-Za-z.+_-]*$")]
InterfaceKind = Annotated[str, Field(min_length=1, max_length=32,
                                     pattern=r"^[A-Za-z][A-Za-z0-9_.-]*$")]
Endpoint = Annotated[str, Field(min_length=1, max_length=2048), AfterValidator(_printable)]


class Metadata(BaseModel):
    """The seed's ``ServiceMetadata``: four known fields, custom ones kept as given."""

    model_config = ConfigDict(extra="allow")

    description: str | None = Field(None, max_length=4096)
    dependencies: list[Name] = Field(default_factory=list, max_length=128,
                                     description="names of services this one needs")
    tags: list[Text] = Field(default_factory=list, max_length=64)
    environment: Text | None = None

    @model_validator(mode="after")
    def _custom_fields_are_plain_json(self) -> Metadata:
        for key, value in (self.model_extra or {}).items():
            if not (0 < len(key) <= 64 and key.isprintable()):
                raise PydanticCustomError(
                    "custom_key", "custom field {key} must be named by 1 to 64 printable "
                    "characters", {"key": repr(key[:80])})
            _plain_json(value, key, 0)
        return self


def _plain_json(value: Any, where: str, depth: int) -> None:
    """Custom values go back out as JSON to every reader: finite numbers, bounded depth."""
    if depth > MAX_DEPTH:
        raise PydanticCustomError("depth", "{where} nests deeper than {max}",
                                  {"where": where, "max": MAX_DEPTH})
    if isinstance(value, float) and not math.isfinite(value):
        raise PydanticCustomError("finite", "{where} is not a finite number", {"where": where})
    if isinstance(value, dict):
        for k, v in value.items():
            _plain_json(v, f"{where}.{k}", depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _plain_json(v, f"{where}.{i}", depth + 1)


class ServiceCreate(BaseModel):
    """``POST /v1/services``: one running instance of service ``name``. A ``REST``
    interface must be an http(s) URL (checked in ``parse_registration``)."""

    model_config = ConfigDict(extra="forbid")

    name: Name = Field(description=NAME_RULE, examples=["orchestrator"])
    version: Version = Field(examples=["1.0.0"])
    interfaces: dict[InterfaceKind, Endpoint] = Field(
        min_length=1, max_length=16,
        description="interface kind → endpoint; REST must be an http(s) URL",
        examples=[{"REST": "http://127.0.0.1:9000", "CLI": "chora-orch"}])
    metadata: Metadata | None = None


_HTTP_URL: TypeAdapter[HttpUrl] = TypeAdapter(HttpUrl)


def is_http_url(text: str) -> bool:
    """An absolute http(s) URL with a host (and a valid port, if any)."""
    try:
        url = _HTTP_URL.validate_python(text)
    except ValidationError:
        return False
    return bool(url.host) and " " not in text and "://" in text


def parse_registration(raw: bytes) -> ServiceCreate:
    """The request body → a valid registration, or ``BadInput`` naming the field."""
    if len(raw) > MAX_BODY_BYTES:
        raise BadInput("body", f"larger than {MAX_BODY_BYTES} bytes", status=413)
    try:
        document = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise BadInput("body", f"not valid JSON: {str(exc)[:120]}") from None
    if not isinstance(document, dict):
        raise BadInput("body", "must be a JSON object {name, version, interfaces, metadata?}")
    try:
        body = ServiceCreate.model_validate(document)
    except ValidationError as exc:
        raise from_validation(exc.errors(include_url=False)) from None
    for kind, endpoint in body.interfaces.items():
        if kind.lower() == "rest" and not is_http_url(endpoint):
            raise BadInput(f"interfaces.{kind}",
                           f"{endpoint[:80]!r} is not an http(s) URL with a host")
    return body


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def from_validation(errors: Iterable[Mapping[str, Any]], skip: Iterable[str] = ()) -> BadInput:
    """pydantic/FastAPI errors → one ``BadInput`` whose detail names every field."""
    skip = set(skip)
    parts: list[tuple[str, str]] = []
    for err in errors:
        loc = [str(p) or '""' for p in err.get("loc", ())
               if str(p) not in skip and p != "[key]"]  # a dict key's own error
        field = ".".join(loc) or "body"
        message = str(err.get("msg", "invalid"))
        if err.get("type") == "extra_forbidden":
            message = "unknown field"
        elif err.get("type") == "missing":
            message = "required"
        parts.append((field, message))
    if not parts:
        return BadInput("body", "invalid")
    (field, message), rest = parts[0], parts[1:]
    return BadInput(field, "; ".join([message, *(f"{f}: {m}" for f, m in rest)]))


# -- the stored record -------------------------------------------------------------------


def build_record(body: ServiceCreate, instance_id: str, now: str) -> dict[str, Any]:
    """The seed's ``ServiceRecord.to_dict``: known metadata fields first, custom after."""
    meta = body.metadata or Metadata()
    return {
        "name": body.name,
        "id": instance_id,
        "version": body.version,
        "interfaces": dict(body.interfaces),
        "metadata": {
            "description": meta.description,
            "dependencies": list(meta.dependencies),
            "tags": list(meta.tags),
            "environment": meta.environment,
            **(meta.model_extra or {}),
        },
        "status": "up",
        "last_heartbeat": now,
        "registered_at": now,
    }


def with_status(record: Mapping[str, Any], status: str, last_heartbeat: str) -> bytes:
    """The record as stored after a state change (``up`` ↔ ``unhealthy``)."""
    return encode({**record, "status": status, "last_heartbeat": last_heartbeat})


def encode(document: object) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def registered(record: Mapping[str, Any], heartbeat_timeout: float,
               removal_timeout: float) -> dict[str, Any]:
    """The 201 body: the seed's fields plus the removal timeout (added, never renamed)."""
    return {
        "id": record["id"],
        "name": record["name"],
        "version": record["version"],
        "status": record["status"],
        "registered_at": record["registered_at"],
        "heartbeat_interval": _number(heartbeat_timeout / 3),
        "heartbeat_timeout": _number(heartbeat_timeout),
        "removal_timeout": _number(removal_timeout),
    }


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else round(value, 3)
