"""The etcd adapter: the only module that imports the etcd client library.

python-etcd3 0.12.0 talks to one host, lets calls hang forever, drops watches on the first
error and opens a gRPC stream per lease refresh. This adapter keeps its channel and
generated stubs and adds what production needs:

- every member in one gRPC channel (a multi-address target with ``round_robin``), so a
  call that failed on a dead member is retried on the next one;
- a deadline on every call (``timeout``), so a frozen member costs seconds, not forever,
  and gRPC health checks + keep-alive pings that take it out of rotation within ~8 s;
- paginated reads at one revision, so 60,000 keys neither exceed gRPC's message limit
  nor mix two revisions;
- transactions with revision guards, size/op limits checked before sending;
- one keep-alive stream for a whole batch of leases (``refresh_leases``);
- watches as plain iterators that raise on failure, for the caller to re-create.

Errors callers handle: ``Unavailable`` (transient: back off, retry; ``NoSpace`` is the
one whose cure is an operator's: it says how), ``Compacted``
(re-read, then watch again), ``LeaseNotFound``.
"""

from __future__ import annotations

import json
import queue
import socket
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import etcd3
import grpc
import tenacity
from etcd3 import etcdrpc
from etcd3.etcdrpc import kv_pb2

MAX_TXN_OPS = 128  # etcd's default --max-txn-ops
MAX_REQUEST_BYTES = 1_400_000  # etcd's default --max-request-bytes is 1.5 MiB; keep headroom

_TRANSIENT = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNKNOWN,  # e.g. "etcdserver: leader changed", "no leader"
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.INTERNAL,
}


class StoreError(Exception):
    """Base of the errors this adapter raises."""


class Unavailable(StoreError):
    """No member answered in time, or the cluster has no quorum. Transient."""


class NoSpace(Unavailable):
    """etcd's NOSPACE alarm is raised: the database reached its quota and every write is
    refused until an operator frees space and disarms the alarm. Transient for a daemon
    (it keeps retrying), but it names the cause and the cure instead of "unreachable"."""

    HOW_TO_CLEAR = (
        "etcd NOSPACE alarm: the database reached --quota-backend-bytes and etcd refuses "
        "writes. Free space, then disarm: etcdctl compact <current revision>; etcdctl "
        "defrag --cluster; etcdctl alarm disarm (see infrastructure/etcd/README.md)"
    )

    def __init__(self, detail: str = "") -> None:
        super().__init__(f"{self.HOW_TO_CLEAR} [{detail}]" if detail else self.HOW_TO_CLEAR)


class Compacted(StoreError):
    """The watch's start revision was compacted away; re-read at ``revision``."""

    def __init__(self, revision: int) -> None:
        super().__init__(f"revision compacted; oldest available is {revision}")
        self.revision = revision


class LeaseNotFound(StoreError):
    """etcd no longer knows the lease (expired, revoked, or restored from a snapshot)."""


class TooLarge(StoreError):
    """A request would exceed etcd's request size or operation count limits."""


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    mod_revision: int
    create_revision: int
    lease: int


@dataclass(frozen=True, slots=True)
class Put:
    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    key: str


@dataclass(frozen=True, slots=True)
class Unchanged:
    """Guard: the key's mod revision is still ``mod_revision`` (0: it does not exist)."""

    key: str
    mod_revision: int


Op = Put | Delete


@dataclass(frozen=True, slots=True)
class Event:
    kind: str  # "put" | "delete"
    kv: KeyValue


def _error(exc: grpc.RpcError) -> StoreError:
    code = exc.code()
    detail = exc.details() or ""
    if code == grpc.StatusCode.NOT_FOUND and "lease" in detail:
        return LeaseNotFound(detail)
    if "database space exceeded" in detail:
        return NoSpace(detail)
    if code == grpc.StatusCode.OUT_OF_RANGE and "compacted" in detail:
        return Compacted(0)
    if code in _TRANSIENT:
        return Unavailable(f"{code.name}: {detail}")
    return StoreError(f"{code.name}: {detail}")


def _kv(kv: kv_pb2.KeyValue) -> KeyValue:
    return KeyValue(kv.key.decode(), kv.value, kv.mod_revision, kv.create_revision, kv.lease)


