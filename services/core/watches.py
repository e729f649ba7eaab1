"""A watch of one prefix as a plain iterator: batches of events from a revision on,
raising ``Compacted`` or ``Unavailable`` when the stream ends, so the caller re-creates
it from the last revision seen + 1; a refusal (its user may not read the prefix) is
terminal, an expired token renewed."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

import grpc

from services.core.channel import etcdrpc
from services.core.errors import STALE_TOKEN, Compacted, PermissionDenied, Unavailable
from services.core.kv import Event, KeyValue, prefix_end

if TYPE_CHECKING:
    from etcd3.etcdrpc import kv_pb2

    from services.core.store import Store

FRESH_TOKEN = 1.0  # seconds: a token this young cannot have expired


def _key_value(kv: kv_pb2.KeyValue) -> KeyValue:
    return KeyValue(kv.key.decode(), kv.value, kv.mod_revision, kv.create_revision, kv.lease)


class Watch:
    """Iterate to receive batches of events from ``start_revision`` on; raises
    ``Unavailable`` or ``Compacted`` when the stream ends, ``cancel()`` stops it.

    The caller re-creates it from the last seen revision + 1. A member cut off from the
    majority sends nothing at all, so pair a watch with a periodic linearizable read.
    """

    def __init__(self, store: Store, prefix: str, start_revision: int) -> None:
        key = prefix.encode()
        rpc = etcdrpc()
        create = rpc.WatchRequest(
            create_request=rpc.WatchCreateRequest(
                key=key, range_end=prefix_end(key), start_revision=start_revision
            )
        )
        self._stop: queue.Queue[None] = queue.Queue()
        self._cancelled = threading.Event()
        self._store, self._what = store, f"watching {prefix}"

        def requests() -> Iterator[rpc.WatchRequest]:
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
                        Event("delete" if ev.type == ev.DELETE else "put", _key_value(ev.kv))
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
