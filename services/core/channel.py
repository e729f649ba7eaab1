"""How the store reaches etcd: one gRPC channel to every member (round robin, health
checks, keep-alive pings), plaintext or TLS, with the auth token on every call when a
user logs in; and a failed call turned into a ``StoreError``. ``store.py`` decides what
to call; ``credentials.py`` when to reload certificates or log in again; this module
only how a channel is built. One of the three modules allowed to import gRPC (with
``store.py`` and ``admin.py``; ``watches.py`` too, for the watch stream).
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import grpc

from services.core.credentials import TlsMaterial, Token
from services.core.errors import STALE_TOKEN, StoreError, classify
from services.core.wire import decode_txn_response


def translate_error(exc: grpc.RpcError, *, who: str | None = None, what: str = "") -> StoreError:
    """The ``StoreError`` a failed call becomes (``errors.classify``); ``who`` and ``what``
    name the identity refused and what it tried, in the message of a refusal."""
    code = exc.code()
    return classify(code.name if code else "UNKNOWN", exc.details() or "", who=who, what=what)


def _stale_token(call: Any) -> bool:
    """A call etcd refused because its token expired (not because of the user)."""
    return (isinstance(call, grpc.Call) and call.code() == grpc.StatusCode.UNAUTHENTICATED
            and STALE_TOKEN in (call.details() or ""))


def etcdrpc() -> Any:
    """etcd3's generated stubs and messages, imported on first use (see the docstring)."""
    from etcd3 import etcdrpc

    return etcdrpc


OPTIONS = [
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


class Connection:
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

    def stub(self, name: str) -> Any:
        """etcd3's generated stub ``name`` (``KVStub``, ``LeaseStub``...) on this channel."""
        found = self.stubs.get(name)
        if found is None:
            found = self.stubs[name] = getattr(etcdrpc(), name)(self.channel)
        return found

    def close(self) -> None:
        self.raw.close()


def connect(target: str, server_name: str, tls: TlsMaterial | None, token: Token | None
            ) -> Connection:
    """A channel to every member at ``target`` (plaintext, or TLS with ``tls``), with
    the token interceptor when a user logs in (``token``)."""
    if tls is None:
        raw = grpc.insecure_channel(target, options=OPTIONS)
    else:
        credentials = grpc.ssl_channel_credentials(
            tls.root_certificates, tls.private_key, tls.certificate_chain)
        raw = grpc.secure_channel(target, credentials, options=[
            *OPTIONS, ("grpc.ssl_target_name_override", server_name),
            # Connections of its own: a reloaded channel must handshake anew with
            # the new certificate, not share the old channel's connections.
            ("grpc.use_local_subchannel_pool", 1)])
    if token is None:
        return Connection(raw, raw)
    return Connection(raw, grpc.intercept_channel(raw, _TokenMetadata(token)))


def login(connection: Connection, user: str, password: str, timeout: float) -> str:
    """etcd's Authenticate, over the channel without the token interceptor."""
    rpc = etcdrpc()
    stub = rpc.AuthStub(connection.raw)
    try:
        resp = stub.Authenticate(rpc.AuthenticateRequest(name=user, password=password),
                                 timeout)
    except grpc.RpcError as exc:
        raise translate_error(exc, who=user, what="logging in") from exc
    return resp.token
