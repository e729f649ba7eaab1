"""The sync daemon: wires the store, the reconciler, the metrics, the /healthz server,
the election and the loop together, and stops them in order with a bound on each step.
The loop runs only while this instance leads (``core/leadership.py``); a standby keeps
its session and waits. ``once`` is the same reconciler run a single time (``--once``,
``--dry-run``), without an election: it refuses to write while a daemon leads."""

from __future__ import annotations

import sys
import threading
import time

from services.core import logs, program
from services.core.backoff import Backoff
from services.core.election import leader
from services.core.errors import Fenced, NoSpace, StoreError, Unavailable
from services.core.leadership import Leadership, default_name, health
from services.core.scanning import DirectoryMissing
from services.core.store import Store
from services.gitops_sync import loop
from services.gitops_sync.loop import Liveness
from services.gitops_sync.metrics import Metrics
from services.gitops_sync.reconciling import Outcome, Reconciler
from services.gitops_sync.settings import Settings

EXIT_OK, EXIT_INVALID, EXIT_UNREACHABLE = 0, 1, 2
PROGRAM = "gitops-sync"  # its election: /chora/election/gitops-sync/


class Daemon:
    """One sync daemon. ``ValueError`` from the constructor is a configuration error (an
    endpoint that does not resolve, a port already taken), with a message naming the
    flag: the CLI exits with it, no retry loop."""

    def __init__(self, settings: Settings, *, store: Store | None = None) -> None:
        self.settings = settings
        self.log = logs.get("gitops_sync")
        self.store = store or program.connect(settings.endpoints, settings.etcd_timeout,
                                              settings.etcd_access)
        self.store.max_txn_ops = settings.max_txn_ops
        self._own_store = store is None
        self.metrics = Metrics() if settings.record_metrics else Metrics.unrecorded()
        self.reconciler = Reconciler(
            settings.capabilities, self.store, policy=settings.policy, metrics=self.metrics
        )
        self.liveness = Liveness(stall_after=settings.stall_after)
        self.leadership: Leadership | None = None  # a daemon's, from ``run``
        try:
            self.httpd = program.http_server(settings.metrics_port, settings.metrics_host,
                                             self.check, self.metrics.registry)
        except ValueError:
            self.close()
            raise
        self.stopping = threading.Event()

    def stop(self) -> None:
        """Ask the daemon to stop (signal handlers call this); ``run`` returns soon after."""
        self.stopping.set()
        if self.leadership is not None:
            self.leadership.interrupt()

    def check(self) -> tuple[bool, dict[str, object]]:
        """/healthz (``leadership.health``)."""
        return health(self.leadership, self.liveness.check)

    def run(self) -> int:
        s = self.settings
        self.leadership = Leadership(
            self.store, PROGRAM, ttl=s.election_ttl, name=default_name(s.metrics_port),
            on_change=lambda role: self.metrics.leader.set(role == "leader"))
        if self.httpd is not None:
            self.httpd.start()
            self.log.info("serving /metrics and /healthz", port=self.httpd.port)
        self.log.info("gitops sync started", capabilities=str(s.capabilities),
                      endpoints=self.store.endpoints, interval=s.reconcile_interval,
                      election_ttl=s.election_ttl)
        self.leadership.start()
        try:
            while (term := self.leadership.term(self.stopping)) is not None:
                self.liveness.reached()  # winning the election took a quorum's answers
                try:
                    loop.run(self.reconciler, term, interval=s.reconcile_interval,
                             debounce=s.debounce, liveness=self.liveness)
                except Fenced as exc:
                    self.leadership.deposed(str(exc))
        finally:
            self.leadership.stop()  # after the last write: resign, a standby leads
            if self.httpd is not None:
                self.httpd.stop()
            self.close()
        self.log.info("gitops sync stopped")
        return EXIT_OK

    def once(self, *, dry_run: bool = False) -> int:
        """One full reconcile (or its plan): exit 0 all valid, 1 a manifest was rejected
        or the directory is missing, 2 etcd unreachable or refusing writes. etcd gets a
        few seconds to answer (an election in progress), no more. Prints one line: what
        was applied (or planned), the manifest errors, and how many files were parsed of
        all (an unchanged restart parses none)."""
        try:
            if not dry_run and (busy := self._leader()):
                self.log.error("a gitops-sync daemon leads; --once would write beside it",
                               leader=busy, hint="stop it, or use --dry-run")
                return EXIT_UNREACHABLE
            outcome = self._full_within(3 * self.settings.etcd_timeout, dry_run=dry_run)
        except NoSpace as exc:
            self.log.error("etcd refuses writes", error=str(exc))
            return EXIT_UNREACHABLE
        except Unavailable as exc:
            self.log.error("etcd unreachable", endpoints=self.store.endpoints, error=str(exc))
            return EXIT_UNREACHABLE
        except DirectoryMissing as exc:
            self.log.error("nothing synced", reason=str(exc))
            return EXIT_INVALID
        except StoreError as exc:
            self.log.error("etcd rejected a request", error=str(exc))
            return EXIT_UNREACHABLE
        finally:
            self.close()
        parsed = f"parsed {outcome.parsed} of {outcome.files} files"
        if dry_run:
            for change in outcome.plan.changes:
                print(change.describe())
            if outcome.plan.refusal:
                print(f"REFUSED: {outcome.plan.refusal}")
            print(f"{len(outcome.plan.changes)} change(s) planned, {len(outcome.errors)} "
                  f"manifest error(s), {parsed}; nothing written (dry run)")
        else:
            print(f"{outcome.applied} change(s) applied, {len(outcome.errors)} manifest "
                  f"error(s), {parsed} in {outcome.seconds:.2f} s")
        for err in outcome.errors:
            print(f"error: {err}", file=sys.stderr)
        return EXIT_INVALID if outcome.errors else EXIT_OK

    def _leader(self) -> str | None:
        kv = leader(self.store, PROGRAM)
        return kv.value.decode(errors="replace") if kv is not None else None

    def _full_within(self, seconds: float, *, dry_run: bool) -> Outcome:
        deadline = time.monotonic() + seconds
        backoff = Backoff(initial=0.25, cap=1.0)
        while True:
            try:
                return self.reconciler.full(dry_run=dry_run)
            except NoSpace:
                raise
            except Unavailable:
                if time.monotonic() > deadline:
                    raise
            time.sleep(backoff.next())

    def close(self) -> None:
        self.reconciler.close()
        if self._own_store:
            self.store.close()
