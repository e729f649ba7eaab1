"""A session: one lease kept alive in the background, the liveness of a candidate in an
election (etcd's ``client/v3/concurrency/session.go``, in Python).

    session = Session(store, ttl=4).start()
    ...                      # session.lease is alive while this process is
    session.close()          # revokes the lease: every key on it goes at once

The lease is refreshed every third of its TTL. ``done`` is set when it is lost: etcd
answered that it no longer knows the lease, or no refresh succeeded for a whole TTL
(etcd may still hold it, but nothing here can prove it, so the holder must act as if it
were gone: a leader steps down, and its fenced writes fail anyway once the key is).
"""

from __future__ import annotations

import threading
import time

from services.core import logs
from services.core.errors import StoreError
from services.core.store import Store


class Session:
    def __init__(self, store: Store, ttl: int) -> None:
        self.store, self.ttl = store, ttl
        self.lease = 0
        self.done = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._keep_alive, name="session", daemon=True)
        self.log = logs.get("session")

    def start(self) -> Session:
        """Grant the lease (raises the store's error when etcd refuses) and keep it."""
        self.lease = self.store.grant(self.ttl)
        self._thread.start()
        return self

    def _keep_alive(self) -> None:
        confirmed = time.monotonic()
        while not self._stop.wait(self.ttl / 3):
            try:
                left = self.store.refresh_leases([self.lease]).get(self.lease, 0)
            except StoreError as exc:
                if time.monotonic() - confirmed >= self.ttl:
                    self._lost(f"no keep-alive answered for {self.ttl} s: {exc}")
                    return
                continue
            if left <= 0:
                self._lost("etcd no longer knows the lease (expired or revoked)")
                return
            confirmed = time.monotonic()

    def _lost(self, reason: str) -> None:
        self.log.warning("session lost", lease=f"{self.lease:016x}", reason=reason)
        self.done.set()

    def close(self, *, revoke: bool = True) -> None:
        """Stop refreshing; revoke the lease unless ``revoke=False`` (then it expires
        after its TTL). Bounded: one etcd call with the store's deadline."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.store.timeout + 1)
        if revoke and self.lease and not self.done.is_set():
            try:
                self.store.revoke(self.lease)
            except StoreError as exc:
                self.log.warning("could not revoke the session's lease; it expires by itself",
                                 error=str(exc), ttl=self.ttl)
        self.done.set()
