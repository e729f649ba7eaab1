"""The etcd adapter: with ``channel.py`` (how to connect) and ``watches.py`` (the watch
stream), the only place that talks gRPC to etcd.

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
and password whose token is sent with every call (``channel.py``). When to reload
renewed certificates and when to log in again is decided in ``credentials.py``; how a
channel is built is ``channel.py``; here it is swapped in whole. Watches: ``watches.py``.

Reads and transactions go on the wire by hand, so etcd3's generated modules (and pure-
Python protobuf) are imported only when a lease, a watch or a maintenance call first needs
them: that import was 50-100 ms of a gitops-sync restart that needs none of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import grpc

from services.core.access import EtcdAccess
from services.core.backoff import Backoff
from services.core.channel import Connection, connect, etcdrpc, login, translate_error
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
    Fenced,
    LeaseNotFound,
    PermissionDenied,
    StoreError,
    TooLarge,
)
from services.core.kv import MAX_REQUEST_BYTES, MAX_TXN_OPS, KeyValue, Op, Unchanged, prefix_end
from services.core.watches import Watch
from services.core.wire import (
    decode_keepalive,
    decode_range_count,
    decode_range_response,
    encode_keepalive,
    encode_range,
    encode_txn,
)


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
        # Operations (and guards) per transaction: the cluster's --max-txn-ops, as far as
        # a caller knows it (the sync's --max-txn-ops; etcd's default otherwise).
        self.max_txn_ops = MAX_TXN_OPS
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
        self._connections = Swapping(access, self._connect, Connection.close,
                                     period=reload_period, grace=reload_grace)
        self._fence: Callable[[], list[Unchanged]] | None = None

    def fence_with(self, fence: Callable[[], list[Unchanged]] | None) -> None:
        """Every transaction from now on also carries the guards ``fence`` returns (a
        leader's election key, ``leadership.py``), and one that fails on them raises
        ``Fenced``: a leader that was frozen and replaced cannot write. ``fence`` raises
        ``Fenced`` itself when there is nothing to lead with (a standby)."""
        self._fence = fence

    def _connect(self, tls: TlsMaterial | None) -> Connection:
        return connect(self._target, self._server_name, tls, self._token)

    def _login(self, user: str, password: str) -> str:
        return login(self._connections.get(), user, password, self.timeout)

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
        return self._connections.get().stub(name)

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
        start, end = prefix.encode(), prefix_end(prefix.encode())
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
        request = encode_range(prefix.encode(), prefix_end(prefix.encode()),
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
        rpc = etcdrpc()
        resp = self._read(self.maintenance.Alarm,
                          rpc.AlarmRequest(action=rpc.AlarmRequest.GET), "reading alarms")
        return resp.header.revision  # type: ignore[attr-defined]

    # -- writes --------------------------------------------------------------------------

    def txn(self, guards: Iterable[Unchanged], ops: Iterable[Op], *,
            fenced: bool = True) -> tuple[bool, int]:
        """Apply ``ops`` atomically if every guard holds: (succeeded, revision).
        ``fenced=False``: without the fence's guards (the election's own writes).

        Not retried here: a write that timed out may have been applied, so the caller
        re-reads and re-plans instead (the guards then say whether it landed).
        """
        fence = self._fence() if fenced and self._fence is not None else []
        guards, ops = [*fence, *guards], list(ops)
        if len(ops) > self.max_txn_ops or len(guards) > self.max_txn_ops:
            raise TooLarge(f"{len(ops)} operations; etcd accepts {self.max_txn_ops} per txn")
        request = encode_txn(guards, ops)
        if len(request) > MAX_REQUEST_BYTES:
            raise TooLarge(f"{len(request)} bytes; etcd accepts {MAX_REQUEST_BYTES}")
        try:
            ok, revision = self._txn(request, self.timeout)
        except grpc.RpcError as exc:
            raise self._refused(exc, _writing(ops)) from exc
        if not ok and fence and not self.holds(fence):
            raise Fenced(f"not written: {fence[0].key} is no longer this leader's")
        return ok, revision

    def holds(self, guards: Iterable[Unchanged]) -> bool:
        """Whether every guard holds now (a linearizable read of each key)."""
        for guard in guards:
            kv = self.get(guard.key)
            if (kv.mod_revision if kv is not None else 0) != guard.mod_revision:
                return False
        return True

    # -- leases --------------------------------------------------------------------------

    def grant(self, ttl: int) -> int:
        try:
            resp = self._lease.LeaseGrant(etcdrpc().LeaseGrantRequest(TTL=ttl), self.timeout)
        except grpc.RpcError as exc:
            raise self._refused(exc, "granting a lease") from exc
        return resp.ID

    def revoke(self, lease_id: int) -> None:
        """Revoke; an unknown lease counts as revoked."""
        try:
            self._lease.LeaseRevoke(etcdrpc().LeaseRevokeRequest(ID=lease_id), self.timeout)
        except grpc.RpcError as exc:
            err = self._refused(exc, f"revoking lease {lease_id:x}")
            if not isinstance(err, LeaseNotFound):
                raise err from exc

    def lease_ttl(self, lease_id: int) -> int:
        """Remaining TTL in seconds; -1 when etcd does not know the lease."""
        resp = self._read(self._lease.LeaseTimeToLive,
                          etcdrpc().LeaseTimeToLiveRequest(ID=lease_id),
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
        rpc = etcdrpc()
        request = rpc.AlarmRequest(action=rpc.AlarmRequest.GET)
        if retry:
            resp = self._read(self.maintenance.Alarm, request, "reading alarms")
        else:
            resp = self.call(self.maintenance.Alarm, request)
        names = {a.alarm for a in resp.alarms}  # type: ignore[attr-defined]
        return sorted(rpc.AlarmType.Name(n) for n in names if n)

    def call(self, method: Callable[..., object], request: object,
             timeout: float | None = None, what: str = "") -> object:
        """One unary call of a generated stub method, its error translated: for
        ``admin.py``, whose calls only scripts make."""
        try:
            return method(request, timeout or self.timeout)
        except grpc.RpcError as exc:
            raise self._refused(exc, what) from exc