def _prefix_end(prefix: bytes) -> bytes:
    end = bytearray(prefix)
    for i in reversed(range(len(end))):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"


# -- Txn on the wire -----------------------------------------------------------------------
# The only protobuf for Python 3.11 that etcd3 0.12.0 imports with (3.20.x) is the pure-
# Python one: building and parsing a 128-operation TxnRequest message by message cost
# 3x the CPU etcd itself spent applying it (measured: scripts/bench_sync.py). Txn is the
# sync's hot path, so its request is encoded here directly and its response decoded down
# to the two fields we read. tests/unit/test_store_wire.py checks both against the
# generated classes.


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1  # int64 two's complement, as protobuf encodes negatives
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _int_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def encode_txn(guards: list[Unchanged], ops: list[Op]) -> bytes:
    """TxnRequest{compare: [mod_revision(key) == n], success: [put | delete_range]}."""
    parts = []
    for g in guards:  # Compare{result=EQUAL(0), target=MOD(2), key, mod_revision}
        parts.append(_field(1, _int_field(2, 2) + _field(3, g.key.encode())
                            + _int_field(6, g.mod_revision)))
    for op in ops:
        if isinstance(op, Put):
            body = _field(1, op.key.encode()) + _field(2, op.value)
            if op.lease:
                body += _int_field(3, op.lease)
            parts.append(_field(2, _field(2, body)))  # RequestOp{request_put}
        else:
            parts.append(_field(2, _field(3, _field(1, op.key.encode()))))  # delete_range
    return b"".join(parts)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def decode_txn_response(buf: bytes) -> tuple[bool, int]:
    """(succeeded, header.revision) from a TxnResponse, skipping the per-op responses."""
    pos, succeeded, revision = 0, False, 0
    while pos < len(buf):
        tag, pos = _read_varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
            if number == 2:
                succeeded = bool(value)
        elif wire == 2:
            length, pos = _read_varint(buf, pos)
            if number == 1:  # ResponseHeader{cluster_id=1, member_id=2, revision=3, ...}
                hpos, end = pos, pos + length
                while hpos < end:
                    htag, hpos = _read_varint(buf, hpos)
                    hvalue, hpos = _read_varint(buf, hpos)
                    if htag >> 3 == 3:
                        revision = hvalue
            pos += length
        else:
            raise StoreError(f"unexpected wire type {wire} in TxnResponse")
    return succeeded, revision


def _fields(buf: bytes, pos: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(field number, value or start offset, end offset) for each field in buf[pos:end]."""
    while pos < end:
        tag, pos = _read_varint(buf, pos)
        if tag & 7 == 0:
            value, pos = _read_varint(buf, pos)
            yield tag >> 3, value, pos
        elif tag & 7 == 2:
            length, pos = _read_varint(buf, pos)
            yield tag >> 3, pos, pos + length
            pos += length
        else:
            raise StoreError(f"unexpected wire type {tag & 7} in RangeResponse")


def decode_range_response(buf: bytes) -> tuple[list[KeyValue], bool, int]:
    """(kvs, more, header.revision) from a RangeResponse: pure-Python protobuf took
    ~0.1 ms per key, which made reading 60,000 keys the slowest part of a reconcile."""
    kvs, more, revision = [], False, 0
    for number, a, b in _fields(buf, 0, len(buf)):
        if number == 2:
            key = value = b""
            create = mod = lease = 0
            for n, x, y in _fields(buf, a, b):
                if n == 1:
                    key = buf[x:y]
                elif n == 5:
                    value = buf[x:y]
                elif n == 2:
                    create = x
                elif n == 3:
                    mod = x
                elif n == 6:
                    lease = x
            kvs.append(KeyValue(key.decode(), value, mod, create, lease))
        elif number == 3:
            more = bool(a)
        elif number == 1:
            for n, x, _ in _fields(buf, a, b):
                if n == 3:
                    revision = x
    return kvs, more, revision


def _resolve(endpoint: str) -> str:
    """gRPC's ipv4: target takes addresses only, so compose service names resolve here."""
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"endpoint {endpoint!r} is not host:port")
    return f"{socket.gethostbyname(host)}:{port}"


