"""The in-memory view every GET is answered from: the ``State`` at the latest revision
this process has seen, the answers pre-encoded (re-encoded only after a change, on the
first read that needs them), and the ring of changes the watch stream replays. Pure: no
I/O and no event loop; ``hub.py`` owns it on the loop, ``following.py`` feeds it.

Rules the readers rely on:
- nothing is served before the first full read (``ready``): never an empty list that
  only means "not read yet";
- ``revision`` (X-Registry-Index) never goes backwards: a re-read older than what is
  shown is ignored, events at or below it are skipped;
- a re-read replaces the state in one step (``swap``) and announces the difference as
  ordinary changes, so a subscriber sees net changes, never a gap or an empty list;
- ``degraded`` (no etcd quorum): every instance is served as ``unknown``, since the
  registry cannot confirm it, and nothing is marked down for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from services.core import keys
from services.core.kv import Event, KeyValue
from services.registry import changes
from services.registry.changes import Change, Ring
from services.registry.graph import checked
from services.registry.records import encode
from services.registry.state import Instance, State, depends_on, health_status, parse_instance

UNKNOWN = "unknown"
SERVICES, CAPABILITIES = "services", "capabilities"  # the two cached lists
HEALTH_SUFFIX = "/" + keys.HEALTH


class View:
    def __init__(self, *, ring_size: int = 10_000, list_refresh: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.state = State()
        self.ready = False
        self.degraded = False
        self.ring = Ring(ring_size)
        # key → ISO time of the latest keep-alive this process forwarded: fresher than
        # the stored last_heartbeat, which is written only when the status changes.
        self.beats: dict[str, str] = {}
        self.list_refresh = list_refresh  # seconds a list may lag behind heartbeats
        self.clock = clock
        self._names: dict[str, bytes] = {}
        self._caps: dict[str, bytes] = {}
        # Whole lists: (body, encoded at, beats seen then). A change drops them; a mere
        # heartbeat lets them stand for ``list_refresh`` seconds, so a steady stream of
        # beats does not re-encode a list of thousands on every read.
        self._lists: dict[str, tuple[bytes, float, int]] = {}
        self._beats_seen = 0
        self._dependencies: bytes | None = None
        # What moved without being a change since ``take_beats`` last asked: instances
        # this process heard a keep-alive from, capabilities whose health was rewritten.
        self._fresh_beats: set[str] = set()
        self._fresh_health: set[str] = set()

    @property
    def revision(self) -> int:
        return self.state.revision

    # -- changes -------------------------------------------------------------------------

    def swap(self, new: State) -> list[Change] | None:
        """Replace the state with a full read; its differences come back as changes at
        the read's revision. None (and nothing done) for a read older than the view."""
        if self.ready and new.revision < self.state.revision:
            return None
        old, first = self.state, not self.ready
        self.state, self.ready = new, True
        self._invalidate_all()
        self.beats = {k: v for k, v in self.beats.items() if k in new.instances}
        if first:
            self.ring.floor = max(self.ring.floor, new.revision)
            return []
        out: list[Change] = []
        for key in sorted(old.instances.keys() | new.instances.keys()):
            before, after = old.instances.get(key), new.instances.get(key)
            if before is None or after is None or before.mod_revision != after.mod_revision:
                found = self._instance_change(new.revision, before, after)
                if found is not None:
                    out.append(found)
        for ns in sorted(old.capabilities.keys() | new.capabilities.keys()):
            was, now = old.capabilities.get(ns, {}), new.capabilities.get(ns, {})
            if _announced(was) != _announced(now):
                out.append(self._capability_change(new.revision, ns))
        if _value(old.sync_status) != _value(new.sync_status):
            out.append(self.sync_change(new.revision))
        self._record(out)
        return out

    def apply(self, events: Iterable[Event]) -> list[Change]:
        """Watch events in revision order; those the view already holds are skipped (a
        revision's events come in one batch: etcd does not split them)."""
        out: list[Change] = []
        pending: dict[str, None] = {}  # capabilities touched in the current revision
        held = current = self.state.revision
        for ev in events:
            rev = ev.kv.mod_revision
            if rev <= held:
                continue
            if rev != current:
                out.extend(self._capability_change(current, ns) for ns in pending)
                pending, current = {}, rev
            self.state.revision = rev
            key = ev.kv.key
            if key.startswith(keys.SERVICES):
                after = parse_instance(ev.kv) if ev.kind == "put" else None
                before = self.state.drop(key) if after is None else self.state.put(after)
                found = self._instance_change(rev, before, after)
                if found is not None:
                    out.append(found)
            elif key.startswith(keys.CAPABILITIES):
                touched = self.state.set_capability_key(
                    key, ev.kv.value if ev.kind == "put" else None)
                if touched is not None:
                    self._invalidate_capability(touched[0])
                    if touched[1]:
                        pending[touched[0]] = None
                    elif key.endswith(HEALTH_SUFFIX):
                        self._fresh_health.add(touched[0])
            elif key == keys.SYNC_STATUS:
                self.state.sync_status = ev.kv if ev.kind == "put" else None
                out.append(self.sync_change(rev))
        out.extend(self._capability_change(current, ns) for ns in pending)
        self._record(out)
        return out

    def set_degraded(self, degraded: bool) -> bool:
        """True when it changed (every served status changes with it)."""
        if degraded == self.degraded:
            return False
        self.degraded = degraded
        self._invalidate_all()
        return True

    def beat(self, key: str, when: str) -> None:
        """This process forwarded a keep-alive for ``key`` at ``when``: not a change,
        but what GETs show as ``last_heartbeat``."""
        inst = self.state.instances.get(key)
        if inst is None or when <= self.beats.get(key, ""):
            return
        self.beats[key] = when
        self._fresh_beats.add(key)
        self._names.pop(inst.name, None)
        self._caps.pop(inst.name, None)
        self._beats_seen += 1

    def _instance_change(self, rev: int, before: Instance | None,
                         after: Instance | None) -> Change | None:
        if before is None and after is None:
            return None
        name = (after or before).name  # type: ignore[union-attr]
        self._names.pop(name, None)
        self._caps.pop(name, None)
        self._lists.clear()
        if after is None:
            assert before is not None
            self.beats.pop(before.key, None)
            record = {**before.record, "status": "down"}
            return changes.change(changes.DEREGISTERED, rev, name, _event(record))
        if before is None:
            return changes.change(changes.REGISTERED, rev, name, _event(after.record))
        if before.status != after.status:
            return changes.change(changes.STATUS_CHANGED, rev, name,
                                  _event(after.record, previous=before.status))
        if before.record != after.record:
            return changes.change(changes.UPDATED, rev, name, _event(after.record))
        return None

    def _capability_change(self, rev: int, ns: str) -> Change:
        doc = self.state.capability(ns)
        return changes.change(changes.CAPABILITY_CHANGED, rev, ns,
                              {"namespace": ns, "capability": doc})

    def sync_change(self, rev: int) -> Change:
        return changes.change(changes.SYNC_CHANGED, rev, "", self.state.sync())

    def _record(self, found: list[Change]) -> None:
        for item in found:
            self.ring.append(item)

    def _invalidate_capability(self, ns: str) -> None:
        self._caps.pop(ns, None)
        self._lists.pop(CAPABILITIES, None)
        self._dependencies = None

    def _invalidate_all(self) -> None:
        self._names.clear()
        self._caps.clear()
        self._lists.clear()
        self._dependencies = None

    def _cached_list(self, which: str) -> bytes | None:
        found = self._lists.get(which)
        if found is None:
            return None
        body, at, seen = found
        if seen != self._beats_seen and self.clock() - at >= self.list_refresh:
            return None
        return body

    def _keep_list(self, which: str, body: bytes) -> bytes:
        self._lists[which] = (body, self.clock(), self._beats_seen)
        return body

    # -- queries -------------------------------------------------------------------------

    def instance(self, key: str) -> Instance | None:
        return self.state.instances.get(key)

    def served(self, inst: Instance) -> dict[str, Any]:
        """The record as answered: ``unknown`` when degraded, the freshest beat known."""
        record = inst.record
        status = UNKNOWN if self.degraded else inst.status
        last = record.get("last_heartbeat")
        beat = self.beats.get(inst.key)
        if beat is not None and (not isinstance(last, str) or beat > last):
            last = beat
        if status == record.get("status") and last == record.get("last_heartbeat"):
            return record
        return {**record, "status": status, "last_heartbeat": last}

    def service(self, name: str) -> bytes | None:
        """``GET /v1/services/{name}``: the record when one instance, a list when
        several, None when none."""
        cached = self._names.get(name)
        if cached is not None:
            return cached
        found = self.state.sorted_instances(name)
        if not found:
            return None
        records = [self.served(i) for i in found]
        body = encode(records[0] if len(records) == 1 else records)
        self._names[name] = body
        return body

    def services(self, status: str | None = None, tag: str | None = None,
                 dependency: str | None = None) -> bytes:
        """``GET /v1/services``: every instance by (name, id); filters combine."""
        everything = status is None and tag is None and dependency is None
        if everything and (cached := self._cached_list(SERVICES)) is not None:
            return cached
        out = []
        for inst in self.state.sorted_instances():
            if tag is not None and tag not in inst.field_list("tags"):
                continue
            if dependency is not None and dependency not in inst.field_list("dependencies"):
                continue
            record = self.served(inst)
            if status is None or record.get("status") == status:
                out.append(record)
        return self._keep_list(SERVICES, encode(out)) if everything else encode(out)

    def capability(self, ns: str) -> bytes | None:
        """``GET /v1/capabilities/{namespace}``: the view and its instances, or None."""
        cached = self._caps.get(ns)
        if cached is not None:
            return cached
        doc = self._capability_doc(ns)
        if doc is None:
            return None
        body = encode(doc)
        self._caps[ns] = body
        return body

    def capabilities(self, type_: str | None = None, dependency: str | None = None) -> bytes:
        everything = type_ is None and dependency is None
        if everything and (cached := self._cached_list(CAPABILITIES)) is not None:
            return cached
        out = []
        for ns in sorted(self.state.capabilities):
            doc = self.state.capability(ns)
            if doc is None or (type_ is not None and doc["type"] != type_):
                continue
            if dependency is not None and not depends_on(doc, dependency):
                continue
            out.append(self._with_instances(doc))
        return self._keep_list(CAPABILITIES, encode(out)) if everything else encode(out)

    def _capability_doc(self, ns: str) -> dict[str, Any] | None:
        doc = self.state.capability(ns)
        return None if doc is None else self._with_instances(doc)

    def _with_instances(self, doc: dict[str, Any]) -> dict[str, Any]:
        doc["instances"] = [self.served(i) for i in self.state.sorted_instances(doc["namespace"])]
        return doc

    def take_beats(self) -> dict[str, Any] | None:
        """The ``beats`` event (``?include=beats``): the latest heartbeat of each instance
        and the health record of each capability that moved since the last call, or None
        when nothing did. Not changes (they would flood the ring); what a dashboard needs
        to show ages that are true."""
        beats, self._fresh_beats = self._fresh_beats, set()
        health, self._fresh_health = self._fresh_health, set()
        instances = [[i.name, i.id, self.beats.get(k)] for k in sorted(beats)
                     if (i := self.state.instances.get(k)) is not None]
        records = {ns: self.state.health(ns) for ns in sorted(health)
                   if self.state.declared(ns)}
        if not instances and not records:
            return None
        return {"instances": instances, "health": records}

    def dependencies(self) -> bytes:
        """``GET /v1/dependencies``: every declared dependency checked against the
        version held, and the cycles; computed on the first read after a change."""
        if self._dependencies is None:
            self._dependencies = encode(
                {"revision": self.revision, **checked(self.state.capabilities_held())})
        return self._dependencies

    def counts(self) -> dict[str, int]:
        """Instances by served status."""
        if self.degraded:
            return {UNKNOWN: len(self.state.instances)}
        out: dict[str, int] = {}
        for inst in self.state.instances.values():
            out[inst.status] = out.get(inst.status, 0) + 1
        return out

    def resync(self, name: str | None = None) -> bytes:
        """The event a subscriber gets instead of changes it can no longer be given:
        everything current (of ``name`` only, if given), id = the view's revision."""
        services = [self.served(i) for i in self.state.sorted_instances(name)]
        namespaces = [name] if name is not None else sorted(self.state.capabilities)
        caps = [d for ns in namespaces if (d := self.state.capability(ns)) is not None]
        payload = {"revision": self.revision, "services": services, "capabilities": caps}
        return changes.frame(changes.RESYNC, self.revision, payload)


def _announced(held: dict[str, bytes]) -> dict[str, object]:
    """What of a capability's keys is worth a change event (see ``health_status``)."""
    return {k: (health_status(v) if k == keys.HEALTH else v) for k, v in held.items()}


def _value(kv: KeyValue | None) -> bytes | None:
    return None if kv is None else kv.value


def _event(record: dict[str, Any], previous: str | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {"name": record.get("name"), "id": record.get("id"),
                               "status": record.get("status", "up")}
    if previous is not None:
        payload["previous_status"] = previous
    payload["record"] = record
    return payload
