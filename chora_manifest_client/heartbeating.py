"""Stay registered for as long as the service runs: register, beat, re-register, leave.

Seed 001 leaves this to every service (a thread with ``while True: heartbeat; sleep
10``), and its pitfalls list what goes wrong: no heartbeat started, failures ignored, no
deregistration on exit or SIGTERM. Here it is once, as a context manager running a
thread (``Heartbeat``) and as an asyncio task (``AsyncHeartbeat``):

- beats every ``heartbeat_interval`` the registry's 201 answer gives (10 s);
- after a failed beat, tries again sooner (a third of the interval), because the
  registry marks an instance ``unhealthy`` after three missed intervals and removes it
  after six: waiting a whole interval after a failure would waste one of few chances;
- a 404 means the registry removed the instance (missed beats, an operator's DELETE):
  it registers again, and ``instance_id`` changes;
- every failure is logged (``chora_manifest_client.heartbeat``), a warning per failure and
  an error from the third in a row;
- on exit, and on SIGTERM in the main thread, it stops beating first and then
  deregisters, so a late beat can never bring a deregistered instance back.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from chora_manifest_client.errors import ManifestError, ServiceNotFoundError
from chora_manifest_client.operations import Registration
from chora_manifest_client.shutdown import SigtermHook

if TYPE_CHECKING:
    from chora_manifest_client.client import ManifestClient

log = logging.getLogger("chora_manifest_client.heartbeat")
ALARM_AFTER = 3  # consecutive failures before the log turns to errors


class _Beating:
    """What both helpers share: the registration, the counters and the decisions."""

    def __init__(self, client: ManifestClient, name: str, version: str,
                 interfaces: Mapping[str, str], metadata: Mapping[str, Any] | None, *,
                 interval: float | None = None, handle_sigterm: bool = True) -> None:
        self.client = client
        self.name = name
        self.version = version
        self.interfaces = dict(interfaces)
        self.metadata = dict(metadata or {})
        self.interval_override = interval
        self.registration: Registration | None = None
        self.registrations = 0
        """How many times this helper registered (1 + re-registrations)."""
        self.beats = 0
        """Heartbeats the registry accepted."""
        self.consecutive_failures = 0
        self._stopping = False
        self._deregistered = False
        self._lock = threading.Lock()
        self._sigterm = SigtermHook(self._on_sigterm) if handle_sigterm else None

    @property
    def instance_id(self) -> str | None:
        """The current instance id (changes when the helper had to register again)."""
        return self.registration.instance_id if self.registration else None

    @property
    def interval(self) -> float:
        if self.interval_override is not None:
            return self.interval_override
        return self.registration.heartbeat_interval if self.registration else 10.0

    def _next_delay(self) -> float:
        return self.interval / 3 if self.consecutive_failures else self.interval

    def _registered(self, registration: Registration) -> None:
        previous = self.instance_id
        self.registration = registration
        self.registrations += 1
        if previous is None:
            log.info("registered %s as %s (heartbeat every %ss)", self.name,
                     registration.instance_id, self.interval)
        else:
            log.warning("%s: the registry had removed %s; registered again as %s",
                        self.name, previous, registration.instance_id)

    def _succeeded(self) -> None:
        if self.consecutive_failures:
            log.info("%s/%s: heartbeat accepted again after %d failure(s)", self.name,
                     self.instance_id, self.consecutive_failures)
        self.consecutive_failures = 0
        self.beats += 1

    def _failed(self, what: str, exc: Exception) -> None:
        self.consecutive_failures += 1
        level = logging.ERROR if self.consecutive_failures >= ALARM_AFTER else logging.WARNING
        log.log(level, "%s/%s: %s failed (%d in a row): %s", self.name, self.instance_id, what,
                self.consecutive_failures, exc)

    def _claim_deregistration(self) -> str | None:
        """The instance id to deregister, once: beating is stopped for good first."""
        with self._lock:
            self._stopping = True
            if self._deregistered or self.instance_id is None:
                return None
            self._deregistered = True
            return self.instance_id

    def _deregister_now(self) -> None:
        instance_id = self._claim_deregistration()
        if instance_id is None:
            return
        try:
            self.client.deregister(self.name, instance_id)
            log.info("deregistered %s/%s", self.name, instance_id)
        except ManifestError as exc:
            log.error("%s/%s: deregistration failed (the registry removes it after missed "
                      "heartbeats): %s", self.name, instance_id, exc)

    def _on_sigterm(self) -> None:
        log.info("SIGTERM: deregistering %s/%s", self.name, self.instance_id)
        self._deregister_now()


class Heartbeat(_Beating):
    """``with client.keep_registered("my-service", "1.0.0", {"REST": url}) as hb:``

    Registers on entry (raising if the registry refuses or cannot be reached, so a
    service does not start believing it is discoverable), beats in a daemon thread,
    deregisters on exit. ``interval`` overrides the registry's heartbeat interval;
    ``handle_sigterm=False`` leaves SIGTERM alone."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Heartbeat:
        if self._thread is not None:
            return self
        self._registered(self.client.register_instance(
            self.name, self.version, self.interfaces, self.metadata))
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{self.name}",
                                        daemon=True)
        self._thread.start()
        if self._sigterm is not None:
            self._sigterm.install()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop beating, wait for a beat in flight, deregister. Idempotent."""
        with self._lock:
            self._stopping = True
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout if timeout is not None else self._call_bound())
        self._deregister_now()
        if self._sigterm is not None:
            self._sigterm.uninstall()

    def _call_bound(self) -> float:
        """How long one registry call can take at most: every URL times out."""
        return self.client.timeout * len(self.client.urls) * (self.client.retries + 1) + 1

    def _run(self) -> None:
        while not self._wake.wait(self._next_delay()):
            if not self.beat():
                return

    def beat(self) -> bool:
        """One heartbeat (re-registering if needed); ``False`` once stopped."""
        with self._lock:
            if self._stopping:
                return False
            name, instance_id = self.name, self.instance_id
        assert instance_id is not None
        try:
            self.client.heartbeat(name, instance_id)
            self._succeeded()
        except ServiceNotFoundError:
            self._register_again()
        except ManifestError as exc:
            self._failed("heartbeat", exc)
        return True

    def _register_again(self) -> None:
        if self._stopping:
            return
        try:
            registration = self.client.register_instance(
                self.name, self.version, self.interfaces, self.metadata)
        except ManifestError as exc:
            self._failed("registration", exc)
            return
        with self._lock:
            if self._stopping:  # stopped while registering: leave no instance behind
                late = registration.instance_id
            else:
                late = None
                self._registered(registration)
                self.consecutive_failures = 0
        if late is not None:
            self.client.deregister(self.name, late)

    def _on_sigterm(self) -> None:
        self._wake.set()
        super()._on_sigterm()

    def __enter__(self) -> Heartbeat:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class AsyncHeartbeat(_Beating):
    """``async with client.keep_registered_async(...) as hb:``, or ``await hb.start()`` /
    ``await hb.stop()`` around an application's lifespan. The beats run as a task of the
    running loop; on SIGTERM the deregistration is sent synchronously from the handler
    (the loop may never get another turn)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> AsyncHeartbeat:
        if self._task is not None:
            return self
        self._registered(await self.client.register_instance_async(
            self.name, self.version, self.interfaces, self.metadata))
        self._task = asyncio.create_task(self._run(), name=f"heartbeat-{self.name}")
        if self._sigterm is not None:
            self._sigterm.install()
        return self

    async def stop(self) -> None:
        with self._lock:
            self._stopping = True
        task = self._task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        instance_id = self._claim_deregistration()
        if instance_id is not None:
            try:
                await self.client.deregister_async(self.name, instance_id)
                log.info("deregistered %s/%s", self.name, instance_id)
            except ManifestError as exc:
                log.error("%s/%s: deregistration failed: %s", self.name, instance_id, exc)
        if self._sigterm is not None:
            self._sigterm.uninstall()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._next_delay())
            if not await self.beat():
                return

    async def beat(self) -> bool:
        with self._lock:
            if self._stopping:
                return False
            name, instance_id = self.name, self.instance_id
        assert instance_id is not None
        try:
            await self.client.heartbeat_async(name, instance_id)
            self._succeeded()
        except ServiceNotFoundError:
            await self._register_again()
        except ManifestError as exc:
            self._failed("heartbeat", exc)
        return True

    async def _register_again(self) -> None:
        if self._stopping:
            return
        try:
            registration = await self.client.register_instance_async(
                self.name, self.version, self.interfaces, self.metadata)
        except ManifestError as exc:
            self._failed("registration", exc)
            return
        with self._lock:
            late = registration.instance_id if self._stopping else None
            if late is None:
                self._registered(registration)
                self.consecutive_failures = 0
        if late is not None:
            await self.client.deregister_async(self.name, late)

    def _on_sigterm(self) -> None:
        task = self._task
        if task is not None and not task.done():
            task.get_loop().call_soon_threadsafe(task.cancel)
        super()._on_sigterm()

    async def __aenter__(self) -> AsyncHeartbeat:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
