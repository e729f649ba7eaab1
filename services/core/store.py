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

Secure stack (``access``, see ``access.py``): TLS with a client certificate, or a user
and password whose token is sent with every call (``_TokenMetadata``). When to reload
renewed certificates and when to log in again is decided in ``credentials.py``; here is
only how: a new channel, swapped in whole (``_Connection``).

Reads and transactions go on the wire by hand, so etcd3's generated modules (and pure-
Python protobuf) are imported only when a lease, a watch or a maintenance call first needs
them: that import was 50-100 ms of a gitops-sync restart that needs none of them.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

import grpc

from services.core.access import EtcdAccess
from services.core.backoff import Backoff
from services.core.credentials import (
    RELOAD_GRACE,
    RELOAD_PERIOD,
    TOKEN_REFRESH,
    Swapping,
    TlsMaterial,
    Token,
)
from services.core.endpoints import parse_endpoints, resolve, server_name
from services.core.errors import (
    STALE_TOKEN,
    Compacted,
    LeaseNotFound,
    PermissionDenied,
    StoreError,
    TooLarge,
    Unavailable,
    classify,
)
from services.core.kv import MAX_REQUEST_BYTES, MAX_TXN_OPS, Event, KeyValue, Op, Unchanged
from services.core.wire import (
    decode_keepalive,
    decode_range_count,
    decode_range_response,
    decode_txn_response,
    encode_keepalive,
    encode_range,
    encode_txn,
)

if TYPE_CHECKING:
    from etcd3.etcdrpc import kv_pb2

FRESH_TOKEN = 1.0  # seconds: a token this young cannot have expired


def translate_error(exc: grpc.RpcError, *, who: str | None = None, what: str = "") -> StoreError:
    """The ``StoreError`` a failed call becomes (``errors.classify``); ``who`` and ``what``
    name the identity refused and what it tried, in the message of a refusal."""
    code = exc.code()
    return classify(code.name if code else "UNKNOWN", exc.details() or "", who=who, what=what)


def _stale_token(call: Any) -> bool:
    """A call etcd refused because its token expired (not because of the user)."""
    return (isinstance(call, grpc.Call) and call.code() == grpc.StatusCode.UNAUTHENTICATED
            and STALE_TOKEN in (call.details() or ""))


def _etcdrpc() -> Any:
    """etcd3's generated stubs and messages, imported on first use (see the docstring)."""
    from etcd3 import etcdrpc

    return etcdrpc


def _kv(kv: kv_pb2.KeyValue) -> KeyValue:
    return KeyValue(kv.key.decode(), kv.value, kv.mod_revision, kv.create_revision, kv.lease)


def _prefix_end(prefix: bytes) -> bytes:
    end = bytearray(prefix)
    for i in reversed(range(len(end))):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


