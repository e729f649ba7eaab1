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

The data it takes and gives is in ``kv.py``, its errors in ``errors.py`` (sorted into
transient and terminal), the hand-written protobuf in ``wire.py``; calls only scripts
make (members, status, snapshot) in ``admin.py``.
"""

from __future__ import annotations

import json
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator

import etcd3
import grpc
from etcd3 import etcdrpc
from etcd3.etcdrpc import kv_pb2

from services.core.backoff import Backoff
from services.core.errors import (
    Compacted,
    LeaseNotFound,
    NoSpace,
    StoreError,
    TooLarge,
    Unavailable,
)
from services.core.kv import MAX_REQUEST_BYTES, MAX_TXN_OPS, Event, KeyValue, Op, Unchanged
from services.core.wire import (
    decode_keepalive,
    decode_range_response,
    decode_txn_response,
    encode_keepalive,
    encode_txn,
)

_TRANSIENT = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNKNOWN,  # e.g. "etcdserver: leader changed", "no leader"
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.INTERNAL,
}

def translate_error(exc: grpc.RpcError) -> StoreError:
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
        self.maintenance = self._client.maintenancestub
        self.cluster = self._client.clusterstub
        # Reads are safe to repeat on another member; try each member once.
        self._read_attempts = max(2, len(self.endpoints))

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reads ---------------------------------------------------------------------------

    def _read(self, call: Callable[..., object], request: object) -> object:
        """Reads are safe to repeat, so a transient error is retried (round robin moves on
        to the next member) with short jittered pauses: at least once per member, and
        for one ``timeout`` in all, since an election ("leader changed") lasts about one
        election timeout."""
        start, attempts = time.monotonic(), 0
        backoff = Backoff(initial=0.05, cap=0.5)
        while True:
            try:
                return call(request, self.timeout)
            except grpc.RpcError as exc:
                error = translate_error(exc)
                attempts += 1
                spent = time.monotonic() - start
                if not error.transient or (attempts >= self._read_attempts
                                           and spent >= self.timeout):
                    raise error from exc
            time.sleep(backoff.next())

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
            raise translate_error(exc) from exc

    # -- leases --------------------------------------------------------------------------

    def grant(self, ttl: int) -> int:
        try:
            resp = self._lease.LeaseGrant(etcdrpc.LeaseGrantRequest(TTL=ttl), self.timeout)
        except grpc.RpcError as exc:
            raise translate_error(exc) from exc
        return resp.ID

    def revoke(self, lease_id: int) -> None:
        """Revoke; an unknown lease counts as revoked."""
        try:
            self._lease.LeaseRevoke(etcdrpc.LeaseRevokeRequest(ID=lease_id), self.timeout)
        except grpc.RpcError as exc:
            err = translate_error(exc)
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
        call = self._keepalive(iter([encode_keepalive(i) for i in ids]), timeout=self.timeout)
        out: dict[int, int] = {}
        try:
            for resp in call:
                lease_id, ttl = decode_keepalive(resp)
                out[lease_id] = ttl
                if len(out) >= len(ids):
                    break
        except grpc.RpcError as exc:
            raise translate_error(exc) from exc
        finally:
            call.cancel()
        return out

    # -- watches -------------------------------------------------------------------------

    def watch_prefix(self, prefix: str, start_revision: int) -> Watch:
        return Watch(self, prefix, start_revision)

    # -- maintenance ---------------------------------------------------------------------

    def alarms(self, *, retry: bool = True) -> list[str]:
        """Alarms raised in the cluster, e.g. ``["NOSPACE"]``. The request goes through
        raft, so an answer also proves that a quorum is there. ``retry=False`` makes it a
        ping: one attempt, one deadline, rather than a read retried across members."""
        request = etcdrpc.AlarmRequest(action=etcdrpc.AlarmRequest.GET)
        if retry:
            resp = self._read(self.maintenance.Alarm, request)
        else:
            resp = self.call(self.maintenance.Alarm, request)
        names = {a.alarm for a in resp.alarms}  # type: ignore[attr-defined]
        return sorted(etcdrpc.AlarmType.Name(n) for n in names if n)

    def call(self, method: Callable[..., object], request: object,
             timeout: float | None = None) -> object:
        """One unary call of a generated stub method, its error translated: for
        ``admin.py``, whose calls only scripts make."""
        try:
            return method(request, timeout or self.timeout)
        except grpc.RpcError as exc:
            raise translate_error(exc) from exc


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
            raise translate_error(exc) from exc
        if not self._cancelled.is_set():
            raise Unavailable("watch stream ended")
