"""Instance records as the registry serves them: identity and the list filters.

Pure. The cache filters in memory with the same rules the server applies to
``GET /v1/services?status=&tag=&dependency=``, so a lookup answers the same either way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

Record = dict[str, Any]
Key = tuple[str, str]


def key_of(record: Mapping[str, Any]) -> Key | None:
    """``(name, id)`` of an instance record, ``None`` if it is not one."""
    name, instance_id = record.get("name"), record.get("id")
    if isinstance(name, str) and isinstance(instance_id, str) and name and instance_id:
        return name, instance_id
    return None


def _listed(metadata: Any, field: str) -> list[str]:
    values = metadata.get(field) if isinstance(metadata, Mapping) else None
    if isinstance(values, str):
        return [values]
    return [str(v) for v in values] if isinstance(values, list) else []


def tags(record: Mapping[str, Any]) -> list[str]:
    return _listed(record.get("metadata"), "tags")


def dependencies(record: Mapping[str, Any]) -> list[str]:
    """Names this instance depends on (``metadata.dependencies``: names, or dicts with a
    ``capability``/``name`` as some callers write them)."""
    raw = record.get("metadata")
    values = raw.get("dependencies") if isinstance(raw, Mapping) else None
    names = []
    for item in values if isinstance(values, list) else []:
        if isinstance(item, Mapping):
            item = item.get("capability") or item.get("name")
        if item:
            names.append(str(item))
    return names


def matches(record: Mapping[str, Any], status: str | None = None, tag: str | None = None,
            dependency: str | None = None) -> bool:
    return ((status is None or record.get("status") == status)
            and (tag is None or tag in tags(record))
            and (dependency is None or dependency in dependencies(record)))


def select(records: Iterable[Record], status: str | None = None, tag: str | None = None,
           dependency: str | None = None) -> list[Record]:
    """The records matching every filter given, sorted by name then id."""
    found = [r for r in records if matches(r, status, tag, dependency)]
    return sorted(found, key=lambda r: (str(r.get("name")), str(r.get("id"))))