class _TokenMetadata(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                     grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Sends the auth token with every call (``--user``). A unary call refused for an
    invalid token (it expired) is sent once more after logging in again; it was refused
    before etcd applied anything, so repeating it is safe, writes included. Streams
    cannot be replayed: they fail, the token is renewed, and their callers re-create
    them as after any outage (``refresh_leases`` itself tries once more)."""

    def __init__(self, token: Token) -> None:
        self.token = token

    def _with(self, details: Any, token: str) -> Any:
        metadata = [*(details.metadata or ()), ("token", token)]
        return _CallDetails(details.method, details.timeout, metadata, details.credentials,
                            details.wait_for_ready, details.compression)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        token = self.token.current()
        outcome = continuation(self._with(details, token), request)
        if _stale_token(outcome):
            outcome = continuation(self._with(details, self.token.renew(token)), request)
        return outcome

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with(details, self.token.current()), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._with(details, self.token.current()), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._with(details, self.token.current()), requests)


class _Connection:
    """One channel and the calls made on it: swapped whole when certificates change,
    so a call never mixes two channels. ``raw`` is the channel without the token
    interceptor (closing it closes both; logging in goes over it)."""

    def __init__(self, raw: grpc.Channel, channel: grpc.Channel) -> None:
        self.raw, self.channel = raw, channel
        self.txn = channel.unary_unary("/etcdserverpb.KV/Txn", request_serializer=bytes,
                                       response_deserializer=decode_txn_response)
        self.keepalive = channel.stream_stream("/etcdserverpb.Lease/LeaseKeepAlive")
        self.range = channel.unary_unary("/etcdserverpb.KV/Range", request_serializer=bytes,
                                         response_deserializer=bytes)
        self.stubs: dict[str, Any] = {}

    def close(self) -> None:
        self.raw.close()


def _writing(ops: list[Op]) -> str:
    if not ops:
        return "running a transaction"
    more = f" and {len(ops) - 1} more keys" if len(ops) > 1 else ""
    return f"writing {ops[0].key}{more}"


class Store:
    """One long-lived client per process: ``Store(["127.0.0.1:2379", ...], timeout=3)``;
    ``access=EtcdAccess(...)`` for TLS and auth (default: plaintext, no auth).
    ``reload_period``/``reload_grace``/``token_refresh``: see ``credentials.py``."""

    def __init__(self, endpoints: Iterable[str], *, timeout: float = 3.0,
                 access: EtcdAccess | None = None, reload_period: float = RELOAD_PERIOD,
                 reload_grace: float = RELOAD_GRACE,
                 token_refresh: float = TOKEN_REFRESH) -> None:
        self.endpoints = parse_endpoints(endpoints)
        self.timeout = timeout
        self.access = access = access or EtcdAccess()
        addresses = [resolve(e) for e in self.endpoints]
        # gRPC's multi-address target: "ipv4:a:p,b:p,c:p" (what etcd3.client(host=
        # "ipv4:a:p,b:p,c", port=p) made of it before; the channel is now ours).
        self._target = "ipv4:" + ",".join(addresses)
        self._server_name = access.server_name or server_name(self.endpoints)
        self._token = (Token(access, self._login, refresh=token_refresh)
                       if access.user else None)
        # Reads are safe to repeat on another member; try each member once.
        self._read_attempts = max(2, len(self.endpoints))
        self._revision_by_alarm = False
        self._connections = Swapping(access, self._connect, _Connection.close,
                                     period=reload_period, grace=reload_grace)

    def _connect(self, tls: TlsMaterial | None) -> _Connection:
        options = [
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
        ]
        if tls is None:
            raw = grpc.insecure_channel(self._target, options=options)
        else:
            credentials = grpc.ssl_channel_credentials(
                tls.root_certificates, tls.private_key, tls.certificate_chain)
            raw = grpc.secure_channel(self._target, credentials, options=[
                *options, ("grpc.ssl_target_name_override", self._server_name),
                # Connections of its own: a reloaded channel must handshake anew with
                # the new certificate, not share the old channel's connections.
                ("grpc.use_local_subchannel_pool", 1)])
        if self._token is None:
            return _Connection(raw, raw)
        return _Connection(raw, grpc.intercept_channel(raw, _TokenMetadata(self._token)))

    def _login(self, user: str, password: str) -> str:
        """etcd's Authenticate, over the channel without the token interceptor."""
        etcdrpc = _etcdrpc()
        stub = etcdrpc.AuthStub(self._connections.get().raw)
        try:
            resp = stub.Authenticate(etcdrpc.AuthenticateRequest(name=user, password=password),
                                     self.timeout)
        except grpc.RpcError as exc:
            raise translate_error(exc, who=user, what="logging in") from exc
        return resp.token

    @property
    def identity(self) -> str | None:
        """Who etcd sees: the ``--user``, else our certificate's common name."""
        material = self._connections.material
        return self.access.user or (material.common_name if material else None)

    @property
    def reloads(self) -> int:
        """How many times renewed certificates were picked up."""
        return self._connections.reloads

    def _refused(self, exc: grpc.RpcError, what: str = "") -> StoreError:
        return translate_error(exc, who=self.identity, what=what)

    @property
    def channel(self) -> grpc.Channel:
        return self._connections.get().channel

    @property
    def _txn(self) -> Any:
        return self._connections.get().txn

    @property
    def _range(self) -> Any:
        return self._connections.get().range

    @property
    def _keepalive(self) -> Any:
        return self._connections.get().keepalive

    def _stub(self, name: str) -> Any:
        """etcd3's generated stub ``name`` (``KVStub``, ``LeaseStub``...) on our channel."""
        connection = self._connections.get()
        stub = connection.stubs.get(name)
        if stub is None:
            stub = connection.stubs[name] = getattr(_etcdrpc(), name)(connection.channel)
        return stub

    @property
    def _kv(self) -> Any:
        return self._stub("KVStub")

    @property
    def _lease(self) -> Any:
        return self._stub("LeaseStub")

    @property
    def _watch(self) -> Any:
        return self._stub("WatchStub")

    @property
    def maintenance(self) -> Any:
        return self._stub("MaintenanceStub")

    @property
    def cluster(self) -> Any:
        return self._stub("ClusterStub")

    def close(self) -> None:
        self._connections.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reads ---------------------------------------------------------------------------

    def _read(self, call: Callable[..., object], request: object, what: str = "") -> object:
        """Reads are safe to repeat, so a transient error is retried (round robin moves on
        to the next member) with short jittered pauses: at least once per member, and
        for one ``timeout`` in all, since an election ("leader changed") lasts about one
        election timeout."""
        start, attempts = time.monotonic(), 0
        backoff = Backoff(initial=0.05, cap=0.5)
        while True:
            try:
                return call(request, self.timeout)
            except (grpc.RpcError, StoreError) as exc:  # StoreError: logging in failed
                error = self._refused(exc, what) if isinstance(exc, grpc.RpcError) else exc
                attempts += 1
                spent = time.monotonic() - start
                if not error.transient or (attempts >= self._read_attempts
                                           and spent >= self.timeout):
                    raise error from exc
            time.sleep(backoff.next())

    def _range_read(self, request: bytes, what: str) -> bytes:
        return self._read(self._range, request, what)  # type: ignore[return-value]

    def get(self, key: str) -> KeyValue | None:
        request = encode_range(key.encode())
        kvs, _, _ = decode_range_response(self._range_read(request, f"reading {key}"))
        return kvs[0] if kvs else None

    def get_prefix(
        self,
        prefix: str,
        *,
        page: int = 2000,
        keys_only: bool = False,
        revision: int = 0,
        min_mod_revision: int = 0,
    ) -> tuple[dict[str, KeyValue], int]:
        """Every key under ``prefix`` at one revision (linearizable; ``revision``: at that
        one), and that revision. ``min_mod_revision``: only the keys modified since, which
        etcd filters on its side (it still walks the whole prefix, but sends nothing)."""
        start, end = prefix.encode(), _prefix_end(prefix.encode())
        out: dict[str, KeyValue] = {}
        # With a filter etcd walks the whole prefix for every page: ask once for all.
        limit = 0 if min_mod_revision else page
        while True:
            request = encode_range(start, end, limit=limit, revision=revision,
                                   keys_only=keys_only, min_mod_revision=min_mod_revision)
            kvs, more, header_revision = decode_range_response(
                self._range_read(request, f"reading {prefix}"))
            revision = revision or header_revision
            for kv in kvs:
                out[kv.key] = kv
            if not more or not kvs:
                return out, revision
            start = kvs[-1].key.encode() + b"\0"

    def count(self, prefix: str, *, revision: int = 0) -> tuple[int, int]:
        """How many keys are under ``prefix`` (at ``revision``, default now), and the
        revision counted at; etcd sends the number only."""
        request = encode_range(prefix.encode(), _prefix_end(prefix.encode()),
                               revision=revision, count_only=True)
        count, header_revision = decode_range_count(
            self._range_read(request, f"reading {prefix!r}"))
        return count, revision or header_revision

    def revision(self) -> int:
        """The cluster's current revision, by a linearizable read (proves quorum).

        The read is of the empty range below every key, which only ``root`` may read
        once auth is on; any other user asks through the alarm list instead (it goes
        through raft, and its header carries the revision after it): every user may."""
        if not self._revision_by_alarm:
            try:
                _, revision = self.count("\0")
                return revision
            except PermissionDenied:
                self._revision_by_alarm = True
        etcdrpc = _etcdrpc()
        resp = self._read(self.maintenance.Alarm,
                          etcdrpc.AlarmRequest(action=etcdrpc.AlarmRequest.GET), "reading alarms")
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
            raise self._refused(exc, _writing(ops)) from exc

    # -- leases --------------------------------------------------------------------------

    def grant(self, ttl: int) -> int:
        try:
            resp = self._lease.LeaseGrant(_etcdrpc().LeaseGrantRequest(TTL=ttl), self.timeout)
        except grpc.RpcError as exc:
            raise self._refused(exc, "granting a lease") from exc
        return resp.ID

    def revoke(self, lease_id: int) -> None:
        """Revoke; an unknown lease counts as revoked."""
        try:
            self._lease.LeaseRevoke(_etcdrpc().LeaseRevokeRequest(ID=lease_id), self.timeout)
        except grpc.RpcError as exc:
            err = self._refused(exc, f"revoking lease {lease_id:x}")
            if not isinstance(err, LeaseNotFound):
                raise err from exc

    def lease_ttl(self, lease_id: int) -> int:
        """Remaining TTL in seconds; -1 when etcd does not know the lease."""
        resp = self._read(self._lease.LeaseTimeToLive,
                          _etcdrpc().LeaseTimeToLiveRequest(ID=lease_id),
                          f"reading lease {lease_id:x}")
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
        try:
            return self._refresh(ids)
        except StoreError as exc:
            if self._token is None or STALE_TOKEN not in str(exc):
                raise
        self._token.forget()  # a stream cannot be replayed: log in, then once more
        return self._refresh(ids)

    def _refresh(self, ids: list[int]) -> dict[int, int]:
        call = self._keepalive(iter([encode_keepalive(i) for i in ids]), timeout=self.timeout)
        out: dict[int, int] = {}
        try:
            for resp in call:
                lease_id, ttl = decode_keepalive(resp)
                out[lease_id] = ttl
                if len(out) >= len(ids):
                    break
        except grpc.RpcError as exc:
            raise self._refused(exc, "refreshing leases") from exc
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
        etcdrpc = _etcdrpc()
        request = etcdrpc.AlarmRequest(action=etcdrpc.AlarmRequest.GET)
        if retry:
            resp = self._read(self.maintenance.Alarm, request, "reading alarms")
        else:
            resp = self.call(self.maintenance.Alarm, request)
        names = {a.alarm for a in resp.alarms}  # type: ignore[attr-defined]
        return sorted(etcdrpc.AlarmType.Name(n) for n in names if n)

    def call(self, method: Callable[..., object], request: object,
             timeout: float | None = None, what: str = "") -> object:
        """One unary call of a generated stub method, its error translated: for
        ``admin.py``, whose calls only scripts make."""
        try:
            return method(request, timeout or self.timeout)
        except grpc.RpcError as exc:
            raise self._refused(exc, what) from exc


class Watch:
    """Iterate to receive batches of events from ``start_revision`` on; raises
    ``Unavailable`` or ``Compacted`` when the stream ends, ``cancel()`` stops it.

    The caller re-creates it from the last seen revision + 1. A member cut off from the
    majority sends nothing at all, so pair a watch with a periodic linearizable read.
    """

    def __init__(self, store: Store, prefix: str, start_revision: int) -> None:
        key = prefix.encode()
        etcdrpc = _etcdrpc()
        create = etcdrpc.WatchRequest(
            create_request=etcdrpc.WatchCreateRequest(
                key=key, range_end=_prefix_end(key), start_revision=start_revision
            )
        )
        self._stop: queue.Queue[None] = queue.Queue()
        self._cancelled = threading.Event()
        self._store, self._what = store, f"watching {prefix}"

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
                    self._refused(resp.cancel_reason)
                if resp.events:
                    yield [
                        Event("delete" if ev.type == ev.DELETE else "put", _kv(ev.kv))
                        for ev in resp.events
                    ]
        except grpc.RpcError as exc:
            if self._cancelled.is_set():
                return
            raise self._store._refused(exc, self._what) from exc
        if not self._cancelled.is_set():
            raise Unavailable("watch stream ended")

    def _refused(self, reason: str) -> None:
        """Raise what a watch cancelled by etcd means: a refusal (its user may not read
        the prefix: terminal), or an expired token (renewed: re-create the watch), or
        anything else (transient)."""
        store, token = self._store, self._store._token
        if "permission denied" in reason:
            # etcd refuses a watch opened with an expired token as "permission denied"
            # too: unless the token is brand new, log in again and let it be re-created.
            if token is not None and token.age() > FRESH_TOKEN:
                token.forget()
                raise Unavailable(f"watch refused ({reason}): the token may have expired; "
                                  "logging in again")
            raise PermissionDenied(f"etcd refused user {store.identity}: permission denied "
                                   f"{self._what}")
        if STALE_TOKEN in reason and token is not None:
            token.forget()
        raise Unavailable(f"watch cancelled by server: {reason}")
