"""Each registry call as data: the request to send and how to read its answer.

Pure (no I/O): ``ManifestClient`` sends ``op.call`` through its failover loop (sync or
async) and hands the answer to ``op.read``. Writing each call once here is what keeps
``register`` and ``register_async`` (and every other twin) from drifting apart.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from chora_manifest_client import answers
from chora_manifest_client.errors import (
    CapabilityNotFoundError,
    ManifestError,
    ServiceNotFoundError,
)

T = TypeVar("T")
Record = dict[str, Any]


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    params: Mapping[str, str] = field(default_factory=dict)
    json: Any = None
    idempotent: bool = True
    """Safe to send again to another URL after an answer was lost (see answers.py)."""


@dataclass(frozen=True)
class Op(Generic[T]):
    call: Call
    read: Callable[[httpx.Response], T]


@dataclass(frozen=True)
class Registration:
    """The registry's 201 answer: the instance id it chose and the beat it expects."""

    instance_id: str
    name: str
    version: str
    status: str
    registered_at: str
    heartbeat_interval: float
    """Seconds between heartbeats the registry asks for (10)."""
    heartbeat_timeout: float
    """Seconds without a heartbeat before the instance turns ``unhealthy`` (30)."""


def _segment(value: str) -> str:
    """A path segment that cannot escape its route, whatever the caller passes."""
    return quote(value, safe="")


def register(name: str, version: str, interfaces: Mapping[str, str],
             metadata: Mapping[str, Any] | None) -> Op[Registration]:
    what = f"register {name!r}"

    def read(response: httpx.Response) -> Registration:
        body = answers.json_body(answers.check(response, expect=(200, 201), what=what), what)
        try:
            return Registration(
                instance_id=str(body["id"]), name=str(body.get("name", name)),
                version=str(body.get("version", version)), status=str(body.get("status", "up")),
                registered_at=str(body.get("registered_at", "")),
                heartbeat_interval=float(body.get("heartbeat_interval", 10)),
                heartbeat_timeout=float(body.get("heartbeat_timeout", 30)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"{what}: unexpected answer {body!r}") from exc

    payload = {"name": name, "version": version, "interfaces": dict(interfaces),
               "metadata": dict(metadata or {})}
    return Op(Call("POST", "/v1/services", json=payload, idempotent=False), read)


def heartbeat(name: str, instance_id: str) -> Op[None]:
    what = f"heartbeat {name}/{instance_id}"

    def read(response: httpx.Response) -> None:
        answers.check(response, expect=(200, 204), what=what, not_found=ServiceNotFoundError)

    return Op(Call("PUT", f"/v1/services/{_segment(name)}/{_segment(instance_id)}/heartbeat"),
              read)


def deregister(name: str, instance_id: str) -> Op[None]:
    what = f"deregister {name}/{instance_id}"

    def read(response: httpx.Response) -> None:
        # 404: already gone, which is what was asked.
        answers.check(response, expect=(200, 204, 404), what=what)

    return Op(Call("DELETE", f"/v1/services/{_segment(name)}/{_segment(instance_id)}"), read)


def get_service(name: str) -> Op[Record | list[Record]]:
    what = f"service {name!r}"

    def read(response: httpx.Response) -> Record | list[Record]:
        answers.check(response, expect=(200,), what=what, not_found=ServiceNotFoundError)
        body = answers.json_body(response, what)
        if not isinstance(body, dict | list):
            raise ManifestError(f"{what}: unexpected answer {body!r}")
        return body

    return Op(Call("GET", f"/v1/services/{_segment(name)}"), read)


def list_services(status: str | None = None, tag: str | None = None,
                  dependency: str | None = None) -> Op[list[Record]]:
    params = {k: v for k, v in (("status", status), ("tag", tag), ("dependency", dependency))
              if v is not None}
    return Op(Call("GET", "/v1/services", params=params), _list_reader("services"))


def list_services_indexed() -> Op[tuple[list[Record], int | None]]:
    """All instances with the etcd revision they reflect: the starting point of a watch."""
    read_list = _list_reader("services")

    def read(response: httpx.Response) -> tuple[list[Record], int | None]:
        return read_list(response), answers.index_of(response)

    return Op(Call("GET", "/v1/services"), read)


def list_capabilities(type: str | None = None) -> Op[list[Record]]:
    params = {"type": type} if type else {}
    return Op(Call("GET", "/v1/capabilities", params=params), _list_reader("capabilities"))


def get_capability(namespace: str) -> Op[Record]:
    what = f"capability {namespace!r}"

    def read(response: httpx.Response) -> Record:
        answers.check(response, expect=(200,), what=what, not_found=CapabilityNotFoundError)
        body = answers.json_body(response, what)
        if not isinstance(body, dict):
            raise ManifestError(f"{what}: unexpected answer {body!r}")
        return body

    return Op(Call("GET", f"/v1/capabilities/{_segment(namespace)}"), read)


def health() -> Op[Record]:
    def read(response: httpx.Response) -> Record:
        answers.check(response, expect=(200,), what="registry health")
        return answers.json_body(response, "registry health")

    return Op(Call("GET", "/v1/health"), read)


def _list_reader(what: str) -> Callable[[httpx.Response], list[Record]]:
    def read(response: httpx.Response) -> list[Record]:
        answers.check(response, expect=(200,), what=f"list {what}")
        body = answers.json_body(response, f"list {what}")
        if not isinstance(body, list):
            raise ManifestError(f"list {what}: expected a list, got {type(body).__name__}")
        return body

    return read


def instances(answer: Record | list[Record]) -> list[Record]:
    """``GET /v1/services/{name}`` answers one record or a list: always a list."""
    return answer if isinstance(answer, list) else [answer]