def parse_endpoints(text: str | Iterable[str]) -> list[str]:
    items = text.split(",") if isinstance(text, str) else list(text)
    endpoints = [e.strip().removeprefix("http://") for e in items if e.strip()]
    if not endpoints:
        raise ValueError("no etcd endpoints given")
    return endpoints


class Store:
    """One long-lived client per process: ``Store(["127.0.0.1:2379", ...], timeout=3)``."""

    def __init__(self, endpoints: Iterable[str], *, timeout: float = 3.0) -> None:
        self.endpoints = parse_endpoints(endpoints)
        self.timeout = timeout
        addresses = [_resolve(e) for e in self.endpoints]
        last_host, _, last_port = addresses[-1].rpartition(":")
        # etcd3 formats its target as "{host}:{port}"; this yields "ipv4:a:p,b:p,c:p".
        host = "ipv4:" + ",".join([*addresses[:-1], last_host])
        self._client = etcd3.client(
            host=host,
            port=int(last_port),
            timeout=timeout,
            grpc_options=[
                ("grpc.lb_policy_name", "round_robin"),
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                # A frozen member (SIGSTOP, paused VM, black-holed network) keeps its TCP
                # connection open, so round robin would hand it a third of all calls, each
                # costing a whole deadline, for as long as it stays frozen. Measured: it was
                # never dropped. gRPC's health checking keeps one Health.Watch stream open
                # per member (etcd serves grpc.health.v1), which allows keep-alive pings
                # under etcd's policy (no more often than every 5 s, only with a stream
                # open; otherwise GOAWAY "too_many_pings" drops the connection and its
                # watches); a ping unanswered for 2 s closes the connection and takes the
                # member out of rotation until it answers a health check again. A frozen
                # member is out within ~8 s (keepalive 6 s + ping timeout 2 s).
                ("grpc.service_config", json.dumps({"healthCheckConfig": {"serviceName": ""}})),
                ("grpc.keepalive_time_ms", 6000),
                ("grpc.keepalive_timeout_ms", 2000),
                ("grpc.http2.ping_timeout_ms", 2000),
                ("grpc.http2.max_pings_without_data", 0),  # the health stream carries none
                ("grpc.keepalive_permit_without_calls", 0),
                ("grpc.initial_reconnect_backoff_ms", 200),
                ("grpc.min_reconnect_backoff_ms", 200),
                ("grpc.max_reconnect_backoff_ms", 1000),
            ],
        )
        self._kv = self._client.kvstub
        self._lease = self._client.leasestub
        self._watch = etcdrpc.WatchStub(self._client.channel)
        self._txn = self._client.channel.unary_unary(
            "/etcdserverpb.KV/Txn",
            request_serializer=bytes,
            response_deserializer=decode_txn_response,
        )
        self._keepalive = self._client.channel.stream_stream(
            "/etcdserverpb.Lease/LeaseKeepAlive"
        )
        self._range = self._client.channel.unary_unary(
            "/etcdserverpb.KV/Range",
            request_serializer=etcdrpc.RangeRequest.SerializeToString,
            response_deserializer=decode_range_response,
        )
        self._maintenance = self._client.maintenancestub
        self._cluster = self._client.clusterstub
        # Reads are safe to repeat on another member; try each member once.
        self._read_attempts = max(2, len(self.endpoints))

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reads ---------------------------------------------------------------------------

    def _read(self, call: object, request: object) -> object:
        """Reads are safe to repeat, so a transient error is retried (round robin moves on
        to the next member) with short jittered pauses: at least once per member, and
        for one ``timeout`` in all, since an election ("leader changed") lasts about one
        election timeout."""
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(Unavailable),
            stop=tenacity.stop_after_attempt(self._read_attempts)
            & tenacity.stop_after_delay(self.timeout),
            wait=tenacity.wait_random_exponential(multiplier=0.05, max=0.5),
            reraise=True,
        )
        for attempt in retrying:
            with attempt:
                try:
                    return call(request, self.timeout)  # type: ignore[operator]
                except grpc.RpcError as exc:
                    raise _error(exc) from exc
        raise AssertionError("unreachable: tenacity re-raises the last error")

    def get(self, key: str) -> KeyValue | None:
        resp = self._read(self._kv.Range, etcdrpc.RangeRequest(key=key.encode()))
        return _kv(resp.kvs[0]) if resp.kvs else None  # type: ignore[attr-defined]

    def get_prefix(
        self, prefix: str, *, page: int = 2000, keys_only: bool = False
    ) -> tuple[dict[str, KeyValue], int]:
        """Every key under ``prefix`` at one revision (linearizable), and that revision."""
        start, end = prefix.encode(), _prefix_end(prefix.encode())
        out: dict[str, KeyValue] = {}
        revision = 0
        while True:
            req = etcdrpc.RangeRequest(
                key=start, range_end=end, limit=page, revision=revision, keys_only=keys_only
            )
            kvs, more, header_revision = self._read(self._range, req)  # type: ignore[misc]
            revision = revision or header_revision
            for kv in kvs:
                out[kv.key] = kv
            if not more or not kvs:
                return out, revision
            start = kvs[-1].key.encode() + b"\0"

    def revision(self) -> int:
        """The cluster's current revision, by a linearizable read (proves quorum)."""
        resp = self._read(self._kv.Range, etcdrpc.RangeRequest(key=b"\0", limit=1))
        return resp.header.revision  # type: ignore[attr-defined]

    # -- writes --------------------------------------------------------------------------

    def txn(self, guards: Iterable[Unchanged], ops: Iterable[Op]) -> tuple[bool, int]:
        """Apply ``ops`` atomically if every guard holds: (succeeded, revision).

        Not retried here: a write that timed out may have been applied, so the caller
        re-reads and re-plans instead (the guards then say whether it landed).
        """
        guards, ops = list(guards), list(ops)
        if len(ops) > MAX_TXN_OPS or len(guards) > MAX_TXN_OPS:
            raise TooLarge(f"{len(ops)} operations; etcd accepts {MAX_TXN_OPS} per txn")
        request = encode_txn(guards, ops)
        if len(request) > MAX_REQUEST_BYTES:
            raise TooLarge(f"{len(request)} bytes; etcd accepts {MAX_REQUEST_BYTES}")
        try:
            return self._txn(request, self.timeout)
        except grpc.RpcError as exc:
            raise _error(exc) from exc

    # -- leases --------------------------------------------------------------------------

    def grant(self, ttl: int) -> int:
        try:
            resp = self._lease.LeaseGrant(etcdrpc.LeaseGrantRequest(TTL=ttl), self.timeout)
        except grpc.RpcError as exc:
            raise _error(exc) from exc
        return resp.ID

    def revoke(self, lease_id: int) -> None:
        """Revoke; an unknown lease counts as revoked."""
        try:
            self._lease.LeaseRevoke(etcdrpc.LeaseRevokeRequest(ID=lease_id), self.timeout)
        except grpc.RpcError as exc:
            err = _error(exc)
            if not isinstance(err, LeaseNotFound):
                raise err from exc

    def lease_ttl(self, lease_id: int) -> int:
        """Remaining TTL in seconds; -1 when etcd does not know the lease."""
        resp = self._read(self._lease.LeaseTimeToLive, etcdrpc.LeaseTimeToLiveRequest(ID=lease_id))
        return resp.TTL  # type: ignore[attr-defined]

    def refresh_leases(self, lease_ids: Iterable[int]) -> dict[int, int]:
        """Refresh many leases over ONE keep-alive stream: {lease id: new TTL}. TTL 0 means
        etcd no longer knows the lease (it does not raise): grant a new one and re-put.
        Messages go on the wire directly: pure-Python protobuf cost more CPU per
        keep-alive than everything else in a heartbeat beat.
        LeaseKeepAliveRequest{ID=1}; LeaseKeepAliveResponse{header=1, ID=2, TTL=3}."""
        ids = list(dict.fromkeys(lease_ids))
        if not ids:
            return {}
        call = self._keepalive(iter([_int_field(1, i) for i in ids]), timeout=self.timeout)
        out: dict[int, int] = {}
        try:
            for resp in call:
                lease_id = ttl = 0
                for number, value, _ in _fields(resp, 0, len(resp)):
                    if number == 2:
                        lease_id = value - (1 << 64) if value >= 1 << 63 else value
                    elif number == 3:
                        ttl = value - (1 << 64) if value >= 1 << 63 else value
                out[lease_id] = ttl
                if len(out) >= len(ids):
                    break
        except grpc.RpcError as exc:
            raise _error(exc) from exc
        finally:
            call.cancel()
        return out

    # -- watches -------------------------------------------------------------------------

    def watch_prefix(self, prefix: str, start_revision: int) -> Watch:
        return Watch(self, prefix, start_revision)

    # -- cluster -------------------------------------------------------------------------

    def members(self) -> list[dict[str, object]]:
        try:
            resp = self._cluster.MemberList(etcdrpc.MemberListRequest(), self.timeout)
        except grpc.RpcError as exc:
            raise _error(exc) from exc
        return [
            {"id": m.ID, "name": m.name, "client_urls": list(m.clientURLs),
             "peer_urls": list(m.peerURLs)}
            for m in resp.members
        ]

    def member_status(self) -> dict[str, object]:
        """Status of whichever member this channel reaches; use a one-endpoint Store."""
        try:
            resp = self._maintenance.Status(etcdrpc.StatusRequest(), self.timeout)
        except grpc.RpcError as exc:
            raise _error(exc) from exc
        return {
            "member_id": resp.header.member_id,
            "leader": resp.leader,
            "is_leader": resp.leader == resp.header.member_id,
            "version": resp.version,
            "db_size": resp.dbSize,
            "raft_term": resp.raftTerm,
            "revision": resp.header.revision,
        }

    def alarms(self) -> list[str]:
        """Alarms raised in the cluster, e.g. ``["NOSPACE"]``. The request goes through
        raft, so an answer also proves that a quorum is there."""
        request = etcdrpc.AlarmRequest(action=etcdrpc.AlarmRequest.GET)
        resp = self._read(self._maintenance.Alarm, request)
        names = {a.alarm for a in resp.alarms}  # type: ignore[attr-defined]
        return sorted(etcdrpc.AlarmType.Name(n) for n in names if n)

    def snapshot(self, path: str) -> None:
        """Stream a snapshot of the reached member's database into ``path``."""
        try:
            with open(path, "wb") as out:
                for chunk in self._maintenance.Snapshot(etcdrpc.SnapshotRequest(), 120):
                    out.write(chunk.blob)
        except grpc.RpcError as exc:
            raise _error(exc) from exc


class Watch:
    """Iterate to receive batches of events from ``start_revision`` on; raises
    ``Unavailable`` or ``Compacted`` when the stream ends, ``cancel()`` stops it.

    The caller re-creates it from the last seen revision + 1. A member cut off from the
    majority sends nothing at all, so pair a watch with a periodic linearizable read.
    """

    def __init__(self, store: Store, prefix: str, start_revision: int) -> None:
        key = prefix.encode()
        create = etcdrpc.WatchRequest(
            create_request=etcdrpc.WatchCreateRequest(
                key=key, range_end=_prefix_end(key), start_revision=start_revision
            )
        )
        self._stop: queue.Queue[None] = queue.Queue()
        self._cancelled = threading.Event()

        def requests() -> Iterator[etcdrpc.WatchRequest]:
            yield create
            self._stop.get()  # hold the request side open until cancelled

        self._call = store._watch.Watch(requests())

    def cancel(self) -> None:
        self._cancelled.set()
        self._stop.put(None)
        self._call.cancel()

    def __iter__(self) -> Iterator[list[Event]]:
        try:
            for resp in self._call:
                if resp.compact_revision:
                    raise Compacted(resp.compact_revision)
                if resp.canceled:
                    raise Unavailable(f"watch cancelled by server: {resp.cancel_reason}")
                if resp.events:
                    yield [
                        Event("delete" if ev.type == ev.DELETE else "put", _kv(ev.kv))
                        for ev in resp.events
                    ]
        except grpc.RpcError as exc:
            if self._cancelled.is_set():
                return
            raise _error(exc) from exc
        if not self._cancelled.is_set():
            raise Unavailable("watch stream ended")
